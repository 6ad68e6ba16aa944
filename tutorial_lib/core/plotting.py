"""Figures. Every ``plot_*`` draws on a given Axes (or a new one) and returns it; nothing is saved or
shown here. Used by notebooks 03 onwards and by the reproduction command. The last section holds the
views behind the notebooks' widgets (notebooks 06, 07, 09, 10): each selects from a result that is
already computed and draws it, and never trains or measures anything."""
from __future__ import annotations

import numpy as np

from .profiles import BANDS


def use_style() -> None:
    """The course's one plot style (seaborn "whitegrid"). Call it once, in the setup cell."""
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", palette="colorblind")


def figure_titles(fig) -> list[str]:
    """The titles a figure shows: its suptitle, then each panel's (left, centre, right), non-empty."""
    titles = [fig.get_suptitle()] if fig.get_suptitle() else []
    for ax in fig.axes:
        titles += [t for loc in ("left", "center", "right") if (t := ax.get_title(loc))]
    return titles


def figure_description(fig) -> str:
    """One line that says what a figure shows: ``"Figure: <titles>"``, or ``"Figure without a title"``.
    The notebooks' kernels print it as a figure's text (:func:`~tutorial_lib.course.notebook.setup_notebook`)
    and the course's pages use it as the image's description."""
    titles = figure_titles(fig)
    return "Figure: " + " | ".join(titles) if titles else f"Figure without a title ({len(fig.axes)} panel{'s' * (len(fig.axes) != 1)})"


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(5, 3.5))
    return ax


def _title(ax, text: str) -> None:
    """Give ``ax`` the default ``text`` as title unless the caller already set one."""
    if not ax.get_title():
        ax.set_title(text)


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
    _title(ax, "Exact exposure against insertions")
    return ax


def plot_exposure_trajectory(result, ax=None):
    """Exposure of one canary per insertion count at each validation step of training.
    Notebook 03, "Exposure over training"."""
    ax = _axes(ax)
    inserted = {e["name"]: e["insertions"] for e in result.exposures}
    for name, points in result.trajectory.items():
        steps, values = zip(*points)
        k = inserted[name]
        ax.plot(steps, values, marker="o", color=_colour(k, inserted.values()), label=f"{name} ({_label(k)})")
        ax.annotate(f"{name} ({_label(k)})", (steps[-1], values[-1]), xytext=(-4, 6), textcoords="offset points",
                    ha="right", fontsize="small", color=_colour(k, inserted.values()))
    ax.axhline(result.max_bits, color="grey", ls="--", lw=1, label=f"maximum, log2|R| = {result.max_bits:.1f}")
    ax.set_ylim(-0.5, result.max_bits + 1.5)
    ax.set_xlabel("training step")
    ax.set_ylabel("exposure (bits)")
    ax.legend(loc="lower right", fontsize="x-small")
    _title(ax, "Exposure over training")
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
    _title(ax, "Skew-normal estimate against exact exposure")
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
    _title(ax, "Training and validation loss")
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
    _title(ax, "Log-perplexity of every candidate secret")
    return ax


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def plot_tradeoff(sweep: dict, ax=None, group: str | None = None, max_ppl_increase: float = BANDS.perplexity_increase,
                  label: str | None = None, color: str | None = None, references: bool = True, annotate: bool = True,
                  marker: str = "o-"):
    """Exposure of the forgotten canary against validation perplexity for every point of a sweep
    (:func:`~tutorial_lib.experiments.sweeps.run_removal_sweep` and friends): one line per value of ``group`` (a
    swept field), the other fields annotated; the original (square), the retrained oracle (star), the
    perplexity budget (dotted; by default :data:`~tutorial_lib.core.profiles.BANDS`), the band of the
    never-inserted controls that the oracle-free rule aims at (shaded) and the sweep's pick (ringed); ``references=False`` draws the points only (for a second sweep on the same axes).
    Notebooks 04 to 06."""
    ax = _axes(ax)
    _title(ax, f"{label or sweep['method'].replace('_', ' ')}: exposure against perplexity")
    target = sweep["target"]
    rows = [r for r in sweep["rows"] if "error" not in r]
    groups = sorted({r["params"][group] for r in rows}) if group else [None]
    for i, g in enumerate(groups):
        part = sorted((r for r in rows if group is None or r["params"][group] == g), key=lambda r: r["val_perplexity"])
        name = label or sweep["method"].replace("_", " ")
        ax.plot([r["val_perplexity"] for r in part], [r["exposure"][target] for r in part], marker, ms=4, color=color or f"C{i}",
                label=name if group is None else f"{name}, {group} {_fmt(g)}")
        for r in part if annotate else []:
            text = ", ".join(f"{k} {_fmt(v)}" for k, v in r["params"].items() if k != group)
            ax.annotate(text, (r["val_perplexity"], r["exposure"][target]), fontsize="xx-small", xytext=(3, 3), textcoords="offset points")
    original, oracle, chosen = sweep["original"], sweep["oracle"], sweep.get("chosen")
    if not references:
        return ax
    ax.plot(original["val_perplexity"], original["exposure"][target], "ks", ms=8, label="original")
    ax.plot(oracle["val_perplexity"], oracle["exposure"][target], "*", color="green", ms=15, label="retrained oracle")
    if chosen:
        ax.plot(chosen["val_perplexity"], chosen["exposure"][target], "o", ms=14, mfc="none", mec="black", label="chosen setting")
    ax.axvline((1 + max_ppl_increase) * original["val_perplexity"], color="grey", ls=":", label=f"+{max_ppl_increase:.0%} perplexity")
    if sweep.get("controls"):  # the oracle-free rule's band: never-inserted secrets under the original, ± BANDS.exposure_bits
        level = sum(original["exposure"][c] for c in sweep["controls"]) / len(sweep["controls"])
        ax.axhspan(max(level - BANDS.exposure_bits, 0.0), level + BANDS.exposure_bits, color="grey", alpha=0.12,
                   label=f"controls ± {BANDS.exposure_bits:g} bits (the rule's band)")
    ax.set_xlabel("validation perplexity")
    ax.set_ylabel(f"exposure of {target} (bits, |R| = {sweep['candidates']:,})" if sweep.get("candidates") else f"exposure of {target} (bits)")
    ax.legend(fontsize="x-small")
    return ax


