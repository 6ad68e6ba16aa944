"""Inverse-Fisher-vector products: Woodbury, block, dense and diagonal structures of the empirical Fisher.

For a random gradient matrix G (m x d, rows of norm about 1) and a random vector v, the script builds
the damped empirical Fisher F = lam I + G^T G / m with ``make_fisher(G, damping, structure, block_size)``
from ``tutorial_lib.curvature.fisher`` and applies its inverse once, ``F.inverse_product(v)``, for each structure:

* woodbury: exact, one m x m Cholesky of lam m I + G G^T (``WoodburyFisher``);
* block: exact on diagonal blocks of ``--block-size`` coordinates (default 128), built by the
  Sherman-Morrison recursion folded in 16 gradients per pass (``BlockFisher``), so it approximates F;
* block-sm1: the same matrix by the textbook recursion, one gradient per pass (``chunk=1``);
* dense: the d x d matrix and its Cholesky factor (``DenseFisher``);
* diagonal: lam + mean g^2 (``DiagonalFisher``), the cheapest approximation.

There are two kinds of sizes. A small case, d = 2000 with m = 16, 64 and 256, where the dense matrix fits.
And the size of the course's "small" GPT-2 (d = its parameter count, 484,512) with m = 32 and 128, where
the dense structure refuses to build: ``make_fisher`` raises ``MemoryBudgetError``, and the table shows
the memory it would need from ``estimate_memory``. The memory column is that estimate for every
structure: the bytes a structure allocates beyond G itself.

Build and product times are medians of ``--repeats`` runs, in ``--dtype`` (default float32). A measurement
stops repeating once it has used ``MAX_SECONDS_PER_MEASUREMENT`` (10 s; 2 s with ``--quick``), but it
always runs at least once; the block build at the GPT-2 size takes several seconds per run, so it
usually runs once. A tiny problem
warms up every code path before the timings. The "/ woodbury" column is build plus product time over
Woodbury's build plus product time on the same G.

Where the dense structure fits, every structure is also built in float64 from the same G (untimed) to
measure accuracy:

* "vs dense": ||x - x_dense|| / ||x_dense||, both in float64. For woodbury this is rounding only (about
  1e-12 or less); for block and diagonal it is mostly the error of the approximation itself.
* "own exact": the float64 result against a float64 direct solve of the matrix the structure represents
  (the full F for woodbury and dense, its diagonal blocks for block, its diagonal for diagonal), which
  shows that each algorithm computes its own matrix's inverse product to rounding.
* "own exact, <dtype>": the timed result in ``--dtype`` against the same float64 reference (shown when
  ``--dtype`` is float32; larger, about float32 rounding times the conditioning).

Timings use torch's default thread count unless ``--threads`` is given; run it on an otherwise idle machine.

Run (the default sizes are chosen to take about 3 minutes or less on a 2-core machine; most of it is
the block build at the GPT-2 size, about 10 to 20 s per run at m = 32, roughly four times that at m = 128)::

    .venv/bin/python bench/fisher_products.py                  # d = 2000 (m = 16, 64, 256) and the GPT-2 size (m = 32, 128)
    .venv/bin/python bench/fisher_products.py --quick          # d = 2000 (m = 16, 64) and the GPT-2 size (m = 8); 3 repeats, 2 s each
    .venv/bin/python bench/fisher_products.py --dtype float64 --block-size 64 --threads 1 --seed 1

Results are also written to ``bench/results/fisher_products.json`` (``--out``; ``fisher_products-quick.json``
with ``--quick``).
"""
from __future__ import annotations

import time

import torch
from _common import add_repeats, bench_parser, measure, plural, set_threads, write_results

from tutorial_lib.curvature.fisher import BlockFisher, make_fisher
from tutorial_lib.curvature.memory import MemoryBudgetError, available_memory, estimate_memory

STRUCTURES = ("woodbury", "block", "block-sm1", "dense", "diagonal")


