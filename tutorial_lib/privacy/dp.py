"""DP-SGD for the course's language models (Abadi et al. 2016; ``docs/method.md`` §6), through Opacus'
``PrivacyEngine``: per-example clipping to ``max_grad_norm``, Poisson sampling and Gaussian noise.

:class:`DPConfig` holds a run's privacy settings (target ε or a noise multiplier, δ, clipping bound,
accountant). :func:`noise_multiplier_for` calibrates σ to a target ε and :func:`epsilon_spent` gives
the ε a run spent. :func:`train_dp_language_model` trains a model with the same optimiser, learning-rate
schedule and number of steps as the non-private run, over windows of ``block_size + 1`` tokens, the
examples that (ε, δ) are about. The plumbing GPT-2 needs under Opacus: a ``Conv1D`` grad sampler
(:func:`register_conv1d_grad_sampler`) and whole-batch position ids (:func:`position_ids`).

Notebook 08; :mod:`tutorial_lib.experiments.dp_comparison` runs it on the benchmark's models.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from ..core.evaluation import compute_loss
from ..core.profiles import config_for_profile, progress_options
from ..core.training import TrainConfig, TrainHistory, lr_at

ACCOUNTANTS = ("rdp", "prv", "gdp")


EPSILONS = (1.0, 3.0, 8.0)  # the targets of notebook 08 and the reproduction's DP table


@dataclass(frozen=True)
class DPConfig:
    """Privacy settings of a DP-SGD run.

    ``target_epsilon``: the ε the noise multiplier is calibrated to (by the accountant, for the run's
    sampling rate and number of steps). ``delta``: δ, default 1/n for n training windows.
    ``max_grad_norm``: the per-example clipping bound C. ``noise_multiplier``: set σ directly
    instead of a target ε (then ε is only reported). ``accountant``: Opacus' ``"rdp"`` (default),
    ``"prv"`` or ``"gdp"``."""

    target_epsilon: float | None = 8.0
    delta: float | None = None
    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None
    accountant: str = "rdp"

    PROFILE_DEFAULTS: ClassVar[dict[str, dict]] = {"tiny": {}, "small": {}, "full": {}}  # the same privacy settings at every profile

    def __post_init__(self):
        if self.target_epsilon is None and self.noise_multiplier is None:
            raise ValueError("give a target_epsilon or a noise_multiplier")
        if self.target_epsilon is not None and self.noise_multiplier is not None:
            raise ValueError(f"give a target_epsilon or a noise_multiplier, not both "
                             f"(got {self.target_epsilon} and {self.noise_multiplier})")
        if self.target_epsilon is not None and not (self.target_epsilon > 0 and math.isfinite(self.target_epsilon)):
            raise ValueError(f"target_epsilon must be a positive finite number, got {self.target_epsilon}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ValueError(f"delta must lie in (0, 1), got {self.delta}")
        if not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise ValueError(f"max_grad_norm (the clipping bound C) must be a positive finite number, got {self.max_grad_norm}: "
                             "without a finite bound no noise scale makes the run private")
        if self.noise_multiplier is not None and not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError(f"noise_multiplier must be a finite number >= 0, got {self.noise_multiplier}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"unknown accountant {self.accountant!r}; expected one of {', '.join(ACCOUNTANTS)}")

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> "DPConfig":
        """The profile's row of ``PROFILE_DEFAULTS`` (the same at every profile), then ``overrides``."""
        return config_for_profile(cls, profile, overrides)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------- accounting
def noise_multiplier_for(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp") -> float:
    """The noise multiplier σ that spends ``target_epsilon`` at ``delta`` over ``steps`` Poisson-sampled
    steps at ``sample_rate`` (Opacus' ``get_noise_multiplier``)."""
    from opacus.accountants.utils import get_noise_multiplier

    DPConfig(target_epsilon=target_epsilon, delta=delta, accountant=accountant)  # validates
    _check_rate(sample_rate, steps)
    with warnings.catch_warnings():  # "optimal order is the largest alpha": the bound is valid, if loose
        warnings.filterwarnings("ignore", message="Optimal order")
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps,
                                          accountant=accountant))


