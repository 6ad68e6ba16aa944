"""Train, or find in the train-or-load cache, every model the notebooks load, and run their cached
studies, so that no notebook cell has to train a model or run a sweep (``scripts/test.sh`` runs
this before the notebooks; an instructor runs it before a lecture):

    python -m tutorial_lib.course.warm_cache --profile small

The models: notebook 03's memorisation run, notebook 04's retrained oracle (without the most-inserted
canary) and the sequential-requests run of notebooks 05 and 10 (four canaries per insertion count,
4-digit secrets). The studies: notebook 03's exact exposures and estimates, notebook 04's Fisher
Removal sweep, notebook 05's noise sweep, the sequential requests, notebook 06's learning-rate × steps sweeps of the four first-order baselines, notebook 07's
one-seed benchmark table (the reproduction computes all seeds) and notebook 08's DP-SGD runs on the
benchmark's models (the reproduction adds the profile's own model), notebook 09's case studies and
notebook 10's relearning attack and sensitivity (with the benchmark's cells for the other seeds).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from ..core.cache import cache_root
from ..core.canaries import make_canaries
from ..core.profiles import profile_reason, resolve_profile
from ..experiments.benchmark import BenchmarkConfig, benchmark_cell, cell_key
from ..experiments.case_studies import run_case_study
from ..experiments.case_study_data import CaseStudyConfig
from ..experiments.dp_comparison import DPComparisonConfig, run_dp_study, train_dp_model
from ..privacy.dp import DPConfig
from ..experiments.memorization import (
    MemorizationConfig,
    run_memorization,
    train_memorization_model,
    train_retrained_model,
)
from ..experiments.pretrained_llm import PretrainedLLMConfig, run_pretrained_study
from ..experiments.robustness import (
    RobustnessConfig,
    run_relearning_study,
    run_sensitivity_study,
    run_sequential_study,
    seed_benchmark_config,
)
from ..experiments.sweeps import (
    reference_points,
    run_baseline_sweep,
    run_forgetting_sweep,
    run_removal_sweep,
    run_unlearning_methods,
)
from .workers import Job, default_jobs, run_jobs


def warm_jobs(profile: str | None = None, seed: int = 0, device: str | None = None, studies: bool = True,
              reproduction: bool = False) -> list[Job]:
    """The warm-up's jobs, models first: every model and study the notebooks read from the cache
    (with ``studies=False`` only the three models), and with ``reproduction=True`` also what only the
    reproduction reads (every seed of the benchmark, the profile's own DP study and the unlearning
    table). Each study ``needs`` the models it loads, so that no two workers train one checkpoint."""
    profile = resolve_profile(profile)
    cfg = MemorizationConfig.for_profile(profile)
    robust = RobustnessConfig.for_profile(profile)
    canaries = make_canaries(cfg.insertions, cfg.per_insertion, cfg.n_controls, cfg.space, seed=seed)
    target = max(canaries, key=lambda c: c.insertions).name
    quiet = {"progress": False}
    run, oracle, sequential_run = "notebook 03: memorisation run", f"notebook 04: retrained without {target}", "notebooks 05 and 10: sequential-requests run"
    jobs = [Job(run, train_memorization_model, (cfg, seed, device), quiet),
            Job(oracle, train_retrained_model, (cfg, (target,), seed, device), quiet),
            Job(sequential_run, train_memorization_model, (robust.sequential_run_config(), seed, device), quiet)]
    if not studies:
        return jobs
    dp = DPComparisonConfig.for_profile(profile)
    own_dp = []  # the reproduction's DP-SGD models at the profile's own scale: long, and they need nothing else
    if reproduction and dp.own_scale:
        for eps in dp.own_scale_epsilons:
            own_dp.append(f"reproduction: DP-SGD model at epsilon {eps:g}, {profile}-scale")
            jobs.append(Job(own_dp[-1], train_dp_model, (cfg, DPConfig(target_epsilon=eps, max_grad_norm=dp.max_grad_norm), seed, device),
                            quiet))
    # ready jobs start in the order of this list: long ones early, so that the last to finish are short
    jobs += [Job("notebook 11: SmolLM2 fine-tuned and unlearned", run_pretrained_study,
                 (PretrainedLLMConfig.for_profile(profile), seed, device), quiet),
             Job("notebook 03: exact exposure and estimates", run_memorization, (cfg, seed, device), quiet, (run,)),
             Job("notebook 09: case studies", run_case_study, (CaseStudyConfig.for_profile(profile), seed, device), quiet),
             Job("notebooks 05 and 10: sequential requests", run_sequential_study, (robust, seed, device), quiet, (sequential_run,))]
    c3 = robust.c3_config()  # notebook 05's C3 over seeds: the same run, the two Fisher methods
    jobs += [Job(f"notebook 05: C3 sequential requests, {c3.sequential_run_profile}-scale, seed {s}", run_sequential_study, (c3, s, device), quiet,
                 (sequential_run,) if (c3.sequential_run_config(), s) == (robust.sequential_run_config(), seed) else ())
             for s in c3.seeds]
    small = (run, oracle)

    def trains(run_cfg, s) -> tuple[str, ...]:  # a job that trains the profile's own run (at ``tiny`` the benchmark's) waits for it
        return small if (run_cfg, s) == (cfg, seed) else ()

    jobs += [Job("notebook 04: original and oracle, exact exposure", reference_points, (cfg, seed, device), quiet, small),
             Job("notebook 04: Fisher Removal sweep", run_removal_sweep, (cfg, seed, device), quiet, small),
             Job("notebook 04: Fisher Removal sweep, Woodbury", run_removal_sweep, (cfg, seed, device), {**quiet, "structure": "woodbury"},
                 small),
             Job("notebook 05: noise sweep", run_forgetting_sweep, (cfg, seed, device), quiet, small)]
    jobs += [Job(f"notebook 06: {m} sweep", run_baseline_sweep, (cfg, m, seed, device), quiet, small)
             for m in ("gradient_ascent", "gradient_difference", "npo", "fine_tune")]
    if reproduction:
        jobs.append(Job("reproduction: unlearning methods", run_unlearning_methods, (cfg, seed, device), quiet,
                        small + ("notebook 04: original and oracle, exact exposure",)))
        if dp.own_scale:
            jobs.append(Job(f"reproduction: DP-SGD at epsilon {list(dp.own_scale_epsilons)}, {profile}-scale model", run_dp_study,
                            (cfg, dp.own_scale_epsilons, seed, device, dp.max_grad_norm), {**quiet, "matched": dp.own_scale_matched},
                            (run, *own_dp)))
    bench = BenchmarkConfig.for_profile(profile)
    robust_cells = seed_benchmark_config(robust)
    wanted = [(dataclasses.replace(bench, seeds=(seed,)), c, seed) for c in bench.corpora]  # notebook 07's one-seed table
    wanted += [(robust_cells, robust.corpus, s) for s in robust_cells.seeds]  # notebook 10's seed study
    if reproduction:
        wanted += [(bench, c, s) for s in bench.seeds for c in bench.corpora]  # the reproduction's table
    cell, keys = {}, set()  # cell[corpus, seed]: the label of the first job that trains that model
    for cells, c, s in wanted:  # one job per cached cell
        key = json.dumps(cell_key(cells, c, s), sort_keys=True, default=str)
        if key in keys:
            continue
        keys.add(key)
        label = f"benchmark, {c}, seed {s}"
        jobs.append(Job(label if (c, s) not in cell else f"{label} ({len(keys)})", benchmark_cell, (cells, c, s, device),
                        needs=((cell[c, s],) if (c, s) in cell else ()) + trains(cells.run_config(c), s)))
        cell.setdefault((c, s), label)
    jobs += [Job(f"notebook 08: DP-SGD at epsilon {list(dp.epsilons)}, {c}", run_dp_study,
                 (dp.run_config(c), dp.epsilons, seed, device, dp.max_grad_norm), quiet,
                 tuple(cell[k] for k in [(c, seed)] if k in cell) + trains(dp.run_config(c), seed)) for c in dp.corpora]
    shared = tuple(cell[k] for k in [(robust.corpus, seed)] if k in cell) + trains(robust.run_config(), seed)
    jobs += [Job("notebook 10: relearning attack", run_relearning_study, (robust, seed, device), quiet, shared),
             Job("notebook 10: sensitivity", run_sensitivity_study, (robust, seed, device), quiet, shared)]
    return jobs


def warm(profile: str | None = None, seed: int = 0, device: str | None = None, progress: bool = False, studies: bool = True,
         jobs: int = 1, threads: int = 1, reproduction: bool = False) -> list[dict]:
    """Make sure the notebooks' models and studies (:func:`warm_jobs`) are cached, in ``jobs`` worker
    processes of ``threads`` torch threads each (:func:`~tutorial_lib.course.workers.run_jobs`); one
    row per item (label, cached before, seconds)."""
    items = warm_jobs(profile, seed, device, studies, reproduction)
    return [r.to_dict() for r in run_jobs(items, jobs, threads, progress=progress, log=lambda line: print(line, flush=True))]


def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None, help="tiny | small | full (default: $TUTORIAL_PROFILE, else auto)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--models-only", action="store_true", help="train the models, skip the sweeps and repeated requests")
    parser.add_argument("--jobs", type=int, default=None,
                        help="worker processes, one torch thread each (default: one per core, at most 4; 1 on a GPU)")
    parser.add_argument("--reproduction", action="store_true", help="also what only the reproduction reads (every benchmark seed)")
    parser.add_argument("--report", default=None, metavar="FILE", help="also write each item's seconds and label, tab-separated, to FILE")
    args = parser.parse_args(argv)
    profile = resolve_profile(args.profile)
    jobs = default_jobs(args.device) if args.jobs is None else args.jobs
    if jobs < 1:
        parser.error(f"--jobs must be at least 1, got {jobs}")
    start = time.perf_counter()
    print(f"warming the cache {cache_root()} at {profile_reason(args.profile)}, seed {args.seed}, in {jobs} worker process(es)",
          flush=True)
    rows = warm(profile, args.seed, args.device, progress=True, studies=not args.models_only, jobs=jobs, reproduction=args.reproduction)
    total = time.perf_counter() - start
    print(f"warm in {total:.0f} s ({sum(r['seconds'] for r in rows):.0f} s of work in {jobs} worker process(es))")
    if args.report:
        Path(args.report).write_text("".join(f"{r['seconds']:.0f}\t{r['item']}\n" for r in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
