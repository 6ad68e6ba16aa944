"""Tables, comparisons and the paper's claims, computed from the studies' results: the methods
against the retrained oracle and a sweep's rows (notebooks 04–06), the first-order baselines against
Fisher Removal (notebook 06, C2 on one request), C1, C2 and C5 per corpus of the four-corpus
benchmark and what retraining does to the *other* inserted canary (notebook 07), and C3 over
sequential requests (notebook 05).

Everything here reads the dicts the studies return (cached JSON) and never changes a cached number.
A verdict is this run's, at this scale; where a direction is a data-dependent observation rather
than a property with margin, the notebooks print it and check it as a majority.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .benchmark import WOODBURY_ROW, method_name


def _word(ok: bool | None) -> str:
    return "n/a" if ok is None else "holds" if ok else "FAILS"


# ----------------------------------------------------------------------------------- notebooks 04–06
#: column title and format of each measured quantity in :func:`sweep_markdown`
COLUMNS = {"exposure": ("exposure", ".2f"), "val_perplexity": ("val ppl", ".3f"), "retain_perplexity": ("retain ppl", ".3f"),
           "forget_loss": ("forget loss", ".2f"), "kl_to_reference": ("KL to oracle", ".4f"), "seconds": ("seconds", ".1f"),
           "update_norm": ("update norm", ".3g")}


def unlearning_table(results: dict[str, dict], watch: list[str]) -> str:
    """One markdown row per model of ``results`` (name -> :func:`~tutorial_lib.unlearning.evaluation.evaluate_unlearning`
    dict against the oracle): the exposure of each watched canary, validation and retain perplexity,
    forget loss and KL to the oracle. Notebook 04."""
    rows = ["| model | " + " | ".join(f"exposure {n}" for n in watch) + " | val ppl | retain ppl | forget loss | KL to oracle |",
            "|---|" + "---|" * (len(watch) + 4)]
    for name, r in results.items():
        rows.append(f"| {name} | " + " | ".join(f"{r['exposure'][n]:.2f}" for n in watch)
                    + f" | {r['val_perplexity']:.3f} | {r['retain_perplexity']:.3f} | {r['forget_loss']:.2f} | {r['kl_to_reference']:.4f} |")
    return "\n".join(rows)


def _cell(row: dict, metric: str, target: str) -> str:
    value = row["exposure"][target] if metric == "exposure" else row[metric]
    return format(value, COLUMNS[metric][1])


def sweep_markdown(sweep: dict, metrics=("exposure", "val_perplexity", "seconds"), skip_errors: bool = False) -> str:
    """A sweep's rows as a markdown table: the swept parameters, then ``metrics`` (keys of
    :data:`COLUMNS`; exposure is the sweep's target canary's). A refused point shows its error, unless
    ``skip_errors``. ``sweep`` is one sweep (:func:`~tutorial_lib.experiments.sweeps.run_removal_sweep` and
    relatives) or a dict method -> sweep, which adds a first column ``method``. Notebooks 04–06."""
    unknown = [m for m in metrics if m not in COLUMNS]
    if unknown or not metrics:
        raise ValueError(f"unknown sweep columns {unknown or list(metrics)}; expected some of {', '.join(COLUMNS)}")
    sweeps = {None: sweep} if "rows" in sweep else dict(sweep)
    if not sweeps:
        raise ValueError("no sweep to tabulate")
    first = next(iter(sweeps.values()))
    params = list(first["grid"])
    head = (["method"] if None not in sweeps else []) + params + [COLUMNS[m][0] for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, s in sweeps.items():
        lead = [] if method is None else [method]
        for r in s["rows"]:
            values = lead + [format(r["params"][p], "g") for p in params]
            if "error" in r:
                if not skip_errors:
                    lines.append("| " + " | ".join(values + [f"refused: {r['error'][:50]}"]) + " |" + " |" * (len(metrics) - 1))
                continue
            lines.append("| " + " | ".join(values + [_cell(r, m, s["target"]) for m in metrics]) + " |")
    return "\n".join(lines)


@dataclass
class BaselineComparison:
    """The first-order baselines' sweeps against Fisher Removal on one request. Per method: the
    lowest exposure among the settings within the perplexity ``budget`` (``best``, a row or ``None``)
    and the setting with the worst perplexity (``worst``); Fisher Removal's chosen point
    (``fisher_removal``) and, per method, the lowest-perplexity setting at its exposure or lower
    (``matched``, a row or ``None``). ``c2_holds``: Fisher Removal's perplexity is below gradient
    ascent's matched one (or gradient ascent never gets there)."""

    target: str
    budget: float
    best: dict[str, dict | None]
    worst: dict[str, dict]
    fisher_removal: dict
    matched: dict[str, dict | None]

    @property
    def c2_holds(self) -> bool:
        ga = self.matched.get("gradient_ascent")
        return ga is None or self.fisher_removal["val_perplexity"] < ga["val_perplexity"]

    def budget_summary(self) -> str:
        """Per method: the lowest exposure within the budget and the worst perplexity of the grid."""
        lines = []
        for method, best in self.best.items():
            worst = self.worst[method]
            best_text = (f"lowest exposure within budget {best['exposure'][self.target]:.2f} bits (lr {best['params']['lr']:g}, "
                         f"{best['params']['steps']} steps)" if best else "no setting within the budget")
            lines.append(f"{method:20s} {best_text}; worst perplexity {worst['val_perplexity']:.4g} "
                         f"(lr {worst['params']['lr']:g}, {worst['params']['steps']} steps)")
        return "\n".join(lines)

    def summary(self) -> str:
        """Fisher Removal's point, then each baseline at matched exposure."""
        fr, t = self.fisher_removal, self.target
        lines = [f"Fisher Removal (default): exposure {fr['exposure'][t]:.2f} bits, val ppl {fr['val_perplexity']:.3f}, {fr['seconds']:.1f} s"]
        for method, r in self.matched.items():
            lines.append(f"{method:20s} " + (f"val ppl {r['val_perplexity']:.3f} at exposure {r['exposure'][t]:.2f} (lr {r['params']['lr']:g}, "
                                             f"{r['params']['steps']} steps, {r['seconds']:.1f} s)" if r else "never reaches that exposure in the grid"))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {**asdict(self), "c2_holds": self.c2_holds}


