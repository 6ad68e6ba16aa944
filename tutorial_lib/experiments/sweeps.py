"""The unlearning experiments of notebooks 04 and 05 as functions: one forgetting request set up
against its retrained oracle, hyperparameter sweeps with the exposure–perplexity trade-off and the
rule that picks a default from them (many requests in a row: :mod:`tutorial_lib.experiments.robustness`).

Sweeps are cached as JSON results (:func:`~tutorial_lib.core.cache.cached_result`),
so that a lecture (or CI, after ``python -m tutorial_lib.course.warm_cache``) shows them at once.
"""
from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass

from tqdm.auto import tqdm

from ..core.cache import cached_result
from ..core.evaluation import tokenize_lines
from ..core.profiles import BANDS, progress_options
from ..unlearning.api import METHODS, unlearn
from ..unlearning.base import UnlearningError, canary_forget_in_context, canary_forget_items
from ..unlearning.evaluation import evaluate_unlearning
from ..unlearning.fisher_methods import FisherForgettingConfig, FisherRemovalConfig
from .memorization import (
    MemorizationConfig,
    prepare_memorization,
    train_memorization_model,
    train_retrained_model,
)

SWEEP_CANDIDATES = 10_000  # |R| of the sweeps' sampled exposure (final numbers use the whole space)


# ----------------------------------------------------------------------------------- one request
@dataclass
class UnlearningSetup:
    """A trained model, one canary to forget and the model retrained without it: everything a
    method is run and judged with. Made by :func:`unlearning_setup`."""

    cfg: MemorizationConfig
    seed: int
    model: object
    tokenizer: object
    canaries: list
    splits: object
    inserted: object
    target: object
    retrained: object
    retrain_seconds: float
    val_ids: object
    retain_ids: object
    forget: list
    forget_in_context: list
    watch: list[str]
    from_cache: bool = False  # the original model was loaded from the cache
    retrained_from_cache: bool = False

    @property
    def controls(self) -> list[str]:
        """The never-inserted canaries' names: the reference band of the oracle-free rule."""
        return [c.name for c in self.canaries if c.insertions == 0]

    @property
    def others(self) -> list:
        """The watched canaries other than the target, in :attr:`watch` order."""
        by_name = {c.name: c for c in self.canaries}
        return [by_name[n] for n in self.watch[1:]]

    @property
    def n_train(self) -> int:
        """n: the training lines of the original run."""
        return len(self.inserted.lines)

    @property
    def retain(self) -> list[str]:
        """The retain set: the training lines without the target's occurrences (the retrained
        model's training data; the other canaries stay in it)."""
        return self.inserted.lines_without(self.target.name)

    def unlearn(self, method: str, config=None, seed: int | None = None, forget=None, callback=None, progress: bool = True):
        """:func:`~tutorial_lib.unlearning.api.unlearn` on this request: ``(new model, report)``."""
        return unlearn(self.model, self.tokenizer, self.forget if forget is None else forget, self.retain, method, config,
                       n_train=self.n_train, seed=self.seed if seed is None else seed, callback=callback, progress=progress)

    def evaluate(self, model, names=None, candidates: int | None = None, max_blocks: int = 64, progress: bool = True) -> dict:
        """:func:`~tutorial_lib.unlearning.evaluation.evaluate_unlearning` against the retrained oracle, exposure
        of the canaries in ``names`` (default: the watched ones)."""
        return evaluate_unlearning(model, self.tokenizer, self.canaries, self.val_ids, self.retain_ids, self.forget_in_context,
                                   self.cfg.train.block_size, reference=self.retrained, names=self.watch if names is None else names,
                                   candidates=candidates, max_blocks=max_blocks, progress=progress)


def unlearning_setup(cfg: MemorizationConfig, seed: int = 0, device=None, target: str | None = None, progress: bool = True) -> UnlearningSetup:
    """Train or load the memorisation run of ``cfg`` and its oracle retrained without ``target``
    (default: the most-inserted canary). Watched canaries: the target, the other canaries inserted
    more than once and one control. Notebooks 04 and 05."""
    run = train_memorization_model(cfg, seed=seed, device=device, progress=progress)
    model, tokenizer, canaries, splits = run.model, run.tokenizer, run.canaries, run.splits
    inserted = prepare_memorization(cfg, seed=seed).inserted
    by_name = {c.name: c for c in canaries}
    if target is not None and target not in by_name:
        raise ValueError(f"unknown canary {target!r}; this run has {sorted(by_name)}")
    chosen = by_name[target] if target else max(canaries, key=lambda c: c.insertions)
    oracle = train_retrained_model(cfg, (chosen.name,), seed=seed, device=device, progress=progress)
    retrained, record = oracle.model, oracle.record
    others = [c for c in canaries if c is not chosen and c.insertions > 1] + [c for c in canaries if c.is_control][:1]
    return UnlearningSetup(
        cfg=cfg, seed=seed, model=model, tokenizer=tokenizer, canaries=canaries, splits=splits, inserted=inserted,
        target=chosen, retrained=retrained, retrain_seconds=record["train_seconds"],
        val_ids=tokenize_lines(tokenizer, splits.validation), retain_ids=tokenize_lines(tokenizer, inserted.lines_without(chosen.name)),
        forget=canary_forget_items(chosen, "secret"),
        forget_in_context=canary_forget_in_context(chosen, inserted.lines, inserted.positions[chosen.name]), watch=[chosen.name] + [c.name for c in others],
        from_cache=run.from_cache, retrained_from_cache=oracle.from_cache,
    )


