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