def baseline_comparison(removal: dict, sweeps: dict[str, dict], budget: float) -> BaselineComparison:
    """Each baseline's sweep (method -> :func:`~tutorial_lib.experiments.sweeps.run_baseline_sweep` result)
    within the perplexity ``budget``, and at the exposure of Fisher Removal's chosen point of
    ``removal`` (:func:`~tutorial_lib.experiments.sweeps.run_removal_sweep`). Notebook 06, "Where each one
    collapses" and "Against Fisher Removal at matched exposure" (claim C2 on one request)."""
    if not sweeps:
        raise ValueError("no baseline sweeps given")
    if removal.get("chosen") is None:
        raise ValueError("the removal sweep chose no point")
    target = removal["target"]
    fr = next(r for r in removal["rows"] if r["params"] == removal["chosen"]["params"])
    best, worst, matched = {}, {}, {}
    for method, sweep in sweeps.items():
        rows = [r for r in sweep["rows"] if "error" not in r]
        if not rows:
            raise ValueError(f"every point of {method}'s sweep was refused")
        ok = [r for r in rows if r["val_perplexity"] <= budget]
        best[method] = min(ok, key=lambda r: r["exposure"][target]) if ok else None
        worst[method] = max(rows, key=lambda r: r["val_perplexity"])
        reach = [r for r in rows if r["exposure"][target] <= fr["exposure"][target]]
        matched[method] = min(reach, key=lambda r: r["val_perplexity"]) if reach else None
    return BaselineComparison(target, budget, best, worst, fr, matched)


# ----------------------------------------------------------------------------------- notebook 07
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"


@dataclass
class ClaimVerdict:
    """One claim on one corpus: ``verdict`` (reproduced, not reproduced or inconclusive), the
    ``evidence`` in words, the measured ``values``, the ``band`` it was judged by and the
    ``forget_loss`` the unlearning used."""

    claim: str
    verdict: str
    evidence: str
    values: dict
    band: dict
    forget_loss: str = "secret"

    @property
    def holds(self) -> bool:
        return self.verdict == REPRODUCED

    def summary(self) -> str:
        return f"{self.claim} {self.verdict}: {self.evidence}"


