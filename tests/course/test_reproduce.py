"""The reproduction command end to end at the tiny profile (minutes: marked slow)."""
import json

import pytest

from tutorial_lib.course.reproduce import main

pytestmark = pytest.mark.slow


def test_reproduction_writes_tables_and_figure(tmp_path, monkeypatch, tiny_cache):
    monkeypatch.setenv("TUTORIAL_CACHE_DIR", str(tiny_cache))
    out = tmp_path / "results"
    assert main(["--profile", "tiny", "--out", str(out), "--device", "cpu"]) == 0
    table = (out / "memorization_exposure.md").read_text()
    assert "| canary | inserted |" in table and "100x" in table
    data = json.loads((out / "memorization_exposure.json").read_text())
    assert data["config"]["profile"] == "tiny" and "torch" in data["versions"]
    assert len(data["exposures"]) == len(data["canaries"])
    removal = (out / "unlearning_methods.md").read_text()
    assert "| retrained oracle |" in removal and "| fisher_removal |" in removal and "| npo |" in removal
    data = json.loads((out / "unlearning_methods.json").read_text())
    assert set(data["reports"]) == {"fisher_removal", "fisher_forgetting", "gradient_ascent", "gradient_difference", "npo", "fine_tune"}
    assert data["verdicts"]["retrained oracle"]["verdict"] == "at the retrained model" and data["verdicts"]["original"]["verdict"] == "under-forgotten"
    assert [c["claim"] for c in data["claims"]] == ["C1", "C5", "C5"] and data["claims"][1]["verdict"] == "inconclusive"  # tiny: seconds
    assert "evidence" not in data["claims"][1] and "removal_sweep_seconds" not in data  # wall times stay out of the JSON
    assert "(with the sweep that chose the default)" in removal
    assert "- C1 " in removal and "forget loss: the secret given the canary's prefix" in removal
    forgotten = {m: r["exposure"][data["target"]] for m, r in data["results"].items()}
    assert forgotten["fisher_removal"] < forgotten["original"] - 3 and forgotten["gradient_ascent"] < forgotten["original"]
    bench = (out / "benchmark.md").read_text()
    assert "## shakespeare" in bench and "## bible" in bench and "C2 (seed 0)" in bench
    data = json.loads((out / "benchmark.json").read_text())
    claims = data["claims"]["corpora"]["shakespeare"]
    assert {claims[c]["verdict"] for c in ("c1", "c2", "c5")} <= {"reproduced", "not reproduced", "inconclusive"}
    assert claims["c1"]["forget_loss"] == "secret" and claims["c1"]["band"]["exposure_bits"] == 3.0
    row = data["summary"]["shakespeare"]["models"]["fisher_removal"]
    assert {"forget_quality", "privleak", "membership_auc", "kl_to_retrained", "retain_perplexity", "val_perplexity"} <= set(row)
    assert "## Claims" in bench
    assert len(data["cells"]) == 2 and set(data["summary"]) == {"shakespeare", "bible"} and "torch" in data["versions"]
    assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dp = (out / "dp_sgd.md").read_text()
    assert "shakespeare (tiny-scale model)" in dp and "| non-private | ∞ |" in dp and "| sigma = 0 (same pipeline) | ∞ | 0.00 |" in dp and "| eps = 1 |" in dp
    data = json.loads((out / "dp_sgd.json").read_text())
    rows = data["curves"]["shakespeare"]["rows"]
    assert [r["target_epsilon"] for r in rows] == [None, None, 8.0, 3.0, 1.0] and data["own_scale"] is None
    assert [r["matched"] for r in rows] == [False, True, False, False, False] and rows[1]["noise_multiplier"] == 0.0
    assert all(r["epsilon"] <= r["target_epsilon"] for r in rows[2:])
    assert set(data["unlearning"]["shakespeare"]["rows"]) >= {"original", "retrained", "fisher_removal"}
    assert (out / "dp_sgd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cases = (out / "case_studies.md").read_text()
    assert "### Personal data" in cases and "### Verbatim text" in cases and "| retrained |" in cases
    data = json.loads((out / "case_studies.json").read_text())
    assert {"original", "retrained", "fisher_removal", "fisher_removal (secrets only)"} <= set(data["pii"])
    phone, pii = data["canaries"][0]["name"], data["pii"]  # the scenario's premise: the subject is memorised, and retraining removes it
    assert pii["original"]["exposure"][phone] >= 0.5 * 4 * 3.3219 and max(a["auc"] for a in pii["original"]["mia_subject"].values()) >= 0.75
    assert pii["retrained"]["exposure"][phone] <= pii["original"]["exposure"][phone] - 3
    assert (out / "case_studies.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    robust = (out / "robustness.md").read_text()
    assert "## Relearning attack" in robust and "| retrained |" in robust and "## Recommendations" in robust
    data = json.loads((out / "robustness.json").read_text())
    assert set(data["relearning"]["rows"]) == {"original", "retrained", "fisher_removal", "gradient_ascent"}
    assert len(data["sequential"]["requests"]) == 2 and [r["method"] for r in data["recommendations"]] == ["fisher_removal", "gradient_ascent"]
    for written in out.glob("*.json"):  # no wall time (nor a ratio of two) in any JSON: they differ between runs
        text = written.read_text()
        assert '"seconds"' not in text and '_seconds"' not in text and "fraction_of_retraining" not in text, written.name
    assert (out / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = {name: (out / name).read_bytes() for name in ("memorization_exposure.json", "benchmark.json", "unlearning_methods.json",
                                                          "dp_sgd.json", "case_studies.json", "robustness.json", "pretrained_llm.json")}
    assert main(["--profile", "tiny", "--out", str(out), "--device", "cpu"]) == 0  # again, same seed: the same numbers
    assert {name: (out / name).read_bytes() for name in first} == first
    png = (out / "memorization_exposure.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    tables = sorted(p.stem for p in out.glob("*.md"))  # every results table has its figure
    assert len(tables) == 7 and all((out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in tables), tables


def test_warm_cache_trains_once_then_finds_every_model(tmp_path, monkeypatch):
    from tutorial_lib.course.warm_cache import warm

    monkeypatch.setenv("TUTORIAL_CACHE_DIR", str(tmp_path / "cache"))
    first = warm("tiny", seed=0, device="cpu", studies=False)  # the studies are tested in test_studies.py
    assert [r["cached"] for r in first] == [False, False, False]
    assert [r["cached"] for r in warm("tiny", seed=0, device="cpu", studies=False)] == [True, True, True]
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 3  # and the .locks folder
