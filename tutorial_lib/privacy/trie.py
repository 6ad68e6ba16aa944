"""Scoring every candidate of a large set in one go: the candidates as a token trie (the shared
prefix runs once, every trie node costs one forward position reusing its parent's key/value cache),
the nodes attending to one copy of the shared prefix, and brute force for checking.

Used by :mod:`~tutorial_lib.privacy.exposure` (exact exposure) and notebook 03, "Exact exposure through a trie".
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.models import check_causal_lm
from ..core.profiles import progress_options
from ..core.tokenization import check_texts

LN2 = math.log(2.0)


def _pad(ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    width = int(lengths.max())
    if int(lengths.min()) == width:
        return np.asarray(ids, dtype=np.int64).reshape(len(ids), width), lengths
    array = np.full((len(ids), width), -1, dtype=np.int64)
    for row, seq in enumerate(ids):
        array[row, : len(seq)] = seq
    return array, lengths


def _tokenize(tokenizer, texts: list[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        return [e.ids for e in backend.encode_batch_fast(list(texts), add_special_tokens=False)]
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def _start_token(tokenizer) -> int:
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise ValueError("candidates share no token prefix and the tokenizer has no BOS/EOS token to start from")
    return int(start)


def _encode(tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """Token ids of every text (each tokenized whole) as a right-padded array (pad -1), their lengths,
    and the length of the token prefix all texts share. A start token is prepended when they share none."""
    array, lengths = _pad(_tokenize(tokenizer, texts))
    shared = _common_prefix(array, lengths)
    if shared == 0:
        array = np.concatenate([np.full((len(texts), 1), _start_token(tokenizer), dtype=np.int64), array], axis=1)
        lengths, shared = lengths + 1, 1
    return array, lengths, shared


def _common_prefix(array: np.ndarray, lengths: np.ndarray) -> int:
    shared, shortest = 0, int(lengths.min())
    while shared < shortest - 1 and np.all(array[:, shared] == array[0, shared]):
        shared += 1  # every candidate keeps at least one token of its own
    return shared


@dataclass
class CandidateTrie:
    """Candidates as a token trie: the token prefix they all share, then one level per token.
    ``tokens[l][j]``/``parents[l][j]``: token and parent node of node ``j`` at depth ``l + 1``;
    ``node_of[l][i]``: candidate ``i``'s node at depth ``l + 1`` (or -1); ``depth[i]``: its leaf depth."""

    shared_ids: np.ndarray
    depth: np.ndarray
    tokens: list
    parents: list
    node_of: list

    @property
    def n_candidates(self) -> int:
        return len(self.depth)

    @property
    def n_nodes(self) -> int:
        return sum(len(t) for t in self.tokens)

    @property
    def n_internal(self) -> int:
        """Trie nodes that need a forward position: the root and every node with children."""
        return 1 + sum(len(np.unique(p)) for p in self.parents[1:])


