"""Notebook 10's recommendation table and the robustness studies' tables and figures.

:func:`recommendations` judges each method by the course's bands (``docs/method.md`` §7: within
``tolerance_bits`` of the retrained model's exposure, above or below, perplexity at most
``1 + max_ppl_increase`` times the original's) across the three studies of :mod:`tutorial_lib.experiments.robustness`: which
settings of its main hyperparameter and which seeds stay in the bands, what the relearning attack
brings back beyond what it gives the retrained model, and how perplexity and earlier-forgotten
canaries move over sequential requests; a verdict sums each row up in words.
:func:`recommendations_markdown`, :func:`relearning_markdown` and :func:`sequential_markdown` write the
tables, :func:`plot_relearning`, :func:`plot_sequential` and :func:`plot_sensitivity` the figures.

Notebook 10, "Recommendations", and the reproduction's ``robustness`` results.
"""
from __future__ import annotations

import math

from ..core.profiles import BANDS
from .benchmark import COLOURS
from .robustness import sequential_summary


# ----------------------------------------------------------------------------------- recommendation
def _in_bands(exposure: float, ppl: float, oracle_exposure: float, original_ppl: float, tolerance_bits: float,
              max_ppl_increase: float) -> bool:
    return abs(exposure - oracle_exposure) <= tolerance_bits and ppl <= (1 + max_ppl_increase) * original_ppl  # two-sided


def recommendations(relearning: dict, sequential: dict, sensitivity: dict, seeds: dict, tolerance_bits: float = BANDS.exposure_bits,
                    max_ppl_increase: float = BANDS.perplexity_increase) -> list[dict]:
    """One row per method from the three studies, judged by the course's bands (by default
    :data:`~tutorial_lib.core.profiles.BANDS`: within ``tolerance_bits`` of the retrained model's
    exposure, perplexity within ``1 + max_ppl_increase`` of the original's): the factors of its main hyperparameter that stay in the bands, the seeds
    whose default stays in the bands, the bits the relearning attack brings back beyond what it gives
    the retrained model, and after the sequential run the perplexity ratio and the largest rise of
    an earlier-forgotten canary. ``verdict`` sums them up in words. Notebook 10, "Recommendations"."""
    seq = sequential_summary(sequential) if sequential else {}
    original, oracle = sensitivity["original"], sensitivity["retrained"]
    target = sensitivity["target"]
    rows = []
    for method, data in sensitivity["methods"].items():
        inside = [r["factor"] for r in data["rows"] if "error" not in r and _in_bands(
            r["exposure"][target], r["val_perplexity"], oracle["exposure"][target], original["val_perplexity"],
            tolerance_bits, max_ppl_increase)]
        s = seeds.get(method)
        seed_ok = None if s is None else sum(
            _in_bands(e, p, e - g, p_orig, tolerance_bits, max_ppl_increase)
            for e, g, p, p_orig in zip(s["exposure"], s["gap_to_retrained"], s["val_perplexity"], seeds["original"]["val_perplexity"]))
        relearn = relearning["rows"].get(method)
        row = {"method": method, "param": data["param"], "default": data["default"],
               "factors_in_bands": inside, "n_factors": len(data["rows"]),
               "seeds_in_bands": seed_ok, "n_seeds": None if s is None else len(s["seeds"]),
               "seed_gap_mean": None if s is None else s["gap_mean"], "seed_gap_std": None if s is None else s["gap_std"],
               "relearned_beyond_retrained": None if relearn is None else relearn["after_minus_retrained"],
               "sequential_perplexity_ratio": seq.get(method, {}).get("perplexity_ratio"),
               "sequential_max_rise": seq.get(method, {}).get("max_rise_after_removal")}
        row["verdict"] = _verdict(row, tolerance_bits, max_ppl_increase)
        rows.append(row)
    return rows


def _verdict(row: dict, tolerance_bits: float, max_ppl_increase: float) -> str:
    notes = []
    if 1.0 not in row["factors_in_bands"]:
        notes.append("default outside the bands here")
    elif len(row["factors_in_bands"]) == 1:
        notes.append("only the default is inside the bands: tune per request")
    else:
        notes.append(f"{len(row['factors_in_bands'])}/{row['n_factors']} settings inside the bands")
    if row["seeds_in_bands"] is not None and row["seeds_in_bands"] < row["n_seeds"]:
        notes.append(f"default fails on {row['n_seeds'] - row['seeds_in_bands']}/{row['n_seeds']} seeds")
    relearned = row["relearned_beyond_retrained"]
    if relearned is not None:
        notes.append("relearning brings it back" if relearned > tolerance_bits else "holds against relearning")
    ratio = row["sequential_perplexity_ratio"]
    if ratio is not None and ratio > 1 + max_ppl_increase:
        notes.append("perplexity drifts over many requests")
    return "; ".join(notes)


