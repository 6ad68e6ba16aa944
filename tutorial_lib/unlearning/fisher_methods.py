"""Fisher Removal and Fisher Forgetting (``docs/method.md`` §3 and §4, our reconstruction of both), as
configs and update rules registered in :data:`tutorial_lib.unlearning.api.METHODS`:

- ``fisher_removal`` (:class:`FisherRemovalConfig`, :func:`fisher_removal_update`):
  θ' = θ* + η/(n−k) · F̂_λ⁻¹ Δ with Δ = Σ_{x∈D_f} ∇ℓ(θ*; x) (:func:`forget_gradient`);
- ``fisher_forgetting`` (:class:`FisherForgettingConfig`, :func:`fisher_forgetting_update`): the same
  step (variant "newton_noise") or none (variant "noise"), plus (μσ²)^{1/4} F̂_λ^{p} ε with p = −1/4 or −1/2.

F̂_λ is the damped empirical Fisher of ``n_fisher`` retain windows at the current weights
(:func:`build_fisher`), in the structure the config names (``tutorial_lib.curvature``). Each
config's ``for_profile`` gives the defaults chosen from notebook 04's and 05's sweeps. Called through
:func:`~tutorial_lib.unlearning.api.unlearn`; notebooks 04 and 05, and every later notebook that
compares methods.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core.profiles import config_for_profile, resolve_profile
from ..curvature.fisher import make_fisher
from ..curvature.kfac import KFACFisher
from ..curvature.per_sample import ParameterSpace, gradient_matrix, per_sample_gradients
from .base import UnlearningData, fisher_batches


# ----------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class _FisherStepConfig:
    """Fields shared by Fisher Removal and Fisher Forgetting (see :class:`FisherRemovalConfig`)."""

    damping: float = 1e-3
    eta: float = 0.005
    n_fisher: int = 128
    fisher_source: str = "retain"
    structure: str = "kfac"
    params: tuple[str, ...] | None = None
    repeats: int = 6
    block_size: int | None = None
    batch_size: int = 32
    max_update_norm: float = 100.0

    PROFILE_DEFAULTS: ClassVar[dict[str, dict]] = {"tiny": {}, "small": {}, "full": {}}

    def __post_init__(self):
        _check_common(self)

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides):
        """The profile's row of ``PROFILE_DEFAULTS``, then ``overrides``."""
        return config_for_profile(cls, profile, overrides)


@dataclass(frozen=True)
class FisherRemovalConfig(_FisherStepConfig):
    """Fisher Removal (``docs/method.md`` §3). ``eta`` is the step scale η; ``n_fisher`` the number m of
    retain windows whose per-sample gradients build F̂ (``fisher_source`` "retain" or "all" to mix
    in the forget items); ``structure`` woodbury | block | diagonal | kfac; ``params`` a parameter
    subset (None: all); ``repeats`` applies the step that many times, recomputing Δ and F̂ at the
    new weights; ``max_update_norm`` refuses larger updates."""

    PROFILE_DEFAULTS: ClassVar[dict[str, dict]] = {"tiny": {"eta": 5e-4}, "small": {"eta": 5e-3}, "full": {"eta": 5e-3}}
    #: the step scale chosen for the exact empirical Fisher (``structure="woodbury"``) by notebook 04's
    #: Woodbury sweep and its oracle-free rule; used by :meth:`for_profile` when that structure is asked for
    WOODBURY_DEFAULTS: ClassVar[dict[str, dict]] = {"tiny": {"eta": 5e-4}, "small": {"eta": 2.5e-3}, "full": {"eta": 2.5e-3}}

    def __post_init__(self):
        _check_common(self)
        _check_eta(self)

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> "FisherRemovalConfig":
        """Defaults chosen from notebook 04's sweep: the step scale η/(n−k) comes out at about 2e-7
        at both ``tiny`` (n ≈ 2,100 lines, η = 5e-4) and ``small`` (n ≈ 35,000, η = 5e-3)
        (``PROFILE_DEFAULTS``), then ``overrides``. With ``structure="woodbury"`` (the damped
        empirical Fisher of the m sampled windows, inverted exactly: the method's own) the step
        scale is that structure's own pick (``WOODBURY_DEFAULTS``) unless ``eta`` is given too."""
        computed = cls.WOODBURY_DEFAULTS[resolve_profile(profile)] if overrides.get("structure") == "woodbury" else {}
        return config_for_profile(cls, profile, overrides, **computed)