def make_structure(G, damping, structure, block_size):
    """``make_fisher``, plus "block-sm1": the block structure built by the textbook Sherman-Morrison
    recursion one gradient at a time (``chunk=1``) instead of the default chunks of 16."""
    if structure == "block-sm1":
        return BlockFisher(G, damping, block_size, chunk=1)
    return make_fisher(G, damping, structure, block_size)


DAMPING = 1e-3
BLOCK_SIZE = 128
SMALL_DIM, SMALL_MS, QUICK_SMALL_MS = 2000, (16, 64, 256), (16, 64)
LARGE_MS, QUICK_LARGE_MS = (32, 128), (8,)
MAX_SECONDS_PER_MEASUREMENT, QUICK_MAX_SECONDS = 10.0, 2.0
DTYPES = {"float32": torch.float32, "float64": torch.float64}
FULL = dict(small_ms=list(SMALL_MS), large_ms=list(LARGE_MS), repeats=5)
QUICK = dict(small_ms=list(QUICK_SMALL_MS), large_ms=list(QUICK_LARGE_MS), repeats=3)


def gpt2_small_dim() -> int:
    """Parameter count of the course's "small" GPT-2 (byte-level vocabulary of 257)."""
    from tutorial_lib.core.models import ModelConfig, count_parameters, make_model

    return count_parameters(make_model(ModelConfig.for_profile("small"), vocab_size=257, seed=0))


def format_bytes(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.3g} {unit}" if n < 1000 * scale else f"{n / scale:,.0f} {unit}"
    return f"{n} B"


def rel_diff(x: torch.Tensor, reference: torch.Tensor) -> float:
    x, reference = x.double(), reference.double()
    return float((x - reference).norm() / reference.norm())


def own_exact(structure: str, matrix: torch.Tensor, v: torch.Tensor, block_size: int) -> torch.Tensor:
    """F⁻¹ v in float64 by a direct solve of the matrix a structure represents, from the dense F."""
    if structure in ("woodbury", "dense"):
        return torch.linalg.solve(matrix, v)
    if structure == "diagonal":
        return v / matrix.diagonal()
    if structure in ("block", "block-sm1"):
        out = torch.empty_like(v)
        for a in range(0, len(v), block_size):
            b = min(a + block_size, len(v))
            out[a:b] = torch.linalg.solve(matrix[a:b, a:b], v[a:b])
        return out
    raise ValueError(structure)


def accuracy(G64: torch.Tensor, v64: torch.Tensor, damping: float, block_size: int, timed: dict) -> dict:
    """Relative differences of each structure's float64 result (and of its timed result) against the
    float64 dense product and against a direct solve of its own matrix."""
    F_dense = make_fisher(G64, damping, "dense")
    x_dense = F_dense.inverse_product(v64)
    out = {}
    for structure in STRUCTURES:
        F = F_dense if structure == "dense" else make_structure(G64, damping, structure, block_size)
        x = F.inverse_product(v64)
        exact = own_exact(structure, F_dense.matrix, v64, block_size)
        out[structure] = {
            "vs_dense_f64": rel_diff(x, x_dense),
            "own_exact_f64": rel_diff(x, exact),
            "own_exact_timed": None if timed.get(structure) is None else rel_diff(timed[structure], exact),
        }
    return out


