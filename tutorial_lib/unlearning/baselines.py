"""First-order unlearning baselines, registered in :data:`tutorial_lib.unlearning.api.METHODS`.

These are the methods notebook 06 compares Fisher Removal and Fisher Forgetting against. Each runs
``steps`` optimiser steps (``torch.optim.Adam`` or ``SGD``) through the same
``unlearn(model, tokenizer, forget, retain, method, config)`` call, so the guards (finite updates,
``max_update_norm``, weights restored on error) and the per-step ``callback`` apply to them too.

- ``gradient_ascent`` (Jang et al. 2022, "Knowledge Unlearning for Mitigating Privacy Risks in
  Language Models"): ascend the forget loss L_f, i.e. minimise −L_f.
- ``gradient_difference`` (Liu et al. 2022; the TOFU benchmark's "grad diff", Maini et al. 2024):
  minimise w_f · (−L_f) + w_r · L_r, gradient ascent on the forget set held in place by descent on
  retain text. With w_f = 0 it is ``fine_tune``, step for step.
- ``npo`` (Zhang et al. 2024, "Negative Preference Optimization"): minimise
  −(2/β) · mean_i logsigmoid(−β (log π_θ(y_i|x_i) − log π_ref(y_i|x_i))) (+ w_r · L_r), where log π
  is the *summed* log-probability of item i's target tokens and π_ref the model at the start of the
  call. At the first step (π_θ = π_ref) its gradient is that of −mean_i log π_θ(y_i|x_i) for any β;
  later the weights σ(β · log-ratio) fade out items already forgotten, which keeps NPO from the
  collapse of plain gradient ascent.
- ``fine_tune``: descend the retain loss only (forgetting by catastrophic interference; the forget
  set only sets k and is tracked in the diagnostics).

L_f is the multiplicity-weighted mean over forget items of their mean target-token NLL (the
``forget_loss`` of :func:`~tutorial_lib.unlearning.evaluation.evaluate_unlearning`); L_r is the mean next-token
loss on ``batch_size`` random retain windows of ``block_size`` tokens, drawn afresh at every step
from the step's seed (:func:`~tutorial_lib.unlearning.base.fisher_batches`). Gradient ascent and NPO
need no retain set, but ``unlearn`` then needs ``n_train``. Notebook 06.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core.profiles import config_for_profile
from ..curvature.outputs import lm_outputs, sample_losses
from ..curvature.per_sample import ParameterSpace
from .base import UnlearningData, fisher_batches

OPTIMIZERS = ("adam", "sgd")


# ----------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class _FirstOrderConfig:
    """Fields shared by the first-order baselines: ``lr`` and ``optimizer`` ("adam" | "sgd") of
    ``steps`` optimiser steps (``repeats`` for ``unlearn``); ``batch_size`` retain windows per step
    of ``block_size`` tokens (None: ``unlearn``'s default); ``params`` a parameter subset (None:
    all); ``max_update_norm`` refuses a larger total change of the weights."""

    lr: float = 1e-4
    steps: int = 10
    optimizer: str = "adam"
    batch_size: int = 8
    block_size: int | None = None
    params: tuple[str, ...] | None = None
    max_update_norm: float = 100.0

    # Adam's (lr, steps) per profile; ``full`` reuses ``small``'s values, unmeasured (here and in every subclass)
    PROFILE_DEFAULTS: ClassVar[dict[str, dict]] = {
        "tiny": {"lr": 1e-3, "steps": 10}, "small": {"lr": 1e-4, "steps": 10}, "full": {"lr": 1e-4, "steps": 10}}

    def __post_init__(self):
        _check_first_order(self)

    @property
    def repeats(self) -> int:
        """``unlearn`` calls the update once per optimiser step."""
        return self.steps

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides):
        """Adam at the (lr, steps) that notebook 06's sweep picks for this method and profile
        (:func:`~tutorial_lib.experiments.sweeps.run_baseline_sweep` with :func:`~tutorial_lib.experiments.sweeps.choose_setting`:
        the cheapest setting in perplexity that brings the canary within
        :data:`~tutorial_lib.core.profiles.BANDS` ``.exposure_bits`` of the oracle): the profile's
        row of ``PROFILE_DEFAULTS``, then ``overrides``; ``full`` reuses ``small``'s values, unmeasured."""
        return config_for_profile(cls, profile, overrides, optimizer="adam")


@dataclass(frozen=True)
class GradientAscentConfig(_FirstOrderConfig):
    """Gradient ascent on the forget loss (Jang et al. 2022). Notebook 06."""

    PROFILE_DEFAULTS: ClassVar[dict[str, dict]] = {
        "tiny": {"lr": 3e-4, "steps": 30}, "small": {"lr": 3e-5, "steps": 100}, "full": {"lr": 3e-5, "steps": 100}}