@dataclass(frozen=True)
class FisherForgettingConfig(_FisherStepConfig):
    """Fisher Forgetting (``docs/method.md`` §4): ``variant`` "noise" (Golatkar et al.'s scrubbing noise only)
    or "newton_noise" (the Fisher Removal step plus noise); noise (μσ²)^{1/4} F̂_λ^{exponent} ε with
    ``exponent`` −1/4 (the paper's formula) or −1/2 (Golatkar's code); ``structure`` diagonal |
    woodbury | kfac (those with powers); ``seed`` for ε."""

    variant: str = "newton_noise"
    exponent: float = -0.25
    mu: float = 1e-8
    sigma: float = 1.0
    seed: int = 0

    PROFILE_DEFAULTS: ClassVar[dict[str, dict]] = {"tiny": {"mu": 1e-10}, "small": {"mu": 1e-14}, "full": {"mu": 1e-14}}

    def __post_init__(self):
        _check_common(self)
        if self.variant not in ("noise", "newton_noise"):
            raise ValueError(f"unknown Fisher Forgetting variant {self.variant!r}; expected 'noise' or 'newton_noise'")
        if self.exponent not in (-0.25, -0.5):
            raise ValueError(f"the noise exponent must be -0.25 or -0.5, got {self.exponent}")
        if self.structure == "block":
            raise ValueError("Fisher Forgetting needs F^p: use structure diagonal, woodbury or kfac")
        if not (self.mu >= 0 and self.sigma >= 0):
            raise ValueError(f"mu and sigma must be >= 0, got mu={self.mu}, sigma={self.sigma}")
        try:
            scale = float(self.mu) * float(self.sigma) ** 2
        except OverflowError:
            scale = math.inf
        if not math.isfinite(scale):
            raise ValueError(f"mu * sigma^2 must be finite, got mu={self.mu}, sigma={self.sigma}: the noise (mu sigma^2)^(1/4) "
                             "F^p eps would be infinite; the notebook 05 sweep uses mu between 1e-16 and 1e-8 with sigma = 1")
        if self.variant == "newton_noise":
            _check_eta(self)

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> "FisherForgettingConfig":
        """The Newton step of :meth:`FisherRemovalConfig.for_profile` plus noise at the largest
        noise scale of notebook 05's sweep that keeps the exposure and perplexity bands
        (:func:`~tutorial_lib.experiments.sweeps.run_forgetting_sweep`): μ = 1e-14 at ``small`` (and ``full``),
        1e-10 at ``tiny`` (``PROFILE_DEFAULTS``), then ``overrides``."""
        return config_for_profile(cls, profile, overrides, eta=FisherRemovalConfig.for_profile(profile).eta)


def _check_eta(cfg) -> None:
    if not (cfg.eta > 0 and math.isfinite(cfg.eta)):
        raise ValueError(f"eta (the step scale) must be a positive finite number, got {cfg.eta}: at 0 nothing is removed, "
                         "and a negative step makes the model learn the forget set")