# ----------------------------------------------------------------------------------- results of several models
def _model_colour(model: str, index: int, colours: dict | None) -> str:
    """``colours[model]`` if given, else the original black, a retrained model green and the others
    the palette's colours in order."""
    if colours and model in colours:
        return colours[model]
    if model.startswith("retrained"):
        return "green"
    return "black" if model == "original" else f"C{index % 10}"


def _model_ticks(ax, models) -> None:
    ax.set_xticks(range(len(models)), [m.replace("_", " ") for m in models], rotation=30, ha="right", fontsize="small")


def plot_unlearning_methods(data: dict, axes=None, colours: dict | None = None):
    """Every unlearning method at its default against the retrained oracle
    (:func:`~tutorial_lib.experiments.sweeps.run_unlearning_methods`). Left: the exact exposure of each
    watched canary (the forgotten one, the other inserted ones, a control) per model. Right: the
    forgotten canary's exposure against validation perplexity, the oracle as the star and the
    perplexity budget of :data:`~tutorial_lib.core.profiles.BANDS` dotted. ``colours`` maps a model to
    its colour. Returns both Axes. Notebooks 04–06; the reproduction's ``unlearning_methods.png``."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    results, target, canaries = data["results"], data["target"], data["canaries"]
    counts = [c["insertions"] for c in canaries]
    models, width = list(results), 0.8 / len(canaries)
    for j, c in enumerate(canaries):
        x = np.arange(len(models)) + (j - (len(canaries) - 1) / 2) * width
        note = ", forgotten" if c["name"] == target else ""
        axes[0].bar(x, [results[m]["exposure"][c["name"]] for m in models], width, color=_colour(c["insertions"], counts),
                    label=f"{c['name']} ({_label(c['insertions'])}{note})")
    _model_ticks(axes[0], models)
    axes[0].set(xlabel="model", ylabel="exact exposure (bits)", title="Exposure of the watched canaries")
    axes[0].legend(fontsize="x-small")
    methods = 0
    for model, r in results.items():
        oracle = model.startswith("retrained")
        axes[1].plot(r["val_perplexity"], r["exposure"][target], "*" if oracle else ("s" if model == "original" else "o"),
                     ms=14 if oracle else 7, color=_model_colour(model, methods, colours), label=model.replace("_", " "))
        methods += not oracle and model != "original"
    budget = (1 + BANDS.perplexity_increase) * results["original"]["val_perplexity"]
    axes[1].axvline(budget, color="grey", ls=":", label=f"+{BANDS.perplexity_increase:.0%} perplexity")
    axes[1].set(xlabel="validation perplexity", ylabel=f"exposure of {target} (bits)", title=f"Forgetting {target} against perplexity")
    axes[1].legend(fontsize="x-small")
    return axes


def plot_seed_variation(seeds: dict, ax=None, colours: dict | None = None):
    """Exposure of the forgotten canary on each training seed, one line per model
    (:func:`~tutorial_lib.experiments.robustness.run_seed_variation`), the retrained model in bold; the
    legend gives each model's gap to the retrained model, mean ± std over the seeds. ``colours`` maps a
    model to its colour. Notebook 10, "Sensitivity"; the reproduction's ``robustness.png``."""
    ax = _axes(ax)
    methods = 0
    for model, s in seeds.items():
        reference = model.startswith("retrained") or model == "original"
        ax.plot(range(len(s["seeds"])), s["exposure"], "o-", color=_model_colour(model, methods, colours), lw=3 if model == "retrained" else 1.5,
                label=f"{model.replace('_', ' ')} (gap {s['gap_mean']:+.2f} ± {s['gap_std']:.2f})")
        methods += not reference
    ticks = next(iter(seeds.values()))["seeds"]
    ax.set_xticks(range(len(ticks)), [str(s) for s in ticks])
    ax.set(xlabel="training seed", ylabel="exposure of the forgotten canary (bits)", title="Seed variation at the defaults")
    ax.legend(fontsize="xx-small")
    return ax


