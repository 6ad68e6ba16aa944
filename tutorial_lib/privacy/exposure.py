"""Canary exposure (Carlini et al. 2019): exact over the whole randomness space via a token trie,
brute force for checking, and the skew-normal estimate from sampled candidates.

Used by notebook 03 and by every notebook that measures forgetting.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.canaries import Canary
from ..core.profiles import progress_options

LN2 = math.log(2.0)


def exposure_from_scores(scores_bits: np.ndarray, secret_index: int) -> tuple[int, float]:
    """Rank (1 = most likely) and exposure ``log2|R| - log2 rank`` of candidate ``secret_index``
    given every candidate's log-perplexity in bits. Notebook 03, "Exposure"."""
    scores = np.asarray(scores_bits)
    rank = int(np.count_nonzero(scores <= scores[secret_index]))
    return rank, math.log2(scores.size) - math.log2(rank)


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
    depth, tokens, parents, node_of = levels
    return CandidateTrie(shared_ids, depth, tokens, parents, node_of)


def _kv_chunk(model, n_layers: int, prefix_len: int, depth: int, budget_bytes: float) -> int:
    config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 768)
    bytes_per_row = (prefix_len + depth) * n_layers * 2 * width * 4 + 4 * getattr(config, "vocab_size", 50000)
    return max(1, int(budget_bytes // bytes_per_row))


def _scored_before(trie: CandidateTrie, level: int) -> np.ndarray:
    """``out[j]``: how many candidates end at one of the first ``j`` nodes at depth ``level + 1``
    (their score is complete once those nodes are), for the progress bar."""
    ends = trie.depth == level + 1
    return np.concatenate([[0], np.cumsum(np.bincount(trie.node_of[level][ends], minlength=len(trie.tokens[level])))])


@torch.no_grad()
def score_trie(model, trie: CandidateTrie, device=None, memory_budget_mb: float = 64.0, progress: bool = True,
               desc: str = "scoring candidates") -> np.ndarray:
    """Log-perplexity in bits, ``sum_i -log2 P(x_i | x_<i)``, of every candidate in ``trie``: the shared
    token prefix runs once, then every internal trie node costs one forward position, reusing the
    key/value cache of its parent. ``progress``: a bar (``desc``) over the candidates scored, cleared
    when done inside another bar. Notebook 03, "Exact exposure through a trie"."""
    from transformers import DynamicCache

    device = torch.device(device) if device is not None else next(model.parameters()).device
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
        n_layers = len(prefix_cache)
        node_logp = [logp[-1, torch.as_tensor(tokens[0], device=device)].cpu().numpy()]
        if not bar.disable:
            bar.update(int(_scored_before(trie, 0)[-1]))
        parent_kv = None  # suffix key/values of the internal nodes one level up
        for level in range(1, depth_max):
            child_parent = parents[level]  # sorted: np.unique orders children by parent
            internal = np.unique(child_parent)
            internal_pos = np.full(len(tokens[level - 1]), -1, dtype=np.int64)
            internal_pos[internal] = np.arange(len(internal))
            keep_kv = level + 1 < depth_max
            child_logp = np.empty(len(child_parent), dtype=np.float64)
            new_kv = None
            chunk = _kv_chunk(model, n_layers, shared, level, memory_budget_mb * 2**20)
            scored = None if bar.disable else _scored_before(trie, level)
            for start in range(0, len(internal), chunk):
                nodes = internal[start : start + chunk]
                c = len(nodes)
                layers = []
                if parent_kv is not None:
                    sel = torch.as_tensor(parent_kv[2][parents[level - 1][nodes]], device=device)
                for layer, (pk, pv) in enumerate(prefix_cache):
                    k, v = pk.expand(c, -1, -1, -1), pv.expand(c, -1, -1, -1)
                    if parent_kv is not None:
                        k = torch.cat([k, parent_kv[0][layer].index_select(0, sel)], dim=2)
                        v = torch.cat([v, parent_kv[1][layer].index_select(0, sel)], dim=2)
                    layers.append((k, v))
                step = torch.as_tensor(tokens[level - 1][nodes], device=device).view(c, 1)
                out = model(input_ids=step, cache=DynamicCache(layers), use_cache=True)
                lsm = torch.log_softmax(out.logits[:, -1].double(), dim=-1)
                lo, hi = np.searchsorted(child_parent, [nodes[0], nodes[-1] + 1])
                rows = torch.as_tensor(internal_pos[child_parent[lo:hi]] - start, device=device)
                cols = torch.as_tensor(tokens[level][lo:hi], device=device)
                child_logp[lo:hi] = node_logp[level - 1][child_parent[lo:hi]] + lsm[rows, cols].cpu().numpy()
                if scored is not None:
                    bar.update(int(scored[hi] - scored[lo]))
                if keep_kv:
                    if new_kv is None:
                        new_kv = ([], [], internal_pos)
                        for l in out.cache.layers:
                            for store, t in ((new_kv[0], l.keys), (new_kv[1], l.values)):
                                store.append(torch.empty((len(internal), t.shape[1], level, t.shape[3]), dtype=t.dtype, device=device))
                    for layer, l in enumerate(out.cache.layers):
                        new_kv[0][layer][start : start + c] = l.keys[:, :, shared:]
                        new_kv[1][layer][start : start + c] = l.values[:, :, shared:]
            node_logp.append(child_logp)
            parent_kv = new_kv
        total = np.full(trie.n_candidates, prefix_nll, dtype=np.float64)
        for level in range(1, depth_max + 1):
            ends = trie.depth == level
            total[ends] -= node_logp[level - 1][node_of[level - 1][ends]]
        return total / LN2
    finally:
        bar.close()
        model.train(was_training)


def score_candidates(model, tokenizer, texts: list[str], device=None, progress: bool = True) -> np.ndarray:
    """Log-perplexity in bits of every text (tokenized whole), scored through their token trie."""
    return score_trie(model, build_trie(tokenizer, texts), device=device, progress=progress)


@torch.no_grad()
def score_candidates_bruteforce(model, tokenizer, texts: list[str], device=None, batch_size: int = 512, progress: bool = True,
                                desc: str = "scoring candidates") -> np.ndarray:
    """The naive way: every text scored as its own full sequence (same tokens as :func:`score_candidates`).
    Ground truth for the trie and the baseline in ``bench/``. Notebook 03, "Exact exposure through a trie"."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(texts), desc=desc, unit="candidate", unit_scale=True, leave=None, **progress_options(progress))
    try:
        array, lengths, _ = _encode(tokenizer, texts)
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


@dataclass
class ExposureResult:
    """Exact exposure of one canary over its whole randomness space (or ``space_size`` sampled candidates)."""

    name: str
    insertions: int
    secret: str
    exposure: float
    rank: int
    space_size: int
    log_perplexity_bits: float
    seconds: float

    def summary(self) -> str:
        return (
            f"{self.name} ({self.insertions}x): exposure {self.exposure:.2f} of {math.log2(self.space_size):.2f} bits, "
            f"rank {self.rank:,} of {self.space_size:,} ({self.seconds:.1f} s)"
        )

    def to_dict(self) -> dict:
        return asdict(self)


def _split_canary(canary: Canary, context: str) -> tuple[str, str]:
    lead = context + canary.prefix
    cut = max(lead.rfind(" "), lead.rfind("\n"), 0)
    return lead[:cut], lead[cut:]


def canary_texts(canary: Canary, context: str = "\n") -> list[str]:
    """Every candidate of ``canary``'s space as scored text: ``context`` then the filled format."""
    prefix, suffix = context + canary.prefix, canary.suffix
    return [prefix + s + suffix for s in canary.space.all_secrets()]


def canary_trie(tokenizer, canary: Canary, context: str = "\n", secrets: list[str] | None = None) -> CandidateTrie:
    """Trie of ``canary``'s candidates (all of its space, or ``secrets``), split at the last space before
    the slot so that canaries with different prefixes share the tokenized tails."""
    head, lead = _split_canary(canary, context)
    secrets = canary.space.all_secrets() if secrets is None else secrets
    return build_split_trie(tokenizer, head, [lead + s + canary.suffix for s in secrets])


def compute_exposure(
    model, tokenizer, canary: Canary, context: str = "\n", device=None, method: str = "trie",
    candidates: int | None = None, seed: int = 0, progress: bool = True,
) -> ExposureResult:
    """Exact exposure of ``canary``: score all |R| candidates (``method`` "trie" or "bruteforce"),
    rank the true secret. ``context`` is the text before the canary (a line start in training).

    ``candidates`` (< |R|) ranks the secret among that many candidates instead: itself and a
    uniform sample (``seed``) of the others, exposure ``log2(candidates) - log2(rank)``. It tracks
    the full exposure while that is well below ``log2(candidates)`` bits, where it saturates. The
    saving is less than ``candidates/|R|``, because a random sample shares fewer trie prefixes:
    at the small profile 10⁵ of 10⁶ six-digit secrets score in 6.5 s against 9.7 s, 10⁴ in about
    2 s. The sweeps of notebooks 04 to 06 use 10⁴. ``progress``: a bar over the candidates scored
    (about 11 s for 10⁶ at the small profile), cleared when done inside another bar.
    Notebook 03, "Exposure"."""
    if method not in ("trie", "bruteforce"):
        raise ValueError(f"unknown exposure method {method!r}; expected 'trie' or 'bruteforce'")
    space = canary.space
    if candidates is not None and not 2 <= candidates:
        raise ValueError(f"candidates must be at least 2, got {candidates}")
    start = time.perf_counter()
    index = space.index(canary.secret)
    if candidates is None or candidates >= space.size:
        secrets, position = None, index
    else:
        rng = np.random.default_rng(seed)
        others = rng.choice(space.size - 1, size=candidates - 1, replace=False)
        others = np.sort(others + (others >= index))  # skip the secret's own index
        secrets, position = [space.secret(int(i)) for i in others] + [canary.secret], candidates - 1
    desc = f"exposure of {canary.name}" if canary.name else "exposure"
    if method == "trie":
        scores = score_trie(model, canary_trie(tokenizer, canary, context, secrets), device=device, progress=progress, desc=desc)
    else:
        texts = canary_texts(canary, context) if secrets is None else [context + canary.prefix + s + canary.suffix for s in secrets]
        scores = score_candidates_bruteforce(model, tokenizer, texts, device=device, progress=progress, desc=desc)
    rank, exposure = exposure_from_scores(scores, position)
    return ExposureResult(
        canary.name, canary.insertions, canary.secret, exposure, rank, len(scores),
        float(scores[position]), time.perf_counter() - start,
    )


@dataclass
class ExposureEstimate:
    """Skew-normal estimate of exposure from sampled candidates (Carlini et al. 2019, §4.3)."""

    name: str
    exposure: float
    n_samples: int
    shape: float
    loc: float
    scale: float

    def to_dict(self) -> dict:
        return asdict(self)


def estimate_exposure(
    model, tokenizer, canary: Canary, n_samples: int = 5000, seed: int = 0, context: str = "\n", device=None
) -> ExposureEstimate:
    """Fit a skew-normal to the log-perplexities of ``n_samples`` random candidates and return
    ``-log2 CDF(Px(secret))``. Notebook 03, "Estimating exposure when R is too large"."""
    from scipy import stats

    space = canary.space
    if n_samples < 10:
        raise ValueError(f"n_samples must be at least 10 to fit a skew-normal, got {n_samples}")
    rng = np.random.default_rng(seed)
    picks = rng.choice(space.size, size=min(n_samples, space.size), replace=False)
    secrets = [space.secret(int(i)) for i in picks] + [canary.secret]
    scores = score_trie(model, canary_trie(tokenizer, canary, context, secrets), device=device, progress=False)
    shape, loc, scale = stats.skewnorm.fit(scores[:-1])
    log_cdf = stats.skewnorm.logcdf(scores[-1], shape, loc=loc, scale=scale)
    return ExposureEstimate(canary.name, float(-log_cdf / LN2), len(picks), float(shape), float(loc), float(scale))
