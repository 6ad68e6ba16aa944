"""Exact canary exposure: token trie vs naive scoring of every full candidate.

For randomness spaces |R| = 10^4, 10^5, 10^6 (secrets of 4, 5, 6 digits, byte-level tokenizer, so one
token per digit) this times, on one model in one run:

* trie:  ``canary_trie`` (tokenization + trie build, tail cache cleared first) and ``score_trie``, whose
  nodes attend to one copy of the shared prefix's keys and values (the default);
* trie, plain cache: ``score_trie(..., shared_prefix=False)``, the prefix's keys and values copied into
  every node's cache (the way before the shared-prefix attention);
* naive: ``score_candidates_bruteforce(canary_texts(...), batch_size=512)``, tokenization included,

and checks that both give the same scores (to 1e-3 bits) wherever both were measured. The naive time
for sizes above the largest measured one is extrapolated linearly (seconds per forward position at the
largest measured size times the forward positions) and marked "(extrapolated)". Finally it times
``compute_exposure`` end to end over the largest space.

The model is the course's "small" GPT-2, untrained: timings do not depend on the weights, and the
exposure values it prints mean nothing.

Timings use torch's default thread count unless ``--threads`` is given. Run it on an otherwise idle
machine: torch threads competing with other processes slow the trie's many small forward passes down by
an order of magnitude (measured here: 24 s instead of 1.9 s at 10^5 with two threads on a busy 2-core
machine), which makes the ratio depend on the load.

Run (about 5 minutes on a 2-core machine)::

    .venv/bin/python bench/exposure_trie.py            # 10^4, 10^5, 10^6; naive measured up to 10^5
    .venv/bin/python bench/exposure_trie.py --quick    # 10^3, 10^4; naive measured at 10^3 only (seconds)
    .venv/bin/python bench/exposure_trie.py --sizes 1e4 1e5 --naive-max 1e4 --threads 1 --seed 0

Results are also written to ``bench/results/exposure_trie.json`` (``--out``; ``exposure_trie-quick.json``
with ``--quick``).
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from _common import bench_parser, set_threads, timed, write_results

import tutorial_lib.privacy.trie as trie_module
from tutorial_lib.core.canaries import Canary, RandomnessSpace
from tutorial_lib.privacy.exposure import canary_texts, canary_trie, compute_exposure
from tutorial_lib.privacy.trie import score_candidates_bruteforce, score_trie
from tutorial_lib.core.models import ModelConfig, count_parameters, make_model
from tutorial_lib.core.tokenization import make_byte_tokenizer

FORMAT = "the secret number of alice is {secret}"
BATCH_SIZE = 512
TOLERANCE_BITS = 1e-3
FULL = dict(sizes=[10**4, 10**5, 10**6], naive_max=10**5)
QUICK = dict(sizes=[10**3, 10**4], naive_max=10**3)


def space_size(text: str) -> int:
    """Parse a randomness-space size such as ``10000`` or ``1e4``; it must be a power of ten >= 10."""
    value = float(text)
    length = round(math.log10(value)) if value >= 10 else 0
    if length < 1 or 10**length != value:
        raise argparse.ArgumentTypeError(f"{text!r} is not a power of ten >= 10")
    return 10**length


def make_canary(size: int) -> Canary:
    length = round(math.log10(size))
    return Canary(FORMAT, secret="1" * length, insertions=1, name="alice", space=RandomnessSpace(length))


def bench_size(model, tok, size: int, run_naive: bool) -> dict:
    canary = make_canary(size)
    trie_module._TAIL_CACHE.clear()  # a cold build: tokenize the tails and build the trie from scratch
    trie, build_s = timed(canary_trie, tok, canary)
    trie_scores, score_s = timed(score_trie, model, trie)
    plain_scores, plain_s = timed(score_trie, model, trie, shared_prefix=False)
    plain_diff = float(np.max(np.abs(trie_scores - plain_scores)))
    assert plain_diff < TOLERANCE_BITS, f"|R| = {size}: shared-prefix and plain-cache scores differ by {plain_diff:.2e} bits"
    shared = len(trie.shared_ids)
    row = {
        "size": size,
        "secret_length": canary.space.length,
        "trie_build_s": build_s,
        "trie_score_s": score_s,
        "trie_s": build_s + score_s,
        "trie_plain_score_s": plain_s,
        "plain_over_shared": plain_s / score_s,
        "max_abs_diff_plain_bits": plain_diff,
        "trie_positions": int(trie.n_internal + shared),
        # every candidate is the shared prefix followed by its own path down the trie
        "naive_positions": int(shared * trie.n_candidates + trie.depth.sum()),
        "naive_s": None,
        "naive_extrapolated": False,
        "max_abs_diff_bits": None,
    }
    if run_naive:
        naive_scores, row["naive_s"] = timed(
            score_candidates_bruteforce, model, tok, canary_texts(canary), batch_size=BATCH_SIZE
        )
        diff = float(np.max(np.abs(trie_scores - naive_scores)))
        row["max_abs_diff_bits"] = diff
        assert diff < TOLERANCE_BITS, f"|R| = {size}: trie and naive scores differ by {diff:.2e} bits"
    return row


def extrapolate_naive(rows: list[dict]) -> None:
    """Fill in naive seconds for unmeasured sizes from the largest measured one, per forward position."""
    measured = [r for r in rows if r["naive_s"] is not None]
    if not measured:
        return
    base = max(measured, key=lambda r: r["size"])
    per_position = base["naive_s"] / base["naive_positions"]
    for r in rows:
        if r["naive_s"] is None:
            r["naive_s"] = per_position * r["naive_positions"]
            r["naive_extrapolated"] = True
            r["naive_extrapolated_from"] = base["size"]


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'|R|':>9}  {'trie build s':>12}  {'trie score s':>12}  {'plain cache s':>13}  {'plain/shared':>12}  {'trie s':>8}  {'naive s':>23}  "
        f"{'naive/trie':>10}  {'trie positions':>14}  {'naive positions':>15}  {'max |diff| bits':>15}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        naive = "-" if r["naive_s"] is None else f"{r['naive_s']:.2f}"
        if r["naive_extrapolated"]:
            naive += " (extrapolated)"
        ratio = "-" if r["naive_s"] is None else f"{r['naive_s'] / r['trie_s']:.1f}x"
        diff = "-" if r["max_abs_diff_bits"] is None else f"{r['max_abs_diff_bits']:.1e}"
        lines.append(
            f"{r['size']:>9,}  {r['trie_build_s']:>12.2f}  {r['trie_score_s']:>12.2f}  {r['trie_plain_score_s']:>13.2f}  "
            f"{r['plain_over_shared']:>11.1f}x  {r['trie_s']:>8.2f}  "
            f"{naive:>23}  {ratio:>10}  {r['trie_positions']:>14,}  {r['naive_positions']:>15,}  {diff:>15}"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = bench_parser(__file__, __doc__, quick="sizes 1e3 1e4, naive measured at 1e3 only",
                          seed_help="model initialisation seed (default: 0)")
    parser.add_argument("--sizes", type=space_size, nargs="+", default=None,
                        help="randomness-space sizes, powers of ten (default: 1e4 1e5 1e6; 1e3 1e4 with --quick)")
    parser.add_argument("--naive-max", type=space_size, default=None,
                        help="measure the naive path up to this size, extrapolate above (default: 1e5; 1e3 with --quick)")
    args = parser.parse(argv, FULL, QUICK)
    threads = set_threads(args.threads)
    sizes = sorted(set(args.sizes))

    wall_start = time.perf_counter()
    tok = make_byte_tokenizer()
    model = make_model(ModelConfig.for_profile("small"), vocab_size=len(tok), seed=args.seed)
    model.eval()
    print(
        f"model: GPT-2 'small' profile, {count_parameters(model):,} parameters, untrained (seed {args.seed}); "
        f"byte-level tokenizer; torch {torch.__version__}, {threads} threads"
    )
    print(f"canary: {FORMAT!r}; naive batch size {BATCH_SIZE}; naive measured up to |R| = {args.naive_max:,}\n")

    # warm-up, so that no method pays for one-time initialisation inside its timing
    warm = make_canary(100)
    score_trie(model, canary_trie(tok, warm))
    score_trie(model, canary_trie(tok, warm), shared_prefix=False)
    score_candidates_bruteforce(model, tok, canary_texts(warm), batch_size=BATCH_SIZE)

    rows = []
    for size in sizes:
        rows.append(bench_size(model, tok, size, run_naive=size <= args.naive_max))
        r = rows[-1]
        naive = "not measured" if r["naive_s"] is None else f"{r['naive_s']:.2f} s"
        print(f"  |R| = {size:,}: trie {r['trie_s']:.2f} s, naive {naive}", flush=True)
    extrapolate_naive(rows)

    largest = make_canary(sizes[-1])
    trie_module._TAIL_CACHE.clear()
    result = compute_exposure(model, tok, largest)
    wall_s = time.perf_counter() - wall_start

    print()
    print(format_table(rows))
    print()
    print("forward positions: trie = trie.n_internal + shared prefix length; naive = sum of candidate token lengths")
    if any(r["naive_extrapolated"] for r in rows):
        print("(extrapolated): naive seconds per forward position at the largest measured |R|, times positions")
    print("plain cache: score_trie(shared_prefix=False), the prefix's keys and values copied into every node's cache")
    print(f"scores agree to < {TOLERANCE_BITS:g} bits wherever both were measured (shared prefix, plain cache, naive)")
    print(f"\nexact exposure over 10^{largest.space.length} candidates: {result.seconds:.2f} s "
          f"(compute_exposure, cold tail cache; untrained model: {result.summary()})")
    print(f"total wall time: {wall_s:.1f} s")

    write_results(
        args, rows, wall_s=wall_s,
        config={
            "model_profile": "small",
            "trained": False,
            "parameters": count_parameters(model),
            "canary_format": FORMAT,
            "naive_batch_size": BATCH_SIZE,
            "tolerance_bits": TOLERANCE_BITS,
        },
        end_to_end={**result.to_dict(), "method": "trie"},
    )


if __name__ == "__main__":
    main()
