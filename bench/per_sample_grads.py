"""Per-sample gradients of the small GPT-2: hooks, loop, vmap and Opacus against one batched backward.

The model is the course's "small" GPT-2 (``make_model(ModelConfig.for_profile("small"), 257)``, about
0.48M parameters, float32, ``eval()``), untrained: timings do not depend on the weights. The batch is
``--batch`` x ``--seq`` random token ids (default 32 x 128), the loss of an example its mean next-token
cross-entropy (``sample_losses(lm_outputs(model, batch))``). The script times:

* batched: one ordinary forward and backward of the whole batch,
  ``sample_losses(lm_outputs(model, batch)).sum().backward()``, then the gradients are cleared. This
  is the cost of the batch gradient, which has no per-sample information; every ratio is against it.
* ``per_sample_gradients(model, batch, method=m)`` for m = hooks (the library's default: one forward,
  one backward to the module outputs, per-sample weight gradients from the saved activations), loop
  (a batch-1 forward and backward per example, the reference), vmap (``torch.func``) and opacus
  (``GradSampleModule``).

Each method runs once untimed first. That run warms up the code path and gives the G (B x d) that is
compared with the loop's G: the "rel diff" column is max_i ||G_i - G_loop,i|| / ||G_loop,i|| over the
rows, so it shows that every method is exact up to float32 rounding (in the ``--quick`` runs it was about
3e-9, and hooks, vmap and opacus gave bit-identical G). Then each time is the median
of ``--repeats`` runs; a measurement stops repeating once it has used ``MAX_SECONDS_PER_MEASUREMENT``,
but it always runs at least once.

A second run uses a parameter subset (``--subset``, default the last block and the LM head,
``transformer.h.3`` and ``lm_head``; the head is tied to the token embedding, so the subset includes
it). There the baseline is the batched gradient of the same parameters only,
``torch.autograd.grad(loss, subset)``, and only hooks and loop are timed.

The acceptance criterion is printed as PASS/FAIL lines for the full parameter set: hooks takes at most
twice the batched backward, and hooks is faster than vmap.

Timings use torch's default thread count unless ``--threads`` is given. Run it on an otherwise idle
machine. On a 2-core machine that was also running other work, the ``--quick`` run with torch's default
of two threads took 55 to 62 s and its medians were erratic (the batched backward took 0.06 s in one run
and 0.98 s in another; hooks / batched came out 2.5x and 17x), while with ``--threads 1`` it took about
12 s and hooks / batched was 0.9x to 1.4x. Under load, the ratios mean little.

Run (the default sizes are chosen to take well under 3 minutes on a 2-core machine)::

    .venv/bin/python bench/per_sample_grads.py             # batch 32 x 128, 5 repeats
    .venv/bin/python bench/per_sample_grads.py --quick     # batch 8 x 128, 3 repeats
    .venv/bin/python bench/per_sample_grads.py --batch 16 --seq 64 --threads 1 --seed 1

Results are also written to ``bench/results/per_sample_grads.json`` (``--out``; ``per_sample_grads-quick.json``
with ``--quick``).
"""
from __future__ import annotations

import time

import torch
from _common import add_repeats, bench_parser, measure, plural, set_threads, write_results

from tutorial_lib.core.models import ModelConfig, count_parameters, make_model
from tutorial_lib.curvature.outputs import lm_outputs, sample_losses
from tutorial_lib.curvature.per_sample import METHODS, per_sample_gradients, select_parameters

VOCAB_SIZE = 257
BATCH, QUICK_BATCH, SEQ = 32, 8, 128
SUBSET = ["transformer.h.3", "lm_head"]
SUBSET_METHODS = ("hooks", "loop")
REFERENCE = "loop"
MAX_SECONDS_PER_MEASUREMENT = 15.0
MAX_HOOKS_OVER_BATCHED = 2.0
FULL = {"batch": BATCH, "repeats": 5}
QUICK = {"batch": QUICK_BATCH, "repeats": 3}


