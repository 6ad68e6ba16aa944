"""Newton removal vs retraining from scratch (leave-k-out) on L2-regularised binary logistic regression.

The task is ``make_corpus_classification``: is a line from Shakespeare or from the Bible? Each line is
turned into hashed character n-gram features, with rows of norm 1. For each size (lines per class,
features) the script fits the full-data optimum ``theta_star`` with ``fit``. Then, for k = 1, 10 and 100
random training points, it times three ways of removing them:

* newton: ``newton_removal(problem, theta_star, remove, steps=1)``. This is one Newton step on the
  remaining data. The timing includes everything the function does, so it also covers the Guo et al.
  residual bound (a spectral norm of the remaining X). The "bound ms" column shows that part on its own.
* cold retrain: ``retrain_without(problem, remove)``, which runs Newton's method from zero. This is
  the honest "retrain from scratch" baseline.
* warm retrain: ``retrain_without(problem, remove, theta0=theta_star)``, which starts from the old optimum.

Each time is the median of ``--repeats`` runs. A measurement stops repeating once it has used
``MAX_SECONDS_PER_MEASUREMENT``, but it always runs at least once. Before the timed runs, each method
runs once untimed. That run warms up the code path and counts the Newton iterations, so the timed runs
carry no instrumentation. The error column is the relative parameter error of the Newton update against
the cold retrain, which is the ground truth: ||theta_newton - theta_retrain|| / ||theta_retrain - theta_star||.

The "its" columns count the Newton iterations of ``fit``, and ``!`` marks a run whose line search halved
the step. Near the optimum, the objective decrease that a Newton step should make can fall below the
float resolution of the objective (its sum runs over thousands of examples). When that happens, the
Armijo test rejects good steps, and ``fit`` crawls with tiny steps until the gradient test passes by
chance or the iteration cap is reached. A retrain time marked ``!`` can therefore be inflated by that
stall rather than by a harder problem.

Timings are wall-clock. BLAS runs on one thread by default (``--threads 1``). On a 2-core machine that was
also running other work, two OpenBLAS threads made single calls up to about 200 times slower at random
(one Newton removal at n = 500 took 356 ms instead of 1.7 ms), and the ratios then meant nothing.
``--threads 0`` keeps the BLAS library's own default. Even on one thread, the timings are cleanest on an
otherwise idle machine.

Run (about 30 seconds on a 2-core machine)::

    .venv/bin/python bench/newton_removal.py                 # sizes 250x64, 1000x128, 2500x256
    .venv/bin/python bench/newton_removal.py --quick         # sizes 250x64, 1000x128; 3 repeats
    .venv/bin/python bench/newton_removal.py --sizes 500x64 --ks 1 50 --repeats 7 --seed 1
    .venv/bin/python bench/newton_removal.py --threads 0     # BLAS library's default thread count

Results are also written to ``bench/results/newton_removal.json`` (``--out``; ``newton_removal-quick.json``
with ``--quick``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from _common import add_repeats, bench_parser, measure, preset_blas_threads, set_threads, write_results

if __name__ == "__main__":  # BLAS reads its thread count when NumPy is imported, so set it first
    preset_blas_threads(sys.argv[1:], default=1)

import numpy as np  # noqa: E402 (after the BLAS thread settings)
import scipy  # noqa: E402

from tutorial_lib.curvature.newton import ConvexProblem, fit, make_corpus_classification, newton_removal, residual_bound, retrain_without

LAM = 1e-3
SIZES = [(250, 64), (1000, 128), (2500, 256)]
QUICK_SIZES = [(250, 64), (1000, 128)]
KS = (1, 10, 100)
MAX_SECONDS_PER_MEASUREMENT = 5.0
MAX_ITER = 100  # fit's default iteration cap
FULL = {"sizes": SIZES, "repeats": 5}
QUICK = {"sizes": QUICK_SIZES, "repeats": 3}


@dataclass(frozen=True)
class CountingProblem(ConvexProblem):
    """The same problem, counting Hessian and objective evaluations. It is used only in the untimed runs.
    Each iteration of ``fit`` forms one Hessian and evaluates the objective twice, plus once per
    line-search halving."""

    calls: Counter = field(default_factory=Counter, repr=False, compare=False)

    def hessian(self, theta, idx=None):
        self.calls["hessian"] += 1
        return super().hessian(theta, idx)

    def objective(self, theta, idx=None):
        self.calls["objective"] += 1
        return super().objective(theta, idx)


def size_arg(text: str) -> tuple[int, int]:
    """Parse ``NxD`` (lines per class x features), e.g. ``1000x128``."""
    try:
        per_class, features = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form NxD, e.g. 1000x128") from None
    if per_class < 1 or features < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: both numbers must be positive")
    return per_class, features


def counted(problem: ConvexProblem, fn, *args, **kwargs) -> tuple[np.ndarray, dict]:
    """Run ``fn(counting_problem, *args)`` once. Return its output and the Newton iterations and
    line-search halvings (backtracks) of the ``fit`` inside it."""
    counting = CountingProblem(problem.X, problem.y, problem.kind, problem.lam)
    out = fn(counting, *args, **kwargs)
    iterations = counting.calls["hessian"]
    return out, {"iterations": iterations, "backtracks": counting.calls["objective"] - 2 * iterations}


def median_time(fn, repeats: int) -> tuple[float, list[float]]:
    """Median wall time of up to ``repeats`` calls and every time. Stops early once
    ``MAX_SECONDS_PER_MEASUREMENT`` is spent (always at least one call)."""
    t = measure(fn, repeats, max_seconds=MAX_SECONDS_PER_MEASUREMENT)
    return t.median_s, t.times_s


def bench_removal(problem: ConvexProblem, theta_star: np.ndarray, remove: np.ndarray, repeats: int) -> dict:
    keep = np.setdiff1d(np.arange(problem.n), remove)

    # untimed runs: the results, the iteration counts and a warm-up of each code path
    result = newton_removal(problem, theta_star, remove)
    theta_cold, cold_counts = counted(problem, retrain_without, remove)
    theta_warm, warm_counts = counted(problem, retrain_without, remove, theta0=theta_star)
    step = theta_star - result.theta
    residual_bound(problem, keep, step)

    newton_s, newton_times = median_time(lambda: newton_removal(problem, theta_star, remove), repeats)
    bound_s, _ = median_time(lambda: residual_bound(problem, keep, step), repeats)
    cold_s, cold_times = median_time(lambda: retrain_without(problem, remove), repeats)
    warm_s, warm_times = median_time(lambda: retrain_without(problem, remove, theta0=theta_star), repeats)

    shift = np.linalg.norm(theta_cold - theta_star)
    return {
        "k": len(remove),
        "newton_s": newton_s,
        "bound_s": bound_s,
        "cold_s": cold_s,
        "warm_s": warm_s,
        "cold_over_newton": cold_s / newton_s,
        "warm_over_newton": warm_s / newton_s,
        "cold_iterations": cold_counts["iterations"],
        "cold_backtracks": cold_counts["backtracks"],
        "warm_iterations": warm_counts["iterations"],
        "warm_backtracks": warm_counts["backtracks"],
        "rel_param_error": float(np.linalg.norm(result.theta - theta_cold) / shift),
        "param_shift": float(shift),
        "cold_vs_warm": float(np.linalg.norm(theta_cold - theta_warm)),
        "grad_norm_newton": result.residual_norm,
        "grad_norm_cold": float(np.linalg.norm(problem.gradient(theta_cold, keep))),
        "residual_bound": result.residual_bound,
        "times_s": {"newton": newton_times, "cold": cold_times, "warm": warm_times},
    }


def format_iterations(iterations: int, backtracks: int) -> str:
    """The iteration count, with ``!`` when the line search backtracked and ``*`` when fit hit its cap."""
    return f"{iterations}{'!' if backtracks else ''}{'*' if iterations >= MAX_ITER else ''}"


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'n':>5}  {'d':>4}  {'k':>4}  {'newton ms':>9}  {'bound ms':>8}  {'cold ms':>9}  {'its':>4}  "
        f"{'warm ms':>9}  {'its':>4}  {'cold/newton':>11}  {'warm/newton':>11}  {'rel err':>8}  "
        f"{'|grad| newton':>13}  {'bound':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        bound = "-" if r["residual_bound"] is None else f"{r['residual_bound']:.1e}"
        lines.append(
            f"{r['n']:>5}  {r['d']:>4}  {r['k']:>4}  {1e3 * r['newton_s']:>9.1f}  {1e3 * r['bound_s']:>8.1f}  "
            f"{1e3 * r['cold_s']:>9.1f}  {format_iterations(r['cold_iterations'], r['cold_backtracks']):>4}  {1e3 * r['warm_s']:>9.1f}  "
            f"{format_iterations(r['warm_iterations'], r['warm_backtracks']):>4}  {r['cold_over_newton']:>10.1f}x  "
            f"{r['warm_over_newton']:>10.1f}x  {r['rel_param_error']:>8.1e}  {r['grad_norm_newton']:>13.1e}  {bound:>8}"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = bench_parser(__file__, __doc__, quick="sizes 250x64 1000x128, 3 repeats", threads_default=1,
                          threads_help="BLAS threads, set before NumPy loads (default: 1; 0 keeps the library's default)",
                          seed_help="seed for the corpus lines and the removed points (default: 0)")
    parser.add_argument("--sizes", type=size_arg, nargs="+", default=None,
                        help="lines per class x features (default: 250x64 1000x128 2500x256; 250x64 1000x128 with --quick)")
    parser.add_argument("--ks", type=int, nargs="+", default=list(KS), help="numbers of points to remove (default: 1 10 100)")
    add_repeats(parser, FULL["repeats"], QUICK["repeats"])
    parser.add_argument("--lam", type=float, default=LAM, help=f"L2 strength per example (default: {LAM:g})")
    args = parser.parse(argv, FULL, QUICK)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    blas_threads = os.environ.get("OPENBLAS_NUM_THREADS", "library default")
    if args.threads > 0 and blas_threads != str(args.threads):
        print(f"warning: --threads {args.threads} is applied only when this file runs as a script, "
              "before NumPy is imported", file=sys.stderr)
    if args.threads > 0:
        set_threads(args.threads)  # torch is loaded by the library, though nothing here runs in it

    wall_start = time.perf_counter()
    print(f"binary logistic regression, lam = {args.lam:g} per example; shakespeare vs bible lines (>= 40 chars), "
          f"hashed char 1-3-grams; seed {args.seed}; median of up to {args.repeats} runs; "
          f"numpy {np.__version__}, scipy {scipy.__version__}, BLAS threads {blas_threads}\n")

    rows, fits = [], []
    for per_class, features in args.sizes:
        X, y = make_corpus_classification(n_per_class=per_class, n_features=features, seed=args.seed)
        problem = ConvexProblem(X, y, kind="logistic", lam=args.lam)
        start = time.perf_counter()
        theta_star, fit_counts = counted(problem, fit)
        fit_s = time.perf_counter() - start
        accuracy = float(np.mean((X @ theta_star > 0) == y))
        grad_norm = float(np.linalg.norm(problem.gradient(theta_star)))
        fits.append({"n": problem.n, "d": features, "fit_s": fit_s, "fit_iterations": fit_counts["iterations"],
                     "fit_backtracks": fit_counts["backtracks"], "grad_norm": grad_norm, "train_accuracy": accuracy})
        print(f"  n = {problem.n}, d = {features}: full fit {1e3 * fit_s:.1f} ms "
              f"({format_iterations(fit_counts['iterations'], fit_counts['backtracks'])} Newton iterations, "
              f"|grad| {grad_norm:.1e}), train accuracy {accuracy:.3f}", flush=True)

        rng = np.random.default_rng([args.seed, per_class, features])
        for k in args.ks:
            if not 0 < k < problem.n:
                raise SystemExit(f"k = {k} must be between 1 and n - 1 = {problem.n - 1}")
            remove = rng.choice(problem.n, size=k, replace=False)
            rows.append({"n": problem.n, "d": features, **bench_removal(problem, theta_star, remove, args.repeats)})
            r = rows[-1]
            print(f"    k = {k}: newton {1e3 * r['newton_s']:.1f} ms, cold {1e3 * r['cold_s']:.1f} ms, "
                  f"warm {1e3 * r['warm_s']:.1f} ms", flush=True)
    wall_s = time.perf_counter() - wall_start

    print()
    print(format_table(rows))
    print()
    print("newton ms: newton_removal, 1 step, including the bound; bound ms: the Guo et al. bound alone")
    print("cold/warm: retrain_without from zero / from theta_star; its: Newton iterations of fit")
    print("  (! = the line search halved the step at least once; * = fit stopped at its cap of 100 iterations)")
    print("rel err: ||theta_newton - theta_retrain|| / ||theta_retrain - theta_star||, retrain = cold")
    print("|grad| newton: gradient norm on the remaining data after the Newton step; bound: its Guo et al. bound")
    print(f"total wall time: {wall_s:.1f} s")

    write_results(args, rows, wall_s=wall_s, fits=fits, config={
        "kind": "logistic",
        "corpora": ["shakespeare", "bible"],
        "max_seconds_per_measurement": MAX_SECONDS_PER_MEASUREMENT,
        "blas_threads": blas_threads,
    })


if __name__ == "__main__":
    main()
