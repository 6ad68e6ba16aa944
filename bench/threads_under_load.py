"""Torch thread settings under background load: a small-profile training step, an exposure scoring
batch and an unlearning step, on an idle machine and beside one CPU-bound process, for each setting.

Each setting runs in its own Python process (OpenMP reads its variables when torch loads): torch's
thread count and an OpenMP variable, e.g. ``2:OMP_WAIT_POLICY=PASSIVE`` (threads that sleep while they
wait instead of spinning) or ``1:`` (one thread, OpenMP's defaults). The competing process is a
pure-Python busy loop at the same priority, started before the timed steps and stopped after them.
The script prints, per setting, the median seconds per step idle and loaded and their ratio, and
the ratio of the loaded time to the best idle time of any setting (the number to keep small).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from _common import bench_parser, write_results

WORKLOADS = ("train", "score", "unlearn")


def _child(workload: str, steps: int, threads: str) -> None:
    """Run in a fresh process: time ``steps`` steps of ``workload`` and print the times as JSON."""
    import torch

    from tutorial_lib.core.models import ModelConfig, make_model
    torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    model = make_model(ModelConfig.for_profile("small"), vocab_size=259)
    x = torch.randint(0, 259, (32, 128))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def train():
        opt.zero_grad(set_to_none=True)
        model(x, labels=x).loss.backward()
        opt.step()

    @torch.no_grad()
    def score():
        model(torch.randint(0, 259, (256, 24))).logits.log_softmax(-1)

    def unlearn():  # one first-order unlearning step on a few windows, then a parameter update
        opt.zero_grad(set_to_none=True)
        (-model(x[:8], labels=x[:8]).loss).backward()
        opt.step()

    fn = {"train": train, "score": score, "unlearn": unlearn}[workload]
    for _ in range(3):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    print(json.dumps({"times": times, "threads": torch.get_num_threads()}))


DEFAULT_SETTINGS = "1:,2:,2:OMP_WAIT_POLICY=PASSIVE"


def run_setting(workload: str, steps: int, threads: str, wait_policy: str | None, loaded: bool) -> dict:
    env = dict(os.environ)
    for var in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "TUTORIAL_THREADS"):
        env.pop(var, None)
    if wait_policy:
        key, _, value = wait_policy.partition("=")
        env[key] = value
    competitor = None
    if loaded:
        competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)
    try:
        out = subprocess.run([sys.executable, __file__, "--child", workload, str(steps), threads], env=env,
                             capture_output=True, text=True, check=True)
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    data = json.loads(out.stdout.strip().splitlines()[-1])
    times = sorted(data["times"])
    return {"workload": workload, "threads": threads, "torch_threads": data["threads"], "wait_policy": wait_policy or "default",
            "loaded": loaded, "median_s": times[len(times) // 2], "best_s": times[0]}


def main(argv=None) -> int:
    parser = bench_parser(__file__, __doc__, quick="5 steps per setting, training only")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per setting (default 15; 5 with --quick)")
    parser.add_argument("--settings", default=DEFAULT_SETTINGS,
                        help=f"comma-separated THREADS:VAR=VALUE settings (default {DEFAULT_SETTINGS}; VAR=VALUE may be empty)")
    args = parser.parse(argv, full={"steps": 15}, quick={"steps": 5})
    workloads = ("train",) if args.quick else WORKLOADS
    settings = []
    for item in args.settings.split(","):
        threads, _, variable = item.partition(":")
        if not threads.isdigit() or int(threads) < 1 or (variable and "=" not in variable):
            parser.error(f"--settings: {item!r} is not THREADS:VAR=VALUE (e.g. 2:OMP_WAIT_POLICY=PASSIVE or 1:)")
        settings.append((threads, variable or None))
    rows = []
    start = time.perf_counter()
    for workload in workloads:
        for threads, policy in settings:
            for loaded in (False, True):
                rows.append(run_setting(workload, args.steps, threads, policy, loaded))
                r = rows[-1]
                print(f"{workload:8s} threads={threads:4s} wait={r['wait_policy']:24s} {'loaded' if loaded else 'idle  '}: "
                      f"{r['median_s']:.3f} s/step", flush=True)
    summary = []
    for workload in workloads:
        idle_best = min(r["median_s"] for r in rows if r["workload"] == workload and not r["loaded"])
        for threads, policy in settings:
            idle, loaded = (next(r for r in rows if r["workload"] == workload and r["threads"] == threads
                                 and r["wait_policy"] == (policy or "default") and r["loaded"] == lo) for lo in (False, True))
            summary.append({"workload": workload, "threads": threads, "wait_policy": policy or "default",
                            "idle_s": idle["median_s"], "loaded_s": loaded["median_s"],
                            "loaded_over_own_idle": loaded["median_s"] / idle["median_s"],
                            "loaded_over_best_idle": loaded["median_s"] / idle_best})
    print(f"\n{'workload':8s}  threads  {'OpenMP variable':24s}  idle s   loaded s  loaded/own idle  loaded/best idle")
    for s in summary:
        print(f"{s['workload']:8s}  {s['threads']:7s}  {s['wait_policy']:24s}  {s['idle_s']:.3f}    {s['loaded_s']:.3f}     "
              f"{s['loaded_over_own_idle']:5.2f}×           {s['loaded_over_best_idle']:5.2f}×")
    write_results(args, rows, wall_s=time.perf_counter() - start, summary=summary)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        raise SystemExit(main())
