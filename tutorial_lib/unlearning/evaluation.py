"""Judging an unlearned model against the model retrained without the forgotten data (``docs/method.md``
§7). :func:`evaluate_unlearning` reports the exact exposure of each canary, the validation and retain
perplexity, the loss on the forget items and, given the retrained model as ``reference``, the KL
divergence of the model's next-token predictions from it (:func:`next_token_kl`).

Notebook 04, "Check against the oracle"; the sweeps, benchmark and robustness studies of notebooks
04–10 evaluate every model through it.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..core.evaluation import compute_loss
from ..core.models import check_causal_lm
from ..curvature.outputs import lm_outputs, sample_losses
from ..privacy.exposure import compute_exposure
from .base import prepare_unlearning_data
from .verdicts import forget_quality


@torch.no_grad()
def next_token_kl(model, reference, ids: torch.Tensor, block_size: int, max_blocks: int = 32, batch_size: int = 16) -> float:
    """Mean KL(reference ‖ model) of next-token distributions over non-overlapping blocks of ``ids`` (nats)."""
    n_blocks = min((len(ids) - 1) // block_size, max_blocks)
    if n_blocks < 1:
        raise ValueError(f"need more than block_size={block_size} tokens, got {len(ids)}")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, n_blocks, batch_size):
        starts = torch.arange(i, min(i + batch_size, n_blocks)) * block_size
        block = ids[starts[:, None] + torch.arange(block_size)].to(device)
        p = torch.log_softmax(reference(input_ids=block).logits.double(), -1)
        q = torch.log_softmax(model(input_ids=block).logits.double(), -1)
        total += float((p.exp() * (p - q)).sum())
        count += block.numel()
    return total / count


@torch.no_grad()
def forget_item_losses(model, tokenizer, forget_items, block_size: int) -> np.ndarray:
    """The loss (nats per target token) of every forget item, repeats kept, in float64."""
    model.eval()
    data = prepare_unlearning_data(model, tokenizer, forget_items, None, n_train=len(forget_items) + 1, block_size=block_size)
    losses = sample_losses(lm_outputs(model, data.forget_batch)).double().cpu().numpy()
    return np.repeat(losses, data.counts.numpy().astype(int))


def evaluate_unlearning(model, tokenizer, canaries, val_ids, retain_ids, forget_items, block_size: int,
                        reference=None, names=None, max_blocks: int = 64, candidates: int | None = None, progress: bool = True) -> dict:
    """Everything a method reports: exact exposure of each canary in ``names`` (default all; among
    ``candidates`` sampled secrets if given, see :func:`~tutorial_lib.privacy.exposure.compute_exposure`,
    with its bar if ``progress``), validation and retain perplexity, loss on the forget items, and KL
    of next-token predictions from ``reference`` (the retrained model) on validation text with the forget
    quality against it (:func:`~tutorial_lib.unlearning.verdicts.forget_quality` of the per-item forget
    losses, :func:`forget_item_losses`)."""
    check_causal_lm(model)

    model.eval()
    out = {"exposure": {c.name: compute_exposure(model, tokenizer, c, candidates=candidates, progress=progress).exposure
                        for c in canaries if names is None or c.name in names}}
    out["val_loss"] = compute_loss(model, val_ids, block_size, max_blocks=max_blocks)
    out["val_perplexity"] = math.exp(out["val_loss"])
    out["retain_perplexity"] = math.exp(compute_loss(model, retain_ids, block_size, max_blocks=max_blocks))
    losses = forget_item_losses(model, tokenizer, forget_items, block_size)
    out["forget_loss"] = float(losses.mean())
    if reference is not None:
        reference.eval()
        out["kl_to_reference"] = next_token_kl(model, reference, val_ids, block_size, max_blocks=min(max_blocks, 32))
        out["forget_quality"] = (forget_quality(losses, forget_item_losses(reference, tokenizer, forget_items, block_size))
                                 if len(losses) >= 2 else math.nan)  # a test needs two items at least
    return out
