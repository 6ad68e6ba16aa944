"""DP-SGD on the same GPT-2s, data and canaries (notebook 08): Opacus' ``PrivacyEngine`` with
per-example clipping, Poisson sampling, Gaussian noise and the RDP accountant.

Training with differential privacy from the start is the alternative to unlearning afterwards. A run
is defined by the memorisation run it replaces (:class:`~tutorial_lib.experiments.memorization.MemorizationConfig`:
corpus, canaries, model, optimiser, steps) plus a :class:`DPConfig` (target ε, δ, clipping bound).
The training text is cut into non-overlapping windows of ``block_size + 1`` tokens, the *examples*
that ε and δ are about; each step takes every window with probability q = batch_size / n (Poisson
sampling), so a step sees ``batch_size`` windows on average and ``steps`` steps make
``steps * batch_size / n`` epochs, the same budget as the non-private run.

Two details matter for GPT-2 under Opacus (1.6) and transformers (5.x):

* the model must be called with ``position_ids`` for the whole batch, shape (B, T). Without them
  GPT-2 builds positions of shape (1, T), and the position embedding's per-sample gradients come
  out with a batch dimension of 1 instead of B (:func:`position_ids`);
* HF's ``Conv1D`` (GPT-2's attention and MLP projections) has no Opacus grad sampler, so Opacus
  would fall back to ``torch.func`` for it. :func:`register_conv1d_grad_sampler` registers one
  (a Linear layer with its weight transposed: one einsum per parameter); ``bench/dp_step.py``
  measures both against a plain step.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass
from typing import ClassVar

from tqdm.auto import tqdm

from ..core.cache import (
    cache_root,
    cached_result,
    config_key,
    key_lock,
    load_run,
    result_path,
    save_run,
)
from ..core.data import CORPORA, corpus_sha256
from ..core.evaluation import compute_loss, tokenize_lines
from ..core.models import load_pretrained, make_model, pretrained_fingerprint
from ..core.profiles import (
    config_for_profile,
    model_scale,
    progress_options,
    resolve_device,
    resolve_profile,
)
from ..core.training import TrainedModel
from ..privacy.dp import EPSILONS, DPConfig, train_dp_language_model, whole_line_windows
from ..privacy.exposure import compute_exposure
from .benchmark import COLOURS, BenchmarkConfig, benchmark_cell
from .comparisons import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, ClaimVerdict
from .memorization import (
    MemorizationConfig,
    prepare_memorization,
    train_memorization_model,
)
from .sweeps import run_unlearning_methods

#: fingerprinted for this module's cached results (:func:`~tutorial_lib.core.cache.code_fingerprint`)
DP_MODULES = ("privacy/dp.py", "experiments/dp_comparison.py")


def canary_windows(tokenizer, inserted, block_size: int):
    """DP's examples for the training lines of ``inserted`` (an :class:`~tutorial_lib.core.canaries.InsertedCorpus`):
    windows of ``block_size + 1`` tokens in which every canary occurrence stays whole
    (:func:`~tutorial_lib.privacy.dp.whole_line_windows`), as a dataset of (windows, mask). Notebook 08."""
    line_ids = tokenizer([line + "\n" for line in inserted.lines], add_special_tokens=False)["input_ids"]
    canary_lines = {i for positions in inserted.positions.values() for i in positions}
    return whole_line_windows(line_ids, block_size, canary_lines, tokenizer.pad_token_id or 0)


def train_dp_model(cfg: MemorizationConfig, dp: DPConfig, seed: int = 0, device: str | None = None, cache_dir=None,
                   progress: bool = True) -> TrainedModel:
    """Train (or load from the cache) the DP-SGD counterpart of the memorisation run ``cfg``: same
    corpus, canaries, model and steps, over windows that keep every canary occurrence whole
    (:func:`~tutorial_lib.privacy.dp.whole_line_windows`); ``DPConfig(noise_multiplier=0.0)`` is the
    matched non-private run through the same pipeline. Returns a :class:`~tutorial_lib.core.training.TrainedModel`; ``record["privacy"]`` holds σ, δ and the spent ε. Notebook 08."""
    device = resolve_device(device)
    pretrained = load_pretrained(cfg.model.pretrained_path, device=device) if cfg.model.pretrained_path else None
    data = prepare_memorization(cfg, seed, pretrained[1] if pretrained else None)
    splits, tokenizer, canaries, inserted = data.splits, data.tokenizer, data.canaries, data.inserted
    run_config = {"kind": "dp-sgd", "seed": seed, "data_sha256": corpus_sha256(cfg.corpus)[1], **cfg.to_dict(),
                  "dp": dp.to_dict(), "windows": "canary occurrences whole"}
    run_config.pop("estimate_samples")
    if cfg.model.pretrained_path:  # keyed by the weights, not the folder's path
        run_config["pretrained_sha256"] = pretrained_fingerprint(cfg.model.pretrained_path)
    folder = cache_root(cache_dir) / f"dp-{config_key(run_config)}"
    with key_lock(folder):  # a second process asking for this checkpoint waits, then loads it
        if (folder / "run.json").is_file():
            run = load_run(folder, run_config, device=device)
            return TrainedModel(run.model, run.tokenizer, run.record, True, canaries, splits)
        model = pretrained[0] if pretrained else make_model(cfg.model, len(tokenizer), seed=seed, device=device)
        windows = canary_windows(tokenizer, inserted, cfg.train.block_size)
        val_ids = tokenize_lines(tokenizer, splits.validation)
        start = time.perf_counter()
        history, privacy = train_dp_language_model(model, windows, val_ids, cfg.train, dp, seed=seed, device=device, progress=progress)
        record = {"history": history.to_dict(), "privacy": privacy, "train_seconds": time.perf_counter() - start}
        save_run(folder, model, tokenizer, run_config, record)
        return TrainedModel(model, tokenizer, record, False, canaries, splits)


# ----------------------------------------------------------------------------------- the study
def run_dp_study(cfg: MemorizationConfig, epsilons: tuple[float, ...] = EPSILONS, seed: int = 0, device=None, max_grad_norm: float = 1.0,
                 candidates: int | None = None, use_cache: bool = True, progress: bool = True, matched: bool = True) -> tuple[dict, bool]:
    """DP-SGD at each target ε (δ = 1/n) next to two non-private runs, on the memorisation run ``cfg``:
    the ordinary one (the original model: random-offset windows, batch clipping) and, with ``matched``,
    σ = 0 through the very pipeline of the private runs (the same Opacus loader, Poisson sampling,
    windows and per-example clipping), which separates the price of privacy from the price of the
    pipeline. Per run: exposure of every canary (exact, or among ``candidates`` sampled secrets),
    validation perplexity, σ and the spent ε (``None`` without noise: ε = ∞), training time. Cached:
    ``(result, from_cache)``. Rows: non-private, σ = 0 (``"matched": True``), then decreasing ε.
    Notebook 08 and the reproduction's DP table."""

    epsilons = tuple(sorted({float(e) for e in epsilons}, reverse=True))
    for e in epsilons:
        DPConfig(target_epsilon=e, max_grad_norm=max_grad_norm)  # validates before any training

    def evaluate(model, tokenizer, canaries, splits) -> dict:
        val_ids = tokenize_lines(tokenizer, splits.validation)
        val = compute_loss(model, val_ids, cfg.train.block_size, max_blocks=64)
        exposure = {c.name: compute_exposure(model, tokenizer, c, candidates=candidates, progress=progress).exposure
                    for c in tqdm(canaries, desc="exposure", **progress_options(progress))}
        return {"exposure": exposure, "val_loss": val, "val_perplexity": math.exp(val)}

    def compute():
        run = train_memorization_model(cfg, seed=seed, device=device, progress=progress)
        rows = [{"label": "non-private", "target_epsilon": None, "epsilon": None, "noise_multiplier": 0.0, "matched": False,
                 "train_seconds": run.record["train_seconds"], **evaluate(run.model, run.tokenizer, run.canaries, run.splits)}]
        private = [DPConfig(target_epsilon=None, noise_multiplier=0.0, max_grad_norm=max_grad_norm)] if matched else []
        private += [DPConfig(target_epsilon=eps, max_grad_norm=max_grad_norm) for eps in epsilons]
        for dp in private:
            run = train_dp_model(cfg, dp, seed=seed, device=device, progress=progress)
            model, tokenizer, canaries, splits, record = run.model, run.tokenizer, run.canaries, run.splits, run.record
            p = record["privacy"]
            eps = dp.target_epsilon
            rows.append({"label": "sigma = 0 (same pipeline)" if eps is None else f"eps = {eps:g}", "target_epsilon": eps,
                         "epsilon": None if eps is None else p["epsilon"], "noise_multiplier": p["noise_multiplier"], "matched": eps is None,
                         "delta": p["delta"], "sample_rate": p["sample_rate"], "epochs": p["epochs"],
                         "train_seconds": record["train_seconds"], **evaluate(model, tokenizer, canaries, splits)})
        return {"corpus": cfg.corpus, "canaries": [c.to_dict() for c in canaries], "rows": rows}

    return cached_result("dp_study", _study_key(cfg, epsilons, seed, max_grad_norm, candidates, matched), compute, use_cache=use_cache,
                         modules=DP_MODULES)


