"""The reproduction command: run the course's experiments at a profile and write ``results/``
(markdown tables, a JSON of every number with its config and library versions, PNG figures).

    python -m tutorial_lib.course.reproduce --profile small --out results
"""
from __future__ import annotations

import argparse
import json
import time
import dataclasses
from dataclasses import asdict
from pathlib import Path

from ..core.cache import cache_root
from ..core.plotting import (
    plot_exact_vs_estimate,
    plot_exposure_trajectory,
    plot_exposure_vs_insertions,
    plot_seed_variation,
    plot_unlearning_methods,
    use_style,
)
from ..core.profiles import profile_reason, resolve_profile
from ..experiments.benchmark import (
    COLOURS,
    BenchmarkConfig,
    benchmark_markdown,
    method_name,
    plot_benchmark,
    run_benchmark,
)
from ..experiments.case_studies import (
    case_study_markdown,
    plot_case_study,
    run_case_study,
)
from ..experiments.case_study_data import CaseStudyConfig
from ..experiments.comparisons import benchmark_claims, c1_claim, c3_claim, c5_claim
from ..experiments.dp_comparison import (
    DPComparisonConfig,
    dp_markdown,
    plot_dp_vs_unlearning,
    run_dp_comparison,
)
from ..experiments.memorization import MemorizationConfig, run_memorization
from ..experiments.pretrained_llm import (
    PretrainedLLMConfig,
    pretrained_markdown,
    pretrained_plot_data,
    pretrained_summary,
    run_pretrained_study,
)
from ..experiments.recommendations import (
    plot_relearning,
    plot_sensitivity,
    plot_sequential,
    recommendations,
    recommendations_markdown,
    relearning_markdown,
    sequential_markdown,
)
from ..experiments.robustness import (
    RobustnessConfig,
    run_c3_study,
    run_relearning_study,
    run_seed_variation,
    run_sensitivity_study,
    run_sequential_study,
)
from ..experiments.sweeps import run_removal_sweep, run_unlearning_methods
from ..unlearning.verdicts import judge_rows
from .notebook import library_versions
from .warm_cache import warm
from .workers import default_jobs


def _use_agg() -> None:
    """Draw without a screen (the writers save PNGs only)."""
    import matplotlib

    matplotlib.use("Agg")


def _save_figure(fig, path: Path) -> Path:
    """Lay out, write (PNG, 120 dpi) and close a figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _subplots(title: str, rows: int, cols: int, figsize: tuple[float, float]):
    """A figure of ``rows`` x ``cols`` panels (a 2-d array of Axes) with ``title`` over them."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=figsize, squeeze=False)
    fig.suptitle(title)
    return fig, axes


# ----------------------------------------------------------------------------------- figures
# One function per results table, each returning the figure its writer saves: a title over the
# panels, every panel with a title, labelled axes and a legend (tests/course/test_reproduce_figures.py).
def memorization_figure(result):
    """Notebook 03: exposure against insertions, over training (when tracked), exact vs estimate."""
    panels = 3 if result.trajectory else 2
    fig, axes = _subplots("Memorisation and exposure (notebook 03)", 1, panels, (5 * panels, 4.3))
    axes = list(axes[0])
    plot_exposure_vs_insertions(result, axes[0]).set_title("exposure against insertions")
    if result.trajectory:
        plot_exposure_trajectory(result, axes[1]).set_title("exposure over training")
    plot_exact_vs_estimate(result, axes[-1]).set_title("exact vs skew-normal estimate")
    return fig


def unlearning_figure(data: dict):
    """Notebooks 04–06: every method at its default against the retrained oracle."""
    fig, axes = _subplots(f"Unlearning methods against the retrained oracle, forgetting {data['target']} (notebooks 04–06)", 1, 2, (13, 4.8))
    plot_unlearning_methods(data, axes[0], colours=COLOURS)
    return fig


def _plain_log_ticks(ax) -> None:
    """Plain numbers (19, 20, 30) instead of 1.9 × 10¹ on a log-scaled x axis that spans less than a few decades."""
    from matplotlib.ticker import FormatStrFormatter

    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.tick_params(axis="x", which="both", labelsize="x-small")


def benchmark_figure(result: dict):
    """Notebook 07: exposure against perplexity per corpus (the legend in the last panel), every panel with its y label."""
    axes = plot_benchmark(result)
    for ax in axes:
        ax.set_ylabel(axes[0].get_ylabel())
        _plain_log_ticks(ax)
    fig = axes[0].figure
    fig.suptitle(f"Four-corpus benchmark, seeds {', '.join(map(str, result['config']['seeds']))} (notebook 07)")
    return fig


