import inspect

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import tutorial_lib as tl  # noqa: E402


def test_every_plot_draws_on_the_given_axes(tiny_run):
    _, _, result = tiny_run
    fig, axes = plt.subplots(1, 4)
    assert tl.plot_exposure_vs_insertions(result, ax=axes[0]) is axes[0]
    assert tl.plot_exposure_trajectory(result, ax=axes[1]) is axes[1]
    assert tl.plot_exact_vs_estimate(result, ax=axes[2]) is axes[2]
    assert tl.plot_training_curve(result.history, ax=axes[3]) is axes[3]
    assert len(axes[1].get_lines()) >= len(result.trajectory)
    assert {t.get_text().split()[0] for t in axes[1].texts} == set(result.trajectory)
    plt.close(fig)


def test_candidate_distribution_marks_the_secret():
    rng = np.random.default_rng(0)
    scores = rng.normal(40, 2, size=1000)
    ax = tl.plot_candidate_distribution(scores, 7)
    marked = [line.get_xdata()[0] for line in ax.get_lines()]
    assert scores[7] in marked
    plt.close(ax.figure)


def test_tradeoff_plot_has_one_line_per_group_and_the_reference_points():
    def row(d, e, x, y):
        return {"params": {"damping": d, "eta": e}, "exposure": {"c": y}, "val_perplexity": x}

    rows = [row(1e-3, 1.0, 5.0, 9.0), row(1e-3, 2.0, 5.5, 2.0), row(1e-2, 1.0, 5.1, 12.0), {"params": {"damping": 1e-2, "eta": 2.0}, "error": "x"}]
    sweep = {"method": "fisher_removal", "target": "c", "candidates": 1000, "rows": rows, "chosen": rows[1],
             "original": {"val_perplexity": 4.9, "exposure": {"c": 15.0}}, "oracle": {"val_perplexity": 4.95, "exposure": {"c": 0.5}}}
    ax = tl.plot_tradeoff(sweep, group="damping")
    labels = [line.get_label() for line in ax.get_lines()]
    assert "fisher removal, damping 0.001" in labels and "fisher removal, damping 0.01" in labels
    oracle = ax.get_lines()[labels.index("retrained oracle")]
    assert (oracle.get_xdata()[0], oracle.get_ydata()[0]) == (4.95, 0.5)
    chosen = ax.get_lines()[labels.index("chosen setting")]
    assert (chosen.get_xdata()[0], chosen.get_ydata()[0]) == (5.5, 2.0)
    assert ax.get_lines()[labels.index("+20% perplexity")].get_xdata()[0] == 4.9 * 1.2
    plt.close(ax.figure)
    assert inspect.signature(tl.plot_tradeoff).parameters["max_ppl_increase"].default is tl.BANDS.perplexity_increase
    ax = tl.plot_tradeoff(sweep, max_ppl_increase=0.5)
    assert "+50% perplexity" in [line.get_label() for line in ax.get_lines()]
    plt.close(ax.figure)


# ----------------------------------------------------------------------------------- figures of several models, widget views
def _complete(ax, legend: bool = True):
    """A readable panel: a title, both axis labels, something drawn and (by default) a legend with entries."""
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel(), (ax.get_title(), ax.get_xlabel(), ax.get_ylabel())
    assert len(ax.lines) + len(ax.patches) + len(ax.collections) > 0
    if legend:
        assert ax.get_legend() is not None and [t.get_text() for t in ax.get_legend().get_texts()]


def _heights(ax):
    return [p.get_height() for p in ax.patches]


def _unlearning_methods():
    canaries = [{"name": "a", "insertions": 1}, {"name": "c", "insertions": 100}, {"name": "z", "insertions": 0}]
    def row(e, p):
        return {"exposure": {"a": 1.0, "c": e, "z": 0.5}, "val_perplexity": p}

    return {"target": "c", "canaries": canaries,
            "results": {"original": row(12.0, 10.0), "retrained oracle": row(0.4, 10.2), "fisher_removal": row(1.0, 11.0), "npo": row(3.0, 14.0)}}


def test_unlearning_methods_figure_shows_every_canary_of_every_model():
    data = _unlearning_methods()
    axes = tl.plot_unlearning_methods(data, colours={"fisher_removal": "C0"})
    for ax in axes:
        _complete(ax)
    assert len(axes[0].patches) == 4 * 3  # models x watched canaries
    assert max(_heights(axes[0])) == 12.0 and "c (100x, forgotten)" in [t.get_text() for t in axes[0].get_legend().get_texts()]
    points = {line.get_label(): (line.get_xdata()[0], line.get_ydata()[0]) for line in axes[1].get_lines()}
    assert points["fisher removal"] == (11.0, 1.0) and points["retrained oracle"] == (10.2, 0.4)
    assert points["+20% perplexity"][0] == 12.0
    assert [line.get_color() for line in axes[1].get_lines()][:3] == ["black", "green", "C0"]
    plt.close("all")