def _study_key(cfg: MemorizationConfig, epsilons, seed: int, max_grad_norm: float, candidates: int | None, matched: bool) -> dict:
    return {"run": cfg.to_dict(), "seed": seed, "epsilons": sorted({float(e) for e in epsilons}, reverse=True),
            "max_grad_norm": max_grad_norm, "candidates": candidates, "matched": matched}


def dp_study_cached(cfg: MemorizationConfig, epsilons: tuple[float, ...] = EPSILONS, seed: int = 0, max_grad_norm: float = 1.0,
                    candidates: int | None = None, matched: bool = True) -> bool:
    """Whether :func:`run_dp_study` with these arguments is already in the result cache."""

    return result_path("dp_study", _study_key(cfg, epsilons, seed, max_grad_norm, candidates, matched), modules=DP_MODULES).is_file()


# ----------------------------------------------------------------------------------- notebook 08's comparison
@dataclass(frozen=True)
class DPComparisonConfig:
    """The DP-SGD runs of notebook 08 and the reproduction: the privacy–utility curve (``epsilons``)
    on each of ``corpora`` at the ``run_profile`` model scale, next to the unlearning methods of the
    four-corpus benchmark on the same models (its one-seed cells), and, when ``own_scale`` is set,
    DP-SGD at ``own_scale_epsilons`` on Shakespeare at the profile's own model scale, next to the
    unlearning methods on notebook 04's model.

    ``small``: the tiny-scale models of the benchmark for the four corpora (CPU), plus the small
    model on Shakespeare at ε = 1 in the reproduction (a DP run of the small model takes about
    3 minutes on 2 cores); ``tiny``: Shakespeare only; ``full``: the small-scale models for the
    four corpora, plus the full model at every ε. Every tiny-scale curve has its σ = 0 run through the
    same pipeline (:func:`run_dp_study`); the profile-scale run has it where ``own_scale_matched`` (at
    ``full``: at ``small`` it would add another 3 minutes of DP training to the reproduction)."""

    profile: str = "small"
    corpora: tuple[str, ...] = ()
    run_profile: str = "tiny"
    epsilons: tuple[float, ...] = EPSILONS
    max_grad_norm: float = 1.0
    own_scale: bool = True
    own_scale_epsilons: tuple[float, ...] = (1.0,)
    own_scale_matched: bool = False

    PROFILE_DEFAULTS: ClassVar[dict[str, dict]] = {
        "tiny": {"corpora": ("shakespeare",), "own_scale": False},
        "small": {"corpora": tuple(CORPORA)},
        "full": {"corpora": tuple(CORPORA), "own_scale_epsilons": EPSILONS, "own_scale_matched": True},
    }

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> "DPComparisonConfig":
        """Which runs notebook 08 and the reproduction make at ``profile``: the profile's row of
        ``PROFILE_DEFAULTS`` at the model scale of :func:`~tutorial_lib.core.profiles.model_scale`
        (``run_profile``), then ``overrides``."""
        profile = resolve_profile(profile)
        return config_for_profile(cls, profile, overrides, profile=profile, run_profile=model_scale(profile))

    def run_config(self, corpus: str) -> MemorizationConfig:
        return MemorizationConfig.for_profile(self.run_profile, corpus=corpus)

    def to_dict(self) -> dict:
        return asdict(self)