def reference_points(cfg: MemorizationConfig, seed: int = 0, device=None, use_cache: bool = True, progress: bool = True) -> tuple[dict, bool]:
    """The original's and the oracle's evaluation on notebook 04's request (exact exposure of the
    watched canaries over the whole space), cached: ``({"original", "oracle", "watch"}, from_cache)``."""
    def compute():
        setup = unlearning_setup(cfg, seed, device, progress=progress)
        return {"watch": setup.watch, "original": setup.evaluate(setup.model, progress=progress),
                "oracle": setup.evaluate(setup.retrained, progress=progress)}

    return cached_result("reference_points", {"run": cfg.to_dict(), "seed": seed}, compute, use_cache=use_cache)


# ----------------------------------------------------------------------------------- sweeps
def sweep_unlearning(setup: UnlearningSetup, method: str, base, grid: dict[str, list], candidates: int | None = SWEEP_CANDIDATES,
                     progress: bool = True) -> list[dict]:
    """Run ``method`` at every point of ``grid`` (config field -> values; their product) on top of
    the config ``base``; one row per point: ``params``, the target's exposure (among ``candidates``
    sampled secrets), perplexities, KL to the oracle, wall time and update norm. A point whose
    update the method refuses (norm guard, NaN) is kept with its ``error``."""

    if not grid:
        raise ValueError("the sweep grid is empty")
    for name in grid:
        if name not in {f.name for f in dataclasses.fields(base)}:
            raise ValueError(f"{type(base).__name__} has no field {name!r} to sweep")
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    rows = []
    for params in tqdm(points, desc=f"{method} sweep", **progress_options(progress)):
        try:
            unlearned, report = setup.unlearn(method, dataclasses.replace(base, **params), progress=progress)
        except UnlearningError as err:
            rows.append({"params": params, "error": str(err)})
            continue
        rows.append({"params": params, "seconds": report.seconds, "update_norm": report.update_norm,
                     **setup.evaluate(unlearned, names=[setup.target.name], candidates=candidates, progress=progress)})
    return rows


def trace_sweep(setup: UnlearningSetup, method: str, base, lrs: list[float], checkpoints: list[int],
                candidates: int | None = SWEEP_CANDIDATES, max_blocks: int = 64, progress: bool = True) -> list[dict]:
    """Learning rate × steps for an iterative method (the first-order baselines): one ``unlearn``
    call of ``max(checkpoints)`` steps per learning rate, evaluated (through ``unlearn``'s callback)
    after each step in ``checkpoints``; rows as in :func:`sweep_unlearning` with ``params`` {lr,
    steps} and ``seconds`` the method's own time up to that step. A run the method refuses part-way
    keeps its earlier rows and adds one with the ``error``. Notebook 06."""

    if not lrs or not checkpoints or min(checkpoints) < 1:
        raise ValueError(f"need learning rates and positive step checkpoints, got lrs={lrs}, checkpoints={checkpoints}")
    stops, rows = sorted(set(checkpoints)), []
    for lr in tqdm(lrs, desc=f"{method} lr x steps", **progress_options(progress)):
        clock = {"start": time.perf_counter(), "evaluating": 0.0}

        def record(step, model, lr=lr, clock=clock):
            if step in stops:
                tick = time.perf_counter()
                rows.append({"params": {"lr": lr, "steps": step}, "seconds": tick - clock["start"] - clock["evaluating"],
                             **setup.evaluate(model, names=[setup.target.name], candidates=candidates, max_blocks=max_blocks,
                                              progress=progress)})
                clock["evaluating"] += time.perf_counter() - tick

        try:
            setup.unlearn(method, dataclasses.replace(base, lr=lr, steps=stops[-1]), callback=record, progress=progress)
        except UnlearningError as err:
            rows.append({"params": {"lr": lr, "steps": stops[-1]}, "error": str(err)})
    return rows


