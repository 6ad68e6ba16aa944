"""Unlearning wall time vs retraining from scratch, in one run.

For the memorisation run of a profile (notebook 03's GPT-2 with canaries), the script

* retrains the model from scratch without the most-inserted canary: the same training loop, seed and
  number of steps as the original (``train_language_model`` on the training text minus the canary's
  lines; exposure tracking off), timed end to end;
* runs each unlearning method on the original model through ``tutorial_lib.unlearn`` with its
  profile defaults (forget set: the canary's occurrences, secret given prefix), timed end to end:
  Fisher Removal with K-FAC (default), with the exact Woodbury Fisher, Fisher Forgetting, and the
  four first-order baselines of notebook 06 at their defaults;

and prints each method's seconds and its fraction of the retraining time. The original model comes
from the train-or-load cache (it is trained first if missing; that time is not counted). No exposure
is measured here: notebook 04 does that.

Run on an otherwise idle machine (about 4 minutes at ``small`` on 2 cores, most of it retraining)::

    .venv/bin/python bench/unlearning_vs_retraining.py               # small profile
    .venv/bin/python bench/unlearning_vs_retraining.py --profile tiny
    .venv/bin/python bench/unlearning_vs_retraining.py --quick       # the tiny profile: seconds once its model is cached
    .venv/bin/python bench/unlearning_vs_retraining.py --threads 1 --seed 0

Results are written to ``bench/results/unlearning_vs_retraining.json`` (``--out``;
``unlearning_vs_retraining-quick.json`` with ``--quick``).
"""
from __future__ import annotations

import time
from dataclasses import replace

import torch
from _common import bench_parser, set_threads, timed, write_results

import tutorial_lib as tl
from tutorial_lib.experiments.memorization import prepare_memorization

FULL = {"profile": "small"}
QUICK = {"profile": "tiny"}


def main(argv=None) -> None:
    parser = bench_parser(__file__, __doc__, quick="the tiny profile (unless --profile is given)",
                          seed_help="seed of the memorisation run, the retraining and the unlearning (default: 0)")
    parser.add_argument("--profile", default=None, choices=["tiny", "small", "full"],
                        help="memorisation profile (default: small; tiny with --quick)")
    args = parser.parse(argv, FULL, QUICK)
    threads = set_threads(args.threads)
    wall_start = time.perf_counter()

    cfg = tl.MemorizationConfig.for_profile(args.profile)
    run = tl.train_memorization_model(cfg, seed=args.seed, progress=False)
    model, tokenizer, canaries, splits = run.model, run.tokenizer, run.canaries, run.splits
    inserted = prepare_memorization(cfg, seed=args.seed).inserted
    target = max(canaries, key=lambda c: c.insertions)
    print(f"profile {args.profile}: {tl.count_parameters(model):,} parameters, forget {target.name!r} "
          f"({target.insertions} of {len(inserted.lines):,} lines); torch {torch.__version__}, {threads} threads")

    dropped = set(inserted.positions[target.name])
    train_ids = tl.tokenize_lines(tokenizer, [l for i, l in enumerate(inserted.lines) if i not in dropped])
    val_ids = tl.tokenize_lines(tokenizer, splits.validation)
    fresh = tl.make_model(cfg.model, len(tokenizer), seed=args.seed)
    _, retrain_s = timed(tl.train_language_model, fresh, train_ids, val_ids, cfg.train, seed=args.seed, progress=False)
    print(f"retraining: {retrain_s:.1f} s ({cfg.train.steps} steps of {cfg.train.batch_size} x {cfg.train.block_size})")

    items = tl.canary_forget_items(target, "secret")
    removal = tl.FisherRemovalConfig.for_profile(args.profile)
    methods = {
        "fisher_removal (kfac)": ("fisher_removal", removal),
        "fisher_removal (woodbury)": ("fisher_removal", replace(removal, structure="woodbury")),
        "fisher_forgetting (kfac)": ("fisher_forgetting", tl.FisherForgettingConfig.for_profile(args.profile)),
    }
    for method in ("gradient_ascent", "gradient_difference", "npo", "fine_tune"):  # notebook 06's defaults
        config = tl.METHODS[method].config.for_profile(args.profile)
        methods[f"{method} ({config.steps} steps)"] = (method, config)
    rows = []
    for label, (method, config) in methods.items():
        (_, report), seconds = timed(tl.unlearn, model, tokenizer, items, inserted.retain, method, config,
                                     n_train=len(inserted.lines), seed=args.seed)
        rows.append({"method": label, "seconds": seconds, "fraction_of_retraining": seconds / retrain_s,
                     "repeats": config.repeats, "update_norm": report.update_norm})

    print(f"\n{'method':32s} {'seconds':>8s} {'/ retraining':>13s} {'speed-up':>9s}")
    print(f"{'retraining from scratch':32s} {retrain_s:8.1f} {1.0:13.3f} {1.0:8.1f}x")
    for r in rows:
        print(f"{r['method']:32s} {r['seconds']:8.1f} {r['fraction_of_retraining']:13.3f} {1 / r['fraction_of_retraining']:8.1f}x")
    best = min(rows, key=lambda r: r["seconds"])
    default = rows[0]
    print("\nPASS" if default["fraction_of_retraining"] <= 0.1 else "\nFAIL", f"default Fisher Removal <= 1/10 of retraining "
          f"({default['fraction_of_retraining']:.3f}); fastest: {best['method']}")
    wall_s = time.perf_counter() - wall_start
    print(f"total wall time: {wall_s:.1f} s (the original model's training, if it was not cached, included)")
    write_results(args, rows, wall_s=wall_s, retrain_s=retrain_s, target=target.name,
                  retrain_steps=cfg.train.steps, passed=default["fraction_of_retraining"] <= 0.1)


if __name__ == "__main__":
    main()
