"""One seeded training loop for causal LMs (AdamW, warm-up + cosine decay, clipping, periodic
validation). Used by notebook 03 and by every experiment that trains or retrains a model."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from .evaluation import compute_loss
from .models import check_causal_lm, max_positions
from .profiles import config_for_profile, progress_options


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. The validation loss (on ``eval_blocks`` blocks) is measured every
    ``eval_every`` steps, at the extra ``eval_steps``, and at the end."""

    steps: int = 1000
    batch_size: int = 32
    block_size: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_blocks: int = 64
    eval_steps: tuple[int, ...] = ()

    PROFILE_DEFAULTS: ClassVar[dict[str, dict]] = {
        "tiny": {"steps": 150, "batch_size": 16, "block_size": 64, "lr": 5e-3, "warmup_steps": 10, "eval_every": 50,
                 "eval_blocks": 16, "eval_steps": (25,)},
        "small": {"steps": 800, "eval_every": 200, "eval_steps": (50, 100)},
        "full": {"steps": 4000, "batch_size": 64, "block_size": 256, "lr": 1e-3, "warmup_steps": 200, "eval_every": 500,
                 "eval_blocks": 128, "eval_steps": (100, 250)},
    }

    def __post_init__(self):
        for name in ("steps", "batch_size", "block_size", "eval_every", "eval_blocks"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"TrainConfig.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"TrainConfig.lr must be a positive finite number, got {self.lr}")
        if not self.grad_clip > 0:
            raise ValueError(f"TrainConfig.grad_clip must be positive (math.inf for no clipping), got {self.grad_clip}: "
                             "at 0 every gradient is scaled to nothing and the model never trains")
        if not (0 <= self.min_lr_ratio <= 1 and self.warmup_steps >= 0 and self.weight_decay >= 0):
            raise ValueError(f"TrainConfig needs 0 <= min_lr_ratio <= 1, warmup_steps >= 0 and weight_decay >= 0, got "
                             f"{self.min_lr_ratio}, {self.warmup_steps} and {self.weight_decay}")

    @classmethod
    def for_profile(cls, profile: str | None = None, **overrides) -> "TrainConfig":
        """The profile's row of ``PROFILE_DEFAULTS``, then ``overrides``."""
        return config_for_profile(cls, profile, overrides)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainHistory:
    """Losses in nats: ``train_loss`` every step, ``val_loss`` at ``val_steps``."""

    train_loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)

    @property
    def val_perplexity(self) -> list[float]:
        return [math.exp(v) for v in self.val_loss]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainedModel:
    """A trained (or cached) model of a run, with what it was trained on: ``canaries`` and corpus
    ``splits`` (empty for runs without canaries), the stored ``record`` (``history``,
    ``train_seconds``, ...) and ``from_cache``. Returned by the experiments' ``train_*`` functions."""

    model: Any
    tokenizer: Any
    record: dict
    from_cache: bool
    canaries: list = field(default_factory=list)
    splits: Any = None

    @property
    def val_perplexity(self) -> float | None:
        """The last validation perplexity of the training run (None without a history)."""
        losses = self.record.get("history", {}).get("val_loss") or []
        return math.exp(losses[-1]) if losses else None

    def summary(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        ppl = self.val_perplexity
        how = "from the cache" if self.from_cache else f"trained in {self.record.get('train_seconds', float('nan')):.0f} s"
        return f"{n:,}-parameter model, validation perplexity {ppl:.2f}, {how}" if ppl else f"{n:,}-parameter model, {how}"

    def to_dict(self) -> dict:
        return {"record": self.record, "from_cache": self.from_cache, "canaries": [c.to_dict() for c in self.canaries]}


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``cfg.lr``, then cosine decay to ``cfg.min_lr_ratio * cfg.lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_language_model(
    model,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    cfg: TrainConfig,
    seed: int = 0,
    device: str = "cpu",
    on_eval: Callable[[int, object], None] | None = None,
    progress: bool = True,
) -> TrainHistory:
    """Train ``model`` in place on random windows of ``train_ids``; at every validation step (see
    :class:`TrainConfig`) measure the validation loss and call ``on_eval(step, model)``.
    Notebook 03, "The experiment"."""

    check_causal_lm(model)
    if len(train_ids) <= cfg.block_size + 1:
        raise ValueError(f"training text has {len(train_ids)} tokens, fewer than block_size + 2 = {cfg.block_size + 2}")
    positions = max_positions(model)
    if positions is not None and cfg.block_size > positions:
        raise ValueError(f"TrainConfig.block_size = {cfg.block_size} is longer than the model's {positions} positions; "
                         f"use block_size <= {positions}")
    generator = torch.Generator().manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95),
    )
    history = TrainHistory()
    offsets = torch.arange(cfg.block_size + 1)
    model.train()
    bar = tqdm(range(cfg.steps), desc="training", **progress_options(progress))
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        starts = torch.randint(0, len(train_ids) - cfg.block_size - 1, (cfg.batch_size,), generator=generator)
        batch = train_ids[starts[:, None] + offsets].to(device)
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        history.train_loss.append(loss.item())
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps or done in cfg.eval_steps:
            val = compute_loss(model, val_ids, cfg.block_size, max_blocks=cfg.eval_blocks, device=device)
            history.val_steps.append(done)
            history.val_loss.append(val)
            bar.set_postfix(loss=f"{loss.item():.3f}", val_ppl=f"{math.exp(val):.2f}")
            if on_eval is not None:
                on_eval(done, model)
                model.train()
    model.eval()
    return history
