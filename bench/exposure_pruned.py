"""Exact canary exposure: the pruned trie search vs the full trie vs naive scoring, in forward positions and seconds.

For a memorised canary (the most-inserted one of a memorisation run) and a never-inserted control, at
randomness spaces |R| = 10^4, 10^5, 10^6, this scores on one model in one run:

* pruned: ``score_trie(..., prune_at=secret)``, the search ``compute_exposure(method="pruned")`` runs:
  the secret's path first, then only the trie nodes whose partial score does not exceed the secret's;
* trie: ``score_trie``, every internal node of the trie (``compute_exposure``'s default);
* naive: ``score_candidates_bruteforce(canary_texts(...), batch_size=512)``, every candidate a full
  sequence, tokenization included,

and reports each one's forward positions, seconds and the secret's rank. A smaller |R| keeps the canary's
text: only its last k symbols vary, the leading ones fixed to the secret's own (so 10^4 of a six-digit
canary are the candidates sharing its first two digits). The trie is built once per row (``build s``) and
serves both trie searches. Forward positions: the shared prefix's length plus the internal nodes expanded
(``score_trie``'s ``stats``; all ``n_internal`` for the full trie); naive: the candidates' summed token
lengths.

Checks, per row: the pruned search never takes more positions than the full trie; the candidates it
scores get the full trie's scores (to 1e-3 bits; the model runs in float32); the three ranks agree up
to the candidates within 1e-3 bits of the secret (rounding can order those either way). Acceptance, printed
and in the JSON: for a memorised canary at >= 10 bits of exposure the pruned search takes >= 20x fewer
positions than the full trie. Naive seconds above ``--naive-max`` are extrapolated linearly (seconds per
forward position at the largest measured |R| of that canary) and marked "(extrapolated)".

The model is the memorisation run's GPT-2 of ``--profile`` (trained and cached on first use; that
training is not timed). ``MODELS`` maps ``--model`` to a loader: another model (a pretrained one, say)
is one more loader there.

Run on an otherwise idle machine (several minutes at ``small`` on 2 cores, most of it the naive scoring
and the control's searches)::

    .venv/bin/python bench/exposure_pruned.py                 # small profile; 1e4 1e5 1e6; naive up to 1e5
    .venv/bin/python bench/exposure_pruned.py --quick         # tiny profile; 1e3 1e4; naive at 1e3 only
    .venv/bin/python bench/exposure_pruned.py --sizes 1e4 1e5 --naive-max 1e4 --threads 1

Results are also written to ``bench/results/exposure_pruned.json`` (``--out``; ``exposure_pruned-quick.json``
with ``--quick``).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from _common import bench_parser, set_threads, timed, write_results
from exposure_trie import space_size

import tutorial_lib as tl
import tutorial_lib.privacy.trie as trie_module
from tutorial_lib.core.canaries import SLOT, Canary, RandomnessSpace
from tutorial_lib.privacy.exposure import canary_texts, canary_trie, exposure_from_scores
from tutorial_lib.privacy.trie import score_candidates_bruteforce, score_trie

BATCH_SIZE = 512
TOLERANCE_BITS = 1e-3
ACCEPTANCE = {"min_exposure_bits": 10.0, "min_position_ratio": 20.0}
FULL = dict(profile="small", sizes=[10**4, 10**5, 10**6], naive_max=10**5)
QUICK = dict(profile="tiny", sizes=[10**3, 10**4], naive_max=10**3)


@dataclass
class ModelUnderTest:
    """A model to measure on: its label, the model (eval mode), its tokenizer, and the canaries to rank
    (a memorised one and a never-inserted control)."""

    label: str
    model: object
    tokenizer: object
    canaries: list[Canary]


def memorisation_model(args) -> ModelUnderTest:
    """The memorisation run's GPT-2 of ``args.profile``: its most-inserted canary and its first control."""
    cfg = tl.MemorizationConfig.for_profile(args.profile)
    run = tl.train_memorization_model(cfg, seed=args.seed, device="cpu", progress=False)
    memorised = max(run.canaries, key=lambda c: c.insertions)
    control = next(c for c in run.canaries if c.is_control)
    label = f"GPT-2 '{args.profile}' memorisation run (seed {args.seed}, {tl.count_parameters(run.model):,} parameters)"
    return ModelUnderTest(label, run.model.eval(), run.tokenizer, [memorised, control])