def bench_case(d: int, m: int, args, dtype: torch.dtype) -> list[dict]:
    generator = torch.Generator().manual_seed(args.seed * 1_000_003 + m)
    G64 = torch.randn(m, d, generator=generator, dtype=torch.float64) / d**0.5
    v64 = torch.randn(d, generator=generator, dtype=torch.float64)
    G, v = G64.to(dtype), v64.to(dtype)
    element_size = G.element_size()

    rows, results = [], {}
    for structure in STRUCTURES:
        row = {"d": d, "m": m, "structure": structure, "dtype": str(dtype).removeprefix("torch."),
               "memory_bytes": estimate_memory(structure.replace("-sm1", ""), d, m, args.block_size, element_size),
               "refused": None, "build_s": None, "product_s": None, "build_times_s": [], "product_times_s": []}
        try:
            build = measure(lambda s=structure: make_structure(G, args.damping, s, args.block_size), args.repeats,
                            max_seconds=args.max_seconds)
        except MemoryBudgetError as err:
            row["refused"] = str(err)
            rows.append(row)
            print(f"    m = {m}, {structure}: refused (needs {format_bytes(row['memory_bytes'])})", flush=True)
            continue
        row["build_s"], row["build_times_s"], F = build.median_s, build.times_s, build.out
        del build
        product = measure(lambda F=F: F.inverse_product(v), args.repeats, max_seconds=args.max_seconds)
        row["product_s"], row["product_times_s"], results[structure] = product.median_s, product.times_s, product.out
        del F, product
        rows.append(row)
        print(f"    m = {m}, {structure}: build {row['build_s']:.4f} s ({plural(len(row['build_times_s']), 'run')}), "
              f"product {row['product_s']:.5f} s", flush=True)

    woodbury = next(r for r in rows if r["structure"] == "woodbury")
    base = woodbury["build_s"] + woodbury["product_s"]
    # accuracy where the dense structure could be built (in float64, which needs twice its memory)
    with_accuracy = "dense" in results and 2 * estimate_memory("dense", d, m, element_size=8) < available_memory()
    acc = accuracy(G64, v64, args.damping, args.block_size, results if dtype != torch.float64 else {}) if with_accuracy else {}
    for r in rows:
        r["total_s"] = None if r["refused"] else r["build_s"] + r["product_s"]
        r["over_woodbury"] = None if r["refused"] else r["total_s"] / base
        r.update(acc.get(r["structure"], {"vs_dense_f64": None, "own_exact_f64": None, "own_exact_timed": None}))
    return rows


def format_ratio(x: float) -> str:
    return f"{x:.1f}x" if x >= 0.95 else f"{x:.2g}x"


def format_table(rows: list[dict], dtype_name: str) -> str:
    """The table; the "own exact, <dtype>" column only when the timed dtype is not float64."""
    timed_col = f"own exact, {dtype_name}" if dtype_name != "float64" else ""
    header = (f"{'d':>7}  {'m':>4}  {'structure':<9}  {'build s':>9}  {'product s':>9}  {'/ woodbury':>10}  "
              f"{'memory':>10}  {'vs dense f64':>12}  {'own exact f64':>13}" + (f"  {timed_col}" if timed_col else ""))
    lines = [header, "-" * len(header)]
    fmt = lambda x: "-" if x is None else f"{x:.1e}"  # noqa: E731
    for r in rows:
        if r["refused"]:
            timing = f"{'refused (needs ' + format_bytes(r['memory_bytes']) + ')':>32}"
        else:
            timing = f"{r['build_s']:>9.4f}  {r['product_s']:>9.5f}  {format_ratio(r['over_woodbury']):>10}"
        lines.append(
            f"{r['d']:>7,}  {r['m']:>4}  {r['structure']:<9}  {timing}  {format_bytes(r['memory_bytes']):>10}  "
            f"{fmt(r['vs_dense_f64']):>12}  {fmt(r['own_exact_f64']):>13}"
            + (f"  {fmt(r['own_exact_timed']):>{len(timed_col)}}" if timed_col else "")
        )
    return "\n".join(lines)


def ratio_lines(rows: list[dict]) -> list[str]:
    lines = []
    for d, m in dict.fromkeys((r["d"], r["m"]) for r in rows):
        case = {r["structure"]: r for r in rows if (r["d"], r["m"]) == (d, m)}
        parts = []
        for structure in ("block", "block-sm1", "dense"):
            r = case.get(structure)
            if r is not None:
                parts.append(f"{structure}/woodbury " + ("refused" if r["refused"] else format_ratio(r["over_woodbury"])))
        lines.append(f"  d = {d:,}, m = {m}: " + ", ".join(parts))
    return lines


