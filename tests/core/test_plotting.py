import inspect

import matplotlib

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