def test_seed_variation_draws_one_line_per_model_over_the_seeds():
    seeds = {m: {"seeds": [0, 3], "exposure": e, "gap_to_retrained": [e[0] - 0.5, e[1] - 1.0], "val_perplexity": [10.0, 10.0],
                 "gap_mean": (e[0] + e[1] - 1.5) / 2, "gap_std": 0.25} for m, e in
             {"original": [12.0, 11.0], "retrained": [0.5, 1.0], "fisher_removal": [1.0, 2.5]}.items()}
    ax = tl.plot_seed_variation(seeds)
    _complete(ax)
    assert [list(line.get_ydata()) for line in ax.get_lines()] == [[12.0, 11.0], [0.5, 1.0], [1.0, 2.5]]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "3"]
    assert "fisher removal (gap +1.00 ± 0.25)" in [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close("all")


def _sweep():
    def row(lr, steps, e, p):
        return {"params": {"lr": lr, "steps": steps}, "exposure": {"c": e}, "val_perplexity": p}

    rows = [row(1e-4, 10, 8.0, 10.5), row(1e-4, 30, 4.0, 11.0), row(1e-3, 10, 1.0, 14.0), {"params": {"lr": 1e-3, "steps": 30}, "error": "norm"}]
    return {"method": "gradient_ascent", "target": "c", "candidates": 10_000, "grid": {"lr": [1e-4, 1e-3, 3e-3], "steps": [10, 30]},
            "rows": rows, "chosen": rows[1], "original": {"val_perplexity": 10.0, "exposure": {"c": 12.0}},
            "oracle": {"val_perplexity": 10.1, "exposure": {"c": 0.5}}}


def test_sweep_point_selects_a_cached_point_and_the_widget_rings_it():
    sweep = _sweep()
    assert tl.sweep_point(sweep, lr=1e-3, steps=10)["exposure"]["c"] == 1.0
    assert "error" in tl.sweep_point(sweep, lr=1e-3, steps=30)
    assert tl.sweep_point(sweep, lr=3e-3, steps=10) is None  # in the grid, never reached
    with pytest.raises(ValueError, match="not a point"):
        tl.sweep_point(sweep, lr=2e-3, steps=10)
    with pytest.raises(ValueError, match="not a point"):
        tl.sweep_point(sweep, momentum=0.9)
    ax = tl.plot_sweep_point(sweep, lr=1e-4, steps=30)
    _complete(ax)
    assert ax.get_title() == "gradient ascent, lr 0.0001, steps 30: exposure 4.00 bits, val ppl 11.00"
    ring = next(line for line in ax.get_lines() if line.get_label() == "selected point")
    assert (ring.get_xdata()[0], ring.get_ydata()[0]) == (11.0, 4.0) and ax.get_xscale() == "log"
    assert "refused" in tl.plot_sweep_point(sweep, lr=1e-3, steps=30).get_title()
    plt.close("all")


def _benchmark():
    def stats(forgotten, ppl, std=0.0):
        return {"forgotten_exposure": {"mean": forgotten, "std": std}, "other_inserted_exposure": {"mean": 5.0, "std": 0.0},
                "control_exposure": {"mean": 0.5, "std": 0.0}, "val_perplexity": {"mean": ppl, "std": std}}

    models = {"original": stats(12.0, 10.0), "retrained": stats(0.4, 10.0), "fisher_removal": stats(1.0, 11.0, 0.5), "npo": stats(3.0, 13.0)}
    return {"summary": {"bible": {"seeds": [0, 1], "models": models, "c2": None}}}


def test_benchmark_selection_keeps_the_references_and_the_chosen_methods():
    result = _benchmark()
    assert list(tl.benchmark_selection(result, "bible", ("npo",))) == ["original", "retrained", "npo"]
    assert list(tl.benchmark_selection(result, "bible", "fisher_removal")) == ["original", "retrained", "fisher_removal"]
    with pytest.raises(ValueError, match="no corpus"):
        tl.benchmark_selection(result, "jargon", "npo")
    with pytest.raises(ValueError, match="no method"):
        tl.benchmark_selection(result, "bible", ["npo", "sgd"])
    axes = tl.plot_benchmark_selection(result, "bible", ["fisher_removal", "npo"])
    for ax in axes:
        _complete(ax)
    assert len(axes[0].patches) == 4 * 3 and _heights(axes[0])[:4] == [12.0, 0.4, 1.0, 3.0]  # forgotten canary, per model
    assert "over 2 seeds" in axes[0].get_title()
    assert [t.get_text() for t in axes[1].get_xticklabels()] == ["original", "retrained", "fisher removal", "npo"]
    plt.close("all")


def _case_study():
    def pii(auc, share, reference=True):
        mia = {a: {"auc": auc, "fpr": 0.01, "tpr_at_fpr": 0.0} for a in ("loss", "zlib") + (("reference",) if reference else ())}
        extraction = {s: {"greedy": "0000", "greedy_extracted": False, "sampled_extracted": share} for s in ("phone", "account")}
        return {"exposure": {"P phone": 8.0 * share, "P account": 2.0}, "extraction": extraction, "mia_subject": mia, "mia_members": mia,
                "val_perplexity": 10.0 + auc}

    def passage(rouge):
        return {"extraction": {"rouge_l": rouge, "mean_lcp": 3.0, "exact": 0.0}, "passage_perplexity": 2.0 / rouge, "val_perplexity": 10.0}

    return {"subject": "P", "canaries": [{"name": "P phone"}, {"name": "P account"}], "passage": "text",
            "pii": {"original": pii(1.0, 0.5), "retrained": pii(0.55, 0.0, reference=False), "fisher_removal": pii(0.6, 0.1),
                    "npo": {"error": "refused"}},
            "verbatim": {"original": passage(0.8), "retrained": passage(0.2), "fisher_removal": passage(0.25), "npo": {"error": "refused"}}}


def test_case_study_attacks_read_every_attack_and_skip_refused_runs():
    views = tl.case_study_attacks(_case_study())
    assert list(views) == ["membership inference: loss", "membership inference: zlib", "membership inference: reference",
                           "extraction: phone number", "extraction: account number", "extraction: passage"]
    loss = views["membership inference: loss"]
    assert loss["values"] == {"original": 1.0, "retrained": 0.55, "fisher_removal": 0.6} and (loss["reference"], loss["chance"]) == (0.55, 0.5)
    assert views["membership inference: reference"]["reference"] is None  # not run on the retrained model itself
    assert views["extraction: passage"]["values"] == {"original": 0.8, "retrained": 0.2, "fisher_removal": 0.25}
    ax = tl.plot_case_study_attack(_case_study(), "extraction: phone number")
    _complete(ax)
    assert [p.get_width() for p in ax.patches] == [0.5, 0.0, 0.1]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["original", "retrained", "fisher removal"]
    _complete(tl.plot_case_study_attack(_case_study(), "membership inference: reference"))  # the chance line alone
    with pytest.raises(ValueError, match="no attack"):
        tl.plot_case_study_attack(_case_study(), "membership inference: neighbourhood")
    plt.close("all")


def test_relearning_by_step_and_the_bars_at_one_checkpoint():
    def trace(*values):
        return {"trace": [{"step": s, "forgotten": v} for s, v in zip((0, 20, 10), values)]}

    study = {"max_bits": 13.3, "rows": {"original": trace(12.0, 11.0, 11.5), "retrained": trace(0.2, 0.6, 0.4),
                                        "fisher_removal": trace(1.0, 5.0, 3.0)}}
    by_step = tl.relearning_by_step(study)
    assert list(by_step) == [0, 10, 20] and by_step[10] == {"original": 11.5, "retrained": 0.4, "fisher_removal": 3.0}
    ax = tl.plot_relearning_at(study, 20)
    _complete(ax)
    assert _heights(ax) == [11.0, 0.6, 5.0] and ax.get_title() == "Relearning attack: after 20 steps"
    retrained = next(line for line in ax.get_lines() if line.get_label().startswith("retrained"))
    assert retrained.get_ydata()[0] == 0.6
    with pytest.raises(ValueError, match="no checkpoint at step 5"):
        tl.plot_relearning_at(study, 5)
    plt.close("all")


def test_the_trajectory_labels_every_canary_in_a_legend():
    exposures = [{"name": n, "insertions": k, "exposure": e, "space_size": 10_000, "rank": 1, "seconds": 0.1}
                 for n, k, e in (("a", 1, 1.0), ("c", 100, 12.0), ("z", 0, 0.3))]
    result = tl.MemorizationResult(config={"corpus": "x"}, seed=0, canaries=[], exposures=exposures, estimates=exposures,
                                   trajectory={"a": [[50, 0.5], [100, 1.0]], "c": [[50, 6.0], [100, 12.0]]}, history={},
                                   val_perplexity=10.0, test_perplexity=10.0, n_parameters=1, train_seconds=1.0, exposure_seconds=1.0)
    ax = tl.plot_exposure_trajectory(result)  # notebook 03 and the reproduction give it its title
    assert ax.get_xlabel() and ax.get_ylabel() and len(ax.get_lines()) == 3
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a (1x)", "c (100x)", "maximum, log2|R| = 13.3"]
    plt.close("all")
