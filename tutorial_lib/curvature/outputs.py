"""Per-example losses in one form for every model the curvature code handles: an :class:`Outputs`
holds the cross-entropy (or squared-error) rows of a batch and the example each row belongs to, so
that ℓ(θ; x_i) is the mean over the example's counted rows (:func:`sample_losses`).
:func:`lm_outputs` makes them for a causal LM (next-token rows, padding and ``-100`` labels left
out), :func:`classifier_outputs` and :func:`regression_outputs` for small torch models;
:func:`make_lm_batch` pads texts into a batch.

Used by :mod:`tutorial_lib.curvature.per_sample`, :mod:`~tutorial_lib.curvature.kfac`,
:mod:`~tutorial_lib.curvature.ground_truth` and the unlearning methods. Notebook 02, "Per-sample
gradients".
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..core.tokenization import check_texts


# ----------------------------------------------------------------------------------- losses
class Outputs(NamedTuple):
    """Cross-entropy rows of a batch: ``logits`` (N, C), ``targets`` (N,), ``sample`` (N,) the example
    each row belongs to, ``weight`` (N,) 1 for a row that counts and 0 for padding, and ``n_samples``.
    The loss of example i is the mean CE over its counted rows. (Masking by weight rather than by
    indexing keeps shapes static, so ``torch.func.vmap`` can run it.)"""

    logits: torch.Tensor
    targets: torch.Tensor
    sample: torch.Tensor
    weight: torch.Tensor
    n_samples: int


def lm_outputs(model: nn.Module, batch: dict) -> Outputs:
    """Next-token rows of a causal LM on ``batch`` (``input_ids``, optional ``attention_mask`` and
    ``labels`` with -100 for ignored positions). Position ids are passed for the whole batch so that
    hooks see one position-embedding row per sample."""
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    B, T = ids.shape
    position_ids = torch.arange(T, device=ids.device).expand(B, T)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False).logits[:, :-1]
    labels = batch.get("labels", ids)[:, 1:]
    keep = labels != -100
    if mask is not None:
        keep = keep & mask[:, 1:].bool()
    sample = torch.arange(B, device=ids.device)[:, None].expand(B, T - 1)
    V = logits.shape[-1]
    return Outputs(logits.reshape(-1, V), torch.where(keep, labels, 0).reshape(-1), sample.reshape(-1), keep.reshape(-1).to(logits.dtype), B)


def classifier_outputs(model: nn.Module, batch) -> Outputs:
    """Rows of a classifier on ``batch = (x, y)``: one row per example."""
    x, y = batch
    logits = model(x)
    return Outputs(logits, y, torch.arange(len(y), device=y.device), torch.ones(len(y), dtype=logits.dtype, device=y.device), len(y))


def regression_outputs(model: nn.Module, batch) -> Outputs:
    """Rows of a regression model on ``batch = (x, y)`` with float targets (squared loss)."""
    x, y = batch
    pred = model(x)
    return Outputs(pred, y.reshape(pred.shape), torch.arange(len(y), device=y.device), torch.ones(len(y), dtype=pred.dtype, device=y.device), len(y))


def row_losses(out: Outputs) -> torch.Tensor:
    """Loss of every row: cross-entropy for integer targets, ½‖f − y‖² for float targets."""
    logits = out.logits.float() if out.logits.dtype in (torch.float16, torch.bfloat16) else out.logits
    if out.targets.is_floating_point():
        return 0.5 * (logits - out.targets).pow(2).sum(-1)
    return nn.functional.cross_entropy(logits, out.targets, reduction="none")


def sample_losses(out: Outputs) -> torch.Tensor:
    """Per-example loss ℓ(θ; x_i): the mean row loss over the example's counted rows, shape
    (n_samples,). An example without a counted row has loss 0."""
    ce = row_losses(out) * out.weight
    total = torch.zeros(out.n_samples, dtype=ce.dtype, device=ce.device).index_add(0, out.sample, ce)
    count = torch.zeros(out.n_samples, dtype=ce.dtype, device=ce.device).index_add(0, out.sample, out.weight.to(ce.dtype))
    return total / count.clamp(min=1)


def make_lm_batch(tokenizer, texts: list[str], max_length: int, device="cpu") -> dict:
    """Right-padded ``input_ids`` and ``attention_mask`` for a list of texts (cut at ``max_length``)."""
    check_texts(texts)
    if not texts:
        raise ValueError("no texts to batch")
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_length] for t in texts]
    if any(len(r) < 2 for r in rows):
        raise ValueError("every text needs at least two tokens to have a next-token target")
    T = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
