"""The unlearning command: make a saved Hugging Face causal LM forget given texts, and save the result.

    python -m tutorial_lib unlearn MODEL_DIR --out DIR (--forget TEXT | --forget-file FILE)... [--retain-file FILE]
        [--method fisher_removal] [--profile P] [--set FIELD=VALUE]... [--n-train N] [--seed N] [--device D]

``MODEL_DIR`` is a folder saved with ``save_pretrained`` (config, safetensors weights, tokenizer), loaded
in float32 by :func:`~tutorial_lib.core.models.load_pretrained`; nothing is downloaded. Each forget text
(each ``--forget``, or a non-empty line of ``--forget-file``) is its own target, and a text given k times
counts k times. The retain set is the non-empty lines of ``--retain-file``: the Fisher methods, gradient
difference and fine-tuning need it; gradient ascent and NPO do not, but then need ``--n-train``, the
number n of training examples. The config is the method's ``for_profile(--profile)`` with the ``--set``
overrides (values read as Python literals: ``--set eta=1e-3 --set repeats=2``). The unlearned model and the
tokenizer are written to ``DIR`` with ``save_pretrained``, beside ``unlearning_report.json`` (the
:class:`~tutorial_lib.unlearning.base.UnlearningReport`). Exit status 0; 1 when the method refuses the
update (nothing is written); 2 for bad arguments or inputs. The command line of
:func:`~tutorial_lib.unlearning.api.unlearn`, taught in notebook 04.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

from ..core.models import load_pretrained, transformers_bars_off
from ..core.profiles import resolve_device
from .api import METHODS, unlearn
from .base import UnlearningError

PROG = "python -m tutorial_lib unlearn"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("model", metavar="MODEL_DIR", help="a folder saved with save_pretrained (weights and tokenizer)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the unlearned model, its tokenizer and the report")
    parser.add_argument("--forget", action="append", default=[], metavar="TEXT", help="a text to forget (repeat for more)")
    parser.add_argument("--forget-file", metavar="FILE", help="a file of texts to forget, one per line")
    parser.add_argument("--retain-file", metavar="FILE", help="a file of retained training text, one example per line")
    parser.add_argument("--method", default="fisher_removal", choices=list(METHODS), metavar="METHOD",
                        help=f"{', '.join(METHODS)} (default fisher_removal)")
    parser.add_argument("--profile", default=None, help="whose defaults the config starts from: tiny | small | full "
                                                        "(default: $TUTORIAL_PROFILE, else auto)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", dest="overrides",
                        help="a config field to override, e.g. eta=1e-3 (repeat for more)")
    parser.add_argument("--n-train", type=int, default=None, metavar="N",
                        help="number of training examples n (default: retain lines + forget texts)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _lines(path: str) -> list[str]:
    return [line for line in Path(path).read_text().splitlines() if line.strip()]


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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        forget = args.forget + (_lines(args.forget_file) if args.forget_file else [])
        if not forget:
            raise ValueError("nothing to forget: give --forget TEXT or --forget-file FILE")
        retain = _lines(args.retain_file) if args.retain_file else None
        config = METHODS[args.method].config.for_profile(args.profile, **_overrides(args.overrides))
        model, tokenizer = load_pretrained(args.model, device=resolve_device(args.device))
        new, report = unlearn(model, tokenizer, forget, retain, args.method, config, n_train=args.n_train, seed=args.seed,
                              inplace=True, progress=not args.no_progress)
    except UnlearningError as err:
        print(f"refused: {err}", file=sys.stderr)
        return 1
    except (OSError, ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with transformers_bars_off():
        new.save_pretrained(out)
        tokenizer.save_pretrained(out)
    (out / "unlearning_report.json").write_text(json.dumps(report.to_dict(), indent=1, default=str))
    print(report.summary())
    print(f"saved the unlearned model to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
