"""Sweeps, the rule that picks defaults, the result cache and repeated requests (tiny profile)."""
import inspect
import math

import pytest

from tutorial_lib.core.cache import cached_result
from tutorial_lib.core.profiles import BANDS
from tutorial_lib.experiments import sweeps as studies
from tutorial_lib.experiments.memorization import MemorizationConfig
from tutorial_lib.unlearning.fisher_methods import FisherRemovalConfig


def _row(x, exposure, ppl):
    return {"params": {"x": x}, "exposure": {"c": exposure}, "val_perplexity": ppl}


def test_choose_setting_follows_the_bands_around_the_controls():
    original = {"val_perplexity": 10.0, "exposure": {"c": 18.0, "k1": 0.5, "k2": 1.5}}  # the controls' level: 1.0 bit
    controls = ["k1", "k2"]
    rows = [_row(1, 0.5, 12.5), _row(2, 3.9, 11.0), _row(3, 2.0, 11.5), _row(4, 9.0, 10.2), {"params": {"x": 5}, "error": "refused"}]
    choose = studies.choose_setting
    assert studies.control_level(original, controls) == 1.0
    assert choose(rows, "c", original, controls)["params"]["x"] == 2  # within 3 bits of the controls and the budget, lowest perplexity
    assert choose(rows, "c", original, controls, prefer=lambda r: -r["params"]["x"])["params"]["x"] == 3
    assert choose(rows, "c", original, controls, tolerance_bits=1.5)["params"]["x"] == 3
    assert choose(rows, "c", original, controls, tolerance_bits=0.5)["params"]["x"] == 1  # erasure first: over budget, but close
    assert choose(rows, "c", original, controls, max_ppl_increase=0.0)["params"]["x"] == 2  # none in budget: lowest perplexity of the close
    assert choose(rows, "c", original, controls, tolerance_bits=-1)["params"]["x"] == 1  # none close: the nearest to the band
    below = [_row(1, 0.0, 10.5), _row(2, 6.0, 10.1)]
    assert choose(below, "c", {**original, "exposure": {"c": 18.0, "k1": 5.0, "k2": 5.0}}, controls)["params"]["x"] == 2  # two-sided
    ties = [_row(1, 13.0, 6.0), _row(2, 13.0, 5.0)]
    assert choose(ties, "c", original, controls)["params"]["x"] == 2  # equal exposure: lower perplexity
    assert choose(rows[-1:], "c", original, controls) is None
    with pytest.raises(ValueError, match="at least one never-inserted canary"):
        choose(rows, "c", original, [])
    with pytest.raises(ValueError, match="no exposure for the controls"):
        choose(rows, "c", original, ["k3"])


def test_choose_setting_defaults_are_the_course_bands_and_it_takes_no_oracle():
    params = inspect.signature(studies.choose_setting).parameters
    # read from BANDS, not a copy of its numbers: the very objects
    assert params["tolerance_bits"].default is BANDS.exposure_bits
    assert params["max_ppl_increase"].default is BANDS.perplexity_increase
    assert not any("oracle" in name or "retrained" in name for name in params)
    original = {"val_perplexity": 10.0, "exposure": {"c": 18.0, "k": 1.0}}
    # preferring the highest perplexity picks the point at the bands' edges: x=1 sits just inside both
    # (1 + 3 bits, 10 x 1.2), x=2 just outside the exposure band, x=3 just outside the perplexity budget
    rows = [_row(1, 4.0, 11.99), _row(2, 4.01, 11.995), _row(3, 1.0, 12.01), _row(4, 2.0, 10.5)]
    highest = {"prefer": lambda r: -r["val_perplexity"]}
    assert studies.choose_setting(rows, "c", original, ["k"], **highest)["params"]["x"] == 1
    assert studies.choose_setting(rows, "c", original, ["k"], tolerance_bits=3.02, **highest)["params"]["x"] == 2
    assert studies.choose_setting(rows, "c", original, ["k"], max_ppl_increase=0.21, **highest)["params"]["x"] == 3
    assert studies.choose_setting(rows, "c", original, ["k"], max_ppl_increase=0.19, **highest)["params"]["x"] == 4


