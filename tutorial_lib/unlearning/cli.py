"""The unlearning command: make a saved Hugging Face causal LM forget the lines of a file, save the result and a report.

    python -m tutorial_lib unlearn --model DIR --forget FILE --out DIR [--retain FILE] [--validation FILE]
        [--method fisher_removal] [--canary FORMAT --secret S] [--profile P] [--set FIELD=VALUE]...
        [--n-train N] [--seed N] [--device D] [--no-progress]

``--model`` is a folder saved with ``save_pretrained`` (config, safetensors weights, tokenizer), loaded in
float32 by :func:`~tutorial_lib.core.models.load_pretrained`; nothing is downloaded and the folder is never
written to. Each non-empty line of ``--forget`` is its own forget target (a line given k times counts k
times). The retain set is the non-empty lines of ``--retain``: the Fisher methods, gradient difference and
fine-tuning need it; gradient ascent and NPO do not, but then need ``--n-train``, the number n of training
examples. ``--validation`` (lines of held-out text) adds the validation perplexity to the report. With
``--canary "my pin is {secret}" --secret 4821`` the report has the canary's exact exposure before and after,
over every string of as many digits as the secret. The config is the method's ``for_profile(--profile)``
with the ``--set`` overrides (values read as Python literals: ``--set eta=1e-3 --set repeats=2``).

Written to ``--out``: the unlearned model and its tokenizer (``save_pretrained``: safetensors, loadable with
``from_pretrained``), ``unlearning_report.json`` and ``unlearning_report.md`` (method and config, forget loss,
retain and validation perplexity before and after, exposure, wall time). Exit status 0; 1 when the method
refuses the update (nothing is written); 2 for bad arguments or inputs, with a message that names the
argument. The command line of :func:`~tutorial_lib.unlearning.api.unlearn`, taught in notebook 04.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..core.canaries import SLOT, Canary, RandomnessSpace
from ..core.evaluation import compute_loss, tokenize_lines
from ..core.models import load_pretrained, max_positions, transformers_bars_off
from ..core.profiles import progress_options, resolve_device
from ..privacy.exposure import compute_exposure
from .api import METHODS, unlearn
from .base import UnlearningError
from .evaluation import forget_item_losses

PROG = "python -m tutorial_lib unlearn"
REPORT = "unlearning_report"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, metavar="DIR", help="a folder saved with save_pretrained (weights and tokenizer)")
    parser.add_argument("--forget", required=True, metavar="FILE", help="the texts to forget, one per line")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the unlearned model, its tokenizer and the report")
    parser.add_argument("--retain", metavar="FILE", help="retained training text, one example per line")
    parser.add_argument("--validation", metavar="FILE", help="held-out text, one example per line (validation perplexity)")
    parser.add_argument("--method", default="fisher_removal", choices=list(METHODS), metavar="METHOD",
                        help=f"{', '.join(METHODS)} (default fisher_removal)")
    parser.add_argument("--canary", metavar="FORMAT", help=f"a canary's text with one {SLOT} slot, e.g. 'my pin is {SLOT}'")
    parser.add_argument("--secret", metavar="S", help="the canary's secret (digits); its exposure is measured before and after")
    parser.add_argument("--profile", default=None, help="whose defaults the config starts from: tiny | small | full "
                                                        "(default: $TUTORIAL_PROFILE, else auto)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", dest="overrides",
                        help="a config field to override, e.g. eta=1e-3 (repeat for more)")
    parser.add_argument("--n-train", type=int, default=None, metavar="N",
                        help="number of training examples n (default: retain lines + forget lines)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _lines(path: str | None, argument: str) -> list[str] | None:
    if path is None:
        return None
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{argument} {path}: no such file; give a text file with one example per line")
    lines = [line for line in file.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{argument} {path}: the file has no non-empty line; give one example per line")
    return lines


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        field, sep, text = pair.partition("=")
        if not sep or not field:
            raise ValueError(f"--set takes FIELD=VALUE, got {pair!r}")
        try:
            out[field] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[field] = text  # a bare word: a string
    return out


def _canary(fmt: str | None, secret: str | None) -> Canary | None:
    if (fmt is None) != (secret is None):
        raise ValueError("--canary and --secret go together: give both (the format with its {secret} slot and the secret) or neither")
    if fmt is None:
        return None
    if not secret.isdigit():
        raise ValueError(f"--secret {secret!r}: exposure is measured over digit strings; give the secret's digits")
    if SLOT not in fmt:
        raise ValueError(f"--canary {fmt!r} has no {SLOT} slot; write the canary's text with {SLOT} where the secret goes")
    return Canary(fmt, secret, insertions=1, name="canary", space=RandomnessSpace(length=len(secret)))


def _measure(model, tokenizer, forget, retain, validation, canary, block_size: int, progress: bool) -> dict:
    """The report's numbers for one model: forget loss (nats per target token), retain and validation
    perplexity (up to 64 blocks each), the canary's exact exposure (bits)."""
    out = {"forget_loss": float(forget_item_losses(model, tokenizer, forget, block_size).mean())}
    for name, lines in (("retain", retain), ("validation", validation)):
        out[f"{name}_perplexity"] = (math.exp(compute_loss(model, tokenize_lines(tokenizer, lines), block_size, max_blocks=64))
                                     if lines else None)
    out["exposure"] = compute_exposure(model, tokenizer, canary, progress=progress).exposure if canary is not None else None
    return out