def run_dp_comparison(cfg: DPComparisonConfig, seed: int = 0, device=None, own_scale: bool | None = None, progress: bool = True) -> dict:
    """Every DP study of ``cfg`` and, per corpus, the unlearning benchmark's cell on the same model
    (original, retrained, Fisher Removal, Fisher Forgetting, the baselines): ``{"config", "curves":
    {corpus: run_dp_study}, "unlearning": {corpus: benchmark rows}, "own_scale": run_dp_study or None}``.
    Everything is cached; ``own_scale`` overrides ``cfg.own_scale``."""



    bench = dataclasses.replace(BenchmarkConfig.for_profile(cfg.profile), corpora=cfg.corpora, seeds=(seed,),
                                run_profile=cfg.run_profile)
    curves, unlearning = {}, {}
    for corpus in tqdm(cfg.corpora, desc="DP-SGD (corpus)", **progress_options(progress)):
        curves[corpus] = run_dp_study(cfg.run_config(corpus), cfg.epsilons, seed, device, cfg.max_grad_norm, progress=False)[0]
        cell = benchmark_cell(bench, corpus, seed, device, progress=False)[0]
        unlearning[corpus] = {"target": cell["target"], "rows": cell["rows"]}
    own = own_unlearning = None
    if cfg.own_scale if own_scale is None else own_scale:
        own_cfg = MemorizationConfig.for_profile(cfg.profile)
        own = run_dp_study(own_cfg, cfg.own_scale_epsilons, seed, device, cfg.max_grad_norm, progress=progress,
                           matched=cfg.own_scale_matched)[0]
        methods = run_unlearning_methods(own_cfg, seed, device, progress=progress)
        names = {"retrained oracle": "retrained"}
        own_unlearning = {"target": methods["target"], "rows": {names.get(k, k): v for k, v in methods["results"].items()}}
    return {"config": cfg.to_dict(), "seed": seed, "curves": curves, "unlearning": unlearning, "own_scale": own,
            "own_scale_unlearning": own_unlearning}


