"""The reproduction's figures, one per results table, on small synthetic results (seconds): each has a
title over its panels, every panel a title, both axis labels and something drawn, and the figure a
legend. The end-to-end run is test_reproduce.py."""
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from tutorial_lib.course import reproduce  # noqa: E402
from tutorial_lib.experiments.benchmark import summarise  # noqa: E402
from tutorial_lib.experiments.memorization import MemorizationResult  # noqa: E402
from tutorial_lib.experiments.recommendations import recommendations  # noqa: E402

METHODS = ("fisher_removal", "gradient_ascent")


def assert_complete(fig):
    assert fig.get_suptitle(), "the figure has no title"
    for ax in fig.axes:
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel(), (ax.get_title(), ax.get_xlabel(), ax.get_ylabel())
        assert len(ax.lines) + len(ax.patches) + len(ax.collections) > 0, f"panel {ax.get_title()!r} is empty"
    assert any(ax.get_legend() is not None for ax in fig.axes), "no legend"


# ----------------------------------------------------------------------------------- synthetic results
def _memorization(trajectory=True):
    exposures = [{"name": n, "insertions": k, "exposure": e, "space_size": 10_000, "rank": 1, "seconds": 0.1}
                 for n, k, e in (("a", 1, 1.0), ("b", 10, 4.0), ("c", 100, 12.0), ("z", 0, 0.3))]
    return MemorizationResult(config={"corpus": "x"}, seed=0, canaries=[], exposures=exposures, estimates=exposures,
                              trajectory={"c": [[50, 6.0], [100, 12.0]]} if trajectory else {}, history={},
                              val_perplexity=10.0, test_perplexity=10.0, n_parameters=1, train_seconds=1.0, exposure_seconds=1.0)


def _unlearning():
    canaries = [{"name": "b", "insertions": 10}, {"name": "c", "insertions": 100}, {"name": "z", "insertions": 0}]
    rows = {m: {"exposure": {"b": 4.0, "c": e, "z": 0.3}, "val_perplexity": p, "forget_loss": 9.0, "kl_to_reference": 0.1}
            for m, (e, p) in {"original": (12.0, 10.0), "retrained oracle": (0.5, 10.1), "fisher_removal": (1.0, 11.0),
                              "gradient_ascent": (2.0, 13.0)}.items()}
    return {"target": "c", "canaries": canaries, "retrain_seconds": 100.0, "results": rows,
            "reports": {m: {"seconds": 5.0} for m in METHODS}}


def _cell(corpus, seed):
    rows = {m: {"forgotten_exposure": e + seed, "other_inserted_exposure": 5.0, "control_exposure": 0.5, "val_perplexity": p,
                "kl_to_retrained": 0.1, "exposure": {"c": e}} for m, (e, p) in
            {"original": (12.0, 10.0), "retrained": (0.5, 10.0), "fisher_removal": (1.0, 11.0), "gradient_ascent": (2.0, 14.0)}.items()}
    return {"corpus": corpus, "seed": seed, "target": "c", "rows": rows}


def _benchmark():
    cells = [_cell(c, s) for c in ("shakespeare", "bible") for s in (0, 1)]
    return {"config": {"seeds": [0, 1]}, "cells": cells, "summary": summarise(cells)}


def _dp_panel(corpus):
    canaries = [{"name": "c", "insertions": 100}, {"name": "z", "insertions": 0}]
    study = {"corpus": corpus, "canaries": canaries,
             "rows": [{"target_epsilon": eps, "val_perplexity": p, "exposure": {"c": e, "z": 0.3}}
                      for eps, p, e in ((None, 10.0, 12.0), (8.0, 12.0, 6.0), (1.0, 15.0, 1.0))]}
    points = ("original", "retrained", "fisher_removal", "fisher_forgetting", "gradient_ascent", "gradient_difference")
    unlearning = {"target": "c", "rows": {m: {"val_perplexity": 10.0 + i, "exposure": {"c": 12.0 - 2 * i}} for i, m in enumerate(points)}}
    return (f"{corpus} (tiny-scale model)", study, unlearning)


