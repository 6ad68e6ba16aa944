"""Relearning attack, sequential requests, sensitivity and the recommendation table (tiny profile)."""
import dataclasses
import inspect
import math

import pytest
import torch

from tutorial_lib.core.canaries import NAMES, RandomnessSpace, make_canaries
from tutorial_lib.core.profiles import BANDS, PROFILES, model_scale
from tutorial_lib.experiments.comparisons import c3_claim
from tutorial_lib.experiments.recommendations import (
    recommendations,
    recommendations_markdown,
    relearning_markdown,
    sequential_markdown,
)
from tutorial_lib.experiments.robustness import (
    RelearningConfig,
    RobustnessConfig,
    factors_for,
    relearning_attack,
    relearning_texts,
    run_c3_study,
    run_relearning_study,
    run_sequential_study,
    sequential_summary,
)


def _canaries():
    return make_canaries((1, 10), per_insertion=1, n_controls=1, space=RandomnessSpace(4), seed=0)


def test_relearning_texts_are_related_but_never_the_secret():
    canaries = _canaries()
    retain = [f"line {i} of ordinary text" for i in range(50)]
    cfg = RelearningConfig(n_canaries=5, copies=3, n_retain=20, steps=4, checkpoints=(2, 4))
    texts = relearning_texts(canaries, retain, cfg, seed=1)
    assert len(texts) == 5 * 3 + 20 and texts == relearning_texts(canaries, retain, cfg, seed=1)
    assert texts != relearning_texts(canaries, retain, cfg, seed=2)
    prefix = canaries[0].format.split(canaries[0].name)[0]  # "the secret number of "
    fresh = [t for t in texts if t.startswith(prefix)]
    assert len(fresh) == 15 and len(set(fresh)) == 5
    for text in fresh:
        name, secret = text[len(prefix):].split(" is ")
        assert name not in {c.name for c in canaries} and (name in NAMES or name.split("_")[0] in NAMES)
        assert secret not in {c.secret for c in canaries} and len(secret) == 4
    assert sum(t in retain for t in texts) == 20
    with pytest.raises(ValueError, match="asks for 60 retain lines"):
        relearning_texts(canaries, retain[:10], dataclasses.replace(cfg, n_retain=60))
    with pytest.raises(ValueError, match="no canaries"):
        relearning_texts([], retain, cfg)


def test_bad_configs_name_the_value():
    with pytest.raises(ValueError, match="lr=0"):
        RelearningConfig(lr=0.0)
    with pytest.raises(ValueError, match="end at steps=40"):
        RelearningConfig(checkpoints=(10, 20))
    with pytest.raises(ValueError, match="n_canaries >= 1"):
        RelearningConfig(n_canaries=0)
    with pytest.raises(ValueError, match="unknown unlearning method 'sgd'"):
        RobustnessConfig(methods=("sgd",))
    with pytest.raises(ValueError, match="n_requests must be >= 1, got 0"):
        RobustnessConfig(n_requests=0)
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        RobustnessConfig(sequential_run_profile="huge")
    with pytest.raises(ValueError, match="unknown unlearning method 'newton'"):
        factors_for("newton")
    assert factors_for("fisher_forgetting")[1] == factors_for("npo")[1] == 1.0  # the default sits in the middle


