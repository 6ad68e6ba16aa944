"""The four-corpus benchmark (notebook 07 and the reproduction's main table): for every corpus and
seed, train a GPT-2 with canaries, retrain it without the most-inserted one (the oracle), apply every
unlearning method with its documented default, and measure each against the oracle: exact exposure
of the forgotten canary, the other inserted canaries and the controls, validation perplexity, KL of
next-token predictions to the oracle, and wall time against retraining. Each (corpus, seed) cell is
cached as a JSON result; :func:`summarise` gives mean ± std over seeds.

Scale: the CPU benchmark (``small``) trains the ``tiny`` profile's models (2 × 64 GPT-2, the first
60 kB of each corpus, 4-digit secrets) so that 4 corpora × 3 seeds × (2 trainings + 7 unlearning runs) fit in
well under 30 minutes on 2 cores; the methods use their ``tiny`` defaults, chosen by the same sweeps
as notebooks 04–06. ``full`` runs the ``small`` profile's models per corpus (notebooks 03–06's scale).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from tqdm.auto import tqdm

from ..core.cache import cached_result, result_path
from ..core.data import CORPORA
from ..core.profiles import (
    BANDS,
    config_for_profile,
    model_scale,
    progress_options,
    resolve_profile,
)
from ..unlearning.api import METHODS
from ..unlearning.verdicts import judge, judge_rows, privleak, secret_membership_auc
from .memorization import MemorizationConfig
from .sweeps import baseline_grid, trace_sweep, unlearning_setup

BENCHMARK_METHODS = ("fisher_removal", "fisher_forgetting", "gradient_ascent", "gradient_difference", "npo", "fine_tune")


#: the row of Fisher Removal with the method's own Fisher: the damped empirical Fisher of the m sampled
#: windows' per-sample gradients, inverted exactly through Woodbury (``structure="woodbury"``)
WOODBURY_ROW = "fisher_removal_woodbury"

MODELS = ("original", "retrained") + BENCHMARK_METHODS + (WOODBURY_ROW,)


COLOURS = {"original": "black", "retrained": "green", "fisher_removal": "C0", "fisher_forgetting": "C9", "gradient_ascent": "C3",
           "gradient_difference": "C1", "npo": "C4", "fine_tune": "C2", WOODBURY_ROW: "C5"}


@dataclass(frozen=True)
class BenchmarkConfig:
    """Which corpora, seeds and methods; ``run_profile`` is the profile of each run's
    :class:`~tutorial_lib.experiments.memorization.MemorizationConfig` and of the methods' defaults;
    ``ga_sweep`` adds, for the first seed, gradient ascent over learning rate × steps (claim C2);
    ``woodbury`` adds Fisher Removal with the exact empirical Fisher (row ``fisher_removal_woodbury``,
    at that structure's own default) beside the K-FAC default."""

    profile: str = "small"
    corpora: tuple[str, ...] = tuple(CORPORA)
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = BENCHMARK_METHODS
    run_profile: str = "tiny"
    ga_sweep: bool = True
    woodbury: bool = True

    PROFILE_DEFAULTS: ClassVar[dict[str, dict]] = {"tiny": {"corpora": ("shakespeare", "bible"), "seeds": (0,)}, "small": {}, "full": {}}

    def __post_init__(self):
        for name in self.corpora:
            if name not in CORPORA:
                raise ValueError(f"unknown corpus {name!r}; expected one of {', '.join(CORPORA)}")
        for name in self.methods:
            if name not in METHODS:
                raise ValueError(f"unknown unlearning method {name!r}; expected one of {', '.join(METHODS)}")
        if not self.corpora or not self.seeds:
            raise ValueError("the benchmark needs at least one corpus and one seed")

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> "BenchmarkConfig":
        """``tiny``: two corpora, one seed (tests); ``small``: four corpora, three seeds at the tiny
        model scale (CPU); ``full``: four corpora, three seeds at the small model scale
        (``run_profile`` is :func:`~tutorial_lib.core.profiles.model_scale`), then ``overrides``."""
        profile = resolve_profile(profile)
        return config_for_profile(cls, profile, overrides, profile=profile, run_profile=model_scale(profile))

    def run_config(self, corpus: str) -> MemorizationConfig:
        return MemorizationConfig.for_profile(self.run_profile, corpus=corpus)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _row(result: dict, setup, target: str, retrained: dict) -> dict:
    """One model's benchmark row from its evaluation ``result`` and the retrained model's
    (``retrained``): exposures, perplexities, KL to the retrained model and the field's metrics
    (forget quality, the secret's membership AUC and PrivLeak)."""
    inserted = {c.name: c.insertions for c in setup.canaries}
    others = [n for n, k in inserted.items() if k > 1 and n != target]
    controls = [n for n, k in inserted.items() if k == 0]
    auc = secret_membership_auc(result["exposure"][target])
    return {
        "exposure": result["exposure"],
        "forgotten_exposure": result["exposure"][target],
        "other_inserted_exposure": float(np.mean([result["exposure"][n] for n in others])) if others else math.nan,
        "control_exposure": float(np.mean([result["exposure"][n] for n in controls])),
        "val_perplexity": result["val_perplexity"],
        "retain_perplexity": result["retain_perplexity"],
        "forget_loss": result["forget_loss"],
        "kl_to_retrained": result.get("kl_to_reference", 0.0),
        "forget_quality": result["forget_quality"],
        "membership_auc": auc,
        "privleak": privleak(auc, secret_membership_auc(retrained["exposure"][target])),
    }


def cell_key(cfg: BenchmarkConfig, corpus: str, seed: int) -> dict:
    """What identifies the cached cell (``corpus``, ``seed``) of ``cfg``: two configurations with equal
    keys share the cell."""
    return {"benchmark": cfg.run_profile, "run": cfg.run_config(corpus).to_dict(), "seed": seed, "methods": list(cfg.methods),
            "ga_sweep": cfg.ga_sweep and seed == cfg.seeds[0], "woodbury": cfg.woodbury}


def cells_cached(cfg: BenchmarkConfig) -> bool:
    """Whether every (corpus, seed) cell of ``cfg`` is already in the result cache."""

    return all(result_path("benchmark_cell", cell_key(cfg, c, s), modules=("experiments/benchmark.py",)).is_file()
               for c in cfg.corpora for s in cfg.seeds)


def benchmark_cell(cfg: BenchmarkConfig, corpus: str, seed: int, device=None, use_cache: bool = True,
                   progress: bool = False) -> tuple[dict, bool]:
    """One corpus and seed: every model's row (see :func:`run_benchmark`); ``(result, from_cache)``.
    ``progress``: training bars and a bar over the methods (off by default: :func:`run_benchmark`'s
    bar over the cells shows the time left)."""

    run_cfg = cfg.run_config(corpus)

    def compute():
        setup = unlearning_setup(run_cfg, seed, device, progress=progress)
        target, names = setup.target.name, [c.name for c in setup.canaries]
        retrained = setup.evaluate(setup.retrained, names=names, progress=progress)
        rows = {"original": _row(setup.evaluate(setup.model, names=names, progress=progress), setup, target, retrained),
                "retrained": _row(retrained, setup, target, retrained)}
        rows["retrained"]["seconds"] = setup.retrain_seconds
        runs = [(m, m, METHODS[m].config.for_profile(cfg.run_profile)) for m in cfg.methods]
        if cfg.woodbury:
            runs.append((WOODBURY_ROW, "fisher_removal", METHODS["fisher_removal"].config.for_profile(cfg.run_profile, structure="woodbury")))
        for row, method, config in tqdm(runs, desc=f"benchmark cell ({corpus}, seed {seed})", **progress_options(progress)):
            start = time.perf_counter()
            unlearned, report = setup.unlearn(method, config, progress=progress)
            seconds = time.perf_counter() - start
            rows[row] = {**_row(setup.evaluate(unlearned, names=names, progress=progress), setup, target, retrained), "seconds": seconds,
                            "fraction_of_retraining": seconds / setup.retrain_seconds, "update_norm": report.update_norm}
        out = {"corpus": corpus, "seed": seed, "target": target, "canaries": [c.to_dict() for c in setup.canaries], "rows": rows}
        if cfg.ga_sweep and seed == cfg.seeds[0]:
            grid = baseline_grid(cfg.run_profile)
            base = METHODS["gradient_ascent"].config.for_profile(cfg.run_profile)
            out["ga_sweep"] = trace_sweep(setup, "gradient_ascent", base, grid["lr"], grid["steps"], candidates=None, progress=progress)
        return out

    return cached_result("benchmark_cell", cell_key(cfg, corpus, seed), compute, use_cache=use_cache, modules=("experiments/benchmark.py",))


def run_benchmark(cfg: BenchmarkConfig, device=None, use_cache: bool = True, progress: bool = True) -> dict:
    """Every (corpus, seed) cell, with a progress bar over the whole run and its remaining-time
    estimate; returns {"config", "cells": [...], "summary": :func:`summarise`, "seconds"}."""

    start = time.perf_counter()
    cells = []
    jobs = [(corpus, seed) for corpus in cfg.corpora for seed in cfg.seeds]
    with tqdm(jobs, desc="benchmark (corpus x seed)", **progress_options(progress), unit="cell") as bar:
        for corpus, seed in bar:
            bar.set_postfix_str(f"{corpus}, seed {seed}")
            cells.append(benchmark_cell(cfg, corpus, seed, device, use_cache=use_cache, progress=False)[0])  # this bar shows the time left
    return {"config": cfg.to_dict(), "cells": cells, "summary": summarise(cells), "seconds": time.perf_counter() - start}


METRICS = ("forgotten_exposure", "other_inserted_exposure", "control_exposure", "val_perplexity", "retain_perplexity", "kl_to_retrained",
           "forget_quality", "membership_auc", "privleak", "seconds", "fraction_of_retraining")

#: the forget loss every benchmark method unlearns with (``canary_forget_items(target, "secret")``)
FORGET_LOSS = "secret"


def _mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (0 for a single value)."""
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def _verdict_of_means(table: dict, model: str) -> dict:
    """The two-sided verdict (:func:`~tutorial_lib.unlearning.verdicts.judge`) on ``model``'s means over seeds."""
    m, rt, orig = table[model], table["retrained"], table["original"]
    return judge(m["forgotten_exposure"]["mean"], rt["forgotten_exposure"]["mean"], m["val_perplexity"]["mean"],
                 rt["val_perplexity"]["mean"], m["kl_to_retrained"]["mean"], orig["kl_to_retrained"]["mean"], forget_loss=FORGET_LOSS).to_dict()


def summarise(cells: list[dict]) -> dict:
    """Per corpus and model: mean and (sample) std over seeds of every metric, the distance to the
    retrained model (|Δ exposure| of the forgotten canary, perplexity ratio), the two-sided verdict
    on the means with the number of seeds whose own verdict is "at the retrained model", and, with a
    gradient-ascent sweep, the C2 comparison at the verdict's bands (:func:`_c2`)."""
    out: dict = {}
    for corpus in dict.fromkeys(c["corpus"] for c in cells):
        mine = [c for c in cells if c["corpus"] == corpus]
        table, verdicts = {}, {}
        for model in mine[0]["rows"]:
            stats = {}
            for metric in METRICS:
                values = [c["rows"][model][metric] for c in mine if metric in c["rows"][model]]
                if values:
                    stats[metric] = _mean_std(values)
            gaps = [abs(c["rows"][model]["forgotten_exposure"] - c["rows"]["retrained"]["forgotten_exposure"]) for c in mine]
            ratios = [c["rows"][model]["val_perplexity"] / c["rows"]["retrained"]["val_perplexity"] for c in mine]
            stats["exposure_gap_to_retrained"] = _mean_std(gaps)
            stats["perplexity_ratio_to_retrained"] = _mean_std(ratios)
            table[model] = stats
        for model in table:
            per_seed = [judge_rows(c["rows"][model], c["rows"]["retrained"], c["rows"]["original"], c["target"],
                                   forget_loss=FORGET_LOSS).verdict for c in mine]
            verdicts[model] = {**_verdict_of_means(table, model), "per_seed": per_seed}
        out[corpus] = {"seeds": [c["seed"] for c in mine], "models": table, "verdicts": verdicts, "c2": _c2(mine)}
    return out


def _c2(cells: list[dict]) -> dict | None:
    """C2 on the first cell with a gradient-ascent sweep, at the verdict's bands: Fisher Removal's
    default must be "at the retrained model", and then either no gradient-ascent setting of the sweep
    is, or none of those reaches a lower validation perplexity. "inconclusive" when the original model
    is itself within the exposure band (nothing to forget)."""
    cell = next((c for c in cells if "ga_sweep" in c), None)
    if cell is None or "fisher_removal" not in cell["rows"]:
        return None
    rows, target = cell["rows"], cell["target"]
    fr = judge_rows(rows["fisher_removal"], rows["retrained"], rows["original"], target, forget_loss=FORGET_LOSS)
    settings = [r for r in cell["ga_sweep"] if "error" not in r]
    at = [r for r in settings if judge_rows(r, rows["retrained"], rows["original"], target, forget_loss=FORGET_LOSS).at_retrained]
    best = min(at, key=lambda r: r["val_perplexity"]) if at else None
    if judge_rows(rows["original"], rows["retrained"], rows["original"], target).verdict != "under-forgotten":
        verdict = "inconclusive"
    elif not fr.at_retrained:
        verdict = "not reproduced"
    else:
        verdict = "reproduced" if best is None or rows["fisher_removal"]["val_perplexity"] < best["val_perplexity"] else "not reproduced"
    return {"seed": cell["seed"], "verdict": verdict, "fisher_removal": fr.to_dict(),
            "gradient_ascent_at_retrained": len(at), "gradient_ascent_settings": len(settings) + sum("error" in r for r in cell["ga_sweep"]),
            "best_gradient_ascent": None if best is None else {"params": best["params"], "exposure": best["exposure"][target],
                                                               "val_perplexity": best["val_perplexity"]}}


def _pm(stat: dict | None, digits: int = 2) -> str:
    if stat is None or math.isnan(stat["mean"]):
        return ""
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


_NAMES = {"original": "original", "retrained": "retrained", "fisher_removal": "Fisher Removal", "fisher_forgetting": "Fisher Forgetting",
          "gradient_ascent": "gradient ascent", "gradient_difference": "gradient difference", "npo": "NPO", "fine_tune": "fine-tuning",
          WOODBURY_ROW: "Fisher Removal (Woodbury)"}


def method_name(model: str) -> str:
    """A benchmark model's name for tables and legends (``fisher_removal`` -> "Fisher Removal")."""
    return _NAMES.get(model, model.replace("_", " "))


def benchmark_markdown(result: dict) -> str:
    """The benchmark's tables, one per corpus (exposure and utility; the field's metrics and the
    verdict), and the C2 line under each."""
    cfg = result["config"]
    several = len(cfg["seeds"]) > 1
    pm = _pm if several else (lambda stat, digits=2: "" if stat is None or math.isnan(stat["mean"]) else f"{stat['mean']:.{digits}f}")
    lines = [f"# Four-corpus unlearning benchmark ({cfg['profile']} profile: {cfg['run_profile']}-scale models, "
             f"seeds {', '.join(map(str, cfg['seeds']))})", "",
             ("Mean ± std over seeds. " if several else "") + "Exposure in bits (exact, over every candidate); perplexity on "
             "validation text; KL(retrained ‖ model) of next-token predictions on validation text (nats/token); time against "
             "retraining. Every method forgets the most-inserted canary with the secret-given-prefix loss.", "",
             "Forget quality: p-value of a Kolmogorov–Smirnov test between the model's and the retrained model's losses of the "
             "forgotten canary in each of its training contexts (high: indistinguishable). Secret AUC: the fraction of candidate "
             "secrets the forgotten one beats (1 − 2^−exposure); PrivLeak = (AUC − AUC_retrained) / AUC_retrained (0: at the "
             "retrained model, negative: over-forgotten). Verdict: two-sided against the retrained model (exposure within "
             f"±{BANDS.exposure_bits:g} bits, val ppl ≤ {1 + BANDS.perplexity_increase:g}× the retrained model's, KL ≤ "
             f"{1 + BANDS.kl_increase:g}× the original's), on the means; in brackets the seeds at the retrained model.", ""]
    for corpus, data in result["summary"].items():
        lines += [f"## {corpus}", "",
                  "| model | forgotten canary | other inserted | controls | \\|Δ\\| to retrained | val ppl | retain ppl | KL to retrained "
                  "| seconds | / retraining |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for model, s in data["models"].items():
            lines.append(f"| {method_name(model)} | {pm(s.get('forgotten_exposure'))} | {pm(s.get('other_inserted_exposure'))} | "
                         f"{pm(s.get('control_exposure'))} | {pm(s.get('exposure_gap_to_retrained'))} | {pm(s.get('val_perplexity'), 3)} | "
                         f"{pm(s.get('retain_perplexity'), 3)} | {pm(s.get('kl_to_retrained'), 4)} | {pm(s.get('seconds'), 1)} | "
                         f"{pm(s.get('fraction_of_retraining'), 3)} |")
        lines += ["", "| model | forget quality (p) | secret AUC | PrivLeak | verdict |", "|---|---:|---:|---:|---|"]
        for model, s in data["models"].items():
            v = data["verdicts"][model]
            fq = s.get("forget_quality")
            lines.append(f"| {method_name(model)} | {'' if fq is None else format(fq['mean'], '.2g')} | {pm(s.get('membership_auc'), 3)} | "
                         f"{pm(s.get('privleak'), 2)} | {v['verdict']} ({sum(x == 'at the retrained model' for x in v['per_seed'])}/"
                         f"{len(v['per_seed'])}){': ' + '; '.join(v['reasons']) if v['reasons'] else ''} |")
        c2 = data["c2"]
        if c2:
            ga, fr = c2["best_gradient_ascent"], c2["fisher_removal"]
            lines += ["", f"C2 (seed {c2['seed']}): Fisher Removal {fr['verdict']} ({fr['values']['exposure']:.2f} bits, val ppl "
                      f"{fr['values']['perplexity']:.3f}); gradient ascent at the retrained model in {c2['gradient_ascent_at_retrained']} of "
                      f"{c2['gradient_ascent_settings']} settings"
                      + ("" if ga is None else f", best val ppl {ga['val_perplexity']:.3f} (lr {ga['params']['lr']:g}, {ga['params']['steps']} steps, "
                         f"{ga['exposure']:.2f} bits)") + f" -> {c2['verdict']}."]
        lines.append("")
    return "\n".join(lines)


def plot_benchmark(result: dict, axes=None):
    """Exposure of the forgotten canary against validation perplexity, one panel per corpus, every
    model in its colour (mean over seeds, std as error bars). Notebook 07."""
    import matplotlib.pyplot as plt

    summary = result["summary"]
    if axes is None:
        _, axes = plt.subplots(1, len(summary), figsize=(4.2 * len(summary), 3.8), squeeze=False)
        axes = axes[0]
    for ax, (corpus, data) in zip(axes, summary.items()):
        for model, s in data["models"].items():
            x, y = s["val_perplexity"], s["forgotten_exposure"]
            ax.errorbar(x["mean"], y["mean"], xerr=x["std"], yerr=y["std"], fmt="*" if model == "retrained" else "o",
                        ms=12 if model == "retrained" else 6, color=COLOURS.get(model, "grey"), label=method_name(model), capsize=2)
        ax.set(title=corpus, xlabel="validation perplexity", xscale="log")
    axes[0].set_ylabel("exposure of the forgotten canary (bits)")
    axes[-1].legend(fontsize="x-small", loc="best")
    return axes