def _matched_row(rows: list[dict]) -> dict | None:
    """The σ = 0 run through the DP pipeline among a study's rows, if it has one."""
    return next((r for r in rows if r.get("matched")), None)


def _by_insertions(study: dict) -> list[tuple[str, int]]:
    return sorted(((c["name"], c["insertions"]) for c in study["canaries"]), key=lambda t: -t[1] if t[1] else 1)


def dp_markdown(study: dict, title: str | None = None) -> str:
    """One DP study as a markdown table: every run's spent ε, σ, validation perplexity and the
    exposure of every canary (inserted counts in the header)."""
    canaries = _by_insertions(study)
    base = study["rows"][0]["val_perplexity"]
    lines = [f"**{title or study['corpus']}**", "",
             "| run | ε spent | σ | val ppl | " + " | ".join(f"{n} ({k}x)" if k else f"{n} (control)" for n, k in canaries) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(canaries)]
    for r in study["rows"]:
        eps = "∞" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        lines.append(f"| {r['label']} | {eps} | {r['noise_multiplier']:.2f} | {r['val_perplexity']:.2f} ({r['val_perplexity'] / base - 1:+.0%}) | "
                     + " | ".join(f"{r['exposure'][n]:.2f}" for n, _ in canaries) + " |")
    return "\n".join(lines) + "\n"


UNLEARNING_POINTS = ("original", "retrained", "fisher_removal", "fisher_forgetting", "gradient_ascent", "gradient_difference")


