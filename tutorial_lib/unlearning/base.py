"""The building blocks every unlearning method shares: the forget and retain sets tokenized and checked
against the model (:func:`prepare_unlearning_data`, :class:`UnlearningData`), the Fisher samples drawn
from the retain text (:func:`fisher_batches`), a method's entry in the registry (:class:`Method`), what
a call reports (:class:`UnlearningReport`) and the error raised when an update is refused
(:class:`UnlearningError`).

A forget item is a text or a ``(context, target)`` pair whose loss covers only the target's tokens;
an item repeated k times counts k times (``docs/method.md`` §3). :func:`canary_forget_items` makes the
forget set of a canary, over its secret or its whole line. Used through
:func:`~tutorial_lib.unlearning.api.unlearn` by notebooks 04–10.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from ..core.models import check_causal_lm, max_positions
from ..core.tokenization import check_texts


class UnlearningError(RuntimeError):
    """An unlearning update was refused; the model's weights are unchanged."""


# ----------------------------------------------------------------------------------- report
@dataclass
class UnlearningReport:
    """What an unlearning call did."""

    method: str
    config: dict
    updated: list[str]
    n_parameters: int
    update_norm: float
    seconds: float
    n_train: int
    k: int
    diagnostics: dict = field(default_factory=dict)

    def summary(self) -> str:
        return (f"{self.method}: {self.n_parameters:,} parameters in {len(self.updated)} tensors, "
                f"update norm {self.update_norm:.4g}, {self.seconds:.2f} s (n = {self.n_train}, k = {self.k})")

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------- data
@dataclass
class UnlearningData:
    """Tokenized forget items (with multiplicities), the retain text's token ids, n and block size."""

    forget_batch: dict
    counts: torch.Tensor
    retain_ids: torch.Tensor | None
    n_train: int
    block_size: int

    @property
    def k(self) -> int:
        return int(self.counts.sum())


def _as_pair(item) -> tuple[str, str]:
    if isinstance(item, str):
        return "", item
    if isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item):
        return item[0], item[1]
    raise TypeError(f"a forget item is a text or a (context, target) pair of texts, got {item!r}")


def check_unlearning_inputs(model, forget, retain) -> list | None:
    """The door checks of :func:`~tutorial_lib.unlearning.api.unlearn`: ``model`` must be a causal LM
    (:func:`~tutorial_lib.core.models.check_causal_lm`), ``forget`` and ``retain`` lists of texts
    (a single string would be read as one example per character). Returns ``retain`` without the items
    that are also in the forget set (a forget item's text, or its context + target), with a warning
    that counts them: the retain set must not hold what is to be forgotten."""
    check_causal_lm(model)
    low = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters() if p.dtype in (torch.float16, torch.bfloat16)})
    if low:
        raise TypeError(f"model: its weights are {', '.join(low)}; the Newton step and the Fisher need float32 (in 16 bits a "
                        "small step rounds away and K-FAC's eigendecomposition is unavailable): pass model.float()")
    check_texts(forget, "forget")
    check_texts(retain, "retain")
    if not retain:
        return retain
    forgotten = {item if isinstance(item, str) else "".join(item) for item in forget if isinstance(item, (str, tuple, list))}
    kept = [r for r in retain if r not in forgotten]
    if len(kept) < len(retain):
        warnings.warn(f"{len(retain) - len(kept)} retain item(s) are also in the forget set and were removed from the retain set",
                      UserWarning, stacklevel=3)
    return kept


def _vocab_size(model) -> int:
    return model.get_input_embeddings().num_embeddings