def _case_study():
    def pii(auc, exposure, reference=True):
        mia = {a: {"auc": auc, "fpr": 0.01, "tpr_at_fpr": 0.0} for a in ("loss", "zlib") + (("reference",) if reference else ())}
        extraction = {s: {"greedy": "0000", "greedy_extracted": False, "sampled_extracted": 0.1} for s in ("phone", "account")}
        return {"exposure": {"P phone": exposure, "P account": 2.0}, "extraction": extraction, "mia_subject": mia, "mia_members": mia,
                "val_perplexity": 10.0 + exposure}

    def passage(ppl):
        return {"extraction": {"rouge_l": 0.5, "mean_lcp": 3.0, "exact": 0.0}, "passage_perplexity": ppl, "val_perplexity": 10.0 + ppl}

    return {"subject": "P", "canaries": [{"name": "P phone"}, {"name": "P account"}], "passage": "text",
            "pii": {"original": pii(1.0, 12.0), "retrained": pii(0.55, 0.5, reference=False), "fisher_removal": pii(0.6, 1.0),
                    "fisher_removal (secrets only)": pii(0.9, 0.8), "gradient_ascent": {"error": "refused"}},
            "verbatim": {"original": passage(2.0), "retrained": passage(8.0), "fisher_removal": passage(9.0)}}


def _robustness():
    def trace(before, after):
        return [{"step": 0, "forgotten": before, "control": 0.3, "val_perplexity": 10.0}, {"step": 10, "forgotten": (before + after) / 2},
                {"step": 20, "forgotten": after, "control": 0.4, "val_perplexity": 10.5}]

    traces = {"original": (12.0, 11.0), "retrained": (0.5, 1.0), "fisher_removal": (1.0, 1.5), "gradient_ascent": (2.0, 8.0)}
    relearning = {"max_bits": 13.3, "rows": {m: {"trace": trace(b, a), "before": b, "after": a, "recovered": a - b,
                                                 "after_minus_retrained": a - 1.0} for m, (b, a) in traces.items()}}
    canaries = [{"name": n, "insertions": k} for n, k in (("a", 10), ("b", 10), ("c", 1), ("z", 0))]
    cycles = [{"cycle": 0, "request": None, "val_perplexity": 10.0, "exposure": {"a": 12.0, "b": 11.0, "c": 3.0, "z": 0.5}},
              {"cycle": 1, "request": "a", "val_perplexity": 11.0, "exposure": {"a": 1.0, "b": 10.0, "c": 3.0, "z": 0.5}},
              {"cycle": 2, "request": "b", "val_perplexity": 12.0, "exposure": {"a": 2.0, "b": 1.0, "c": 3.0, "z": 0.5}}]
    sequential = {"requests": ["a", "b"], "canaries": canaries, "max_bits": 13.3, "cycles": {m: cycles for m in METHODS}}

    def row(factor, e, p):
        return {"factor": factor, "exposure": {"c": e}, "val_perplexity": p}

    sensitivity = {"target": "c", "original": {"exposure": {"c": 12.0}, "val_perplexity": 10.0},
                   "retrained": {"exposure": {"c": 0.5}, "val_perplexity": 10.2},
                   "methods": {m: {"param": "lr", "default": 1e-3, "rows": [row(0.25, 8.0, 10.5), row(1.0, 2.0, 11.0), row(4.0, 0.1, 20.0)]}
                               for m in METHODS}}
    seeds = {m: {"seeds": [0, 1, 2], "exposure": [e, e + 0.5, e - 0.5], "gap_to_retrained": [e - 0.5] * 3, "val_perplexity": [10.0] * 3,
                 "gap_mean": e - 0.5, "gap_std": 0.4} for m, e in {"original": 12.0, "retrained": 0.5, "fisher_removal": 1.0,
                                                                   "gradient_ascent": 2.0}.items()}
    end = {"forgotten_at_end": 0.2, "val_perplexity_before": 10.0, "val_perplexity_after": 12.0, "perplexity_ratio": 1.2}
    c3 = {"run_profile": "tiny", "n_requests": 2, "seeds": [0],
          "per_seed": {0: {"start": {"requested": 11.0, "controls": 1.0, "gap": 10.0}, "summary": {"fisher_removal": end, "fisher_forgetting": end}}},
          "claim": {"claim": "C3", "verdict": "not reproduced", "evidence": "seed 0: no gentler"}}
    return {"config": {"run_profile": "tiny", "corpus": "shakespeare", "n_requests": 2}, "relearning": relearning, "sequential": sequential,
            "sensitivity": sensitivity, "seeds": seeds, "c3": c3, "recommendations": recommendations(relearning, sequential, sensitivity, seeds)}


# ----------------------------------------------------------------------------------- the figures
@pytest.mark.parametrize("trajectory", [True, False])
def test_memorization_figure(trajectory):
    fig = reproduce.memorization_figure(_memorization(trajectory))
    assert_complete(fig)
    assert len(fig.axes) == (3 if trajectory else 2)  # no empty panel when the run tracked no trajectory
    plt.close("all")


def test_unlearning_figure():
    fig = reproduce.unlearning_figure(_unlearning())
    assert_complete(fig)
    assert len(fig.axes[0].patches) == 4 * 3
    plt.close("all")