# ----------------------------------------------------------------------------------- views for the notebooks' widgets
def sweep_point(sweep: dict, **params) -> dict | None:
    """The row of a cached sweep (:func:`~tutorial_lib.experiments.sweeps.run_baseline_sweep` and friends)
    at ``params`` (e.g. ``lr=1e-3, steps=30``): its exposure and perplexities, or its ``error`` if the
    method refused the update there; ``None`` if a refused run stopped before that point. A name or a
    value outside the sweep's grid is an error. Notebook 06, "Sensitivity"."""
    grid = sweep["grid"]
    for name, value in params.items():
        if name not in grid or value not in grid[name]:
            raise ValueError(f"{name}={value!r} is not a point of the {sweep['method']} sweep; its grid: {grid}")
    return next((r for r in sweep["rows"] if all(r["params"].get(k) == v for k, v in params.items())), None)


def plot_sweep_point(sweep: dict, ax=None, **params):
    """A sweep's exposure–perplexity trade-off (:func:`plot_tradeoff`, one line per value of the grid's
    first field, perplexity on a log scale) with the point at ``params`` ringed in red and its exposure and
    perplexity in the title (:func:`sweep_point`). Only reads the sweep. Notebook 06's widget."""
    import matplotlib.pyplot as plt

    row = sweep_point(sweep, **params)
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 4.5))
    fields = list(sweep["grid"])
    plot_tradeoff(sweep, ax=ax, group=fields[0] if len(fields) > 1 else None, annotate=False)
    where = ", ".join(f"{k} {_fmt(v)}" for k, v in params.items())
    name, target = sweep["method"].replace("_", " "), sweep["target"]
    if row is None or "error" in row:
        ax.set_title(f"{name}, {where}: " + ("not reached (the run was refused earlier)" if row is None else "update refused"))
    else:
        ax.plot(row["val_perplexity"], row["exposure"][target], "o", ms=18, mfc="none", mec="red", mew=2, label="selected point")
        ax.set_title(f"{name}, {where}: exposure {row['exposure'][target]:.2f} bits, val ppl {row['val_perplexity']:.2f}")
    ax.set_xscale("log")
    ax.legend(fontsize="xx-small")
    return ax


