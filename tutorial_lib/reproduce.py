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


def fisher_removal_experiment(cfg, seed: int = 0, device=None) -> dict:
    """Notebook 04's experiment: forget the most-inserted canary with the profile's default Fisher
    Removal and compare with the retrained oracle on every canary, perplexity and KL."""
    from .evaluation import tokenize_lines
    from .memorization import prepare_memorization, train_memorization_model, train_retrained_model
    from .unlearning import FisherRemovalConfig, canary_forget_items, evaluate_unlearning, unlearn

    model, tokenizer, canaries, splits, _, _ = train_memorization_model(cfg, seed=seed, device=device, progress=False)
    _, _, _, inserted = prepare_memorization(cfg, seed=seed)
    target = max(canaries, key=lambda c: c.insertions)
    retrained, _, _, _, retrained_record, _ = train_retrained_model(cfg, (target.name,), seed=seed, device=device, progress=False)
    val_ids, retain_ids = tokenize_lines(tokenizer, splits.validation), tokenize_lines(tokenizer, inserted.retain)
    items = canary_forget_items(target, "secret")
    config = FisherRemovalConfig.for_profile(cfg.profile)
    unlearned, report = unlearn(model, tokenizer, items, inserted.retain, "fisher_removal", config, n_train=len(inserted.lines), seed=seed)
    rows = {}
    for name, m in (("original", model), ("retrained oracle", retrained), ("Fisher Removal", unlearned)):
        rows[name] = evaluate_unlearning(m, tokenizer, canaries, val_ids, retain_ids, items, cfg.train.block_size, reference=retrained)
    return {"target": target.name, "canaries": [c.to_dict() for c in canaries], "config": report.config, "report": report.to_dict(),
            "retrain_seconds": retrained_record["train_seconds"], "results": rows}


def write_fisher_removal(data: dict, out: Path) -> list[Path]:
    """Write the Fisher Removal table (markdown + JSON) into ``out``."""
    from .notebook import library_versions

    out.mkdir(parents=True, exist_ok=True)
    names = [c["name"] for c in data["canaries"]]
    inserted = {c["name"]: c["insertions"] for c in data["canaries"]}
    lines = [
        "# Fisher Removal against the retrained oracle (notebook 04)", "",
        f"Forgotten: {data['target']} ({inserted[data['target']]}x). Unlearning took {data['report']['seconds']:.1f} s, "
        f"retraining {data['retrain_seconds']:.0f} s ({data['report']['seconds'] / data['retrain_seconds']:.3f} of it). "
        f"Exposure in bits.", "",
        "| model | " + " | ".join(f"{n} ({inserted[n]}x)" if inserted[n] else f"{n} (control)" for n in names)
        + " | val ppl | forget loss | KL to oracle |",
        "|---|" + "---:|" * (len(names) + 3),
    ]
    for model, r in data["results"].items():
        lines.append(f"| {model} | " + " | ".join(f"{r['exposure'][n]:.2f}" for n in names)
                     + f" | {r['val_perplexity']:.3f} | {r['forget_loss']:.2f} | {r.get('kl_to_reference', 0.0):.4f} |")
    md = out / "fisher_removal.md"
    md.write_text("\n".join(lines) + "\n")
    js = out / "fisher_removal.json"
    js.write_text(json.dumps({"versions": library_versions(), **data}, indent=1, default=str))
    return [md, js]


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
    removal = fisher_removal_experiment(MemorizationConfig.for_profile(profile), seed=args.seed, device=args.device)
    for path in write_fisher_removal(removal, out):
        print(f"  wrote {path}")
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