@dataclass
class CorpusClaims:
    """C1, C2 (``None`` without a gradient-ascent sweep) and C5 on one corpus of the benchmark, and C1
    again with the method's own Fisher (``c1_woodbury``; ``None`` when the benchmark ran without it)."""

    corpus: str
    c1: ClaimVerdict
    c2: ClaimVerdict | None
    c5: ClaimVerdict
    c1_woodbury: ClaimVerdict | None = None

    def summary(self) -> str:
        return "\n".join([f"{self.corpus}:"] + [f"  {c.summary()}" for c in (self.c1, self.c1_woodbury, self.c2, self.c5) if c is not None])


@dataclass
class BenchmarkClaims:
    """The claims per corpus (:func:`benchmark_claims`), with the bands they were judged by."""

    bands: dict
    max_fraction: float
    min_retrain_seconds: float
    corpora: dict[str, CorpusClaims] = field(default_factory=dict)

    def count(self, claim: str, verdict: str = REPRODUCED) -> int:
        """On how many corpora ``claim`` (``"c1"``, ``"c1_woodbury"``, ``"c2"`` or ``"c5"``) has ``verdict``."""
        return sum(getattr(c, claim) is not None and getattr(c, claim).verdict == verdict for c in self.corpora.values())

    def summary(self) -> str:
        return "\n".join(c.summary() for c in self.corpora.values())

    def to_dict(self) -> dict:
        return {"bands": self.bands, "max_fraction": self.max_fraction, "min_retrain_seconds": self.min_retrain_seconds,
                "corpora": {name: {k: None if getattr(c, k) is None else asdict(getattr(c, k)) for k in ("c1", "c1_woodbury", "c2", "c5")}
                            for name, c in self.corpora.items()}}


def c1_claim(fisher_removal: dict, original: dict, claim: str = "C1", label: str = "Fisher Removal") -> ClaimVerdict:
    """C1 from the two-sided verdicts (:meth:`~tutorial_lib.unlearning.verdicts.Verdict.to_dict`) of
    Fisher Removal and of the original model against the retrained one: reproduced when Fisher Removal
    is at the retrained model, inconclusive when the original itself is not under-forgotten (nothing to
    forget), else not reproduced. ``claim`` and ``label`` name the claim and the method in the evidence
    (C1 with the Woodbury Fisher: ``"C1 (Woodbury)"``, ``"Fisher Removal (Woodbury)"``)."""
    v = fisher_removal["values"]
    if original["verdict"] != "under-forgotten":
        verdict = INCONCLUSIVE
    else:
        verdict = REPRODUCED if fisher_removal["verdict"] == "at the retrained model" else NOT_REPRODUCED
    kl = "" if v.get("kl") is None else f", KL {v['kl']:.4f} vs the original's {v['original_kl']:.4f}"
    evidence = (f"{label} {fisher_removal['verdict']}: {v['exposure']:.2f} bits vs retrained {v['retrained_exposure']:.2f} (original "
                f"{original['values']['exposure']:.2f}), val ppl {v['perplexity'] / v['retrained_perplexity'] - 1:+.0%} against the "
                f"retrained model's{kl}")
    return ClaimVerdict(claim, verdict, evidence, v, fisher_removal["bands"], fisher_removal["forget_loss"])


def c5_claim(seconds: float, retrain_seconds: float, max_fraction: float = 0.1, min_retrain_seconds: float = 60.0,
             forget_loss: str = "secret") -> ClaimVerdict:
    """C5: unlearning in at most ``max_fraction`` of retraining's wall time; inconclusive when retraining
    takes under ``min_retrain_seconds`` (fixed costs then decide the ratio)."""
    fraction = seconds / retrain_seconds
    verdict = INCONCLUSIVE if retrain_seconds < min_retrain_seconds else REPRODUCED if fraction <= max_fraction else NOT_REPRODUCED
    evidence = (f"{seconds:.1f} s vs retraining {retrain_seconds:.1f} s ({fraction:.2f})"
                + (f"; retraining under {min_retrain_seconds:g} s: fixed costs decide the ratio" if verdict == INCONCLUSIVE else ""))
    return ClaimVerdict("C5", verdict, evidence, {"seconds": seconds, "retrain_seconds": retrain_seconds, "fraction_of_retraining": fraction},
                        {"max_fraction": max_fraction, "min_retrain_seconds": min_retrain_seconds}, forget_loss)