def smollm2_model(args) -> ModelUnderTest:
    """SmolLM2-135M fine-tuned as notebook 11 does at ``small`` (its last two MLPs, 80 steps, canaries in
    Shakespeare): the most-inserted canary and the first control, 4-digit secrets (so |R| <= 10^4)."""
    from tutorial_lib.experiments.pretrained_llm import fine_tune, trainable_names

    cfg = tl.PretrainedLLMConfig.for_profile("small")
    model, tokenizer = tl.load_pretrained(tl.smollm2_path(progress=False))
    splits = tl.load_corpus(cfg.corpus, cfg.max_chars)
    canaries = tl.make_canaries(cfg.insertions, 1, cfg.n_controls, cfg.space, seed=args.seed)
    lines = tl.insert_canaries(splits.train, canaries, seed=args.seed).lines
    tuned = fine_tune(model, tl.tokenize_lines(tokenizer, lines), tl.tokenize_lines(tokenizer, splits.validation), cfg.train,
                      trainable_names(model, cfg), args.seed, progress=False)
    memorised = max(canaries, key=lambda c: c.insertions)
    control = next(c for c in canaries if c.is_control)
    label = f"SmolLM2-135M fine-tuned as in notebook 11 (seed {args.seed}, {tl.count_parameters(model):,} parameters)"
    return ModelUnderTest(label, tuned.model.eval(), tokenizer, [memorised, control])


#: ``--model`` name -> loader taking the parsed arguments and returning a :class:`ModelUnderTest`
MODELS: dict[str, Callable[..., ModelUnderTest]] = {"memorisation": memorisation_model, "smollm2": smollm2_model}


def sub_canary(canary: Canary, length: int) -> Canary:
    """``canary`` with only its last ``length`` symbols random (the leading ones fixed to its secret's):
    the same text, |R| = base^length."""
    fixed = canary.secret[: canary.space.length - length]
    return Canary(canary.format.replace(SLOT, fixed + SLOT), canary.secret[len(fixed):], canary.insertions, canary.name,
                  RandomnessSpace(length, canary.space.alphabet))


def bench_row(mut: ModelUnderTest, canary: Canary, run_naive: bool) -> dict:
    position = canary.space.index(canary.secret)
    trie_module._TAIL_CACHE.clear()
    trie, build_s = timed(canary_trie, mut.tokenizer, canary)
    full_stats, pruned_stats, naive_stats = {}, {}, {}
    full, trie_s = timed(score_trie, mut.model, trie, progress=False, stats=full_stats)
    pruned, pruned_s = timed(score_trie, mut.model, trie, progress=False, prune_at=position, stats=pruned_stats)
    kept = np.isfinite(pruned)
    diff = float(np.max(np.abs(pruned[kept] - full[kept])))
    assert diff < TOLERANCE_BITS, f"{canary.name}, |R| = {canary.space.size}: pruned and full scores differ by {diff:.2e} bits"
    assert np.all(full[~kept] > full[position] - TOLERANCE_BITS), "the pruned search dropped a candidate scoring at or below the secret"
    assert pruned_stats["positions"] <= full_stats["positions"]
    near = int(np.count_nonzero(np.abs(full - full[position]) <= TOLERANCE_BITS))  # rounding may order these either way
    ranks = {"pruned": exposure_from_scores(pruned, position)[0], "trie": exposure_from_scores(full, position)[0]}
    row = {
        "canary": canary.name,
        "insertions": canary.insertions,
        "size": canary.space.size,
        "exposure": exposure_from_scores(full, position)[1],
        "rank_trie": ranks["trie"],
        "rank_pruned": ranks["pruned"],
        "rank_naive": None,
        "candidates_within_tolerance": near,
        "build_s": build_s,
        "pruned_s": pruned_s,
        "trie_s": trie_s,
        "naive_s": None,
        "naive_extrapolated": False,
        "pruned_positions": pruned_stats["positions"],
        "trie_positions": full_stats["positions"],
        "naive_positions": int(len(trie.shared_ids) * trie.n_candidates + trie.depth.sum()),
        "pruned_candidates_scored": int(np.count_nonzero(kept)),
        "max_abs_diff_bits": diff,
        "max_abs_diff_naive_bits": None,
    }
    if run_naive:
        naive, row["naive_s"] = timed(score_candidates_bruteforce, mut.model, mut.tokenizer, canary_texts(canary),
                                      batch_size=BATCH_SIZE, progress=False, stats=naive_stats)
        row["naive_positions"] = naive_stats["positions"]
        row["max_abs_diff_naive_bits"] = float(np.max(np.abs(naive - full)))
        assert row["max_abs_diff_naive_bits"] < TOLERANCE_BITS
        row["rank_naive"] = exposure_from_scores(naive, position)[0]
    for method in ("pruned", "naive"):
        other = row[f"rank_{method}"]
        assert other is None or abs(other - row["rank_trie"]) <= near, f"{canary.name}: {method} rank {other} vs trie {row['rank_trie']}"
    return row


