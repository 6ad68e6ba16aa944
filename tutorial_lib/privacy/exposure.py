"""Canary exposure (Carlini et al. 2019): exact over the whole randomness space (every candidate scored
through a token trie, :mod:`~tutorial_lib.privacy.trie`, or only the trie nodes that can still rank at
or above the secret; brute force for checking), among sampled candidates, and the skew-normal estimate
from sampled candidates.

Used by notebook 03 and by every notebook that measures forgetting.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..core.canaries import Canary
from .trie import LN2, CandidateTrie, build_split_trie, score_candidates_bruteforce, score_trie


def exposure_from_scores(scores_bits: np.ndarray, secret_index: int) -> tuple[int, float]:
    """Rank (1 = most likely) and exposure ``log2|R| - log2 rank`` of candidate ``secret_index``
    given every candidate's log-perplexity in bits. Notebook 03, "Exposure"."""
    scores = np.asarray(scores_bits)
    rank = int(np.count_nonzero(scores <= scores[secret_index]))
    return rank, math.log2(scores.size) - math.log2(rank)


#: the ways :func:`compute_exposure` can score the candidates
EXPOSURE_METHODS = ("trie", "pruned", "bruteforce")

#: the most candidates :func:`compute_exposure` scores (about 150 bytes each while scored: 1.4 GiB)
MAX_CANDIDATES = 10**7


def sample_secrets(space, n: int, rng: np.random.Generator, exclude: str | None = None) -> list[str]:
    """``n`` distinct secrets drawn uniformly from ``space`` without replacement (never ``exclude``), in
    lexicographic order. Spaces beyond int64 (|R| = 10^30, say) are sampled symbol by symbol, in Python
    integers, so no count overflows."""
    size = space.size - (exclude is not None)
    if n > size:
        raise ValueError(f"cannot draw {n:,} distinct secrets from a space of {size:,}")
    if space.size < 2**62:
        skip = space.index(exclude) if exclude is not None else space.size
        picks = rng.choice(size, size=n, replace=False)
        return [space.secret(int(i)) for i in np.sort(picks + (picks >= skip))]
    base, picked = len(space.alphabet), set()
    while len(picked) < n:
        for row in rng.integers(0, base, size=(n - len(picked), space.length)):
            secret = "".join(space.alphabet[d] for d in row)
            if secret != exclude:
                picked.add(secret)
    return sorted(picked, key=space.index)[:n]


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
    positions: int | None = None  # forward positions the scoring took (see compute_exposure); None in older results

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
    """Exact exposure of ``canary``: score the |R| candidates, rank the true secret. ``context`` is the
    text before the canary (a line start in training).

    ``method``: "trie" scores every candidate through the token trie; "pruned" walks the secret's path
    first and then expands only trie nodes whose partial score does not exceed the secret's (a
    candidate's score only grows along its path, so the others cannot rank at or above it): the same
    rank, at far fewer forward positions for a well-memorised secret; "bruteforce" scores every
    candidate as its own sequence. ``ExposureResult.positions`` counts forward positions: for the
    trie methods the shared prefix's length plus the internal trie nodes expanded (all ``n_internal``
    for "trie"; never more for "pruned", which expands the secret's own path once); for "bruteforce"
    the summed token lengths of the candidates.

    ``candidates`` (< |R|) ranks the secret among that many candidates instead: itself and a
    uniform sample (``seed``) of the others, exposure ``log2(candidates) - log2(rank)``. It tracks
    the full exposure while that is well below ``log2(candidates)`` bits, where it saturates. The
    saving is less than ``candidates/|R|``, because a random sample shares fewer trie prefixes:
    at the small profile 10⁵ of 10⁶ six-digit secrets score in 6.5 s against 9.7 s, 10⁴ in about
    2 s. The sweeps of notebooks 04 to 06 use 10⁴. ``progress``: a bar over the candidates scored
    (about 11 s for 10⁶ at the small profile), cleared when done inside another bar.
    Notebook 03, "Exposure"."""
    if method not in EXPOSURE_METHODS:
        raise ValueError(f"unknown exposure method {method!r}; expected one of {', '.join(map(repr, EXPOSURE_METHODS))}")
    space = canary.space
    if candidates is not None and not 2 <= candidates:
        raise ValueError(f"candidates must be at least 2, got {candidates}")
    scored = space.size if candidates is None else min(candidates, space.size)
    if scored > MAX_CANDIDATES:
        raise ValueError(f"scoring {scored:,} candidates would hold every one of them in memory (about {scored * 150 / 2**30:,.1f} GiB) "
                         f"and take hours; the limit is {MAX_CANDIDATES:,}: pass candidates=100_000 to rank the secret among "
                         "sampled candidates, or use estimate_exposure (the skew-normal estimate)")
    start = time.perf_counter()
    index = space.index(canary.secret)
    if candidates is None or candidates >= space.size:
        secrets, position = None, index
    else:
        others = sample_secrets(space, candidates - 1, np.random.default_rng(seed), exclude=canary.secret)
        secrets, position = others + [canary.secret], candidates - 1
    desc = f"exposure of {canary.name}" if canary.name else "exposure"
    stats: dict = {}
    if method == "bruteforce":
        texts = canary_texts(canary, context) if secrets is None else [context + canary.prefix + s + canary.suffix for s in secrets]
        scores = score_candidates_bruteforce(model, tokenizer, texts, device=device, progress=progress, desc=desc, stats=stats)
    else:
        scores = score_trie(model, canary_trie(tokenizer, canary, context, secrets), device=device, progress=progress, desc=desc,
                            prune_at=position if method == "pruned" else None, stats=stats)
    rank, exposure = exposure_from_scores(scores, position)  # pruned candidates score inf: never counted
    return ExposureResult(
        canary.name, canary.insertions, canary.secret, exposure, rank, len(scores),
        float(scores[position]), time.perf_counter() - start, stats["positions"],
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
    if n_samples > MAX_CANDIDATES:
        raise ValueError(f"n_samples must be at most {MAX_CANDIDATES:,}, got {n_samples:,}; a few thousand fit the skew-normal well")
    picks = sample_secrets(space, min(n_samples, space.size), np.random.default_rng(seed))
    secrets = picks + [canary.secret]
    scores = score_trie(model, canary_trie(tokenizer, canary, context, secrets), device=device, progress=False)
    shape, loc, scale = stats.skewnorm.fit(scores[:-1])
    log_cdf = stats.skewnorm.logcdf(scores[-1], shape, loc=loc, scale=scale)
    return ExposureEstimate(canary.name, float(-log_cdf / LN2), len(picks), float(shape), float(loc), float(scale))