def dp_figure(panels: list[tuple]):
    """Notebook 08: DP-SGD and the unlearning methods on the same axes, one panel per (title, study, unlearning)."""
    fig, axes = _subplots("DP-SGD against unlearning (notebook 08)", 1, len(panels), (4.5 * len(panels), 4.3))
    for ax, (title, study, unlearning) in zip(axes[0], panels):
        plot_dp_vs_unlearning(study, unlearning, ax).set_title(title, fontsize="small")
    return fig


def case_studies_figure(result: dict):
    """Notebook 09: the subject's phone number, membership inference and the passage, every model."""
    axes = plot_case_study(result)
    for ax, title in zip(axes, ("personal data: exposure", "personal data: membership inference", "verbatim text: the passage")):
        ax.set_title(title)
        _plain_log_ticks(ax)
    fig = axes[0].figure
    fig.suptitle(f"Real-world case studies: {result['subject']}'s records and a repeated passage (notebook 09)")
    return fig


def robustness_figure(result: dict):
    """Notebook 10: relearning, sequential requests, sensitivity to the main hyperparameter and to the seed."""
    fig, axes = _subplots("Robustness and relearning (notebook 10)", 2, 3, (17, 8.5))
    plot_relearning(result["relearning"], axes[0, 0])
    plot_sequential(result["sequential"], axes[0, 1:])
    plot_sensitivity(result["sensitivity"], axes[1, :2])
    plot_seed_variation(result["seeds"], axes[1, 2], colours=COLOURS)
    axes[0, 2].set_title(axes[0, 2].get_title(), fontsize="small")
    axes[1, 0].set_title("Sensitivity: exposure")
    axes[1, 1].set_title("Sensitivity: perplexity")
    axes[1, 1].legend(fontsize="xx-small")  # the retrained model's and the budget's lines (the methods' colours are in the left legend)
    return fig


def write_memorization(result, out: Path) -> list[Path]:
    """Write notebook 03's exposure table (markdown + JSON) and figure (PNG) into ``out``."""
    _use_agg()
    out.mkdir(parents=True, exist_ok=True)
    md = out / "memorization_exposure.md"
    md.write_text("# Memorisation and exposure (notebook 03)\n\n" + result.summary() + "\n\n" + result.table_markdown() + "\n")
    js = out / "memorization_exposure.json"
    # every number but this run's wall times (they are in the markdown), so that a second run writes the same JSON
    numbers = {k: v for k, v in result.to_dict().items() if k not in ("exposure_seconds", "from_cache")}
    for key in ("exposures", "estimates"):
        numbers[key] = [{k: v for k, v in row.items() if k != "seconds"} for row in numbers[key]]
    _write_json(js, numbers)
    use_style()
    return [md, js, _save_figure(memorization_figure(result), out / "memorization_exposure.png")]


def write_unlearning(data: dict, out: Path) -> list[Path]:
    """Write the table of every unlearning method against the oracle (markdown + JSON) and its figure (PNG) into ``out``."""
    _use_agg()
    out.mkdir(parents=True, exist_ok=True)
    names = [c["name"] for c in data["canaries"]]
    inserted = {c["name"]: c["insertions"] for c in data["canaries"]}
    original = data["results"]["original"]["val_perplexity"]
    lines = [
        "# Unlearning methods against the retrained oracle (notebooks 04–06)", "",
        f"Forgotten: {data['target']} ({inserted[data['target']]}x), every method at its profile default. Retraining took "
        f"{data['retrain_seconds']:.0f} s. Exact exposure in bits; validation perplexity on 64 blocks.", "",
        "| model | " + " | ".join(f"{n} ({inserted[n]}x)" if inserted[n] else f"{n} (control)" for n in names)
        + " | val ppl | forget loss | KL to oracle | forget quality (p) | seconds | / retraining | verdict |",
        "|---|" + "---:|" * (len(names) + 7) + "---|",
    ]
    oracle, first = data["results"]["retrained oracle"], data["results"]["original"]
    verdicts = {model: judge_rows(r, oracle, first, data["target"]).to_dict() for model, r in data["results"].items()}
    for model, r in data["results"].items():
        rep = data["reports"].get(model)
        timing = f" {rep['seconds']:.1f} | {rep['seconds'] / data['retrain_seconds']:.3f} |" if rep else " | |"
        v = verdicts[model]
        lines.append(f"| {model} | " + " | ".join(f"{r['exposure'][n]:.2f}" for n in names)
                     + f" | {r['val_perplexity']:.3f} ({r['val_perplexity'] / original - 1:+.1%}) | {r['forget_loss']:.2f} | "
                     f"{r.get('kl_to_reference', 0.0):.4f} | {r.get('forget_quality', float('nan')):.2g} |" + timing
                     + f" {v['verdict']}{': ' + '; '.join(v['reasons']) if v['reasons'] else ''} |")
    claims = [c1_claim(verdicts["fisher_removal"], verdicts["original"])] if "fisher_removal" in verdicts else []
    if "fisher_removal" in data["reports"]:
        seconds = data["reports"]["fisher_removal"]["seconds"]
        claims.append(c5_claim(seconds, data["retrain_seconds"]))
        if data.get("removal_sweep_seconds"):  # the rule's own cost: the sweep that chose the default
            rule = c5_claim(seconds + data["removal_sweep_seconds"], data["retrain_seconds"])
            claims.append(dataclasses.replace(rule, evidence=rule.evidence + " (with the sweep that chose the default)"))
    lines += ["", "Verdicts: two-sided against the retrained oracle (`judge`); forget loss: the secret given the canary's prefix; "
              "Fisher methods with K-FAC curvature.", ""] + [f"- {c.summary()}" for c in claims]
    md = out / "unlearning_methods.md"
    md.write_text("\n".join(lines) + "\n")
    js = out / "unlearning_methods.json"
    _write_json(js, {**data, "verdicts": verdicts, "claims": [_claim_json(asdict(c)) for c in claims]})
    use_style()
    return [md, js, _save_figure(unlearning_figure(data), out / "unlearning_methods.png")]