@dataclass(frozen=True)
class GradientDifferenceConfig(_FirstOrderConfig):
    """Minimise ``forget_weight`` · (−L_forget) + ``retain_weight`` · L_retain. Notebook 06."""

    forget_weight: float = 1.0
    retain_weight: float = 1.0

    PROFILE_DEFAULTS: ClassVar[dict[str, dict]] = {
        "tiny": {"lr": 1e-3, "steps": 100}, "small": {"lr": 3e-4, "steps": 100}, "full": {"lr": 3e-4, "steps": 100}}

    def __post_init__(self):
        super().__post_init__()
        _check_weights(self, "forget_weight", "retain_weight")


@dataclass(frozen=True)
class NPOConfig(_FirstOrderConfig):
    """Negative Preference Optimization (Zhang et al. 2024) with inverse temperature ``beta`` and an
    optional ``retain_weight`` · L_retain term (0: none, no retain set needed). Notebook 06."""

    beta: float = 0.1
    retain_weight: float = 0.0

    PROFILE_DEFAULTS: ClassVar[dict[str, dict]] = {
        "tiny": {"lr": 3e-4, "steps": 30}, "small": {"lr": 1e-3, "steps": 30}, "full": {"lr": 1e-3, "steps": 30}}

    def __post_init__(self):
        super().__post_init__()
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise ValueError(f"beta must be a positive finite number, got {self.beta}")
        _check_weights(self, "retain_weight")


@dataclass(frozen=True)
class FineTuneConfig(_FirstOrderConfig):
    """Fine-tuning on the retain set only. Notebook 06."""

    PROFILE_DEFAULTS: ClassVar[dict[str, dict]] = {
        "tiny": {"lr": 1e-3, "steps": 100}, "small": {"lr": 3e-5, "steps": 100}, "full": {"lr": 3e-5, "steps": 100}}