def benchmark_selection(result: dict, corpus: str, methods) -> dict:
    """The summary rows (mean and std of every metric over seeds) of the original, the retrained model
    and ``methods`` (a name or several) on ``corpus``, from
    :func:`~tutorial_lib.experiments.benchmark.run_benchmark`'s result. Notebook 07's widget."""
    if corpus not in result["summary"]:
        raise ValueError(f"no corpus {corpus!r} in the benchmark; it has {list(result['summary'])}")
    models = result["summary"][corpus]["models"]
    methods = [methods] if isinstance(methods, str) else list(methods)
    unknown = [m for m in methods if m not in models]
    if unknown:
        raise ValueError(f"no method {unknown} in the benchmark; it has {list(models)}")
    return {m: models[m] for m in dict.fromkeys(("original", "retrained", *methods))}


_BENCHMARK_EXPOSURES = {"forgotten_exposure": "forgotten canary", "other_inserted_exposure": "other inserted", "control_exposure": "controls"}


def plot_benchmark_selection(result: dict, corpus: str, methods, axes=None):
    """Two panels for the models of :func:`benchmark_selection` on one corpus: the exposure of the
    forgotten canary, the other inserted one and the controls (bars, mean ± std over seeds), and the
    validation perplexity against the retrained model's and the perplexity budget. Only reads the
    result. Notebook 07's widget."""
    import matplotlib.pyplot as plt

    rows = benchmark_selection(result, corpus, methods)
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(12, 4))
    models, width = list(rows), 0.8 / len(_BENCHMARK_EXPOSURES)
    for j, (metric, label) in enumerate(_BENCHMARK_EXPOSURES.items()):
        x = np.arange(len(models)) + (j - 1) * width
        stats = [rows[m][metric] for m in models]
        axes[0].bar(x, [s["mean"] for s in stats], width, yerr=[s["std"] for s in stats], capsize=2, color=("C3", "C1", "grey")[j], label=label)
    ppl = [rows[m]["val_perplexity"] for m in models]
    axes[1].errorbar(range(len(models)), [p["mean"] for p in ppl], yerr=[p["std"] for p in ppl], fmt="o", capsize=3, label="validation perplexity")
    axes[1].axhline(rows["retrained"]["val_perplexity"]["mean"], color="green", ls="--", label="retrained model")
    budget = (1 + BANDS.perplexity_increase) * rows["original"]["val_perplexity"]["mean"]
    axes[1].axhline(budget, color="grey", ls=":", label=f"+{BANDS.perplexity_increase:.0%} of the original")
    n = len(result["summary"][corpus]["seeds"])
    axes[0].set(ylabel="exposure (bits)", title=f"{corpus}: exposure, mean ± std over {n} seed{'s' * (n > 1)}")
    axes[1].set(ylabel="validation perplexity", title=f"{corpus}: validation perplexity")
    for ax in axes:
        _model_ticks(ax, models)
        ax.set_xlabel("model")
        ax.legend(fontsize="x-small")
    return axes