def _fmt(value, spec: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def recommendations_markdown(rows: list[dict]) -> str:
    """The recommendation table as markdown."""
    lines = ["| method | main hyperparameter (default) | settings in bands (× default) | seeds in bands | gap to retrained over seeds (bits) "
             "| relearned beyond retrained (bits) | ppl after the sequential run / before | verdict |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        seeds = "–" if r["n_seeds"] is None else f"{r['seeds_in_bands']}/{r['n_seeds']}"
        gap = "–" if r["seed_gap_mean"] is None else f"{r['seed_gap_mean']:.2f} ± {r['seed_gap_std']:.2f}"
        lines.append(f"| {r['method']} | {r['param']} = {r['default']:g} | {', '.join(f'{f:g}' for f in r['factors_in_bands']) or 'none'} "
                     f"| {seeds} | {gap} | {_fmt(r['relearned_beyond_retrained'], '.2f')} | {_fmt(r['sequential_perplexity_ratio'], '.3f')} "
                     f"| {r['verdict']} |")
    return "\n".join(lines)


def relearning_markdown(study: dict) -> str:
    """The relearning table: per model, exposure of the forgotten canary before and after the
    attack, what it recovered, and the after-attack exposure against the retrained model's."""
    lines = ["| model | before attack | after attack | recovered | after − retrained after | control after | val ppl before → after |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in study["rows"].items():
        t = r["trace"]
        lines.append(f"| {name} | {r['before']:.2f} | {r['after']:.2f} | {r['recovered']:+.2f} | {r['after_minus_retrained']:+.2f} "
                     f"| {t[-1]['control']:.2f} | {t[0]['val_perplexity']:.2f} → {t[-1]['val_perplexity']:.2f} |")
    return "\n".join(lines)


def sequential_markdown(study: dict) -> str:
    """The sequential run's summary table (see :func:`sequential_summary`)."""
    lines = ["| method | val ppl before → after | ratio | forgotten, at removal | forgotten, at the end | largest rise after removal "
             "| never requested, before → after |", "|---|---:|---:|---:|---:|---:|---:|"]
    for method, s in sequential_summary(study).items():
        lines.append(f"| {method} | {s['val_perplexity_before']:.2f} → {s['val_perplexity_after']:.2f} | {s['perplexity_ratio']:.3f} "
                     f"| {s['forgotten_at_removal']:.2f} | {s['forgotten_at_end']:.2f} | {s['max_rise_after_removal']:+.2f} "
                     f"| {_fmt(s['never_requested_before'], '.2f')} → {_fmt(s['never_requested_after'], '.2f')} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- figures
def plot_relearning(study: dict, ax=None):
    """Exposure of the forgotten canary against relearning steps, one line per model, the retrained
    model's curve (the reference) in bold green. Notebook 10."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6, 4))[1]
    for name, r in study["rows"].items():
        steps = [t["step"] for t in r["trace"]]
        ax.plot(steps, [t["forgotten"] for t in r["trace"]], "o-", color=COLOURS.get(name, "grey"),
                lw=3 if name == "retrained" else 1.5, label=name.replace("_", " "), zorder=3 if name == "retrained" else 2)
    ax.axhline(study["max_bits"], color="grey", ls=":", lw=1)
    ax.set(xlabel="relearning steps on related data", ylabel="exposure of the forgotten canary (bits)",
           title="Relearning attack")
    ax.legend(fontsize="x-small")
    return ax


def plot_sequential(study: dict, axes=None):
    """Left: validation perplexity after each request, per method. Right: exposure of the first
    request's canary after every later request (solid) and of each canary right after its own
    request (dotted), per method. Notebook 10."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    first = study["requests"][0]
    for method, rows in study["cycles"].items():
        colour, label = COLOURS.get(method, "grey"), method.replace("_", " ")
        axes[0].plot([r["cycle"] for r in rows], [r["val_perplexity"] for r in rows], "o-", color=colour, label=label)
        axes[1].plot([r["cycle"] for r in rows], [r["exposure"][first] for r in rows], "o-", color=colour, label=label)
        axes[1].plot([r["cycle"] for r in rows[1:]], [r["exposure"][r["request"]] for r in rows[1:]], ":", color=colour)
    axes[0].set(xlabel="requests served", ylabel="validation perplexity", title="Perplexity drift")
    axes[1].set(xlabel="requests served", ylabel="exposure (bits)",
                title=f"{first} (request 1) after later requests; dotted: each right after its own")
    axes[0].legend(fontsize="x-small")
    return axes


def plot_sensitivity(sensitivity: dict, axes=None):
    """Exposure of the forgotten canary (left) and validation perplexity (right) against the factor
    on each method's main hyperparameter, with the retrained model's values as dashed lines."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    target = sensitivity["target"]
    for method, data in sensitivity["methods"].items():
        rows = [r for r in data["rows"] if "error" not in r]
        kw = dict(color=COLOURS.get(method, "grey"), label=f"{method.replace('_', ' ')} ({data['param']})")
        axes[0].plot([r["factor"] for r in rows], [r["exposure"][target] for r in rows], "o-", **kw)
        axes[1].plot([r["factor"] for r in rows], [r["val_perplexity"] for r in rows], "o-", **kw)
    axes[0].axhline(sensitivity["retrained"]["exposure"][target], color=COLOURS["retrained"], ls="--", label="retrained")
    axes[1].axhline(sensitivity["retrained"]["val_perplexity"], color=COLOURS["retrained"], ls="--", label="retrained")
    axes[1].axhline((1 + BANDS.perplexity_increase) * sensitivity["original"]["val_perplexity"], color="grey", ls=":",
                    label=f"+{100 * BANDS.perplexity_increase:.0f} % of the original")
    for ax, label in zip(axes, ("exposure of the forgotten canary (bits)", "validation perplexity")):
        ax.set(xscale="log", xlabel="factor on the main hyperparameter (1 = default)", ylabel=label)
    for ax, title in zip(axes, ("Sensitivity: forgotten canary's exposure", "Sensitivity: validation perplexity")):
        if not ax.get_title():
            ax.set_title(title)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize="x-small")
    return axes
