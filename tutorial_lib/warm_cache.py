"""Train, or find in the train-or-load cache, every model the notebooks load, so that no notebook
cell has to train one (``scripts/test.sh`` runs this before the notebooks):

    python -m tutorial_lib.warm_cache --profile small

The models: notebook 03's memorisation run, notebook 04's retrained oracle (without the most-inserted
canary) and notebook 05's repeated-requests run (two canaries per insertion count, 4-digit secrets).
"""
from __future__ import annotations

import argparse
import time


def repeated_requests_config(profile: str | None = None):
    """Notebook 05's second memorisation run."""
    from .memorization import MemorizationConfig

    return MemorizationConfig.for_profile(profile, per_insertion=2, secret_length=4, track_exposure=False)


def warm(profile: str | None = None, seed: int = 0, device: str | None = None, progress: bool = False) -> list[dict]:
    """Make sure the notebooks' models are cached; one row per model (label, cached before, seconds)."""
    from .canaries import make_canaries
    from .memorization import MemorizationConfig, train_memorization_model, train_retrained_model

    cfg = MemorizationConfig.for_profile(profile)
    canaries = make_canaries(cfg.insertions, cfg.per_insertion, cfg.n_controls, cfg.space, seed=seed)
    target = max(canaries, key=lambda c: c.insertions).name
    jobs = [
        ("notebook 03: memorisation run", lambda: train_memorization_model(cfg, seed, device, progress=progress)),
        (f"notebook 04: retrained without {target}", lambda: train_retrained_model(cfg, (target,), seed, device, progress=progress)),
        ("notebook 05: repeated-requests run", lambda: train_memorization_model(repeated_requests_config(profile), seed, device, progress=progress)),
    ]
    rows = []
    for label, job in jobs:
        start = time.perf_counter()
        cached = job()[-1]
        rows.append({"model": label, "cached": cached, "seconds": time.perf_counter() - start})
        print(f"  {label}: {'in the cache' if cached else 'trained'} ({rows[-1]['seconds']:.0f} s)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    from .profiles import resolve_profile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None, help="tiny | small | full (default: $TUTORIAL_PROFILE, else auto)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    profile = resolve_profile(args.profile)
    print(f"warming the model cache for profile {profile!r}, seed {args.seed}")
    warm(profile, args.seed, args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