def control_level(model_point: dict, controls: list[str]) -> float:
    """Where never-inserted secrets sit under a model: the mean exposure of the ``controls`` (canaries
    inserted 0 times) in ``model_point`` (an evaluation of the model being unlearned). A secret the
    model never saw ranks uniformly among the candidates, 1/ln 2 ≈ 1.44 bits on average."""
    if not controls:
        raise ValueError("the control band needs at least one never-inserted canary (controls=[])")
    missing = [c for c in controls if c not in model_point["exposure"]]
    if missing:
        raise ValueError(f"the evaluation holds no exposure for the controls {missing}; evaluate them too")
    return sum(model_point["exposure"][c] for c in controls) / len(controls)


def choose_setting(rows: list[dict], target: str, original: dict, controls: list[str],
                   max_ppl_increase: float = BANDS.perplexity_increase, tolerance_bits: float = BANDS.exposure_bits,
                   prefer=None) -> dict | None:
    """The rule behind the documented defaults, chosen **without the retrained model** (a real deletion
    request has none): only the model being unlearned is consulted. Erasure first: the points whose
    exposure of the target is within ``tolerance_bits`` of the never-inserted controls' level under
    the original model (:func:`control_level`), above or below; among them, those whose validation
    perplexity stays within ``1 + max_ppl_increase`` times the original's if any do, and of these the
    one minimising ``prefer(row)`` (default: the perplexity, which picks the gentlest step that makes
    the secret look like a never-inserted one). If no point is within the band, the one nearest to it
    (ties: lower perplexity). ``None`` for no valid point. The defaults are the course's bands,
    :data:`~tutorial_lib.core.profiles.BANDS` (3 bits, +20 % perplexity). The retrained model judges
    the result (:func:`~tutorial_lib.unlearning.verdicts.judge`); it never tunes it."""
    valid = [r for r in rows if "error" not in r]
    if not valid:
        return None
    level = control_level(original, controls)
    close = [r for r in valid if abs(r["exposure"][target] - level) <= tolerance_bits]
    if not close:
        return min(valid, key=lambda r: (abs(r["exposure"][target] - level), r["val_perplexity"]))
    kept = [r for r in close if r["val_perplexity"] <= (1 + max_ppl_increase) * original["val_perplexity"]]
    if kept:
        return min(kept, key=prefer or (lambda r: r["val_perplexity"]))
    return min(close, key=lambda r: r["val_perplexity"])


def removal_grid(profile: str) -> dict[str, list]:
    """Notebook 04's sweep: damping × step scale around the profile's default."""
    eta = FisherRemovalConfig.for_profile(profile).eta
    return {"damping": [1e-4, 1e-3, 1e-2], "eta": [eta / 2, eta, eta * 2]}


def forgetting_grid(profile: str) -> dict[str, list]:
    """Notebook 05's sweep: the noise scale μ of the Newton-plus-noise variant (0 is Fisher Removal)."""
    return {"mu": [0.0, 1e-16, 1e-14, 1e-12, 1e-10]}


def _sweep_study(name: str, cfg: MemorizationConfig, method: str, base, grid: dict, seed: int, device, candidates: int,
                 use_cache: bool, progress: bool, prefer=None, run=None) -> tuple[dict, bool]:
    """A cached sweep with the original's point (with the controls' exposures), the oracle's (to
    judge; never passed to the rule) and the :func:`choose_setting` pick. ``run(setup)`` makes the
    rows (default: :func:`sweep_unlearning` over ``grid``)."""
    def compute():
        start = time.perf_counter()
        setup = unlearning_setup(cfg, seed, device, progress=progress)
        target, controls = setup.target.name, setup.controls
        # the original with the controls (the rule's band), the oracle only to judge; rows: the target alone
        original = setup.evaluate(setup.model, names=[target, *controls], candidates=candidates, progress=progress)
        tick = time.perf_counter()
        oracle = setup.evaluate(setup.retrained, names=[target], candidates=candidates, progress=progress)
        judging = time.perf_counter() - tick  # the oracle's evaluation is not part of the rule's cost
        rows = run(setup) if run else sweep_unlearning(setup, method, base, grid, candidates, progress)
        return {"method": method, "target": target, "controls": controls, "candidates": candidates, "base": dataclasses.asdict(base),
                "grid": grid, "original": original, "oracle": oracle, "rows": rows,
                "chosen": choose_setting(rows, target, original, controls, prefer=prefer),
                "seconds": time.perf_counter() - start - judging}  # the whole sweep but the oracle: the rule's cost

    key = {"run": cfg.to_dict(), "seed": seed, "method": method, "base": dataclasses.asdict(base), "grid": grid, "candidates": candidates}
    return cached_result(name, key, compute, use_cache=use_cache)