def write_benchmark(result: dict, out: Path) -> list[Path]:
    """Write the four-corpus benchmark (markdown tables, JSON of every cell and the summary, PNG)."""
    _use_agg()
    out.mkdir(parents=True, exist_ok=True)
    md = out / "benchmark.md"
    js = out / "benchmark.json"
    # every number but the run's own wall time (cells are cached: a second run reads the same numbers)
    numbers = {k: v for k, v in result.items() if k != "seconds"}
    verdicts = benchmark_claims(result)
    claims = verdicts.to_dict()
    claims["corpora"] = {corpus: {k: None if c is None else _claim_json(c) for k, c in per.items()} for corpus, per in claims["corpora"].items()}
    _write_json(js, {**numbers, "claims": claims})
    md.write_text(benchmark_markdown(result) + "\n## Claims\n\n"
                  + "\n".join(f"- {line}" for line in verdicts.summary().splitlines()) + "\n")
    use_style()
    return [md, js, _save_figure(benchmark_figure(result), out / "benchmark.png")]


def write_dp(comparison: dict, out: Path) -> list[Path]:
    """Write notebook 08's DP-SGD tables (markdown + JSON) and the DP-vs-unlearning figure (PNG)."""
    _use_agg()
    out.mkdir(parents=True, exist_ok=True)
    cfg = comparison["config"]
    parts = ["# DP-SGD on the same canaries (notebook 08)", "",
             f"Target ε in {list(cfg['epsilons'])} at δ = 1/n (n training windows), clipping bound {cfg['max_grad_norm']:g}, "
             f"RDP accountant; seed {comparison['seed']}. Exact exposure in bits; validation perplexity on 64 blocks.", ""]
    panels = [(f"{corpus} ({cfg['run_profile']}-scale model)", study, comparison["unlearning"][corpus])
              for corpus, study in comparison["curves"].items()]
    if comparison["own_scale"]:
        panels.append((f"{comparison['own_scale']['corpus']} ({cfg['profile']}-scale model)", comparison["own_scale"],
                       comparison["own_scale_unlearning"]))
    parts += [dp_markdown(study, title) for title, study, _ in panels]
    md = out / "dp_sgd.md"
    md.write_text("\n".join(parts))
    js = out / "dp_sgd.json"
    _write_json(js, comparison)
    use_style()
    return [md, js, _save_figure(dp_figure(panels), out / "dp_sgd.png")]


def write_case_studies(result: dict, cfg: dict, out: Path) -> list[Path]:
    """Write notebook 09's two scenarios (markdown tables, JSON of every number, PNG)."""
    _use_agg()
    out.mkdir(parents=True, exist_ok=True)
    md = out / "case_studies.md"
    md.write_text(f"# Real-world case studies (notebook 09)\n\n{cfg['profile']}-scale model on {cfg['corpus']}, "
                  f"{cfg['secret_length']}-digit secrets; every method at its {cfg['profile']} default against the model "
                  f"retrained without the requests' data.\n\n" + case_study_markdown(result))
    js = out / "case_studies.json"
    _write_json(js, {"config": cfg, **result})
    use_style()
    return [md, js, _save_figure(case_studies_figure(result), out / "case_studies.png")]