def test_cached_result_computes_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"value": (1, 2), "nested": {"a": 0.5}}

    first, cached = cached_result("demo", {"k": 1}, compute, cache_dir=tmp_path)
    again, cached_again = cached_result("demo", {"k": 1}, compute, cache_dir=tmp_path)
    other, cached_other = cached_result("demo", {"k": 2}, compute, cache_dir=tmp_path)
    assert (cached, cached_again, cached_other) == (False, True, False) and len(calls) == 2
    assert first == again == {"value": [1, 2], "nested": {"a": 0.5}}  # the same JSON whether computed or loaded
    cached_result("demo", {"k": 1}, compute, cache_dir=tmp_path, use_cache=False)
    assert len(calls) == 3


def test_the_woodbury_default_is_its_sweeps_pick_at_tiny(tiny_cache, monkeypatch):
    # the Woodbury structure's documented default (the benchmark's Woodbury row) is what its own sweep and
    # the oracle-free rule pick at tiny; notebook 04 asserts the same at small
    monkeypatch.setenv("TUTORIAL_CACHE_DIR", str(tiny_cache))
    result, _ = studies.run_removal_sweep(MemorizationConfig.for_profile("tiny"), 0, "cpu", progress=False, structure="woodbury")
    paper = FisherRemovalConfig.for_profile("tiny", structure="woodbury")
    assert result["base"]["structure"] == "woodbury"
    assert result["chosen"]["params"] == {"damping": paper.damping, "eta": paper.eta}


def test_removal_sweep_at_tiny(tiny_cache, monkeypatch, shown_bars):
    from tutorial_lib.core import training
    from tutorial_lib.privacy import trie
    from tutorial_lib.unlearning import api

    monkeypatch.setenv("TUTORIAL_CACHE_DIR", str(tiny_cache))
    bars = shown_bars(studies, training, trie, api)
    cfg = MemorizationConfig.for_profile("tiny")
    grid = {"eta": [1e-30, 5e-4, 1e4]}  # a step far below float32 resolution, the default, one far too large
    seen = []

    def spy(*args, **kwargs):  # the rule never receives the retrained model's evaluation
        seen.append((args, kwargs))
        return choose(*args, **kwargs)

    choose = studies.choose_setting
    monkeypatch.setattr(studies, "choose_setting", spy)
    result, cached = studies.run_removal_sweep(cfg, 0, "cpu", grid=grid, progress=False)
    (args, kwargs), = seen
    assert all(a is not result["oracle"] and a != result["oracle"] for a in (*args, *kwargs.values()))
    assert result["controls"] and set(result["controls"]) <= set(result["original"]["exposure"])
    assert set(result["oracle"]["exposure"]) == {result["target"]}
    assert bars.getvalue() == ""  # progress off: no bar at any depth (training, unlearning, exposure)
    target = result["target"]
    zero, step, huge = result["rows"]
    assert not cached and [r["params"]["eta"] for r in result["rows"]] == grid["eta"]
    # a step below float32 resolution leaves the model as it was: the original's point exactly
    assert zero["exposure"][target] == result["original"]["exposure"][target]
    assert math.isclose(zero["val_perplexity"], result["original"]["val_perplexity"], rel_tol=1e-9)
    assert step["exposure"][target] < zero["exposure"][target] - 3
    assert "max_update_norm" in huge["error"] and "exposure" not in huge
    assert result["chosen"]["params"]["eta"] == 5e-4
    assert studies.run_removal_sweep(cfg, 0, "cpu", grid=grid, progress=False) == (result, True)
    refs, refs_cached = studies.reference_points(cfg, 0, "cpu", use_cache=False, progress=False)  # other tests may have cached it
    assert not refs_cached and refs["original"]["exposure"][target] == result["original"]["exposure"][target]  # |R| = 10^4 at tiny: the same
    assert refs["watch"][0] == target and set(refs["oracle"]["exposure"]) == set(refs["watch"])
    setup = studies.unlearning_setup(cfg, 0, "cpu", progress=False)
    assert bars.getvalue() == ""
    again = studies.sweep_unlearning(setup, "fisher_removal", FisherRemovalConfig.for_profile("tiny"), {"eta": [5e-4]})
    assert again[0]["exposure"] == step["exposure"] and again[0]["val_perplexity"] == step["val_perplexity"]  # bars change nothing
    for bar in ("fisher_removal sweep: 100%", "fisher_removal: 100%", f"exposure of {target}: 100%"):
        assert bar in bars.getvalue()
    with pytest.raises(ValueError, match="has no field 'lr'"):
        studies.sweep_unlearning(setup, "fisher_removal", FisherRemovalConfig(), {"lr": [1.0]})
    with pytest.raises(ValueError, match="unknown canary 'zed'"):
        studies.unlearning_setup(cfg, 0, "cpu", target="zed", progress=False)
