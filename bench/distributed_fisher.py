"""Distributed Fisher: one process against two (one torch thread each by default), on the same problem.

For a GPT-2 of the chosen profile (every parameter) and ``--m`` random token windows of
``--block`` tokens in batches of ``--batch-size``, each world size runs, with
``tutorial_lib.unlearning.distributed_fisher``:

* grad: per-sample gradients of the rank's share of the batches (``distributed_gradient_matrix``);
* woodbury build: the m x m Gram matrix from per-rank blocks and its Cholesky factor
  (``DistributedFisher(G, damping)``);
* woodbury product: one exact inverse-Fisher-vector product (two all_reduce calls);
* cg product: the same product by conjugate gradients on the distributed matvec, to rtol 1e-4 in
  float32 (one all_reduce per iteration; the iteration count is shown).

Each time is the slowest rank's, the median of ``--repeats`` runs (gradients: one run). The
"1 / 2" column is the one-process time over the two-process time: 2 would be perfect scaling.
"max rel diff" compares the two-process inverse product with the one-process one.

Both world sizes start fresh processes through ``run_distributed`` (gloo, 127.0.0.1). On a
2-core machine the two-process run has one core per rank; run it on an otherwise idle machine,
since other work on the same cores changes the ratio.

    .venv/bin/python bench/distributed_fisher.py                 # small GPT-2, m = 128, about 30 s on 2 cores
    .venv/bin/python bench/distributed_fisher.py --quick         # tiny GPT-2, m = 16, 32-token windows, 2 repeats
    .venv/bin/python bench/distributed_fisher.py --profile tiny --m 64 --block 32 --repeats 5

``--threads N`` gives each process N torch threads (default 1). Results are also written to
``bench/results/distributed_fisher.json`` (``--out``; ``distributed_fisher-quick.json`` with ``--quick``).
"""
from __future__ import annotations

import time

import torch
import torch.distributed as dist
from _common import add_repeats, bench_parser, measure, set_threads, write_results

from tutorial_lib.unlearning.distributed import run_distributed, world_info
from tutorial_lib.unlearning.distributed_fisher import DistributedFisher, distributed_gradient_matrix

FULL = dict(profile="small", m=128, block=64, batch_size=8, repeats=3)
QUICK = dict(profile="tiny", m=16, block=32, repeats=2)


def _slowest(seconds: float) -> float:
    """The largest of the ranks' times (each rank measured its own)."""
    t = torch.tensor([seconds], dtype=torch.float64)
    if world_info()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _barrier() -> None:
    if world_info()[1] > 1:
        dist.barrier()


def _timed(fn, repeats: int):
    """The last output and the median over ``repeats`` runs of the slowest rank's time (ranks start together)."""
    t = measure(fn, repeats, before=_barrier, reduce=_slowest)
    return t.out, t.median_s


def _measure(profile: str, m: int, block: int, batch_size: int, damping: float, repeats: int, seed: int) -> dict:
    """Run on every rank; returns the slowest rank's times and the products."""
    from tutorial_lib.core.models import ModelConfig, make_model

    model = make_model(ModelConfig.for_profile(profile), 257, seed=seed).eval()
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 257, (m, block), generator=gen)
    batches = [{"input_ids": ids[i : i + batch_size]} for i in range(0, m, batch_size)]
    distributed_gradient_matrix(model, batches[: world_info()[1]], None)  # warm-up: one batch per rank
    (G, space), grad_s = _timed(lambda: distributed_gradient_matrix(model, batches, None), 1)
    v = torch.randn(space.dim, generator=torch.Generator().manual_seed(seed + 1))
    F, build_s = _timed(lambda: DistributedFisher(G, damping), repeats)
    x, product_s = _timed(lambda: F.inverse_product(v), repeats)
    F_cg = DistributedFisher(G, damping, solver="cg", rtol=1e-4)
    x_cg, cg_s = _timed(lambda: F_cg.inverse_product(v), repeats)
    return dict(dim=space.dim, m=F.m, grad_s=grad_s, build_s=build_s, product_s=product_s, cg_s=cg_s,
                cg_iterations=F_cg.iterations, x=x, x_cg=x_cg)


def main(argv=None) -> None:
    parser = bench_parser(__file__, __doc__, quick="tiny GPT-2, m = 16 windows of 32 tokens, 2 repeats",
                          threads_default=1, threads_help="torch threads per process (default: 1)",
                          seed_help="seed for the model and the token windows (default: 0)")
    parser.add_argument("--profile", default=None, choices=["tiny", "small"], help="GPT-2 profile (default: small; tiny with --quick)")
    parser.add_argument("--m", type=int, default=None, help="number of token windows, the rows of G (default: 128; 16 with --quick)")
    parser.add_argument("--block", type=int, default=None, help="tokens per window (default: 64; 32 with --quick)")
    parser.add_argument("--batch-size", type=int, default=None, help="windows per batch (default: 8)")
    parser.add_argument("--damping", type=float, default=1e-3, help="lam (default: 0.001)")
    add_repeats(parser, FULL["repeats"], QUICK["repeats"])
    args = parser.parse(argv, FULL, QUICK)
    if min(args.m, args.block, args.batch_size, args.repeats, args.threads) < 1:
        parser.error("--m, --block, --batch-size, --repeats and --threads must be at least 1")
    set_threads(args.threads)  # the parent only starts the processes; this keeps its JSON record consistent
    wall_start = time.perf_counter()
    runs = {}
    for world in (1, 2):
        start = time.perf_counter()
        runs[world] = run_distributed(_measure, world_size=world, threads=args.threads,
                                      args=(args.profile, args.m, args.block, args.batch_size, args.damping, args.repeats, args.seed))[0]
        print(f"world size {world}: {time.perf_counter() - start:.1f} s including process start-up", flush=True)
    one, two = runs[1], runs[2]
    print(f"\n{args.profile} GPT-2, d = {one['dim']:,}, m = {one['m']}, float32, "
          f"{args.threads} torch thread{'' if args.threads == 1 else 's'} per process\n")
    print(f"{'stage':<18}{'1 process (s)':>15}{'2 processes (s)':>17}{'1 / 2':>8}")
    rows = []
    for key, label in [("grad_s", "grad"), ("build_s", "woodbury build"), ("product_s", "woodbury product"), ("cg_s", "cg product")]:
        ratio = one[key] / two[key]
        rows.append(dict(stage=label, one_s=one[key], two_s=two[key], ratio=ratio))
        print(f"{label:<18}{one[key]:>15.4f}{two[key]:>17.4f}{ratio:>8.2f}")
    rel = float((two["x"] - one["x"]).norm() / one["x"].norm())
    rel_cg = float((two["x_cg"] - one["x"]).norm() / one["x"].norm())
    print(f"\nCG iterations: {one['cg_iterations']} (1 process), {two['cg_iterations']} (2 processes)")
    print(f"max rel diff, woodbury 2 vs 1 process: {rel:.2e}; cg (2 processes) vs woodbury (1): {rel_cg:.2e}")
    wall_s = time.perf_counter() - wall_start
    print(f"total wall time: {wall_s:.1f} s")
    write_results(args, rows, wall_s=wall_s, dim=one["dim"], m=one["m"],
                  cg_iterations=[one["cg_iterations"], two["cg_iterations"]], rel_diff_woodbury=rel, rel_diff_cg=rel_cg)


if __name__ == "__main__":
    main()