def run_removal_sweep(cfg: MemorizationConfig, seed: int = 0, device=None, grid: dict | None = None, candidates: int = SWEEP_CANDIDATES,
                      use_cache: bool = True, progress: bool = True, structure: str = "kfac") -> tuple[dict, bool]:
    """Fisher Removal over damping × η on notebook 04's request; ``(result, from_cache)``. The
    result holds every row, the original's and the oracle's point, and the :func:`choose_setting`
    pick. ``structure``: the Fisher's (``"kfac"``, the default; ``"woodbury"``, the exact empirical
    Fisher of the sampled windows, the method's own). Notebook 04, "The exposure–perplexity
    trade-off" and "The paper's Fisher beside K-FAC"."""
    base = dataclasses.replace(FisherRemovalConfig.for_profile(cfg.profile), structure=structure)
    return _sweep_study("removal_sweep", cfg, "fisher_removal", base, grid or removal_grid(cfg.profile), seed, device, candidates,
                        use_cache, progress)


def run_forgetting_sweep(cfg: MemorizationConfig, seed: int = 0, device=None, grid: dict | None = None, candidates: int = SWEEP_CANDIDATES,
                     use_cache: bool = True, progress: bool = True) -> tuple[dict, bool]:
    """Fisher Forgetting (Newton step plus noise) over the noise scale μ, the Newton step at the
    Fisher Removal default; ``(result, from_cache)``. Its pick is the *largest* μ that keeps the
    exposure and perplexity bands: the most noise the model tolerates. Notebook 05."""
    base = FisherForgettingConfig.for_profile(cfg.profile)
    return _sweep_study("forgetting_sweep", cfg, "fisher_forgetting", base, grid or forgetting_grid(cfg.profile), seed, device,
                        candidates, use_cache, progress, prefer=lambda r: -r["params"].get("mu", 0.0))


def baseline_grid(profile: str) -> dict[str, list]:
    """Notebook 06's sweep of a first-order baseline: Adam learning rates × step checkpoints."""
    return {"lr": [3e-5, 1e-4, 3e-4, 1e-3], "steps": [3, 10, 30, 100]}


def run_baseline_sweep(cfg: MemorizationConfig, method: str, seed: int = 0, device=None, grid: dict | None = None,
                   candidates: int = SWEEP_CANDIDATES, use_cache: bool = True, progress: bool = True) -> tuple[dict, bool]:
    """A first-order baseline (``gradient_ascent``, ``gradient_difference``, ``npo``, ``fine_tune``)
    over learning rate × steps on notebook 04's request (:func:`trace_sweep`), cached like the other
    sweeps; ``(result, from_cache)``. Notebook 06."""

    if method not in METHODS or method.startswith("fisher_"):
        raise ValueError(f"unknown first-order method {method!r}; expected gradient_ascent, gradient_difference, npo or fine_tune")
    base = METHODS[method].config.for_profile(cfg.profile)
    grid = grid or baseline_grid(cfg.profile)
    return _sweep_study(f"{method}_sweep", cfg, method, base, grid, seed, device, candidates, use_cache, progress,
                        run=lambda setup: trace_sweep(setup, method, base, grid["lr"], grid["steps"], candidates, progress=progress))


def run_unlearning_methods(cfg, seed: int = 0, device=None, methods: tuple[str, ...] | None = None, use_cache: bool = True,
                           progress: bool = True) -> dict:
    """Notebooks 04–06 on one request: forget the most-inserted canary with every method at its
    profile default (Fisher Removal, Fisher Forgetting and the first-order baselines) and compare
    each with the retrained oracle on the watched canaries (exact exposure of the forgotten one, the
    other inserted ones and a control), perplexity, KL and wall time. Cached like the studies;
    ``progress``: a bar over the methods (and the training and exposure bars inside it)."""

    methods = tuple(methods or METHODS)

    def compute():
        setup = unlearning_setup(cfg, seed, device, progress=progress)
        references, _ = reference_points(cfg, seed, device, progress=progress)
        rows, reports = {"original": references["original"], "retrained oracle": references["oracle"]}, {}
        for method in tqdm(methods, desc="unlearning methods", **progress_options(progress)):
            unlearned, report = setup.unlearn(method, METHODS[method].config.for_profile(cfg.profile), progress=progress)
            rows[method] = setup.evaluate(unlearned, progress=progress)
            reports[method] = report.to_dict()
        return {"target": setup.target.name, "canaries": [c.to_dict() for c in setup.canaries if c.name in setup.watch],
                "reports": reports, "retrain_seconds": setup.retrain_seconds, "results": rows}

    key = {"run": cfg.to_dict(), "seed": seed, "methods": list(methods)}
    return cached_result("unlearning_methods", key, compute, use_cache=use_cache)[0]