def _block_size(model, config, lines: list[str], tokenizer) -> int:
    """The config's block size, else the model's context up to 128, shortened so that the evaluated text fills one block."""
    size = config.block_size or min(max_positions(model) or 128, 128)
    return max(8, min(size, len(tokenize_lines(tokenizer, lines)) - 1))


def _markdown(report: dict) -> str:
    before, after = report["before"], report["after"]

    def cell(value, fmt):
        return "n/a" if value is None else format(value, fmt)

    rows = [("forget loss (nats/token)", "forget_loss", ".4f"), ("retain perplexity", "retain_perplexity", ".3f"),
            ("validation perplexity", "validation_perplexity", ".3f"), ("canary exposure (bits)", "exposure", ".2f")]
    lines = [f"# Unlearning report: {report['method']}", "",
             f"Model `{report['model']}` → `{report['out']}`; {report['k']} forget lines, n = {report['n_train']}; "
             f"unlearning {report['unlearning_seconds']:.1f} s, {report['wall_seconds']:.1f} s in all.", "",
             "| measure | before | after |", "|---|---|---|"]
    lines += [f"| {label} | {cell(before[key], fmt)} | {cell(after[key], fmt)} |" for label, key, fmt in rows]
    lines += ["", f"Update norm {report['update_norm']:.4g} over {report['n_parameters']:,} parameters.", "",
              "Config: " + ", ".join(f"`{k}={v}`" for k, v in report["config"].items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    try:
        forget = _lines(args.forget, "--forget")
        retain, validation = _lines(args.retain, "--retain"), _lines(args.validation, "--validation")
        canary = _canary(args.canary, args.secret)
        config = METHODS[args.method].config.for_profile(args.profile, **_overrides(args.overrides))
        if METHODS[args.method].needs_retain and retain is None:
            raise ValueError(f"--method {args.method} needs a retain set: give --retain FILE (the retained training text)")
        out = Path(args.out)
        if out.resolve() == Path(args.model).resolve():
            raise ValueError(f"--out {args.out} is the --model folder; give another folder (the input model is never overwritten)")
        model, tokenizer = load_pretrained(args.model, device=resolve_device(args.device))
    except (OSError, ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    progress = not args.no_progress
    stages = tqdm(total=4, desc="unlearn", unit="stage", **progress_options(progress))
    try:
        block = _block_size(model, config, retain or validation or forget, tokenizer)
        stages.set_postfix_str("measuring before")
        before = _measure(model, tokenizer, forget, retain, validation, canary, block, progress)
        stages.update()
        stages.set_postfix_str(args.method)
        new, result = unlearn(model, tokenizer, forget, retain, args.method, config, n_train=args.n_train, seed=args.seed,
                              inplace=True, progress=progress)
        stages.update()
        stages.set_postfix_str("measuring after")
        after = _measure(new, tokenizer, forget, retain, validation, canary, block, progress)
        stages.update()
    except UnlearningError as err:
        stages.close()
        print(f"refused: {err}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as err:
        stages.close()
        print(f"error: {err}", file=sys.stderr)
        return 2
    stages.set_postfix_str("saving")
    out.mkdir(parents=True, exist_ok=True)
    with transformers_bars_off():
        new.save_pretrained(out)
        tokenizer.save_pretrained(out)
    stages.update()
    stages.close()
    report = {"model": str(args.model), "out": str(out), "method": args.method, "config": result.config,
              "k": result.k, "n_train": result.n_train, "update_norm": result.update_norm, "n_parameters": result.n_parameters,
              "canary": None if canary is None else {"format": canary.format, "secret": canary.secret, "bits": canary.space.bits},
              "before": before, "after": after, "unlearning_seconds": result.seconds,
              "wall_seconds": time.perf_counter() - start, "unlearning": result.to_dict()}
    (out / f"{REPORT}.json").write_text(json.dumps(report, indent=1, default=str))
    (out / f"{REPORT}.md").write_text(_markdown(report))
    print(result.summary())
    print(f"forget loss {before['forget_loss']:.3f} -> {after['forget_loss']:.3f} nats/token"
          + (f"; exposure {before['exposure']:.2f} -> {after['exposure']:.2f} bits" if canary is not None else ""))
    print(f"saved the unlearned model and {REPORT}.md/.json to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