def benchmark_claims(result: dict, max_fraction: float = 0.1, min_retrain_seconds: float = 60.0) -> BenchmarkClaims:
    """C1, C2 and C5 for every corpus of :func:`~tutorial_lib.experiments.benchmark.run_benchmark`'s
    ``result`` (means over its seeds), each reproduced, not reproduced or inconclusive:

    - C1: Fisher Removal's default is "at the retrained model" by the two-sided verdict; judged again
      for the Woodbury row (the method's own Fisher) when the benchmark ran it (``c1_woodbury``)
      (:func:`~tutorial_lib.unlearning.verdicts.judge`: exposure within the band above *or* below,
      perplexity and KL within theirs); inconclusive when the original itself is within the exposure
      band (nothing to forget).
    - C2: from the benchmark's summary (:func:`~tutorial_lib.experiments.benchmark.summarise`):
      Fisher Removal at the retrained model with a lower perplexity than any gradient-ascent setting
      that also is.
    - C5: Fisher Removal takes at most ``max_fraction`` of retraining's wall time; inconclusive when
      retraining takes under ``min_retrain_seconds`` (fixed costs then decide the ratio).

    Notebook 07, "The claims, corpus by corpus"."""
    claims = None
    for corpus, data in result["summary"].items():
        m, verdicts = data["models"], data["verdicts"]
        fr, original = verdicts["fisher_removal"], verdicts["original"]
        if claims is None:
            claims = BenchmarkClaims(fr["bands"], max_fraction, min_retrain_seconds)
        c1v = c1_claim(fr, original)
        c2v = None
        if data.get("c2"):
            c2 = data["c2"]
            ga = c2["best_gradient_ascent"]
            evidence = (f"seed {c2['seed']}: Fisher Removal {c2['fisher_removal']['verdict']}; gradient ascent at the retrained model in "
                        f"{c2['gradient_ascent_at_retrained']} of {c2['gradient_ascent_settings']} settings"
                        + ("" if ga is None else f", best val ppl {ga['val_perplexity']:.3f} vs Fisher Removal's "
                           f"{c2['fisher_removal']['values']['perplexity']:.3f}"))
            c2v = ClaimVerdict("C2", c2["verdict"], evidence, {"fisher_removal": c2["fisher_removal"]["values"], "best_gradient_ascent": ga,
                                                               "gradient_ascent_at_retrained": c2["gradient_ascent_at_retrained"]},
                               fr["bands"], fr["forget_loss"])
        c5v = c5_claim(m["fisher_removal"]["seconds"]["mean"], m["retrained"]["seconds"]["mean"], max_fraction, min_retrain_seconds,
                       fr["forget_loss"])
        woodbury = verdicts.get(WOODBURY_ROW)
        c1w = None if woodbury is None else c1_claim(woodbury, original, "C1 (Woodbury)", method_name(WOODBURY_ROW))
        claims.corpora[corpus] = CorpusClaims(corpus, c1v, c2v, c5v, c1w)
    return claims


@dataclass
class OtherCanaryShift:
    """Per corpus, the mean exposure of the inserted canaries that were *not* forgotten: the original's
    (``original``), the retrained model's (``retrained``) and each unlearning method's distance to the
    retrained model's (``gaps``). ``rises``: on how many corpora the retrained model's is higher."""

    original: dict[str, float]
    retrained: dict[str, float]
    gaps: dict[str, dict[str, float]]

    @property
    def corpora(self) -> list[str]:
        return list(self.original)

    @property
    def rises(self) -> int:
        return sum(self.retrained[c] > self.original[c] for c in self.corpora)

    def summary(self) -> str:
        lines = [f"{c:12s} other inserted canary: original {self.original[c]:5.2f}, retrained {self.retrained[c]:5.2f} bits | "
                 + ", ".join(f"{m} {gap:+.1f}" for m, gap in self.gaps[c].items()) for c in self.corpora]
        lines.append(f"the retrained model's exposure is above the original's on {self.rises} of {len(self.corpora)} corpora")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"original": self.original, "retrained": self.retrained, "gaps": self.gaps, "rises": self.rises}