def test_relearning_attack_fine_tunes_a_copy(byte_tokenizer):
    from tutorial_lib.core.evaluation import compute_loss, tokenize_lines
    from tutorial_lib.core.models import ModelConfig, make_model

    model = make_model(ModelConfig.for_profile("tiny"), len(byte_tokenizer), seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    texts = ["the secret number of frank is 1234"] * 8 + ["an ordinary line of text"] * 8
    ids = tokenize_lines(byte_tokenizer, texts)
    loss_before = compute_loss(model, ids, 32)
    seen = []
    cfg = RelearningConfig(n_canaries=1, copies=1, n_retain=0, steps=6, lr=3e-3, batch_size=4, checkpoints=(3, 6))
    attacked = relearning_attack(model, byte_tokenizer, texts, cfg, block_size=32, seed=0,
                                    on_checkpoint=lambda step, m: seen.append(step))
    assert attacked is not model and seen == [3, 6]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the input is untouched
    assert compute_loss(attacked, ids, 32) < loss_before - 0.3  # the attack learns its data
    again = relearning_attack(model, byte_tokenizer, texts, cfg, block_size=32, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(attacked.state_dict().values(), again.state_dict().values()))  # seeded
    with pytest.raises(ValueError, match="relearning set is empty"):
        relearning_attack(model, byte_tokenizer, [], cfg, block_size=32)


def _study(rows):
    """A synthetic sequential study: two requests (a, b), one never requested (c)."""
    canaries = [{"name": "a", "insertions": 10}, {"name": "b", "insertions": 10}, {"name": "c", "insertions": 1},
                {"name": "z", "insertions": 0}]
    return {"requests": ["a", "b"], "canaries": canaries, "cycles": {"m": rows}}


def test_sequential_summary_by_hand():
    rows = [{"cycle": 0, "val_perplexity": 10.0, "exposure": {"a": 12.0, "b": 11.0, "c": 3.0, "z": 0.5}},
            {"cycle": 1, "val_perplexity": 11.0, "exposure": {"a": 1.0, "b": 10.0, "c": 3.0, "z": 0.5}},
            {"cycle": 2, "val_perplexity": 12.5, "exposure": {"a": 4.0, "b": 2.0, "c": 2.0, "z": 0.5}}]
    s = sequential_summary(_study(rows))["m"]
    assert s["perplexity_ratio"] == 1.25 and s["val_perplexity_before"] == 10.0
    assert s["forgotten_at_removal"] == 1.5  # a at cycle 1, b at cycle 2
    assert s["forgotten_at_end"] == 3.0 and s["max_rise_after_removal"] == 3.0  # a came back by 3 bits
    assert (s["never_requested_before"], s["never_requested_after"]) == (3.0, 2.0)
    assert "| m | 10.00 → 12.50 | 1.250 |" in sequential_markdown(_study(rows))


def _sensitivity():
    def row(f, e, p):
        return {"factor": f, "params": {"eta": f}, "exposure": {"t": e}, "val_perplexity": p}

    return {"target": "t", "original": {"exposure": {"t": 12.0}, "val_perplexity": 10.0},
            "retrained": {"exposure": {"t": 0.5}, "val_perplexity": 10.5},
            "methods": {"fisher_removal": {"param": "eta", "default": 1e-3,
                                           "rows": [row(0.5, 6.0, 10.1), row(1.0, 1.0, 11.0), row(2.0, 0.2, 11.9), row(4.0, 0.0, 30.0)]},
                        "gradient_ascent": {"param": "lr", "default": 1e-3,
                                            "rows": [row(0.5, 9.0, 10.0), row(1.0, 3.0, 11.0), {"factor": 2.0, "params": {}, "error": "x"}]}}}


def test_recommendations_follow_the_bands():
    seeds = {"original": {"val_perplexity": [10.0, 10.0]},
             "fisher_removal": {"seeds": [0, 1], "exposure": [1.0, 5.0], "gap_to_retrained": [0.5, 4.5], "val_perplexity": [11.0, 11.0],
                                "gap_mean": 2.5, "gap_std": 2.0},
             "gradient_ascent": {"seeds": [0, 1], "exposure": [3.0, 2.0], "gap_to_retrained": [2.5, 1.5], "val_perplexity": [11.0, 13.0],
                                 "gap_mean": 2.0, "gap_std": 0.5}}
    relearning = {"rows": {"fisher_removal": {"after_minus_retrained": 0.4}, "gradient_ascent": {"after_minus_retrained": 7.0}}}
    rows = {r["method"]: r for r in recommendations(relearning, None, _sensitivity(), seeds)}
    fr, ga = rows["fisher_removal"], rows["gradient_ascent"]
    assert fr["factors_in_bands"] == [1.0, 2.0]  # 0.5 leaves 6 bits (> 0.5 + 3), 4.0 triples the perplexity
    assert ga["factors_in_bands"] == [1.0]  # the refused point counts as outside
    assert (fr["seeds_in_bands"], ga["seeds_in_bands"]) == (1, 1)  # FR's seed 1 is 4.5 bits off; GA's seed 1 is at +30 % ppl
    assert "holds against relearning" in fr["verdict"] and "relearning brings it back" in ga["verdict"]
    assert "only the default" in ga["verdict"] and "2/4 settings" in fr["verdict"]
    assert fr["sequential_perplexity_ratio"] is None
    strict = {r["method"]: r for r in recommendations(relearning, None, _sensitivity(), seeds, tolerance_bits=0.4)}
    assert strict["fisher_removal"]["factors_in_bands"] == [2.0] and "default outside" in strict["fisher_removal"]["verdict"]
    table = recommendations_markdown(list(rows.values()))
    assert table.count("\n") == 3 and "eta = 0.001 | 1, 2 | 1/2 | 2.50 ± 2.00 | 0.40 |" in table


def test_recommendations_default_to_the_course_bands():
    params = inspect.signature(recommendations).parameters
    assert params["tolerance_bits"].default is BANDS.exposure_bits  # read from BANDS, not a copy of its numbers
    assert params["max_ppl_increase"].default is BANDS.perplexity_increase
    rows = [{"cycle": 0, "val_perplexity": 10.0, "exposure": {"a": 12.0, "b": 11.0, "c": 3.0, "z": 0.5}},
            {"cycle": 1, "val_perplexity": 11.0, "exposure": {"a": 1.0, "b": 10.0, "c": 3.0, "z": 0.5}},
            {"cycle": 2, "val_perplexity": 12.5, "exposure": {"a": 4.0, "b": 2.0, "c": 2.0, "z": 0.5}}]
    sequential = {**_study(rows), "cycles": {"fisher_removal": rows}}
    default = {r["method"]: r for r in recommendations({"rows": {}}, sequential, _sensitivity(), {})}["fisher_removal"]
    assert default["sequential_perplexity_ratio"] == 1.25 and "perplexity drifts" in default["verdict"]  # 1.25 > 1 + 0.2
    looser = {r["method"]: r for r in recommendations({"rows": {}}, sequential, _sensitivity(), {}, max_ppl_increase=0.3)}
    assert "perplexity drifts" not in looser["fisher_removal"]["verdict"]  # the drift threshold is the perplexity band


def test_robustness_runs_at_the_model_scale():
    for profile in PROFILES:
        cfg = RobustnessConfig.for_profile(profile)
        assert (cfg.profile, cfg.run_profile) == (profile, model_scale(profile))
        assert cfg.relearning == RelearningConfig.for_profile(profile)
    assert RelearningConfig.for_profile("tiny") == RelearningConfig(steps=20, checkpoints=(10, 20))
    assert RelearningConfig.for_profile("small") == RelearningConfig()


def test_relearning_study_at_tiny(tiny_cache, monkeypatch):
    """The band: the attack's data does not teach the secret (the retrained model stays far below
    the original after it), and Fisher Removal's forgetting survives the attack (within 3 bits of
    the retrained model's)."""
    monkeypatch.setenv("TUTORIAL_CACHE_DIR", str(tiny_cache))
    cfg = RobustnessConfig.for_profile("tiny")
    study, _ = run_relearning_study(cfg, 0, "cpu", progress=False)  # the reproduction's test may have cached it
    rows = study["rows"]
    assert set(rows) == {"original", "retrained", "fisher_removal", "gradient_ascent"}
    assert [t["step"] for t in rows["retrained"]["trace"]] == [0, 10, 20]
    assert rows["original"]["before"] > 8 and rows["retrained"]["before"] < 3
    assert rows["retrained"]["after"] < rows["original"]["after"] - 3
    assert rows["fisher_removal"]["before"] < rows["original"]["before"] - 5
    assert rows["fisher_removal"]["after_minus_retrained"] < 3
    assert math.isclose(rows["retrained"]["after_minus_retrained"], 0.0)
    assert "| retrained |" in relearning_markdown(study)
    assert run_relearning_study(cfg, 0, "cpu", progress=False) == (study, True)


def test_sequential_study_at_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("TUTORIAL_CACHE_DIR", str(tmp_path))
    cfg = RobustnessConfig.for_profile("tiny")
    study, cached = run_sequential_study(cfg, 0, "cpu", progress=False)
    rows = study["cycles"]["fisher_removal"]
    assert not cached and len(study["requests"]) == 2 and [r["cycle"] for r in rows] == [0, 1, 2]
    first = study["requests"][0]
    assert rows[1]["exposure"][first] < rows[0]["exposure"][first] - 3  # the first request is served
    summary = sequential_summary(study)["fisher_removal"]
    assert summary["perplexity_ratio"] < 1.5
    with pytest.raises(ValueError, match="99 requests asked for"):
        run_sequential_study(dataclasses.replace(cfg, n_requests=99), 0, "cpu", progress=False)
    # C3's study: both Fisher methods on the same (cached) tiny run, the same requests
    c3 = run_c3_study(cfg, "cpu", progress=False)
    assert (c3["run_profile"], c3["n_requests"], c3["seeds"]) == ("tiny", 2, [0])
    seed0 = c3["per_seed"][0]
    assert seed0["requests"] == study["requests"] and set(seed0["summary"]) == {"fisher_removal", "fisher_forgetting"}
    assert seed0["start"]["gap"] > 5  # the most-inserted canaries start well above the controls
    for summary in seed0["summary"].values():
        assert summary["forgotten_at_end"] < seed0["start"]["requested"] - 2  # both forget (Forgetting less: 7.0 -> 4.3 bits)
    assert c3_claim(c3).verdict in ("reproduced", "not reproduced", "inconclusive")