def _build_levels(suffix: np.ndarray, depth: np.ndarray) -> tuple[list, list, list]:
    tokens, parents, node_of = [], [], []
    prev = np.zeros(len(depth), dtype=np.int64)
    base = int(suffix.max()) + 1
    for level in range(1, int(depth.max()) + 1):
        alive = depth >= level
        ids = np.full(len(depth), -1, dtype=np.int64)
        # one int64 key per (parent, token): sorting it orders nodes by parent, then token
        uniq, inverse = np.unique(prev[alive] * base + suffix[alive, level - 1], return_inverse=True)
        ids[alive] = inverse
        node_of.append(ids)
        parents.append(uniq // base)
        tokens.append(uniq % base)
        prev = ids
    return tokens, parents, node_of


def build_trie(tokenizer, texts: list[str]) -> CandidateTrie:
    """Tokenize every text whole and arrange the token sequences as a trie."""
    check_texts(texts)
    array, lengths, shared = _encode(tokenizer, texts)
    depth = lengths - shared
    return CandidateTrie(array[0, :shared].copy(), depth, *_build_levels(array[:, shared:], depth))


_TAIL_CACHE: dict = {}  # tokenized tails of recent large candidate sets
_LEVEL_CACHE: dict = {}  # the trie levels of the most recent one
_CACHE_MIN = 50_000


def build_split_trie(tokenizer, head: str, tails: list[str], check: int = 256, seed: int = 0) -> CandidateTrie:
    """Trie of ``head + tail`` for every tail, tokenizing ``head`` once and the tails as separate strings.

    This is exact when the tokenizer never merges across the head/tail boundary (true for byte-level
    tokenizers and for GPT-2-style pre-tokenisation when the tail starts with a space). It is checked on
    ``check`` random candidates plus the first and last; on any mismatch every text is tokenized whole.
    The tails' trie is cached, so canaries that differ only in their head share it."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    key = (id(tokenizer), hash(backend.to_str()) if backend is not None else len(tokenizer), hash(tuple(tails)))
    cached = _TAIL_CACHE.pop(key, None)
    if cached is None:
        array, lengths = _pad(_tokenize(tokenizer, tails))
        cached = (array, lengths, _common_prefix(array, lengths))
    if len(tails) >= _CACHE_MIN:  # only large sets are worth keeping; most recently used last
        while len(_TAIL_CACHE) >= 4:  # a million-candidate entry is ~150 MB: keep a few
            _TAIL_CACHE.pop(next(iter(_TAIL_CACHE)))
        _TAIL_CACHE[key] = cached
    array, lengths, tail_shared = cached
    head_ids = np.asarray(_tokenize(tokenizer, [head])[0] if head else [], dtype=np.int64)
    rng = np.random.default_rng(seed)
    sample = np.unique(np.concatenate([[0, len(tails) - 1], rng.integers(0, len(tails), size=check)]))
    whole = _tokenize(tokenizer, [head + tails[i] for i in sample])
    for i, ids in zip(sample, whole):
        if list(ids) != head_ids.tolist() + array[i, : lengths[i]].tolist():
            return build_trie(tokenizer, [head + t for t in tails])
    shared_ids = np.concatenate([head_ids, array[0, :tail_shared]])
    if len(shared_ids) == 0:
        shared_ids = np.asarray([_start_token(tokenizer)], dtype=np.int64)
    levels = _LEVEL_CACHE.get(key)
    if levels is None:
        depth = lengths - tail_shared
        levels = (depth, *_build_levels(array[:, tail_shared:], depth))
        if key in _TAIL_CACHE:
            _LEVEL_CACHE.clear()
            _LEVEL_CACHE[key] = levels
    return CandidateTrie(shared_ids, *levels)


def _kv_chunk(model, n_layers: int, prefix_len: int, depth: int, budget_bytes: float) -> int:
    config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 768)
    bytes_per_row = (prefix_len + depth) * n_layers * 2 * width * 4 + 4 * getattr(config, "vocab_size", 50000)
    return max(1, int(budget_bytes // bytes_per_row))


# ----------------------------------------------------------------------------------- shared-prefix attention
# Every trie node at one level attends to the same shared prefix. Handing the model a key/value cache
# with the prefix copied into every row costs more than the forward itself (three copies per row and
# layer: ours, the cache's constructor and its update). Instead the rows' cache holds only their own
# suffix, and a registered attention function reads the prefix's keys and values once per layer
# (batch 1, never copied) next to them. It is checked against the plain cached forward on the first
# batch of every call and not used where they disagree (bench/exposure_trie.py measures both).
_SHARED_ATTENTION = "tutorial_lib_shared_prefix"
_PREFIX_KV: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer index -> prefix keys, values, while score_trie runs


def _shared_prefix_attention(module, query, key, value, attention_mask=None, dropout: float = 0.0, scaling=None, **kwargs):
    """Attention of one new token per row over the shared prefix (``_PREFIX_KV``, batch 1) and the row's own
    keys ``key``/``value`` (batch of rows), as one softmax; grouped key heads (GQA) are served without copies.
    Returns transformers' ``(output [rows, 1, heads, dim], None)``."""
    pk, pv = _PREFIX_KV[module.layer_idx]
    rows, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    if q_len != 1 or heads != group * kv_heads or dropout or kwargs.get("softcap") is not None:
        raise NotImplementedError("shared-prefix attention takes one query token per row, no dropout, no softcap")
    scale = scaling if scaling is not None else dim ** -0.5
    q = query.view(rows, kv_heads, group, dim).transpose(0, 1)  # [kv heads, rows, group, dim]
    on_prefix = torch.matmul(q.reshape(kv_heads, rows * group, dim), pk[0].transpose(-1, -2)).view(kv_heads, rows, group, -1)
    on_own = torch.matmul(q, key.transpose(0, 1).transpose(-1, -2))  # [kv heads, rows, group, own length]
    top = torch.maximum(on_prefix.amax(-1, keepdim=True), on_own.amax(-1, keepdim=True))
    w_prefix, w_own = ((on_prefix - top) * scale).exp(), ((on_own - top) * scale).exp()
    total = w_prefix.sum(-1, keepdim=True) + w_own.sum(-1, keepdim=True)
    out = torch.matmul(w_prefix.view(kv_heads, rows * group, -1), pv[0]).view(kv_heads, rows, group, dim)
    out = (out + torch.matmul(w_own, value.transpose(0, 1))) / total
    return out.transpose(0, 1).reshape(rows, heads, dim).unsqueeze(1), None


@functools.cache
def _row_layer_class():
    """transformers' ``DynamicLayer`` holding only the rows' own keys and values, whose sequence length
    counts the shared prefix too (defined once, on first use, since transformers is imported lazily)."""
    from transformers.cache_utils import DynamicLayer

    class RowLayer(DynamicLayer):
        def __init__(self, keys, values, prefix_len: int):
            super().__init__()
            self.keys, self.values, self.is_initialized, self.device = keys, values, True, keys.device
            self.prefix_len = prefix_len

        def get_seq_length(self) -> int:
            return self.prefix_len + self.keys.shape[-2]

    return RowLayer


def _row_cache(keys: list, values: list, prefix_len: int):
    """A cache of the rows' own key/values only (one entry per layer, batch = rows), whose sequence length
    counts the shared prefix too, so that the model numbers positions as if the prefix were there."""
    from transformers.cache_utils import Cache

    row_layer = _row_layer_class()
    return Cache(layers=[row_layer(k, v, prefix_len) for k, v in zip(keys, values)])


class _AttentionSwitch:
    """Within ``with``: the shared-prefix attention registered with transformers, ``prefix_cache`` as its
    prefix, and :meth:`use` to switch ``model`` between it and its own attention (restored on exit).
    ``available`` is False for a model whose attention cannot be switched."""

    def __init__(self, model, prefix_cache: list):
        self.model, self.prefix_cache = model, prefix_cache
        self.own = getattr(model.config, "_attn_implementation", None)
        self.available = self.own is not None and getattr(model, "_can_set_attn_implementation", lambda: False)()

    def __enter__(self) -> "_AttentionSwitch":
        if self.available:
            from transformers import AttentionInterface

            AttentionInterface.register(_SHARED_ATTENTION, _shared_prefix_attention)
            _PREFIX_KV.clear()
            _PREFIX_KV.update(enumerate(self.prefix_cache))
        return self

    def use(self, shared: bool) -> None:
        self.model.set_attn_implementation(_SHARED_ATTENTION if shared else self.own)

    def __exit__(self, *exc) -> None:
        if self.available:
            _PREFIX_KV.clear()
            self.use(False)


def _level_step(model, step, prefix_cache, parent, fast: bool):
    """One forward position for each row of ``step`` (its tokens, [rows, 1]) after the shared prefix and the
    rows' own earlier tokens ``parent`` (per layer keys and values [rows, heads, level - 1, dim], or None at
    the first level). Returns the log-softmax at the new position and the rows' own keys/values including it."""
    from transformers import DynamicCache

    c = step.shape[0]
    if fast:
        empty = [pk.new_empty((c, pk.shape[1], 0, pk.shape[3])) for pk, _ in prefix_cache]
        keys = parent[0] if parent is not None else empty
        values = parent[1] if parent is not None else empty
        out = model(input_ids=step, cache=_row_cache(keys, values, prefix_cache[0][0].shape[2]), use_cache=True)
        own = [l.keys for l in out.cache.layers], [l.values for l in out.cache.layers]
    else:
        layers = []
        for layer, (pk, pv) in enumerate(prefix_cache):
            k, v = pk.expand(c, -1, -1, -1), pv.expand(c, -1, -1, -1)
            if parent is not None:
                k, v = torch.cat([k, parent[0][layer]], dim=2), torch.cat([v, parent[1][layer]], dim=2)
            layers.append((k, v))
        out = model(input_ids=step, cache=DynamicCache(layers), use_cache=True)
        shared = prefix_cache[0][0].shape[2]
        own = [l.keys[:, :, shared:] for l in out.cache.layers], [l.values[:, :, shared:] for l in out.cache.layers]
    return torch.log_softmax(out.logits[:, -1].double(), dim=-1), own


def _walk_path(model, trie: CandidateTrie, leaf: int, prefix_cache, node_logp: np.ndarray, prefix_nll: float, device) -> tuple[dict, float]:
    """Candidate ``leaf``'s path below the root, batch 1 (plain cached forward): depth -> (node, log-softmax,
    own keys/values), and its score in bits, added up node by node as :func:`score_trie` does."""
    nodes = [int(trie.node_of[level][leaf]) for level in range(int(trie.depth[leaf]))]
    path, parent, logp = {}, None, node_logp[nodes[0]]
    for level in range(1, len(nodes)):
        step = torch.as_tensor([[int(trie.tokens[level - 1][nodes[level - 1]])]], device=device)
        lsm, parent = _level_step(model, step, prefix_cache, parent, False)
        path[level] = (nodes[level - 1], lsm, parent)
        logp = logp + lsm[0, int(trie.tokens[level][nodes[level]])].cpu().numpy()
    return path, float((prefix_nll - logp) / LN2)


@torch.no_grad()
def score_trie(model, trie: CandidateTrie, device=None, memory_budget_mb: float = 64.0, progress: bool = True,
               desc: str = "scoring candidates", shared_prefix: bool = True, prune_above: float | None = None,
               prune_at: int | None = None, stats: dict | None = None) -> np.ndarray:
    """Log-perplexity in bits, ``sum_i -log2 P(x_i | x_<i)``, of every candidate in ``trie``: the shared
    token prefix runs once, then every internal trie node costs one forward position, reusing the
    key/value cache of its parent. ``shared_prefix``: the nodes attend to one copy of the prefix's
    keys and values (checked against the plain cached forward on the first batch; ``False`` always
    uses the plain one). ``progress``: a bar (``desc``) over the candidates scored, cleared when done
    inside another bar. Notebook 03, "Exact exposure through a trie".

    Pruning: scores only grow along a path, so nodes whose partial score (prefix and path so far, bits)
    exceeds ``prune_above`` are not expanded; candidates above it get ``np.inf``, the others their full
    trie scores. ``prune_at`` (a candidate) walks its path first, expanding those nodes once, and prunes
    above its score plus a relative 1e-6 (rounding between batches never prunes a tie) unless
    ``prune_above`` is given; its own score is always returned. ``stats`` (a dict) gets ``expanded``,
    the internal nodes expanded (root included, as in ``n_internal``), ``positions``, prefix length plus
    ``expanded`` (never above prefix length plus ``n_internal``), and ``internal`` (``n_internal``)."""
    check_causal_lm(model)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if prune_at is not None and not 0 <= prune_at < trie.n_candidates:
        raise ValueError(f"prune_at must index one of the {trie.n_candidates:,} candidates, got {prune_at}")
    was_training = model.training
    model.eval()
    bar = tqdm(total=trie.n_candidates, desc=desc, unit="candidate", unit_scale=True, leave=None, **progress_options(progress))
    try:
        tokens, parents, node_of = trie.tokens, trie.parents, trie.node_of
        shared = len(trie.shared_ids)
        depth_max = len(tokens)
        prefix = torch.as_tensor(trie.shared_ids[None], device=device)
        out = model(input_ids=prefix, use_cache=True)
        logp = torch.log_softmax(out.logits[0].double(), dim=-1)
        prefix_nll = float(-logp[:-1].gather(1, prefix[0, 1:, None]).sum()) if shared > 1 else 0.0
        prefix_cache = [(layer.keys, layer.values) for layer in out.cache.layers]
        node_logp = [logp[-1, torch.as_tensor(tokens[0], device=device)].cpu().numpy()]
        bar.update(int(np.count_nonzero(trie.depth == 1)))
        path, kept = ({}, None) if prune_at is None else _walk_path(model, trie, prune_at, prefix_cache, node_logp[0], prefix_nll, device)
        if kept is not None and prune_above is None:
            prune_above = kept + 1e-6 * max(1.0, abs(kept))
        expanded = 1  # the root: the prefix's last position scores its children
        with _AttentionSwitch(model, prefix_cache) as switch:
            fast = shared_prefix and depth_max > 1 and switch.available
            checked = not fast
            parent_kv = None  # own key/values of the nodes expanded one level up, and their rows
            for level in range(1, depth_max):
                child_parent = parents[level]  # sorted: np.unique orders children by parent
                internal = np.unique(child_parent)
                if prune_above is not None:  # by partial score
                    internal = internal[(prefix_nll - node_logp[level - 1][internal]) / LN2 <= prune_above]
                walked = path.get(level)  # (node, log-softmax, keys/values), expanded by the walk: the last row
                internal = internal if walked is None else internal[internal != walked[0]]
                rows = internal if walked is None else np.append(internal, walked[0])
                n_rows = len(rows)
                expanded += n_rows
                internal_pos = np.full(len(tokens[level - 1]), -1, dtype=np.int64)
                internal_pos[rows] = np.arange(n_rows)
                child_row = internal_pos[child_parent]
                keep_kv = level + 1 < depth_max
                child_logp = np.full(len(child_parent), -np.inf)  # -inf: below a node not expanded
                new_kv = None
                chunk = _kv_chunk(model, len(prefix_cache), shared, level, memory_budget_mb * 2**20)
                ends = None if bar.disable else np.bincount(node_of[level][trie.depth == level + 1], minlength=len(tokens[level]))

                def fill(lsm, own, first: int, last: int, lo: int, hi: int):
                    """Children (among ``lo:hi``) of rows ``first:last`` scored from ``lsm``; the rows' keys/values kept."""
                    nonlocal new_kv
                    mine = (child_row[lo:hi] >= first) & (child_row[lo:hi] < last)  # children of pruned nodes in between
                    idx = slice(lo, hi) if mine.all() else lo + np.flatnonzero(mine)
                    rows, cols = (torch.as_tensor(a, device=device) for a in (child_row[idx] - first, tokens[level][idx]))
                    child_logp[idx] = node_logp[level - 1][child_parent[idx]] + lsm[rows, cols].cpu().numpy()
                    if ends is not None:
                        bar.update(int(ends[idx].sum()))
                    if keep_kv:
                        new_kv = new_kv or ([k.new_empty((n_rows, *k.shape[1:])) for k in own[0]],
                                            [v.new_empty((n_rows, *v.shape[1:])) for v in own[1]], internal_pos)
                        for store, t in zip(new_kv[0] + new_kv[1], own[0] + own[1]):
                            store[first:last] = t

                for start in range(0, len(internal), chunk):
                    nodes = internal[start : start + chunk]
                    c = len(nodes)
                    sel = None if parent_kv is None else torch.as_tensor(parent_kv[2][parents[level - 1][nodes]], device=device)
                    parent = None if sel is None else tuple([t.index_select(0, sel) for t in ts] for ts in parent_kv[:2])
                    step = torch.as_tensor(tokens[level - 1][nodes], device=device).view(c, 1)
                    if not checked:  # the first batch both ways: keep the shared-prefix attention only where they agree
                        checked = True
                        switch.use(True)
                        lsm, own = _level_step(model, step, prefix_cache, parent, True)
                        switch.use(False)
                        plain = _level_step(model, step, prefix_cache, parent, False)
                        tolerance = 1e-9 if prefix_cache[0][0].dtype == torch.float64 else 1e-3
                        fast = bool((lsm - plain[0]).abs().max() <= tolerance)
                        switch.use(fast)
                        lsm, own = (lsm, own) if fast else plain
                    else:
                        lsm, own = _level_step(model, step, prefix_cache, parent, fast)
                    fill(lsm, own, start, start + c, *np.searchsorted(child_parent, [nodes[0], nodes[-1] + 1]))
                if walked is not None:
                    fill(walked[1], walked[2], len(internal), n_rows, *np.searchsorted(child_parent, [walked[0], walked[0] + 1]))
                node_logp.append(child_logp)
                parent_kv = new_kv
        total = np.full(trie.n_candidates, prefix_nll, dtype=np.float64)
        for level in range(1, depth_max + 1):
            ends = trie.depth == level
            total[ends] -= node_logp[level - 1][node_of[level - 1][ends]]
        scores = total / LN2
        if prune_above is not None:
            scores[scores > prune_above] = np.inf
        if kept is not None:
            scores[prune_at] = kept
        if stats is not None:
            stats.update(positions=shared + expanded, expanded=expanded, internal=trie.n_internal)
        if not bar.disable:  # the candidates pruned unscored: the bar still ends full
            bar.update(bar.total - bar.n)
        return scores
    finally:
        bar.close()
        model.train(was_training)


def score_candidates(model, tokenizer, texts: list[str], device=None, progress: bool = True) -> np.ndarray:
    """Log-perplexity in bits of every text (tokenized whole), scored through their token trie."""
    check_texts(texts)
    return score_trie(model, build_trie(tokenizer, texts), device=device, progress=progress)


@torch.no_grad()
def score_candidates_bruteforce(model, tokenizer, texts: list[str], device=None, batch_size: int = 512, progress: bool = True,
                                desc: str = "scoring candidates", stats: dict | None = None) -> np.ndarray:
    """The naive way: every text scored as its own full sequence (same tokens as :func:`score_candidates`).
    Ground truth for the trie and the baseline in ``bench/``. ``stats`` (a dict) receives ``positions``,
    the summed token lengths of the texts (padding not counted). Notebook 03, "Exact exposure through a trie"."""
    check_causal_lm(model)
    check_texts(texts)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(texts), desc=desc, unit="candidate", unit_scale=True, leave=None, **progress_options(progress))
    try:
        array, lengths, _ = _encode(tokenizer, texts)
        if stats is not None:
            stats["positions"] = int(lengths.sum())
        out = np.empty(len(texts), dtype=np.float64)
        for start in range(0, len(texts), batch_size):
            ids = torch.as_tensor(array[start : start + batch_size], device=device)
            mask = ids >= 0
            logits = model(input_ids=ids.clamp(min=0), attention_mask=mask.long()).logits
            logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
            target = ids[:, 1:].clamp(min=0)
            nll = -logp.gather(2, target[..., None])[..., 0] * mask[:, 1:]
            out[start : start + len(ids)] = nll.sum(1).cpu().numpy()
            bar.update(len(ids))
        return out / LN2
    finally:
        bar.close()
        model.train(was_training)