def other_canary_shift(result: dict) -> OtherCanaryShift:
    """What removing the most-inserted canary does to the other inserted ones, per corpus of the
    benchmark ``result`` (means over seeds), and how far each unlearning method ends from the retrained
    model on them. A data-dependent observation, not a property: read ``rises`` as a count.
    Notebook 07, exercise 1."""
    original, retrained, gaps = {}, {}, {}
    for corpus, data in result["summary"].items():
        other = {model: s["other_inserted_exposure"]["mean"] for model, s in data["models"].items()}
        original[corpus], retrained[corpus] = other["original"], other["retrained"]
        gaps[corpus] = {m: other[m] - other["retrained"] for m in other if m not in ("original", "retrained")}
    return OtherCanaryShift(original, retrained, gaps)


# ----------------------------------------------------------------------------------- notebook 05
@dataclass
class GentlerVerdict:
    """C3 over sequential requests: Fisher Forgetting ends at a lower perplexity than Fisher Removal
    with the forgotten canaries' mean exposure at most ``tolerance_bits`` higher."""

    removal_perplexity: float
    forgetting_perplexity: float
    removal_bits: float
    forgetting_bits: float
    tolerance_bits: float

    @property
    def holds(self) -> bool:
        return self.forgetting_perplexity < self.removal_perplexity and self.forgetting_bits <= self.removal_bits + self.tolerance_bits

    def summary(self) -> str:
        return (f"C3 (Forgetting ends closer to the original perplexity at about the same exposure): "
                f"{'holds' if self.holds else 'does not hold'} here")

    def to_dict(self) -> dict:
        return {**asdict(self), "holds": self.holds}


def forgetting_gentler(summary: dict, tolerance_bits: float = 0.5) -> GentlerVerdict:
    """C3 from :func:`~tutorial_lib.experiments.robustness.sequential_summary` (which must hold
    ``fisher_removal`` and ``fisher_forgetting``): perplexity after the last request, and the mean
    exposure of the forgotten canaries at the end. Notebook 05, "Repeated requests"."""
    missing = {"fisher_removal", "fisher_forgetting"} - set(summary)
    if missing:
        raise ValueError(f"the sequential summary lacks {', '.join(sorted(missing))}")
    fr, ff = summary["fisher_removal"], summary["fisher_forgetting"]
    return GentlerVerdict(fr["val_perplexity_after"], ff["val_perplexity_after"], fr["forgotten_at_end"], ff["forgotten_at_end"], tolerance_bits)


def c3_claim(study: dict, tolerance_bits: float = 0.5, min_gap_bits: float = 8.0) -> ClaimVerdict:
    """C3 over seeds from :func:`~tutorial_lib.experiments.robustness.run_c3_study`: on each seed,
    :func:`forgetting_gentler` (Fisher Forgetting ends at a lower perplexity than Fisher Removal, its
    forgotten canaries at most ``tolerance_bits`` higher). Reproduced when it holds on every seed, not
    reproduced when on none, inconclusive when the seeds disagree or when the requested canaries
    started under ``min_gap_bits`` above the controls on some seed (nothing much to forget)."""
    seeds = study["per_seed"]
    verdicts = {seed: forgetting_gentler(d["summary"], tolerance_bits) for seed, d in seeds.items()}
    gaps = {seed: d["start"]["gap"] for seed, d in seeds.items()}
    held = sum(v.holds for v in verdicts.values())
    if min(gaps.values()) < min_gap_bits:
        verdict = INCONCLUSIVE
    else:
        verdict = REPRODUCED if held == len(verdicts) else NOT_REPRODUCED if held == 0 else INCONCLUSIVE
    per_seed = "; ".join(f"seed {seed}: val ppl {v.forgetting_perplexity:.3f} (Forgetting) vs {v.removal_perplexity:.3f} (Removal), "
                         f"{v.forgetting_bits:.2f} vs {v.removal_bits:.2f} bits" for seed, v in verdicts.items())
    evidence = (f"{study['n_requests']} requests on the {study['run_profile']}-scale model; holds on {held} of {len(verdicts)} seeds "
                f"({per_seed}); requested canaries started {min(gaps.values()):.1f}-{max(gaps.values()):.1f} bits above the controls")
    values = {"per_seed": {seed: v.to_dict() for seed, v in verdicts.items()}, "start_gap_bits": gaps, "held": held}
    return ClaimVerdict("C3", verdict, evidence, values, {"tolerance_bits": tolerance_bits, "min_gap_bits": min_gap_bits})