def case_study_attacks(result: dict) -> dict[str, dict]:
    """What each attack of :func:`~tutorial_lib.experiments.case_studies.run_case_study` measured on every
    model (refused runs left out), by name: membership inference (ROC AUC of the subject's records
    against never-seen people's, per attack), extraction of the subject's secrets (the share of
    sampled continuations that are the secret) and of the passage (ROUGE-L of greedy continuations).
    Each entry: ``values`` per model, ``label`` (what the number is), ``reference`` (the retrained
    model's value, or ``None``) and ``chance`` (a chance level, or ``None``). Notebook 09's widget."""
    pii = {m: r for m, r in result["pii"].items() if "error" not in r}
    verbatim = {m: r for m, r in result["verbatim"].items() if "error" not in r}
    views = {}
    for attack in dict.fromkeys(a for r in pii.values() for a in r["mia_subject"]):
        values = {m: r["mia_subject"][attack]["auc"] for m, r in pii.items() if attack in r["mia_subject"]}
        views[f"membership inference: {attack}"] = {"values": values, "label": "ROC AUC, subject's records vs never-seen people's",
                                                     "reference": values.get("retrained"), "chance": 0.5}
    for secret in next(iter(pii.values()))["extraction"]:
        values = {m: r["extraction"][secret]["sampled_extracted"] for m, r in pii.items()}
        views[f"extraction: {secret} number"] = {"values": values, "label": f"share of sampled continuations that are the {secret} number",
                                                 "reference": values.get("retrained"), "chance": None}
    values = {m: r["extraction"]["rouge_l"] for m, r in verbatim.items()}
    views["extraction: passage"] = {"values": values, "label": "ROUGE-L of greedy continuations with the passage",
                                    "reference": values.get("retrained"), "chance": None}
    return views


def plot_case_study_attack(result: dict, attack: str, ax=None):
    """One attack of :func:`case_study_attacks` on every model as horizontal bars, with the retrained
    model's value (dashed) and the chance level (dotted) where there is one. Only reads the result.
    Notebook 09's widget."""
    import matplotlib.pyplot as plt

    views = case_study_attacks(result)
    if attack not in views:
        raise ValueError(f"no attack {attack!r}; the case study has {list(views)}")
    view = views[attack]
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 4))
    models = list(view["values"])
    ax.barh(range(len(models)), list(view["values"].values()), color="C0", label=attack.split(": ")[0])
    ax.set_yticks(range(len(models)), [m.replace("_", " ") for m in models], fontsize="small")
    ax.invert_yaxis()
    if view["reference"] is not None:
        ax.axvline(view["reference"], color="green", ls="--", label="retrained model")
    if view["chance"] is not None:
        ax.axvline(view["chance"], color="grey", ls=":", label="chance")
    ax.set(xlabel=view["label"], ylabel="model", title=attack)
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return ax


def relearning_by_step(study: dict) -> dict[int, dict[str, float]]:
    """Exposure of the forgotten canary per model at each checkpoint of the relearning attack
    (:func:`~tutorial_lib.experiments.robustness.run_relearning_study`), ``{step: {model: bits}}``, step 0
    before the attack. Notebook 10's widget."""
    steps: dict[int, dict[str, float]] = {}
    for model, row in study["rows"].items():
        for point in row["trace"]:
            steps.setdefault(point["step"], {})[model] = point["forgotten"]
    return dict(sorted(steps.items()))


def plot_relearning_at(study: dict, step: int, ax=None):
    """Every model's exposure of the forgotten canary after ``step`` steps of the relearning attack
    (bars), before the attack (black ticks), the retrained model's at the same step (dashed) and the
    maximum (dotted). Only reads the study (:func:`relearning_by_step`). Notebook 10's widget."""
    by_step = relearning_by_step(study)
    if step not in by_step:
        raise ValueError(f"the attack measured no checkpoint at step {step}; it has {list(by_step)}")
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(7.5, 4.5))
    after, before = by_step[step], by_step[min(by_step)]
    models = list(after)
    ax.bar(range(len(models)), [after[m] for m in models], color="C0", label=f"after {step} steps")
    ax.scatter(range(len(models)), [before.get(m, np.nan) for m in models], marker="_", s=500, color="black", zorder=3, label="before the attack")
    ax.axhline(after["retrained"], color="green", ls="--", label=f"retrained model after {step} steps")
    ax.axhline(study["max_bits"], color="grey", ls=":", label=f"maximum, log2|R| = {study['max_bits']:.1f}")
    _model_ticks(ax, models)
    ax.set(xlabel="model", ylabel="exposure of the forgotten canary (bits)", ylim=(0, 1.45 * study["max_bits"]),
           title=f"Relearning attack: after {step} steps")
    ax.legend(fontsize="x-small", loc="upper left", ncol=2)
    return ax