def median_time(fn, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of up to ``repeats`` calls after ``warmup`` untimed ones, and every time. Stops
    early once ``MAX_SECONDS_PER_MEASUREMENT`` is spent (always at least one timed call)."""
    t = measure(fn, repeats, warmup=warmup, max_seconds=MAX_SECONDS_PER_MEASUREMENT)
    return t.median_s, t.times_s


def max_row_rel_diff(G: torch.Tensor, reference: torch.Tensor) -> float:
    """max_i ||G_i - R_i|| / ||R_i|| over the rows (examples)."""
    G, reference = G.double(), reference.double()
    return float(((G - reference).norm(dim=1) / reference.norm(dim=1).clamp(min=1e-300)).max())


def bench_params(model, batch, params, methods, repeats: int) -> list[dict]:
    """Time the batched baseline and ``per_sample_gradients`` for each method over one parameter set
    (``None`` for all). Returns one row per method, the baseline first."""
    space = select_parameters(model, params)
    if params is None:
        def batched():
            sample_losses(lm_outputs(model, batch)).sum().backward()
            model.zero_grad(set_to_none=True)
        baseline = "batched backward"
    else:
        chosen = space.parameters(model)

        def batched():
            torch.autograd.grad(sample_losses(lm_outputs(model, batch)).sum(), chosen)
        baseline = "batched grad (subset)"

    batched_s, batched_times = median_time(batched, repeats)  # after one untimed warm-up run
    print(f"    {baseline}: {batched_s:.3f} s", flush=True)
    rows = [{"method": "batched", "label": baseline, "median_s": batched_s, "times_s": batched_times,
             "over_batched": 1.0, "over_hooks": None, "rel_diff_vs_loop": None}]

    grads = {}
    for method in methods:
        call = lambda method=method: per_sample_gradients(model, batch, space, method=method)  # noqa: E731
        grads[method] = call()  # warm-up; its G is the one compared
        seconds, times = median_time(call, repeats, warmup=0)
        rows.append({"method": method, "label": method, "median_s": seconds, "times_s": times,
                     "over_batched": seconds / batched_s})
        print(f"    {method}: {seconds:.3f} s ({plural(len(times), 'run')})", flush=True)

    hooks_s = next((r["median_s"] for r in rows if r["method"] == "hooks"), None)
    for r in rows:
        r["over_hooks"] = None if hooks_s is None else r["median_s"] / hooks_s
        if r["method"] in grads:
            r["rel_diff_vs_loop"] = max_row_rel_diff(grads[r["method"]], grads[REFERENCE])
    for r in rows:
        r.update({"dim": space.dim, "params": "all" if params is None else list(params)})
    return rows


def format_table(rows: list[dict]) -> str:
    header = (f"{'method':<22}  {'median s':>9}  {'runs':>4}  {'/ batched':>9}  {'/ hooks':>8}  "
              f"{'rel diff vs loop':>16}")
    lines = [header, "-" * len(header)]
    for r in rows:
        over_hooks = "-" if r["over_hooks"] is None else f"{r['over_hooks']:.2f}x"
        if r["rel_diff_vs_loop"] is None:
            diff = "-"
        elif r["method"] == REFERENCE:
            diff = "(reference)"
        else:
            diff = f"{r['rel_diff_vs_loop']:.1e}"
        lines.append(f"{r['label']:<22}  {r['median_s']:>9.3f}  {len(r['times_s']):>4}  {r['over_batched']:>8.2f}x  "
                     f"{over_hooks:>8}  {diff:>16}")
    return "\n".join(lines)


def acceptance(rows: list[dict]) -> list[dict]:
    """The two checks on the full-parameter run: hooks <= 2x batched, hooks faster than vmap."""
    by = {r["method"]: r for r in rows}
    checks = []
    if "hooks" in by:
        ratio = by["hooks"]["over_batched"]
        checks.append({"check": f"hooks <= {MAX_HOOKS_OVER_BATCHED:g}x batched backward",
                       "passed": ratio <= MAX_HOOKS_OVER_BATCHED, "detail": f"hooks / batched = {ratio:.2f}x"})
    if "hooks" in by and "vmap" in by:
        h, v = by["hooks"]["median_s"], by["vmap"]["median_s"]
        checks.append({"check": "hooks faster than vmap", "passed": h < v,
                       "detail": f"hooks {h:.3f} s vs vmap {v:.3f} s, vmap / hooks = {v / h:.1f}x"})
    return checks


def main(argv=None) -> None:
    parser = bench_parser(__file__, __doc__, quick=f"batch {QUICK_BATCH} (unless --batch is given), 3 repeats",
                          seed_help="seed for the model initialisation and the token ids (default: 0)")
    parser.add_argument("--batch", type=int, default=None, help=f"examples per batch (default: {BATCH}; {QUICK_BATCH} with --quick)")
    parser.add_argument("--seq", type=int, default=SEQ, help=f"tokens per example (default: {SEQ}, the model's context)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="per-sample methods to time (default: all; loop always runs, it is the reference)")
    parser.add_argument("--subset", nargs="*", default=SUBSET,
                        help=f"parameter subset for the second run (default: {' '.join(SUBSET)}; --subset with no names skips it)")
    add_repeats(parser, FULL["repeats"], QUICK["repeats"])
    args = parser.parse(argv, FULL, QUICK)
    if args.repeats < 1 or args.batch < 1:
        parser.error("--repeats and --batch must be at least 1")
    cfg = ModelConfig.for_profile("small")
    if not 2 <= args.seq <= cfg.n_positions:
        parser.error(f"--seq must be between 2 and the model's context, {cfg.n_positions}")
    threads = set_threads(args.threads)
    methods = [m for m in METHODS if m in args.methods or m == REFERENCE]

    wall_start = time.perf_counter()
    model = make_model(cfg, vocab_size=VOCAB_SIZE, seed=args.seed).eval()
    generator = torch.Generator().manual_seed(args.seed)
    batch = {"input_ids": torch.randint(0, VOCAB_SIZE, (args.batch, args.seq), generator=generator)}
    print(f"model: GPT-2 'small' profile, {count_parameters(model):,} parameters, float32, untrained (seed {args.seed}); "
          f"batch {args.batch} x {args.seq} random token ids; torch {torch.__version__}, {threads} threads; "
          f"median of up to {args.repeats} runs after one warm-up\n")

    print("  all parameters:", flush=True)
    rows = bench_params(model, batch, None, methods, args.repeats)
    subset_rows = []
    if args.subset:
        print(f"  subset {' + '.join(args.subset)}:", flush=True)
        subset_rows = bench_params(model, batch, args.subset, [m for m in SUBSET_METHODS if m in methods], args.repeats)
    checks = acceptance(rows)
    wall_s = time.perf_counter() - wall_start

    print(f"\nall parameters (d = {rows[0]['dim']:,})")
    print(format_table(rows))
    if subset_rows:
        print(f"\nsubset {' + '.join(args.subset)} (d = {subset_rows[0]['dim']:,})")
        print(format_table(subset_rows))
    print()
    print("batched backward: sample_losses(lm_outputs(model, batch)).sum().backward(), no per-sample information")
    print("batched grad (subset): torch.autograd.grad of the same loss with respect to the subset's parameters only")
    print("rel diff vs loop: max over examples of ||G_i - G_loop,i|| / ||G_loop,i||")
    print()
    for c in checks:
        print(f"{'PASS' if c['passed'] else 'FAIL'}: {c['check']} ({c['detail']})")
    print(f"total wall time: {wall_s:.1f} s")

    write_results(args, rows, wall_s=wall_s, subset_rows=subset_rows, acceptance=checks, config={
        "model_profile": "small",
        "trained": False,
        "parameters": count_parameters(model),
        "dtype": "float32",
        "methods": methods,
        "max_seconds_per_measurement": MAX_SECONDS_PER_MEASUREMENT,
    })


if __name__ == "__main__":
    main()