def pretrained_figure(result: dict):
    """Notebook 11: SmolLM2 fine-tuned with canaries, every method against the re-fine-tuned oracle."""
    fig, axes = _subplots(f"A pretrained LLM ({result['model_class']}, {result['n_parameters'] / 1e6:.1f}M parameters) forgetting "
                          f"{result['target']} against the re-fine-tuned oracle (notebook 11)", 1, 2, (13, 4.8))
    plot_unlearning_methods(pretrained_plot_data(result), axes[0], colours=COLOURS)
    return fig


def write_pretrained(result: dict, cfg: dict, out: Path) -> list[Path]:
    """Write notebook 11's study (markdown table, JSON of every number, PNG)."""
    _use_agg()
    out.mkdir(parents=True, exist_ok=True)
    scope = "every parameter" if cfg["trainable_blocks"] is None else f"the MLPs of the last {cfg['trainable_blocks']} blocks"
    (md := out / "pretrained_llm.md").write_text(
        f"# Unlearning a pretrained LLM (notebook 11)\n\n{cfg['profile']} profile: {cfg['corpus']} ({cfg['max_chars']} characters), "
        f"canaries inserted {cfg['insertions']} times, {cfg['n_controls']} controls, {cfg['secret_length']}-digit secrets; fine-tuning "
        f"trains {scope} for {cfg['train']['steps']} steps; verdicts two-sided against the re-fine-tuned oracle.\n\n"
        + pretrained_markdown(result))
    js = _write_json(out / "pretrained_llm.json", {"config": cfg, **result, "summary": pretrained_summary(result)})
    use_style()
    return [md, js, _save_figure(pretrained_figure(result), out / "pretrained_llm.png")]


def _is_wall_time(key) -> bool:
    return isinstance(key, str) and (key == "seconds" or key.endswith("_seconds") or key == "fraction_of_retraining")


def _without_wall_times(value):
    """``value`` without wall times (``seconds``, ``*_seconds``) and the ratios made of them
    (``fraction_of_retraining``): they vary between runs and machines, the JSON must not. They stay
    in the markdown tables."""
    if isinstance(value, dict):
        return {k: _without_wall_times(v) for k, v in value.items() if not _is_wall_time(k)}
    if isinstance(value, list):
        return [_without_wall_times(v) for v in value]
    return value


def _claim_json(claim: dict) -> dict:
    """A claim's verdict for the JSON: C5's evidence quotes wall times, which the JSON leaves out (the
    markdown keeps them); its verdict and band stay."""
    return {k: v for k, v in claim.items() if not (claim["claim"] == "C5" and k == "evidence")}


def _write_json(path: Path, data: dict) -> Path:
    """Write ``data`` without wall times, with the library versions, so that two runs with the same
    seed write byte-identical files."""
    path.write_text(json.dumps({"versions": library_versions(), **_without_wall_times(data)}, indent=1, default=str))
    return path


def robustness_experiment(profile: str, seed: int = 0, device=None) -> dict:
    """Notebook 10's three studies (cached) and the recommendation table built from them."""

    cfg = RobustnessConfig.for_profile(profile)
    relearning = run_relearning_study(cfg, seed, device)[0]
    sequential = run_sequential_study(cfg, seed, device)[0]
    sensitivity = run_sensitivity_study(cfg, seed, device)[0]
    seeds = run_seed_variation(cfg, device)
    c3 = run_c3_study(cfg, device)
    return {"config": cfg.to_dict(), "relearning": relearning, "sequential": sequential, "sensitivity": sensitivity,
            "seeds": seeds, "recommendations": recommendations(relearning, sequential, sensitivity, seeds),
            "c3": {**c3, "claim": asdict(c3_claim(c3))}}