def _check_first_order(cfg) -> None:
    if not (isinstance(cfg.lr, (int, float)) and cfg.lr >= 0 and math.isfinite(cfg.lr)):
        raise ValueError(f"lr must be a finite number >= 0, got {cfg.lr}")
    if not isinstance(cfg.steps, int) or cfg.steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {cfg.steps}")
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; expected 'adam' or 'sgd'")
    for name in ("batch_size", "block_size"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if not cfg.max_update_norm > 0:
        raise ValueError(f"max_update_norm must be positive, got {cfg.max_update_norm}")
    if isinstance(cfg.params, (str, list)):  # a name alone, or a list: keep the config hashable
        object.__setattr__(cfg, "params", (cfg.params,) if isinstance(cfg.params, str) else tuple(cfg.params))


def _check_weights(cfg, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")


# ----------------------------------------------------------------------------------- losses
def _item_losses(model, data: UnlearningData) -> tuple[torch.Tensor, torch.Tensor]:
    """Per forget item: mean target-token NLL and the number of target tokens."""
    out = lm_outputs(model, data.forget_batch)
    tokens = torch.zeros(out.n_samples, dtype=out.weight.dtype, device=out.weight.device).index_add(0, out.sample, out.weight)
    return sample_losses(out), tokens


def _value(t: torch.Tensor) -> float:
    return float(t.detach())


def _weighted_mean(values: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    w = counts.to(dtype=values.dtype, device=values.device)
    return (values * w).sum() / w.sum()


def forget_loss(model, data: UnlearningData) -> torch.Tensor:
    """L_forget: the multiplicity-weighted mean of the items' mean target-token NLL (a scalar with
    gradient). Notebook 06."""
    return _weighted_mean(_item_losses(model, data)[0], data.counts)


def retain_loss(model, data: UnlearningData, batch_size: int, seed: int) -> torch.Tensor:
    """L_retain: mean next-token loss on ``batch_size`` random retain windows drawn with ``seed``."""
    if data.retain_ids is None:
        raise ValueError("this method (with a retain weight > 0) needs a retain set")
    batch = fisher_batches(data, batch_size, batch_size, "retain", seed, data.forget_batch["input_ids"].device)[0]
    return sample_losses(lm_outputs(model, batch)).mean()


# ----------------------------------------------------------------------------------- objectives
def _tracked_forget_loss(model, data: UnlearningData) -> float:
    with torch.no_grad():
        return float(forget_loss(model, data))


def gradient_ascent_objective(model, data, cfg: GradientAscentConfig, seed: int, state: dict):
    """−L_forget and its diagnostics."""
    lf = forget_loss(model, data)
    return -lf, {"forget_loss": _value(lf)}


def gradient_difference_objective(model, data, cfg: GradientDifferenceConfig, seed: int, state: dict):
    """w_f · (−L_forget) + w_r · L_retain; a term of weight 0 is left out (no forward pass)."""
    terms, diag = [], {}
    if cfg.forget_weight > 0:
        lf = forget_loss(model, data)
        terms.append(-cfg.forget_weight * lf)
        diag["forget_loss"] = _value(lf)
    else:
        diag["forget_loss"] = _tracked_forget_loss(model, data)
    if cfg.retain_weight > 0:
        l_retain = retain_loss(model, data, cfg.batch_size, seed)
        terms.append(cfg.retain_weight * l_retain)
        diag["retain_loss"] = _value(l_retain)
    return sum(terms[1:], terms[0]) if terms else None, diag


def npo_objective(model, data, cfg: NPOConfig, seed: int, state: dict):
    """The NPO loss against the log-probabilities of the model at the first call (kept in ``state``)."""
    mean_nll, tokens = _item_losses(model, data)
    log_prob = -mean_nll * tokens  # summed target-token log-probability of each item
    if "npo_reference" not in state:
        state["npo_reference"] = log_prob.detach().clone()
    ratio = log_prob - state["npo_reference"]
    loss = _weighted_mean(-(2.0 / cfg.beta) * torch.nn.functional.logsigmoid(-cfg.beta * ratio), data.counts)
    diag = {"npo_loss": _value(loss), "forget_loss": float(_weighted_mean(mean_nll.detach(), data.counts)),
            "log_ratio": float(_weighted_mean(ratio.detach(), data.counts))}
    if cfg.retain_weight > 0:
        l_retain = retain_loss(model, data, cfg.batch_size, seed)
        loss = loss + cfg.retain_weight * l_retain
        diag["retain_loss"] = _value(l_retain)
    return loss, diag


def fine_tune_objective(model, data, cfg: FineTuneConfig, seed: int, state: dict):
    """L_retain; the forget loss is tracked without gradient."""
    l_retain = retain_loss(model, data, cfg.batch_size, seed)
    return l_retain, {"retain_loss": _value(l_retain), "forget_loss": _tracked_forget_loss(model, data)}


# ----------------------------------------------------------------------------------- optimiser step
def _optimizer(space: ParameterSpace, model, cfg, state: dict) -> tuple[torch.nn.Parameter, torch.optim.Optimizer]:
    """The flat parameter copy and its optimiser, made at the first call and kept in ``state``."""
    if "flat" not in state:
        flat = torch.nn.Parameter(space.get(model))
        make = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.SGD
        state["flat"], state["optimizer"] = flat, make([flat], lr=cfg.lr)
    return state["flat"], state["optimizer"]


def _flat_gradient(loss: torch.Tensor | None, model, space: ParameterSpace) -> torch.Tensor:
    params = space.parameters(model)
    if loss is None:  # every weight is 0: nothing to descend
        return torch.zeros_like(space.get(model))
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return space.flatten([torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)])


def first_order_step(model, data: UnlearningData, space: ParameterSpace, cfg, seed: int, state: dict, objective):
    """One optimiser step on ``objective(model, data, cfg, seed, state) -> (loss, diagnostics)``:
    returns (θ_new − θ, diagnostics). The flat copy is re-synchronised with the model first, so it
    always holds the weights the loss was computed at."""
    flat, opt = _optimizer(space, model, cfg, state)
    with torch.no_grad():
        flat.copy_(space.get(model))
    loss, diag = objective(model, data, cfg, seed, state)
    flat.grad = _flat_gradient(loss, model, space).to(flat.dtype)
    old = flat.detach().clone()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return flat.detach() - old, diag


def gradient_ascent_update(model, data: UnlearningData, space: ParameterSpace, cfg: GradientAscentConfig, seed: int, state: dict):
    """One gradient-ascent step: (update, diagnostics). Notebook 06."""
    return first_order_step(model, data, space, cfg, seed, state, gradient_ascent_objective)


def gradient_difference_update(model, data: UnlearningData, space: ParameterSpace, cfg: GradientDifferenceConfig, seed: int,
                               state: dict):
    """One gradient-difference step: (update, diagnostics). Notebook 06."""
    return first_order_step(model, data, space, cfg, seed, state, gradient_difference_objective)


def npo_update(model, data: UnlearningData, space: ParameterSpace, cfg: NPOConfig, seed: int, state: dict):
    """One NPO step: (update, diagnostics). Notebook 06."""
    return first_order_step(model, data, space, cfg, seed, state, npo_objective)


def fine_tune_update(model, data: UnlearningData, space: ParameterSpace, cfg: FineTuneConfig, seed: int, state: dict):
    """One fine-tuning step on retain text: (update, diagnostics). Notebook 06."""
    return first_order_step(model, data, space, cfg, seed, state, fine_tune_objective)