def plot_dp_vs_unlearning(study: dict, unlearning: dict | None = None, ax=None, insertions: int | None = None):
    """Exposure of the most-inserted canary (or the one inserted ``insertions`` times) against
    validation perplexity: the DP-SGD runs as a curve over ε, and, when ``unlearning`` (a benchmark
    cell's rows on the same model) is given, the unlearning methods in the benchmark's colours and
    the retrained model as the star. Notebook 08."""
    import matplotlib.pyplot as plt


    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    canaries = _by_insertions(study)
    name, k = next(((n, k) for n, k in canaries if k == insertions), canaries[0]) if insertions else canaries[0]
    rows = study["rows"]
    dp_rows = [r for r in rows if r["target_epsilon"] is not None]
    ax.plot([r["val_perplexity"] for r in dp_rows], [r["exposure"][name] for r in dp_rows], "D-", color="C5", label="DP-SGD")
    for r in dp_rows:
        ax.annotate(f"ε={r['target_epsilon']:g}", (r["val_perplexity"], r["exposure"][name]), fontsize="x-small",
                    xytext=(4, 4), textcoords="offset points")
    matched = _matched_row(rows)
    if matched is not None:
        ax.plot(matched["val_perplexity"], matched["exposure"][name], "D", mfc="none", mec="C5", ms=8, label="σ = 0, same pipeline")
    if unlearning is None or unlearning["target"] != name:
        ax.plot(rows[0]["val_perplexity"], rows[0]["exposure"][name], "ks", ms=8, label="non-private (original)")
    else:
        for model in UNLEARNING_POINTS:
            r = unlearning["rows"][model]
            ax.plot(r["val_perplexity"], r["exposure"][name], "*" if model == "retrained" else ("s" if model == "original" else "o"),
                    ms=14 if model == "retrained" else 7, color=COLOURS[model],
                    label="non-private (original)" if model == "original" else model.replace("_", " "))
    ax.set(xlabel="validation perplexity", ylabel=f"exposure of {name} ({k}x, bits)", title=study["corpus"])
    ax.legend(fontsize="x-small")
    return ax


@dataclass
class DPVersusUnlearning:
    """The most-inserted canary (``canary``) on one model: exposure and validation perplexity of the
    ordinary non-private ``original``, of the σ = 0 run through the DP pipeline (``matched``; ``None``
    if the study has none), of the DP-SGD run at target ``epsilon`` (``dp``), and of the benchmark's
    ``retrained`` model and ``fisher_removal`` on the same model; each ``{"exposure", "val_perplexity"}``.
    ``baseline`` is what DP is compared with: the matched run where there is one (the price of privacy
    alone), else the original. ``dp_lowers_exposure`` and ``dp_costs_perplexity`` are the bands
    notebook 08 holds DP-SGD to."""

    title: str
    canary: str
    epsilon: float
    original: dict
    matched: dict | None
    dp: dict
    retrained: dict
    fisher_removal: dict

    @property
    def baseline(self) -> dict:
        return self.matched if self.matched is not None else self.original

    @property
    def dp_lowers_exposure(self) -> bool:
        return self.dp["exposure"] < self.baseline["exposure"]

    @property
    def dp_costs_perplexity(self) -> bool:
        return self.dp["val_perplexity"] > self.baseline["val_perplexity"]

    def summary(self) -> str:
        """The models' exposure / val ppl on one line."""
        o, m, r, f, d = self.original, self.matched, self.retrained, self.fisher_removal, self.dp
        return (f"{self.title:26s} exposure / val ppl: original {o['exposure']:5.2f} / {o['val_perplexity']:.2f} | "
                + ("" if m is None else f"sigma 0 {m['exposure']:5.2f} / {m['val_perplexity']:.2f} | ")
                + f"retrained {r['exposure']:5.2f} / {r['val_perplexity']:.2f} | "
                f"Fisher Removal {f['exposure']:5.2f} / {f['val_perplexity']:.2f} | "
                f"DP eps {self.epsilon:g} {d['exposure']:5.2f} / {d['val_perplexity']:.2f}")

    def verdict(self) -> str:
        """What DP-SGD bought and cost against its baseline, what the pipeline alone cost, and where
        Fisher Removal lands against DP, on one line."""
        b, o, f, d = self.baseline, self.original, self.fisher_removal, self.dp
        against = "sigma 0, same pipeline" if self.matched is not None else "the original"
        pipeline = ("" if self.matched is None else
                    f" (the pipeline alone: val ppl {self.matched['val_perplexity'] / o['val_perplexity'] - 1:+.0%} against the original)")
        return (f"{self.title:26s} DP at eps {self.epsilon:g} against {against}: exposure {b['exposure'] - d['exposure']:.2f} bits lower, "
                f"val ppl {d['val_perplexity'] / b['val_perplexity'] - 1:+.0%}{pipeline} | Fisher Removal: "
                f"{'lower' if f['exposure'] < d['exposure'] else 'higher'} exposure ({f['exposure']:.2f} bits) at "
                f"{'lower' if f['val_perplexity'] < d['val_perplexity'] else 'higher'} perplexity ({f['val_perplexity']:.2f})")

    def to_dict(self) -> dict:
        return {**asdict(self), "dp_lowers_exposure": self.dp_lowers_exposure, "dp_costs_perplexity": self.dp_costs_perplexity}


