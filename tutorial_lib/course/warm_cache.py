"""Train, or find in the train-or-load cache, every model the notebooks load, and run their cached
studies, so that no notebook cell has to train a model or run a sweep (``scripts/test.sh`` runs
this before the notebooks; an instructor runs it before a lecture):

    python -m tutorial_lib.course.warm_cache --profile small

The models: notebook 03's memorisation run, notebook 04's retrained oracle (without the most-inserted
canary) and the sequential-requests run of notebooks 05 and 10 (four canaries per insertion count,
4-digit secrets). The studies: notebook 04's Fisher Removal sweep, notebook 05's noise sweep, the
sequential requests,
notebook 06's learning-rate × steps sweeps of the four first-order baselines, notebook 07's
one-seed benchmark table (the reproduction computes all seeds) and notebook 08's DP-SGD runs on the
benchmark's models (the reproduction adds the profile's own model), notebook 09's case studies and
notebook 10's relearning attack and sensitivity (with the benchmark's cells for the other seeds).
"""
from __future__ import annotations

import argparse
import dataclasses
import time

from ..core.canaries import make_canaries
from ..core.profiles import resolve_profile
from ..experiments.benchmark import BenchmarkConfig, benchmark_cell
from ..experiments.case_studies import run_case_study
from ..experiments.case_study_data import CaseStudyConfig
from ..experiments.dp_comparison import DPComparisonConfig, run_dp_study
from ..experiments.memorization import (
    MemorizationConfig,
    train_memorization_model,
    train_retrained_model,
)
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
)


def warm(profile: str | None = None, seed: int = 0, device: str | None = None, progress: bool = False, studies: bool = True) -> list[dict]:
    """Make sure the notebooks' models and studies are cached; one row per item (label, cached before, seconds)."""

    cfg = MemorizationConfig.for_profile(profile)
    robust = RobustnessConfig.for_profile(profile)
    canaries = make_canaries(cfg.insertions, cfg.per_insertion, cfg.n_controls, cfg.space, seed=seed)
    target = max(canaries, key=lambda c: c.insertions).name
    models = [
        ("notebook 03: memorisation run", lambda: train_memorization_model(cfg, seed, device, progress=progress)),
        (f"notebook 04: retrained without {target}", lambda: train_retrained_model(cfg, (target,), seed, device, progress=progress)),
        ("notebooks 05 and 10: sequential-requests run",
         lambda: train_memorization_model(robust.sequential_run_config(), seed, device, progress=progress)),
    ]
    results = [
        ("notebook 04: original and oracle, exact exposure", lambda: reference_points(cfg, seed, device, progress=progress)),
        ("notebook 04: Fisher Removal sweep", lambda: run_removal_sweep(cfg, seed, device, progress=progress)),
        ("notebook 05: noise sweep", lambda: run_forgetting_sweep(cfg, seed, device, progress=progress)),
    ] + [(f"notebook 06: {m} sweep", lambda m=m: run_baseline_sweep(cfg, m, seed, device, progress=progress))
         for m in ("gradient_ascent", "gradient_difference", "npo", "fine_tune")]
    bench = dataclasses.replace(BenchmarkConfig.for_profile(profile), seeds=(seed,))  # notebook 07's reduced table
    results += [(f"notebook 07: benchmark, {corpus}, seed {seed}", lambda corpus=corpus: benchmark_cell(bench, corpus, seed, device))
                for corpus in bench.corpora]

    dp = DPComparisonConfig.for_profile(profile)
    results += [(f"notebook 08: DP-SGD at epsilon {list(dp.epsilons)}, {corpus}",
                 lambda corpus=corpus: run_dp_study(dp.run_config(corpus), dp.epsilons, seed, device, dp.max_grad_norm, progress=progress))
                for corpus in dp.corpora]

    results.append(("notebook 09: case studies", lambda: run_case_study(CaseStudyConfig.for_profile(profile), seed, device, progress=progress)))
    results += [("notebook 10: relearning attack", lambda: run_relearning_study(robust, seed, device, progress=progress)),
                ("notebooks 05 and 10: sequential requests", lambda: run_sequential_study(robust, seed, device, progress=progress)),
                ("notebook 10: sensitivity", lambda: run_sensitivity_study(robust, seed, device, progress=progress))]
    seeds = seed_benchmark_config(robust)
    results += [(f"notebook 10: benchmark, {robust.corpus}, seed {s}", lambda s=s: benchmark_cell(seeds, robust.corpus, s, device))
                for s in seeds.seeds if s != seed]
    jobs = models + results if studies else models
    rows = []
    for i, (label, job) in enumerate(jobs):  # models first: the studies load them
        start = time.perf_counter()
        out = job()  # a model run (TrainedModel) or a study's (result, from_cache)
        cached = out.from_cache if i < len(models) else out[-1]
        rows.append({"item": label, "cached": cached, "seconds": time.perf_counter() - start})
        done = "trained" if i < len(models) else "computed"
        print(f"  {label}: {'in the cache' if cached else done} ({rows[-1]['seconds']:.0f} s)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None, help="tiny | small | full (default: $TUTORIAL_PROFILE, else auto)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--models-only", action="store_true", help="train the models, skip the sweeps and repeated requests")
    args = parser.parse_args(argv)
    profile = resolve_profile(args.profile)
    print(f"warming the model cache for profile {profile!r}, seed {args.seed}")
    warm(profile, args.seed, args.device, studies=not args.models_only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