def main(argv=None) -> None:
    parser = bench_parser(__file__, __doc__,
                          quick=f"m = {' '.join(map(str, QUICK_SMALL_MS))} at the small size, m = {' '.join(map(str, QUICK_LARGE_MS))} at the large one; "
                                f"3 repeats, {QUICK_MAX_SECONDS:g} s per measurement",
                          seed_help="seed for G and v (default: 0)")
    parser.add_argument("--small-d", type=int, default=SMALL_DIM, help=f"dimension of the small case (default: {SMALL_DIM})")
    parser.add_argument("--small-ms", type=int, nargs="*", default=None,
                        help=f"numbers of gradients at the small size (default: {' '.join(map(str, SMALL_MS))}; "
                             f"{' '.join(map(str, QUICK_SMALL_MS))} with --quick)")
    parser.add_argument("--large-d", type=int, default=None, help="dimension of the large case (default: the small GPT-2's parameter count)")
    parser.add_argument("--large-ms", type=int, nargs="*", default=None,
                        help=f"numbers of gradients at the large size (default: {' '.join(map(str, LARGE_MS))}; "
                             f"{' '.join(map(str, QUICK_LARGE_MS))} with --quick)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the timed runs (default: float32)")
    parser.add_argument("--damping", type=float, default=DAMPING, help=f"lam (default: {DAMPING:g})")
    parser.add_argument("--block-size", type=int, default=BLOCK_SIZE, help=f"block size of the block structure (default: {BLOCK_SIZE})")
    add_repeats(parser, FULL["repeats"], QUICK["repeats"])
    args = parser.parse(argv, FULL, QUICK)
    if args.repeats < 1 or args.block_size < 1 or args.small_d < 1 or min(args.small_ms + args.large_ms, default=1) < 1:
        parser.error("--repeats, --block-size, dimensions and numbers of gradients must be at least 1")
    args.max_seconds = QUICK_MAX_SECONDS if args.quick else MAX_SECONDS_PER_MEASUREMENT
    threads = set_threads(args.threads)
    dtype = DTYPES[args.dtype]

    wall_start = time.perf_counter()
    if args.large_d is None and args.large_ms:
        args.large_d = gpt2_small_dim()
    print(f"G: m x d standard normal / sqrt(d), v standard normal; {args.dtype}; damping {args.damping:g}; "
          f"block size {args.block_size}; seed {args.seed}; median of up to {args.repeats} runs; "
          f"torch {torch.__version__}, {threads} threads\n")

    # warm-up: every code path once on a tiny problem
    G_warm = torch.randn(4, 256, dtype=dtype)
    for structure in STRUCTURES:
        make_structure(G_warm, args.damping, structure, args.block_size).inverse_product(G_warm[0])

    rows = []
    cases = [(args.small_d, m) for m in args.small_ms] + [(args.large_d, m) for m in args.large_ms]
    for d, m in cases:
        print(f"  d = {d:,}:", flush=True)
        rows += bench_case(d, m, args, dtype)
    wall_s = time.perf_counter() - wall_start

    print()
    print(format_table(rows, args.dtype))
    print()
    print("/ woodbury: (build + product seconds) / woodbury's (build + product seconds) on the same G")
    print("memory: estimate_memory, bytes allocated beyond G itself (for a refused structure: what it would need)")
    print("vs dense f64: ||x - x_dense|| / ||x_dense|| in float64 (block and diagonal: mostly their approximation error)")
    print("own exact f64: against a float64 direct solve of the structure's own matrix (full F, its blocks or its diagonal)")
    if dtype != torch.float64:
        print(f"own exact, {args.dtype}: the timed {args.dtype} result against the same float64 reference")
    print("ratios of build + product time:")
    for line in ratio_lines(rows):
        print(line)
    print(f"total wall time: {wall_s:.1f} s")

    write_results(args, rows, wall_s=wall_s, config={
        "structures": list(STRUCTURES),
        "max_seconds_per_measurement": args.max_seconds,
    })


if __name__ == "__main__":
    main()