def epsilon_spent(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """ε after ``steps`` steps with noise ``noise_multiplier`` at ``sample_rate``, for ``delta``
    (``inf`` without noise). Notebook 08, "What (ε, δ) promises"."""
    from opacus.accountants import create_accountant

    DPConfig(target_epsilon=None, noise_multiplier=noise_multiplier, delta=delta, accountant=accountant)  # validates
    _check_rate(sample_rate, steps)
    if noise_multiplier == 0:
        return math.inf
    accountant_ = create_accountant(accountant)
    accountant_.history = [(noise_multiplier, sample_rate, steps)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order")
        return float(accountant_.get_epsilon(delta=delta))


def _check_rate(sample_rate: float, steps: int) -> None:
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")


@dataclass(frozen=True)
class GroupPrivacy:
    """What an (ε, δ)-DP run promises a group of ``k`` records (a canary inserted k times):
    (kε, k·e^{(k−1)ε}·δ)-DP, the group-privacy bound. ``log_delta`` is ln δ_k, since e^{(k−1)ε}
    overflows for large groups; a δ_k of 1 or more promises nothing (``vacuous``)."""

    k: int
    epsilon: float
    log_delta: float

    @property
    def delta(self) -> float:
        """δ_k (``inf`` where it overflows)."""
        return math.exp(self.log_delta) if self.log_delta < 700 else math.inf

    @property
    def vacuous(self) -> bool:
        return self.log_delta >= 0

    def summary(self) -> str:
        return f"k={self.k}: eps {self.epsilon:g}, delta " + (">= 1 (vacuous)" if self.vacuous else f"{self.delta:.1e}")

    def to_dict(self) -> dict:
        return {"k": self.k, "epsilon": self.epsilon, "log_delta": self.log_delta, "delta": self.delta, "vacuous": self.vacuous}


def _check_group(epsilon: float, delta: float) -> None:
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be a positive finite number, got {epsilon}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")


def group_privacy(epsilon: float, delta: float, k: int) -> GroupPrivacy:
    """The group-privacy bound of an (``epsilon``, ``delta``)-DP mechanism for ``k`` records:
    ε_k = kε, δ_k = k·e^{(k−1)ε}·δ, computed in logs. Notebook 08, "Repetition weakens the protection"."""
    _check_group(epsilon, delta)
    if k < 1:
        raise ValueError(f"the group size k must be >= 1, got {k}")
    return GroupPrivacy(k, k * epsilon, math.log(k) + (k - 1) * epsilon + math.log(delta))


def largest_private_group(epsilon: float, delta: float) -> int:
    """The largest group size k whose bound δ_k = k·e^{(k−1)ε}·δ stays below 1 (at least 1)."""
    _check_group(epsilon, delta)
    k = 1
    while group_privacy(epsilon, delta, k + 1).log_delta < 0:
        k += 1
    return k


# ----------------------------------------------------------------------------------- Opacus plumbing
def conv1d_grad_sample(layer, activations, backprops) -> dict:
    """Per-sample gradients of Hugging Face's ``Conv1D`` (y = x W + b with W of shape (in, out)):
    for example n, ∂ℓ_n/∂W = Σ_t x_{n,t} g_{n,t}ᵀ and ∂ℓ_n/∂b = Σ_t g_{n,t}, where g are the
    gradients at the layer's output (Opacus' grad-sampler signature)."""
    x = activations[0]
    out = {}
    if layer.weight.requires_grad:
        out[layer.weight] = torch.einsum("n...i,n...j->nij", x, backprops)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = torch.einsum("n...j->nj", backprops)
    return out


def register_conv1d_grad_sampler() -> None:
    """Register :func:`conv1d_grad_sample` with Opacus (idempotent); :func:`make_private` calls it."""
    from opacus.grad_sample import GradSampleModule
    from transformers.pytorch_utils import Conv1D

    GradSampleModule.GRAD_SAMPLERS[Conv1D] = conv1d_grad_sample


def check_opacus_compatible(model) -> None:
    """Raise ``ValueError`` naming every layer that Opacus cannot train privately (batch norm, for
    example, mixes examples of a batch), with Opacus' own reason."""
    from opacus.validators import ModuleValidator

    errors = [f"layer {name!r} ({type(module).__name__}): {error}" for name, module in model.named_modules()
              if not any(module.children()) for error in ModuleValidator.validate(module, strict=False)]
    if errors:
        raise ValueError("Opacus cannot train this model with DP-SGD: " + "; ".join(errors))


def position_ids(input_ids: torch.Tensor) -> torch.Tensor:
    """Position ids of shape (B, T) for a batch of windows: what GPT-2 must be called with under
    Opacus, so that the position embedding's per-sample gradients have the batch dimension."""
    B, T = input_ids.shape
    return torch.arange(T, device=input_ids.device).expand(B, T)


def window_dataset(ids: torch.Tensor, block_size: int) -> torch.utils.data.TensorDataset:
    """The training text as non-overlapping windows of ``block_size + 1`` tokens: DP's examples."""
    n = len(ids) // (block_size + 1)
    if n < 2:
        raise ValueError(f"training text has {len(ids)} tokens: fewer than 2 windows of {block_size + 1}")
    return torch.utils.data.TensorDataset(ids[: n * (block_size + 1)].reshape(n, block_size + 1))


def whole_line_windows(line_ids: list[list[int]], block_size: int, keep_whole: set[int], pad_id: int = 0
                       ) -> torch.utils.data.TensorDataset:
    """The training text as windows of ``block_size + 1`` tokens in which no line of ``keep_whole`` (the
    canary occurrences) is ever cut: lines are packed in order, ordinary lines split across windows as
    they fall, and a protected line that would cross a window's end starts the next window instead; the
    rest of the window it leaves is padding. Returns (windows, mask) with mask 1 on real tokens. DP's
    examples for :func:`train_dp_language_model`, private or σ = 0 alike, so that every occurrence of a
    canary is one whole example. ``line_ids``: each line's tokens, its line break included."""
    width = block_size + 1
    windows, masks, current = [], [], []

    def emit():
        if len(current) >= 2:
            windows.append(current + [pad_id] * (width - len(current)))
            masks.append([1] * len(current) + [0] * (width - len(current)))
        current.clear()

    for i, tokens in enumerate(line_ids):
        if i in keep_whole:
            if len(tokens) > width:
                raise ValueError(f"line {i} has {len(tokens)} tokens, more than a window of block_size + 1 = {width}: it cannot stay whole")
            if len(current) + len(tokens) > width:
                emit()
            current.extend(tokens)
        else:
            for token in tokens:
                current.append(token)
                if len(current) == width:
                    emit()
        if len(current) == width:
            emit()
    emit()
    if len(windows) < 2:
        raise ValueError(f"the training text makes {len(windows)} window(s) of {width} tokens: fewer than 2")
    return torch.utils.data.TensorDataset(torch.tensor(windows, dtype=torch.long), torch.tensor(masks, dtype=torch.long))


@dataclass
class PrivateTraining:
    """What :func:`make_private` returns: the Opacus ``engine`` (its accountant), the private ``model``,
    the DP ``optimizer`` and the Poisson-sampling ``loader``."""

    engine: Any
    model: Any
    optimizer: Any
    loader: Any


def make_private(model, optimizer, loader, noise_multiplier: float, max_grad_norm: float, accountant: str = "rdp",
                 seed: int = 0, poisson_sampling: bool = True) -> PrivateTraining:
    """Opacus' ``PrivacyEngine.make_private`` with a seeded noise generator (so that the same seed
    gives the same run). Returns a :class:`PrivateTraining`;
    call the private model with :func:`position_ids`. ``private_model._close()`` removes the hooks."""
    from opacus import PrivacyEngine

    check_opacus_compatible(model)
    register_conv1d_grad_sampler()
    DPConfig(target_epsilon=None, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, accountant=accountant)  # validates
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
        engine = PrivacyEngine(accountant=accountant)
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        private, dp_optimizer, dp_loader = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm, poisson_sampling=poisson_sampling,
            noise_generator=torch.Generator(device=next(model.parameters()).device).manual_seed(seed + 1),
        )
    return PrivateTraining(engine, private, dp_optimizer, dp_loader)


def window_loss(model, windows: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy of a batch of windows (B, T + 1), calling ``model`` with
    whole-batch position ids: the mean over the batch of per-window mean losses (Opacus'
    ``loss_reduction="mean"``). With a ``mask`` (1 on real tokens, 0 on padding, as
    :func:`whole_line_windows` makes), each window's mean is over its real targets only."""
    inputs, labels = windows[:, :-1], windows[:, 1:]
    logits = model(input_ids=inputs, position_ids=position_ids(inputs), use_cache=False).logits
    if mask is None:
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")  # (B, T)
    valid = mask[:, 1:].to(per_token.dtype)
    return ((per_token * valid).sum(1) / valid.sum(1)).mean()


def backward(loss: torch.Tensor) -> None:
    """``loss.backward()`` through an Opacus model, without the warning PyTorch gives because the
    first layer's input (token ids) needs no gradient: harmless here, since Opacus' hooks read the
    layers' outputs' gradients."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        loss.backward()


# ----------------------------------------------------------------------------------- training
def train_dp_language_model(model, train_ids, val_ids: torch.Tensor, cfg: TrainConfig, dp: DPConfig, seed: int = 0,
                            device: str = "cpu", progress: bool = True) -> tuple[TrainHistory, dict]:
    """Train ``model`` in place with DP-SGD (AdamW as in :func:`~tutorial_lib.core.training.train_language_model`,
    same learning-rate schedule and number of steps; per-example clipping to ``dp.max_grad_norm``
    replaces batch clipping). ``train_ids``: the training text's token ids (cut into
    :func:`window_dataset`'s windows) or a dataset of (windows, mask) from :func:`whole_line_windows`.
    σ = 0 (``DPConfig(noise_multiplier=0)``) runs the same pipeline without noise: the matched
    non-private baseline. Returns the history and the privacy record: n windows, sample rate,
    steps, σ, δ, the target and the spent ε (from the engine's accountant). Notebook 08."""

    dataset = train_ids if isinstance(train_ids, torch.utils.data.Dataset) else window_dataset(train_ids, cfg.block_size)
    n = len(dataset)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, generator=torch.Generator().manual_seed(seed))
    sample_rate = 1 / len(loader)  # what Opacus' Poisson loader uses: about batch_size / n
    delta = dp.delta if dp.delta is not None else 1.0 / n
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    if delta > 1.0 / n:
        warnings.warn(f"delta = {delta:g} is above 1/n = {1 / n:.3g} for n = {n:,} training windows: such a guarantee allows "
                      "leaking some window outright; use delta <= 1/n (the default)", UserWarning, stacklevel=2)
    sigma = dp.noise_multiplier if dp.noise_multiplier is not None else noise_multiplier_for(
        dp.target_epsilon, delta, sample_rate, cfg.steps, dp.accountant)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=(0.9, 0.95))
    model.train()
    dp_run = make_private(model, optimizer, loader, sigma, dp.max_grad_norm, dp.accountant, seed)
    engine, private, dp_optimizer, dp_loader = dp_run.engine, dp_run.model, dp_run.optimizer, dp_run.loader
    history, step, empty = TrainHistory(), 0, 0
    bar = tqdm(total=cfg.steps, desc=f"DP-SGD (sigma {sigma:.2f})", **progress_options(progress))
    try:
        while step < cfg.steps:
            for batch in dp_loader:
                windows, mask = batch[0], (batch[1].to(device) if len(batch) > 1 else None)
                if step == cfg.steps:
                    break
                for group in dp_optimizer.param_groups:
                    group["lr"] = lr_at(step, cfg)
                if len(windows) == 0:  # Poisson sampling drew no window: the step happened, nothing to learn
                    empty += 1
                    step += 1
                    bar.update()
                    continue
                loss = window_loss(private, windows.to(device), mask)
                dp_optimizer.zero_grad(set_to_none=True)
                backward(loss)
                dp_optimizer.step()
                history.train_loss.append(loss.item())
                step += 1
                bar.update()
                if step % cfg.eval_every == 0 or step == cfg.steps or step in cfg.eval_steps:
                    val = compute_loss(model, val_ids, cfg.block_size, max_blocks=cfg.eval_blocks, device=device)
                    history.val_steps.append(step)
                    history.val_loss.append(val)
                    bar.set_postfix(loss=f"{loss.item():.3f}", val_ppl=f"{math.exp(val):.2f}")
                    model.train()
    finally:
        bar.close()
        private._close()
    model.eval()
    # empty steps did not call the optimiser, so the engine's accountant missed them: account for all
    spent = epsilon_spent(sigma, sample_rate, cfg.steps, delta, dp.accountant)
    if not empty and sigma > 0:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order")
            engine_eps = engine.get_epsilon(delta)
        assert math.isclose(engine_eps, spent, rel_tol=1e-6), f"the engine's accountant says {engine_eps}, not {spent}"
    privacy = {"n_windows": n, "sample_rate": sample_rate, "steps": cfg.steps, "epochs": cfg.steps * sample_rate,
               "noise_multiplier": sigma, "max_grad_norm": dp.max_grad_norm, "delta": delta,
               "target_epsilon": dp.target_epsilon, "epsilon": spent, "accountant": dp.accountant, "empty_batches": empty}
    return history, privacy