def prepare_unlearning_data(model, tokenizer, forget, retain=None, n_train: int | None = None, block_size: int = 128,
                            device=None) -> UnlearningData:
    """Tokenize and check the forget and retain sets against ``model``."""
    if forget is None or len(forget) == 0:
        raise ValueError("the forget set is empty: nothing to unlearn")
    vocab = _vocab_size(model)
    if len(tokenizer) > vocab:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model's embedding has {vocab}: they do not belong together")
    max_len = max_positions(model)
    if max_len is not None and block_size > max_len:
        raise ValueError(f"block_size = {block_size} is longer than the model's {max_len} positions; set the config's "
                         f"block_size <= {max_len}")
    counts = Counter(_as_pair(item) for item in forget)
    rows, masks = [], []
    for (context, target), _ in counts.items():
        c_ids = tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
        t_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
        ids = c_ids + t_ids
        if max_len is not None and len(ids) > max_len:
            raise ValueError(f"forget item of {len(ids)} tokens is longer than the model's {max_len} positions: {target[:40]!r}")
        if len(ids) < 2 or not t_ids:
            raise ValueError(f"forget item needs a target and at least two tokens: {(context, target)!r}")
        if max(ids) >= vocab:
            raise ValueError(f"forget item has token id {max(ids)} outside the model's vocabulary of {vocab}: wrong tokenizer?")
        rows.append(ids)
        masks.append([0] * max(len(c_ids), 1) + [1] * (len(ids) - max(len(c_ids), 1)))  # labels from the target on
    T = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), T), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), T), dtype=torch.long)
    labels = torch.full((len(rows), T), -100, dtype=torch.long)
    for i, (r, m) in enumerate(zip(rows, masks)):
        input_ids[i, : len(r)] = torch.tensor(r)
        attention[i, : len(r)] = 1
        labels[i, : len(r)] = torch.where(torch.tensor(m, dtype=torch.bool), torch.tensor(r), -100)
    dev = device or next(model.parameters()).device
    batch = {"input_ids": input_ids.to(dev), "attention_mask": attention.to(dev), "labels": labels.to(dev)}
    retain_ids = None
    if retain is not None and len(retain) > 0:
        retain_ids = torch.tensor(tokenizer("\n".join(retain), add_special_tokens=False)["input_ids"], dtype=torch.long)
        if len(retain_ids) <= block_size:
            raise ValueError(f"the retain set has {len(retain_ids)} tokens, fewer than block_size + 1 = {block_size + 1}")
    k = sum(counts.values())
    n_train = n_train if n_train is not None else (len(retain) if retain is not None else 0) + k
    if n_train <= k:
        raise ValueError(f"n_train = {n_train} must exceed the number of forgotten items k = {k}")
    return UnlearningData(batch, torch.tensor(list(counts.values()), dtype=torch.float64), retain_ids, n_train, block_size)


def fisher_batches(data: UnlearningData, n: int, batch_size: int, source: str, seed: int, device) -> list[dict]:
    """``n`` random windows of ``block_size`` tokens of the retain text (and, for source "all",
    the forget items in proportion k/n_train), in batches."""
    if data.retain_ids is None:
        raise ValueError("this method needs a retain set to build the Fisher from")
    gen = torch.Generator().manual_seed(seed)
    L = data.block_size
    n_forget = round(n * data.k / data.n_train) if source == "all" else 0
    starts = torch.randint(0, len(data.retain_ids) - L, (n - n_forget,), generator=gen)
    windows = torch.stack([data.retain_ids[s : s + L + 0] for s in starts]).to(device)
    batches = [{"input_ids": windows[i : i + batch_size]} for i in range(0, len(windows), batch_size)]
    if n_forget:
        pick = torch.multinomial(data.counts, n_forget, replacement=True, generator=gen).to(device)
        batches.append({k: v[pick] for k, v in data.forget_batch.items()})
    return batches


@dataclass(frozen=True)
class Method:
    """An unlearning method: its config class and ``update(model, data, space, cfg, seed, state)``,
    called ``cfg.repeats`` times; it returns (flat update, diagnostics) and may keep what it needs
    between calls in ``state`` (a dict that starts empty, e.g. optimiser moments)."""

    config: type
    update: Callable
    needs_retain: bool = True


# ----------------------------------------------------------------------------------- evaluation
def canary_forget_items(canary, target: str = "secret") -> list:
    """The forget set of one canary: its ``insertions`` training occurrences, each a (context,
    target) pair. ``target="secret"`` counts only the secret and what follows it (given "\n" and
    the prefix), ``"line"`` the whole line after the line break (the data-agnostic choice)."""
    if target == "secret":
        item = ("\n" + canary.prefix, canary.secret + canary.suffix)
    elif target == "line":
        item = ("\n", canary.text())
    else:
        raise ValueError(f"target must be 'secret' or 'line', got {target!r}")
    if canary.insertions < 1:
        raise ValueError(f"canary {canary.name!r} was never inserted: nothing to forget")
    return [item] * canary.insertions


def canary_forget_in_context(canary, lines: list[str], positions: list[int], context_chars: int = 24) -> list:
    """The canary's occurrences as it met them in training: one (context, target) pair per position in
    ``lines`` (:class:`~tutorial_lib.core.canaries.InsertedCorpus`'s ``lines`` and ``positions``), the
    context being the last ``context_chars`` characters of the line before it, a line break and the
    prefix; the target is the secret and what follows it. The per-item losses differ by context, which
    is what the forget-quality test (:func:`~tutorial_lib.unlearning.verdicts.forget_quality`) compares."""
    if not positions:
        raise ValueError(f"canary {canary.name!r} has no training positions: nothing to evaluate")
    if context_chars < 0:
        raise ValueError(f"context_chars must be >= 0, got {context_chars}")
    items = []
    for pos in positions:
        if lines[pos] != canary.text():
            raise ValueError(f"line {pos} is not canary {canary.name!r}; pass the InsertedCorpus's own lines and positions")
        before = lines[pos - 1][-context_chars:] if pos > 0 and context_chars else ""
        items.append((before + "\n" + canary.prefix, canary.secret + canary.suffix))
    return items