def _check_common(cfg) -> None:
    if not (cfg.damping > 0 and math.isfinite(cfg.damping)):
        raise ValueError(f"damping must be a positive finite number, got {cfg.damping}")
    if cfg.structure not in ("woodbury", "block", "diagonal", "kfac"):
        raise ValueError(f"unknown Fisher structure {cfg.structure!r}; expected woodbury, block, diagonal or kfac")
    if cfg.fisher_source not in ("retain", "all"):
        raise ValueError(f"fisher_source must be 'retain' or 'all', got {cfg.fisher_source!r}")
    for name in ("n_fisher", "repeats", "block_size", "batch_size"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if not cfg.max_update_norm > 0:
        raise ValueError(f"max_update_norm must be positive, got {cfg.max_update_norm}")


def forget_gradient(model, data: UnlearningData, space: ParameterSpace) -> torch.Tensor:
    """Δ = Σ_{x∈D_f} ∇ℓ(θ; x): per-item gradients weighted by their multiplicities."""
    G = per_sample_gradients(model, data.forget_batch, space)
    return data.counts.to(G.dtype).to(G.device) @ G


def build_fisher(model, data: UnlearningData, space: ParameterSpace, cfg, seed: int):
    device = next(model.parameters()).device
    batches = fisher_batches(data, cfg.n_fisher, cfg.batch_size, cfg.fisher_source, seed, device)
    if cfg.structure == "kfac":
        return KFACFisher.from_model(model, batches, space, cfg.damping)
    G, _ = gradient_matrix(model, batches, space)
    return make_fisher(G, cfg.damping, cfg.structure)


# ----------------------------------------------------------------------------------- methods
def _newton_direction(model, data, space, cfg, seed):
    F = build_fisher(model, data, space, cfg, seed)
    delta = forget_gradient(model, data, space)
    return F, delta, cfg.eta / (data.n_train - data.k) * F.inverse_product(delta)


def fisher_removal_update(model, data: UnlearningData, space: ParameterSpace, cfg: FisherRemovalConfig, seed: int, state: dict):
    """One Fisher Removal step: (update, diagnostics)."""
    F, delta, step = _newton_direction(model, data, space, cfg, seed)
    return step, {"forget_gradient_norm": float(delta.norm()), "structure": F.structure, "m": F.m}


def fisher_forgetting_update(model, data: UnlearningData, space: ParameterSpace, cfg: FisherForgettingConfig, seed: int,
                             state: dict):
    """Newton step (variant "newton_noise") plus (μσ²)^{1/4} F̂_λ^{p} ε: (update, diagnostics)."""
    if cfg.variant == "newton_noise":
        F, delta, step = _newton_direction(model, data, space, cfg, seed)
        diag = {"forget_gradient_norm": float(delta.norm()), "newton_norm": float(step.norm())}
    else:
        F = build_fisher(model, data, space, cfg, seed)
        step, diag = torch.zeros(space.dim, dtype=torch.float64), {}
    p0 = space.parameters(model)[0]
    gen = torch.Generator().manual_seed(cfg.seed + seed)
    eps = torch.randn(space.dim, generator=gen, dtype=p0.dtype).to(p0.device)
    noise = (cfg.mu * cfg.sigma**2) ** 0.25 * F.power_product(eps, cfg.exponent)
    diag.update(noise_norm=float(noise.norm()), structure=F.structure, m=F.m)
    return step.to(noise.dtype) + noise, diag


def newton_equivalent_eta(n_train: int, k: int, retain_tokens: int, window_targets: int, forget_targets: float) -> float:
    """The step scale η at which Fisher Removal's step equals a plain Newton step on the summed token
    loss, H⁻¹Δ_tok with H ≈ (retain tokens) × the per-token Fisher. The units differ: F̂ is built from
    per-window *mean* losses over ``window_targets`` tokens, Δ from each forget item's mean over its
    ``forget_targets`` target tokens, and ``n_train`` counts lines. If the per-token gradients of a
    window were uncorrelated, F̂ ≈ F_token / ``window_targets``, and the two steps agree at
    η = (n − k) · forget_targets / (retain_tokens · window_targets). An order of magnitude, not an
    identity: correlated tokens make the true factor larger. Notebook 04."""
    for name, value in (("n_train", n_train), ("retain_tokens", retain_tokens), ("window_targets", window_targets),
                        ("forget_targets", forget_targets)):
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
    if not 0 < k < n_train:
        raise ValueError(f"k must be between 1 and n_train - 1 = {n_train - 1}, got {k}")
    return (n_train - k) * forget_targets / (retain_tokens * window_targets)