def dp_versus_unlearning(study: dict, unlearning: dict, epsilon: float, title: str | None = None) -> DPVersusUnlearning:
    """The most-inserted canary of a DP ``study`` (:func:`run_dp_study`) under the non-private run, the
    σ = 0 run through the same pipeline (when the study has it), the DP run at target ``epsilon`` and, from ``unlearning`` (the benchmark cell of the same model), the
    retrained model and Fisher Removal. Notebook 08, "DP-SGD and unlearning on the same axes"."""
    by_count = {c["insertions"]: c["name"] for c in study["canaries"] if c["insertions"]}
    if not by_count:
        raise ValueError("the study has no inserted canary")
    canary = by_count[max(by_count)]
    rows = study["rows"]
    dp = next((r for r in rows if r["target_epsilon"] == epsilon), None)
    if dp is None:
        raise ValueError(f"no DP run at target epsilon {epsilon:g}; the study has "
                         f"{', '.join(format(r['target_epsilon'], 'g') for r in rows if r['target_epsilon'] is not None)}")
    point = lambda r: {"exposure": r["exposure"][canary], "val_perplexity": r["val_perplexity"]}  # noqa: E731
    u = unlearning["rows"]
    matched = _matched_row(rows)
    return DPVersusUnlearning(title or study["corpus"], canary, epsilon, point(rows[0]), None if matched is None else point(matched), point(dp),
                              point(u["retrained"]), point(u["fisher_removal"]))


def c4_claim(summaries: dict[str, DPVersusUnlearning], min_spread: float = 0.10) -> ClaimVerdict:
    """C4 from :func:`dp_versus_unlearning` on several corpora: DP-SGD lowers the 100× canary's exposure
    and costs validation perplexity against its baseline on every one, *and* that cost differs from
    corpus to corpus by at least ``min_spread`` (relative perplexity, max − min). Inconclusive with
    fewer than two corpora. Notebook 08."""
    costs = {title: s.dp["val_perplexity"] / s.baseline["val_perplexity"] - 1 for title, s in summaries.items()}
    lowers = {title: s.baseline["exposure"] - s.dp["exposure"] for title, s in summaries.items()}
    if len(summaries) < 2:
        verdict = INCONCLUSIVE
    elif all(s.dp_lowers_exposure and s.dp_costs_perplexity for s in summaries.values()):
        verdict = REPRODUCED if max(costs.values()) - min(costs.values()) >= min_spread else NOT_REPRODUCED
    else:
        verdict = NOT_REPRODUCED
    evidence = "; ".join(f"{t}: {lowers[t]:+.2f} bits lower, val ppl {costs[t]:+.0%}" for t in summaries)
    return ClaimVerdict("C4", verdict, evidence, {"exposure_lowered": lowers, "perplexity_cost": costs}, {"min_spread": min_spread})
