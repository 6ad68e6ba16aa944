"""Distributed Fisher: one process against two, each with one torch thread, on the same problem.

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
    .venv/bin/python bench/distributed_fisher.py --profile tiny --m 64 --block 32 --repeats 5

Results are also written to ``bench/results/distributed_fisher.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist

from tutorial_lib.unlearning.distributed import run_distributed, world_info
from tutorial_lib.unlearning.distributed_fisher import DistributedFisher, distributed_gradient_matrix

RESULTS = Path(__file__).resolve().parent / "results" / "distributed_fisher.json"


def _slowest(seconds: float) -> float:
    """The largest of the ranks' times (each rank measured its own)."""
    t = torch.tensor([seconds], dtype=torch.float64)
    if world_info()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _timed(fn, repeats: int):
    out, times = None, []
    for _ in range(repeats):
        if world_info()[1] > 1:
            dist.barrier()
        start = time.perf_counter()
        out = fn()
        times.append(_slowest(time.perf_counter() - start))
    return out, statistics.median(times)


def measure(profile: str, m: int, block: int, batch_size: int, damping: float, repeats: int, seed: int) -> dict:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="small", choices=["tiny", "small"])
    parser.add_argument("--m", type=int, default=128)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--damping", type=float, default=1e-3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    runs = {}
    for world in (1, 2):
        start = time.perf_counter()
        runs[world] = run_distributed(measure, world_size=world, threads=1,
                                      args=(args.profile, args.m, args.block, args.batch_size, args.damping, args.repeats, args.seed))[0]
        print(f"world size {world}: {time.perf_counter() - start:.1f} s including process start-up", flush=True)
    one, two = runs[1], runs[2]
    print(f"\n{args.profile} GPT-2, d = {one['dim']:,}, m = {one['m']}, float32, one torch thread per process\n")
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
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(dict(
        args=vars(args), dim=one["dim"], m=one["m"], rows=rows, cg_iterations=[one["cg_iterations"], two["cg_iterations"]],
        rel_diff_woodbury=rel, rel_diff_cg=rel_cg, machine=platform.platform(), torch=torch.__version__,
    ), indent=2))


if __name__ == "__main__":
    main()
