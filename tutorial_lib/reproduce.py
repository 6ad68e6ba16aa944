"""The reproduction command: run the course's experiments at a profile and write ``results/``
(markdown tables, a JSON of every number with its config and library versions, PNG figures).

    python -m tutorial_lib.reproduce --profile small --out results
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def write_memorization(result, out: Path) -> list[Path]:
    """Write notebook 03's exposure table (markdown + JSON) and figure (PNG) into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .notebook import library_versions
    from .plotting import plot_exact_vs_estimate, plot_exposure_trajectory, plot_exposure_vs_insertions, use_style

    out.mkdir(parents=True, exist_ok=True)
    md = out / "memorization_exposure.md"
    md.write_text("# Memorisation and exposure (notebook 03)\n\n" + result.summary() + "\n\n" + result.table_markdown() + "\n")
    js = out / "memorization_exposure.json"
    js.write_text(json.dumps({"versions": library_versions(), **result.to_dict()}, indent=1))
    use_style()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    plot_exposure_vs_insertions(result, axes[0]).set_title("exposure against insertions")
    if result.trajectory:
        plot_exposure_trajectory(result, axes[1]).set_title("exposure over training")
    plot_exact_vs_estimate(result, axes[2]).set_title("exact vs skew-normal estimate")
    fig.tight_layout()
    png = out / "memorization_exposure.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return [md, js, png]


def main(argv: list[str] | None = None) -> int:
    from .memorization import MemorizationConfig, run_memorization
    from .profiles import resolve_profile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None, help="tiny | small | full (default: $TUTORIAL_PROFILE, else auto)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--out", default="results", help="output folder (default: results)")
    args = parser.parse_args(argv)
    profile = resolve_profile(args.profile)
    out = Path(args.out)
    start = time.perf_counter()
    print(f"reproduction at profile {profile!r}, seed {args.seed} -> {out}/")
    result = run_memorization(MemorizationConfig.for_profile(profile), seed=args.seed, device=args.device)
    print(result.summary())
    for path in write_memorization(result, out):
        print(f"  wrote {path}")
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
