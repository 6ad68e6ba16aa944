"""Perplexity of a causal LM on token ids or text. Used by notebook 03 and every later notebook."""
from __future__ import annotations

import math

import torch

from .tokenization import check_texts


def tokenize_lines(tokenizer, lines: list[str]) -> torch.Tensor:
    """Token ids of the lines joined by newlines, as one 1-D tensor."""
    check_texts(lines, "lines")
    return torch.tensor(tokenizer("\n".join(lines), add_special_tokens=False)["input_ids"], dtype=torch.long)


@torch.no_grad()
def compute_loss(model, ids: torch.Tensor, block_size: int, batch_size: int = 32, max_blocks: int | None = None, device=None) -> float:
    """Mean next-token negative log-likelihood (nats) over non-overlapping blocks of ``ids``."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    n_blocks = (len(ids) - 1) // block_size
    if max_blocks is not None:
        n_blocks = min(n_blocks, max_blocks)
    if n_blocks < 1:
        raise ValueError(f"need more than block_size={block_size} tokens to evaluate, got {len(ids)}")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        starts = torch.arange(n_blocks) * block_size
        for i in range(0, n_blocks, batch_size):
            idx = starts[i : i + batch_size, None] + torch.arange(block_size + 1)
            block = ids[idx].to(device)
            logits = model(input_ids=block[:, :-1]).logits.float()
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), block[:, 1:].reshape(-1), reduction="sum")
            total += float(nll)
            count += block[:, 1:].numel()
    finally:
        model.train(was_training)
    return total / count


def compute_perplexity(model, ids: torch.Tensor, block_size: int, batch_size: int = 32, max_blocks: int | None = None, device=None) -> float:
    """``exp`` of :func:`compute_loss`. Notebook 03, "Utility: perplexity"."""
    return math.exp(compute_loss(model, ids, block_size, batch_size, max_blocks, device))


def compute_text_perplexity(model, tokenizer, lines: list[str], block_size: int, batch_size: int = 32, device=None) -> float:
    """Perplexity of ``lines`` (joined by newlines) under ``model``."""
    return compute_perplexity(model, tokenize_lines(tokenizer, lines), block_size, batch_size, device=device)