def c3_markdown(c3: dict) -> str:
    """C3 over seeds (:func:`~tutorial_lib.experiments.robustness.run_c3_study`): a row per seed and method, then the claim."""
    lines = [f"## C3: {c3['n_requests']} sequential requests on the {c3['run_profile']}-scale model, seeds {c3['seeds']}", "",
             "| seed | method | requested canaries before (bits) | controls (bits) | forgotten at end (bits) | val ppl before | after | ratio |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for seed, d in c3["per_seed"].items():
        for method, m in d["summary"].items():
            lines.append(f"| {seed} | {method_name(method)} | {d['start']['requested']:.2f} | {d['start']['controls']:.2f} | {m['forgotten_at_end']:.2f} | "
                         f"{m['val_perplexity_before']:.3f} | {m['val_perplexity_after']:.3f} | {m['perplexity_ratio']:.2f} |")
    claim = c3["claim"]
    return "\n".join(lines + ["", f"- {claim['claim']} {claim['verdict']}: {claim['evidence']}"])


def write_robustness(result: dict, out: Path) -> list[Path]:
    """Write notebook 10's tables (markdown, JSON without wall times) and figure (PNG)."""
    _use_agg()
    cfg = result["config"]
    out.mkdir(parents=True, exist_ok=True)
    md = out / "robustness.md"
    md.write_text(f"# Robustness and relearning (notebook 10)\n\n{cfg['run_profile']}-scale models on {cfg['corpus']}; every method "
                  f"at its {cfg['run_profile']} default. Exposure in bits, exact.\n\n## Relearning attack\n\n"
                  + relearning_markdown(result["relearning"]) + f"\n\n## {cfg['n_requests']} sequential requests\n\n"
                  + sequential_markdown(result["sequential"]) + "\n\n" + c3_markdown(result["c3"]) + "\n\n## Recommendations\n\n"
                  + recommendations_markdown(result["recommendations"]) + "\n")
    js = out / "robustness.json"
    _write_json(js, result)
    use_style()
    return [md, js, _save_figure(robustness_figure(result), out / "robustness.png")]


def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None, help="tiny | small | full (default: $TUTORIAL_PROFILE, else auto)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--out", default="results", help="output folder (default: results)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="worker processes for the cached runs, one torch thread each (default: one per core, at most 4; 1 on a GPU)")
    args = parser.parse_args(argv)
    try:
        profile = resolve_profile(args.profile)
    except ValueError as err:
        parser.error(f"--profile: {err}")
    jobs = default_jobs(args.device) if args.jobs is None else args.jobs
    if jobs < 1:
        parser.error(f"--jobs must be at least 1, got {jobs}")
    out = Path(args.out)
    start = time.perf_counter()
    print(f"reproduction at {profile_reason(args.profile)}, seed {args.seed} -> {out}/", flush=True)
    print(f"computing every cached model and study first, in {jobs} worker process(es) (cache: {cache_root()})", flush=True)
    warm(profile, args.seed, args.device, progress=True, jobs=jobs, reproduction=True)
    print(f"cache complete after {time.perf_counter() - start:.0f} s; writing the tables", flush=True)
    result = run_memorization(MemorizationConfig.for_profile(profile), seed=args.seed, device=args.device)
    print(result.summary())
    for path in write_memorization(result, out):
        print(f"  wrote {path}")
    unlearning = run_unlearning_methods(MemorizationConfig.for_profile(profile), seed=args.seed, device=args.device)
    unlearning["removal_sweep_seconds"] = run_removal_sweep(MemorizationConfig.for_profile(profile), seed=args.seed, device=args.device,
                                                            progress=False)[0].get("seconds")
    for path in write_unlearning(unlearning, out):
        print(f"  wrote {path}")

    bench_cfg = BenchmarkConfig.for_profile(profile)
    print(f"four-corpus benchmark: {len(bench_cfg.corpora)} corpora x seeds {list(bench_cfg.seeds)}, {bench_cfg.run_profile}-scale models")
    for path in write_benchmark(run_benchmark(bench_cfg, device=args.device), out):
        print(f"  wrote {path}")

    dp_cfg = DPComparisonConfig.for_profile(profile)
    print(f"DP-SGD: target epsilon {list(dp_cfg.epsilons)} on {len(dp_cfg.corpora)} corpora ({dp_cfg.run_profile}-scale models)"
          + (f" and on shakespeare at the {profile} scale" if dp_cfg.own_scale else ""))
    for path in write_dp(run_dp_comparison(dp_cfg, seed=args.seed, device=args.device), out):
        print(f"  wrote {path}")

    cs_cfg = CaseStudyConfig.for_profile(profile)
    print(f"case studies (personal data, verbatim text): {cs_cfg.profile}-scale model")
    result = run_case_study(cs_cfg, seed=args.seed, device=args.device)[0]
    for path in write_case_studies(result, cs_cfg.to_dict(), out):
        print(f"  wrote {path}")
    pl_cfg = PretrainedLLMConfig.for_profile(profile)
    print(f"pretrained LLM: SmolLM2 fine-tuned with canaries, {len(pl_cfg.methods)} methods against the re-fine-tuned oracle")
    for path in write_pretrained(run_pretrained_study(pl_cfg, seed=args.seed, device=args.device)[0], pl_cfg.to_dict(), out):
        print(f"  wrote {path}")
    print("robustness: relearning attack, sequential requests, sensitivity")
    for path in write_robustness(robustness_experiment(profile, seed=args.seed, device=args.device), out):
        print(f"  wrote {path}")
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