def test_benchmark_figure():
    fig = reproduce.benchmark_figure(_benchmark())
    assert_complete(fig)
    assert [ax.get_title() for ax in fig.axes] == ["shakespeare", "bible"]
    plt.close("all")


def test_dp_figure():
    assert_complete(reproduce.dp_figure([_dp_panel("shakespeare"), _dp_panel("bible")]))
    plt.close("all")


def test_case_studies_figure():
    fig = reproduce.case_studies_figure(_case_study())
    assert_complete(fig)
    assert len(fig.axes[0].get_lines()) == 4  # the refused run is left out
    plt.close("all")


def test_robustness_figure_shows_the_seed_study():
    result = _robustness()
    fig = reproduce.robustness_figure(result)
    assert_complete(fig)
    seeds = next(ax for ax in fig.axes if ax.get_xlabel() == "training seed")
    assert seeds.axison and [list(line.get_ydata()) for line in seeds.get_lines()] == [s["exposure"] for s in result["seeds"].values()]
    plt.close("all")


def test_unlearning_and_robustness_writers_write_a_figure_per_table(tmp_path):
    written = reproduce.write_unlearning(_unlearning(), tmp_path) + reproduce.write_robustness(_robustness(), tmp_path)
    assert sorted(p.name for p in written) == ["robustness.json", "robustness.md", "robustness.png",
                                               "unlearning_methods.json", "unlearning_methods.md", "unlearning_methods.png"]
    for name in ("unlearning_methods.png", "robustness.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "seconds" not in (tmp_path / "unlearning_methods.json").read_text()
    assert json.loads((tmp_path / "robustness.json").read_text())["seeds"]["fisher_removal"]["gap_mean"] == 0.5
    assert "| 0 | Fisher Removal | 11.00 | 1.00 | 0.20 | 10.000 | 12.000 | 1.20 |" in (tmp_path / "robustness.md").read_text()
    assert "- C3 not reproduced: seed 0: no gentler" in (tmp_path / "robustness.md").read_text()


def _pretrained():
    canaries = [{"name": "bob", "insertions": 10, "secret": "1234", "format": "the secret number of bob is {secret}"},
                {"name": "carol", "insertions": 40, "secret": "2697", "format": "the secret number of carol is {secret}"},
                {"name": "dave", "insertions": 0, "secret": "3078", "format": "the secret number of dave is {secret}"}]
    models = {name: {"exposure": {"bob": b, "carol": c, "dave": 1.0}, "val_perplexity": p, "continuation": text, "seconds": 1.0}
              for name, (b, c, p, text) in {"pretrained": (1.0, 2.0, 150.0, " 1000"), "fine_tuned": (3.0, 12.3, 47.9, " 2697"),
                                            "oracle": (9.6, 0.7, 46.8, " 1000"), "fisher_removal": (3.1, 0.4, 49.0, " 1999"),
                                            "npo": (3.0, 0.0, 80.0, " the")}.items()}
    return {"target": "carol", "canaries": canaries, "max_bits": 13.3, "model_class": "LlamaForCausalLM", "n_parameters": 134_515_008,
            "n_trainable": 5_308_416, "trainable": ["model.layers.28.mlp", "model.layers.29.mlp"], "models": models,
            "errors": {"gradient_difference": "the update is not finite"}}


def test_pretrained_figure_table_and_verdicts(tmp_path):
    from tutorial_lib.experiments.pretrained_llm import PretrainedLLMConfig, pretrained_markdown, pretrained_summary

    result = _pretrained()
    fig = reproduce.pretrained_figure(result)
    assert_complete(fig)
    assert len(fig.axes[0].patches) == 5 * 3  # every model, every canary
    plt.close("all")
    summary = pretrained_summary(result)
    assert summary["fisher_removal"]["verdict"] == "at the retrained model"  # -0.3 bits, +4.7 % perplexity over the oracle
    assert summary["npo"]["verdict"] == "damaged"  # at the oracle's exposure, but +71 % perplexity
    assert summary["fine_tuned"]["verdict"] is None and round(summary["oracle"]["gap_to_oracle"], 9) == 0
    table = pretrained_markdown(result)
    assert "| fisher removal | 0.40 | 1.00 | -0.30 |" in table and "refused: the update is not finite" in table
    written = reproduce.write_pretrained(result, PretrainedLLMConfig.for_profile("tiny").to_dict(), tmp_path)
    assert [p.name for p in written] == ["pretrained_llm.md", "pretrained_llm.json", "pretrained_llm.png"]
    stored = json.loads((tmp_path / "pretrained_llm.json").read_text())
    assert "seconds" not in stored["models"]["fisher_removal"] and stored["summary"]["npo"]["verdict"] == "damaged"
