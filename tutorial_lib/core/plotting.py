"""Figures. Every ``plot_*`` draws on a given Axes (or a new one) and returns it; nothing is saved or
shown here. Used by notebooks 03 onwards and by the reproduction command."""
from __future__ import annotations

import numpy as np

from .profiles import BANDS


def use_style() -> None:
    """The course's one plot style (seaborn "whitegrid"). Call it once, in the setup cell."""
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", palette="colorblind")


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(5, 3.5))
    return ax


def _label(k: int) -> str:
    return "control" if k == 0 else f"{k}x"


def _colour(k: int, counts) -> str:
    """One colour per insertion count, the same in every figure; controls grey."""
    inserted = sorted(c for c in set(counts) if c)
    return "grey" if k == 0 else f"C{inserted.index(k) % 10}"


def plot_exposure_vs_insertions(result, ax=None):
    """Exact exposure of each canary against how often it was inserted; controls at the left.
    Notebook 03, "Exposure against insertions"."""
    ax = _axes(ax)
    counts = sorted({e["insertions"] for e in result.exposures})
    for x, k in enumerate(counts):
        ys = result.exposure_of(k)
        ax.scatter(np.full(len(ys), x) + np.linspace(-0.08, 0.08, len(ys)), ys, s=40, zorder=3, color=_colour(k, counts))
    ax.axhline(result.max_bits, color="grey", ls="--", lw=1, label=f"maximum, log2|R| = {result.max_bits:.1f}")
    ax.set_xticks(range(len(counts)), [_label(k) for k in counts])
    ax.set_xlabel("insertions in the training data")
    ax.set_ylabel("exposure (bits)")
    ax.set_ylim(-0.5, result.max_bits + 1.5)
    ax.legend(loc="upper left", fontsize="small")
    return ax


def plot_exposure_trajectory(result, ax=None):
    """Exposure of one canary per insertion count at each validation step of training.
    Notebook 03, "Exposure over training"."""
    ax = _axes(ax)
    inserted = {e["name"]: e["insertions"] for e in result.exposures}
    for name, points in result.trajectory.items():
        steps, values = zip(*points)
        k = inserted[name]
        ax.plot(steps, values, marker="o", color=_colour(k, inserted.values()))
        ax.annotate(f"{name} ({_label(k)})", (steps[-1], values[-1]), xytext=(-4, 6), textcoords="offset points",
                    ha="right", fontsize="small", color=_colour(k, inserted.values()))
    ax.axhline(result.max_bits, color="grey", ls="--", lw=1)
    ax.set_ylim(-0.5, result.max_bits + 1.5)
    ax.set_xlabel("training step")
    ax.set_ylabel("exposure (bits)")
    return ax