def extrapolate_naive(rows: list[dict]) -> None:
    """Fill in naive seconds for unmeasured sizes from the same canary's largest measured one, per forward position."""
    for name in {r["canary"] for r in rows}:
        own = [r for r in rows if r["canary"] == name]
        measured = [r for r in own if r["naive_s"] is not None]
        if not measured:
            continue
        base = max(measured, key=lambda r: r["size"])
        for r in own:
            if r["naive_s"] is None:
                r["naive_s"] = base["naive_s"] / base["naive_positions"] * r["naive_positions"]
                r["naive_extrapolated"] = True
                r["naive_extrapolated_from"] = base["size"]


def acceptance(rows: list[dict]) -> dict:
    """Pruned positions never above the full trie's; >= 20x fewer for memorised canaries at >= 10 bits."""
    memorised = [r for r in rows if r["insertions"] > 0 and r["exposure"] >= ACCEPTANCE["min_exposure_bits"]]
    ratios = [r["trie_positions"] / r["pruned_positions"] for r in memorised]
    return {
        **ACCEPTANCE,
        "never_more_positions": all(r["pruned_positions"] <= r["trie_positions"] for r in rows),
        "memorised_rows": len(memorised),
        "min_memorised_position_ratio": min(ratios) if ratios else None,
        "passed": bool(ratios) and min(ratios) >= ACCEPTANCE["min_position_ratio"]
        and all(r["pruned_positions"] <= r["trie_positions"] for r in rows),
    }


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'canary':>8}  {'ins':>4}  {'|R|':>9}  {'exposure':>8}  {'rank (pruned/trie/naive)':>26}  {'positions pruned':>16}  "
        f"{'trie':>9}  {'naive':>11}  {'trie/pruned':>11}  {'pruned s':>8}  {'trie s':>8}  {'naive s':>22}  "
        f"{'trie/pruned s':>13}  {'build s':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        naive = "-" if r["naive_s"] is None else f"{r['naive_s']:.2f}" + (" (extrapolated)" if r["naive_extrapolated"] else "")
        ranks = f"{r['rank_pruned']:,}/{r['rank_trie']:,}/" + ("-" if r["rank_naive"] is None else f"{r['rank_naive']:,}")
        lines.append(
            f"{r['canary']:>8}  {r['insertions']:>4}  {r['size']:>9,}  {r['exposure']:>8.2f}  {ranks:>26}  "
            f"{r['pruned_positions']:>16,}  {r['trie_positions']:>9,}  {r['naive_positions']:>11,}  "
            f"{r['trie_positions'] / r['pruned_positions']:>10.1f}x  {r['pruned_s']:>8.2f}  {r['trie_s']:>8.2f}  {naive:>22}  "
            f"{r['trie_s'] / r['pruned_s']:>12.1f}x  {r['build_s']:>7.2f}"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = bench_parser(__file__, __doc__, quick="the tiny profile, sizes 1e3 1e4, naive measured at 1e3 only",
                          seed_help="seed of the memorisation run (default: 0)")
    parser.add_argument("--model", default="memorisation", choices=sorted(MODELS), help="the model to measure on (default: memorisation)")
    parser.add_argument("--profile", default=None, choices=["tiny", "small", "full"],
                        help="memorisation profile (default: small; tiny with --quick)")
    parser.add_argument("--sizes", type=space_size, nargs="+", default=None,
                        help="randomness-space sizes, powers of ten (default: 1e4 1e5 1e6; 1e3 1e4 with --quick)")
    parser.add_argument("--naive-max", type=space_size, default=None,
                        help="measure the naive path up to this size, extrapolate above (default: 1e5; 1e3 with --quick)")
    args = parser.parse(argv, FULL, QUICK)
    threads = set_threads(args.threads)
    sizes = sorted(set(args.sizes))

    mut = MODELS[args.model](args)
    wall_start = time.perf_counter()
    print(f"model: {mut.label}; torch {torch.__version__}, {threads} threads")
    print(f"canaries: {', '.join(f'{c.name} ({c.insertions}x)' for c in mut.canaries)}; naive batch size {BATCH_SIZE}, "
          f"measured up to |R| = {args.naive_max:,}\n")

    warm = sub_canary(mut.canaries[0], 2)  # warm-up, so that no method pays for one-time initialisation inside its timing
    warm_trie = canary_trie(mut.tokenizer, warm)
    score_trie(mut.model, warm_trie, progress=False)
    score_trie(mut.model, warm_trie, progress=False, prune_at=0)
    score_candidates_bruteforce(mut.model, mut.tokenizer, canary_texts(warm), batch_size=BATCH_SIZE, progress=False)

    rows = []
    for canary in mut.canaries:
        for size in sizes:
            length = round(math.log(size, len(canary.space.alphabet)))
            if length > canary.space.length:
                print(f"  {canary.name}: |R| = {size:,} is larger than its space ({canary.space.size:,}); skipped")
                continue
            rows.append(bench_row(mut, sub_canary(canary, length), run_naive=size <= args.naive_max))
            r = rows[-1]
            print(f"  {canary.name}, |R| = {size:,}: pruned {r['pruned_s']:.2f} s ({r['pruned_positions']:,} positions), "
                  f"trie {r['trie_s']:.2f} s ({r['trie_positions']:,})", flush=True)
    extrapolate_naive(rows)
    verdict = acceptance(rows)
    wall_s = time.perf_counter() - wall_start

    print()
    print(format_table(rows))
    print()
    print("positions: shared prefix length + internal trie nodes expanded (trie: all n_internal); naive: summed candidate token lengths")
    if any(r["naive_extrapolated"] for r in rows):
        print("(extrapolated): naive seconds per forward position at the canary's largest measured |R|, times positions")
    print(f"scores agree to < {TOLERANCE_BITS:g} bits; ranks agree up to the candidates within {TOLERANCE_BITS:g} bits of the secret")
    ratio = verdict["min_memorised_position_ratio"]
    print(f"acceptance: pruned never takes more positions than the trie: {verdict['never_more_positions']}; "
          f"memorised canaries at >= {ACCEPTANCE['min_exposure_bits']:g} bits: {verdict['memorised_rows']} rows, "
          f"smallest trie/pruned position ratio {'-' if ratio is None else f'{ratio:.1f}x'} "
          f"(needs >= {ACCEPTANCE['min_position_ratio']:g}x): {'passed' if verdict['passed'] else 'NOT passed'}")
    print(f"total wall time: {wall_s:.1f} s")

    write_results(
        args, rows, wall_s=wall_s,
        config={"model": args.model, "label": mut.label, "canaries": [c.to_dict() for c in mut.canaries],
                "naive_batch_size": BATCH_SIZE, "tolerance_bits": TOLERANCE_BITS},
        acceptance=verdict,
    )


if __name__ == "__main__":
    main()
