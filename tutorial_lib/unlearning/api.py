"""One unlearning API for every method: ``unlearn(model, tokenizer, forget, retain, method, config)``.

A forget set is a list of items, each a text or a ``(context, target)`` pair: the loss of an item is
the mean next-token negative log-likelihood of its target tokens given the context (a text alone is
its own target). Repeated items (a canary inserted k times) count k times. The retain set is a list
of training lines; Fisher samples are windows of ``block_size`` tokens of its joined text, the shape
of the training examples.

Methods (``docs/method.md``, our reconstruction of both):

- ``fisher_removal``: θ' = θ* + η/(n−k) · F̂_λ⁻¹ Δ, Δ = Σ_{x∈D_f} ∇ℓ(θ*; x) (:class:`FisherRemovalConfig`).
- ``fisher_forgetting``: optionally the same Newton step, plus (μσ²)^{1/4} F̂_λ^{p} ε with
  p = −1/4 or −1/2 (:class:`FisherForgettingConfig`).

Notebook 06's first-order baselines (gradient ascent, gradient difference, NPO, fine-tuning) live in
:mod:`tutorial_lib.unlearning.baselines`; :data:`METHODS` lists every method. Every method returns a
*new* model (the input is untouched unless ``inplace=True``) and an :class:`UnlearningReport`. An update that is not
finite, or whose norm exceeds the config's ``max_update_norm``, raises :class:`UnlearningError` and
leaves the weights as they were. Notebooks 04 and 05.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..core.models import max_positions
from ..core.profiles import progress_options
from ..curvature.per_sample import ParameterSpace, select_parameters
from .base import (
    Method,
    UnlearningError,
    UnlearningReport,
    check_unlearning_inputs,
    prepare_unlearning_data,
)
from .baselines import (
    FineTuneConfig,
    GradientAscentConfig,
    GradientDifferenceConfig,
    NPOConfig,
    fine_tune_update,
    gradient_ascent_update,
    gradient_difference_update,
    npo_update,
)
from .fisher_methods import (
    FisherForgettingConfig,
    FisherRemovalConfig,
    fisher_forgetting_update,
    fisher_removal_update,
)

#: Every unlearning method, by the name :func:`unlearn` takes: its config class and update rule.
METHODS: dict[str, Method] = {
    "fisher_removal": Method(FisherRemovalConfig, fisher_removal_update),
    "fisher_forgetting": Method(FisherForgettingConfig, fisher_forgetting_update),
    "gradient_ascent": Method(GradientAscentConfig, gradient_ascent_update, needs_retain=False),
    "gradient_difference": Method(GradientDifferenceConfig, gradient_difference_update),
    "npo": Method(NPOConfig, npo_update, needs_retain=False),
    "fine_tune": Method(FineTuneConfig, fine_tune_update),
}


def unlearn(model, tokenizer, forget, retain=None, method: str = "fisher_removal", config=None, n_train: int | None = None,
            seed: int = 0, inplace: bool = False, callback: Callable | None = None, progress: bool = True):
    """Make ``model`` forget ``forget``; returns ``(new_model, report)``.

    ``config`` is the method's config (default: its defaults); ``n_train`` the number n of training
    examples (default: retain items + forget items). The model passed in is not modified unless
    ``inplace``; on any error it keeps its weights. ``callback(step, model) -> dict`` runs after
    every update (repeat or optimiser step); what it returns is kept in
    ``report.diagnostics["trace"]``. ``progress``: a bar over the updates (cleared when done if it
    runs inside another bar, e.g. a sweep's). Notebook 04, "Fisher Removal, default settings"."""
    if method not in METHODS:
        raise ValueError(f"unknown unlearning method {method!r}; expected one of {', '.join(METHODS)}")
    spec = METHODS[method]
    cfg = config if config is not None else spec.config()
    if not isinstance(cfg, spec.config):
        raise TypeError(f"method {method!r} takes a {spec.config.__name__}, got {type(cfg).__name__}")
    retain = check_unlearning_inputs(model, forget, retain)
    if spec.needs_retain and (retain is None or len(retain) == 0):
        raise ValueError(f"method {method!r} needs a retain set")
    start = time.perf_counter()
    data = prepare_unlearning_data(model, tokenizer, forget, retain, n_train, cfg.block_size or min(max_positions(model) or 128, 128))
    work = model if inplace else copy.deepcopy(model)
    was_training = work.training
    work.eval()
    space = select_parameters(work, list(cfg.params) if cfg.params else None)
    before = space.get(work)
    diagnostics: dict = {"per_repeat": []}
    state: dict = {}
    callback_seconds = 0.0
    bar = tqdm(range(cfg.repeats), desc=method, unit="update", leave=None, **progress_options(progress))
    try:
        for r in bar:
            update, diag = spec.update(work, data, space, cfg, seed + r, state)
            norm = float(update.norm())
            if not math.isfinite(norm):
                raise UnlearningError(f"{method}: the update holds NaN or inf (repeat {r + 1}); weights left unchanged")
            total = float((space.get(work) + update.to(before.dtype) - before).norm())
            if total > cfg.max_update_norm:
                raise UnlearningError(
                    f"{method}: update norm {total:.4g} exceeds max_update_norm = {cfg.max_update_norm:g} (repeat {r + 1}); "
                    "weights left unchanged; lower eta or raise the damping"
                )
            space.add_(work, update)
            diagnostics["per_repeat"].append({"update_norm": norm, **diag})
            if callback is not None:  # its time is not the method's
                tick = time.perf_counter()
                diagnostics.setdefault("trace", []).append({"step": r + 1, **(callback(r + 1, work) or {})})
                work.eval()
                callback_seconds += time.perf_counter() - tick
    except BaseException:
        _restore(work, space, before)
        work.train(was_training)
        raise
    finally:
        bar.close()
    work.train(was_training)
    report = UnlearningReport(
        method=method, config=asdict(cfg), updated=list(space.names), n_parameters=space.dim,
        update_norm=float((space.get(work) - before).norm()), seconds=time.perf_counter() - start - callback_seconds,
        n_train=data.n_train, k=data.k, diagnostics=diagnostics,
    )
    return work, report


@torch.no_grad()
def _restore(model, space: ParameterSpace, values: torch.Tensor) -> None:
    for p, v in zip(space.parameters(model), space.unflatten(values).values()):
        p.copy_(v)


def repeated_unlearning(model, tokenizer, requests, retain, method: str, config, evaluate: Callable, n_train: int,
                        seed: int = 0, progress: bool = True) -> tuple[object, list[dict]]:
    """Serve deletion requests one at a time: ``requests`` is a list of (name, forget items); after
    each cycle the model is evaluated with ``evaluate(model) -> dict`` and n shrinks by the k items
    just forgotten. Returns (final model, one row per cycle, the first being cycle 0 = before).
    Notebook 05, "Repeated requests"."""

    if not requests:
        raise ValueError("no deletion requests")
    rows = [{"cycle": 0, "request": None, "seconds": 0.0, **evaluate(model)}]
    current = model
    for cycle, (name, items) in enumerate(tqdm(requests, desc=f"{method} cycles", **progress_options(progress)), start=1):
        current, report = unlearn(current, tokenizer, items, retain, method, config, n_train=n_train, seed=seed + 1000 * cycle,
                                  progress=progress)
        n_train -= report.k
        rows.append({"cycle": cycle, "request": name, "seconds": report.seconds, "update_norm": report.update_norm, **evaluate(current)})
    return current, rows