def plot_exact_vs_estimate(result, ax=None):
    """Skew-normal estimate against exact exposure, one point per canary, with the diagonal.
    Notebook 03, "Estimating exposure"."""
    ax = _axes(ax)
    rows = result.rows()
    exact = [r["exposure"] for r in rows]
    est = [r["estimate"] for r in rows]
    top = max(max(exact), max(est), result.max_bits) + 1
    ax.plot([0, top], [0, top], color="grey", ls="--", lw=1, label="estimate = exact")
    ax.scatter(exact, est, s=40, zorder=3)
    for r in rows:
        ax.annotate(r["name"], (r["exposure"], r["estimate"]), fontsize="x-small", xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("exact exposure (bits)")
    ax.set_ylabel("skew-normal estimate (bits)")
    ax.legend(fontsize="small")
    return ax


def plot_training_curve(history: dict, ax=None, smooth: int = 25):
    """Training loss (moving average over ``smooth`` steps) and validation loss, in nats."""
    ax = _axes(ax)
    train = np.asarray(history["train_loss"])
    window = max(1, min(smooth, len(train)))
    avg = np.convolve(train, np.ones(window) / window, mode="valid")
    ax.plot(np.arange(window, len(train) + 1), avg, label="train (moving average)")
    ax.plot(history["val_steps"], history["val_loss"], marker="o", label="validation")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (nats / token)")
    ax.legend(fontsize="small")
    return ax


def plot_candidate_distribution(scores_bits, secret_index: int, estimate=None, ax=None, bins: int = 120):
    """Histogram of every candidate's log-perplexity, the true secret marked, and (given an
    :class:`~tutorial_lib.privacy.exposure.ExposureEstimate`) the fitted skew-normal density.
    Notebook 03, "Estimating exposure"."""
    from scipy import stats

    ax = _axes(ax)
    scores = np.asarray(scores_bits)
    ax.hist(scores, bins=bins, density=True, alpha=0.6, label=f"{scores.size:,} candidates")
    if estimate is not None:
        grid = np.linspace(scores.min(), scores.max(), 400)
        pdf = stats.skewnorm.pdf(grid, estimate.shape, loc=estimate.loc, scale=estimate.scale)
        ax.plot(grid, pdf, color="black", lw=1.2, label="skew-normal fit")
    ax.axvline(scores[secret_index], color="C3", lw=2, label="true secret")
    ax.set_xlabel("log-perplexity of the filled canary (bits)")
    ax.set_ylabel("density")
    ax.legend(fontsize="small")
    return ax


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def plot_tradeoff(sweep: dict, ax=None, group: str | None = None, max_ppl_increase: float = BANDS.perplexity_increase,
                  label: str | None = None, color: str | None = None, references: bool = True, annotate: bool = True,
                  marker: str = "o-"):
    """Exposure of the forgotten canary against validation perplexity for every point of a sweep
    (:func:`~tutorial_lib.experiments.sweeps.run_removal_sweep` and friends): one line per value of ``group`` (a
    swept field), the other fields annotated; the original (square), the retrained oracle (star), the
    perplexity budget (dotted; by default :data:`~tutorial_lib.core.profiles.BANDS`) and the sweep's
    pick (ringed); ``references=False`` draws the points only (for a second sweep on the same axes).
    Notebooks 04 to 06."""
    ax = _axes(ax)
    target = sweep["target"]
    rows = [r for r in sweep["rows"] if "error" not in r]
    groups = sorted({r["params"][group] for r in rows}) if group else [None]
    for i, g in enumerate(groups):
        part = sorted((r for r in rows if group is None or r["params"][group] == g), key=lambda r: r["val_perplexity"])
        name = label or sweep["method"].replace("_", " ")
        ax.plot([r["val_perplexity"] for r in part], [r["exposure"][target] for r in part], marker, ms=4, color=color or f"C{i}",
                label=name if group is None else f"{name}, {group} {_fmt(g)}")
        for r in part if annotate else []:
            text = ", ".join(_fmt(v) for k, v in r["params"].items() if k != group)
            ax.annotate(text, (r["val_perplexity"], r["exposure"][target]), fontsize="xx-small", xytext=(3, 3), textcoords="offset points")
    original, oracle, chosen = sweep["original"], sweep["oracle"], sweep.get("chosen")
    if not references:
        return ax
    ax.plot(original["val_perplexity"], original["exposure"][target], "ks", ms=8, label="original")
    ax.plot(oracle["val_perplexity"], oracle["exposure"][target], "*", color="green", ms=15, label="retrained oracle")
    if chosen:
        ax.plot(chosen["val_perplexity"], chosen["exposure"][target], "o", ms=14, mfc="none", mec="black", label="chosen setting")
    ax.axvline((1 + max_ppl_increase) * original["val_perplexity"], color="grey", ls=":", label=f"+{max_ppl_increase:.0%} perplexity")
    ax.set_xlabel("validation perplexity")
    ax.set_ylabel(f"exposure of {target} (bits, |R| = {sweep['candidates']:,})" if sweep.get("candidates") else f"exposure of {target} (bits)")
    ax.legend(fontsize="x-small")
    return ax
