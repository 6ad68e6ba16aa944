"""The instructor's commands: a student copy of the course, the executed course as static HTML pages,
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
    (``$\\hat F^{-1}$``) instead of typeset, and widgets are static: an ``interact`` shows the output
    of its first call under a note saying the controls need a running notebook (an
    ``interact_manual``, which has no first call, shows only the note). Links to other notebooks point
    to their pages.

``warm``
    ``python -m tutorial_lib.warm_cache``: trains and computes everything the notebooks read from the
    cache, so that a lecture starts instantly.
"""
from __future__ import annotations

import argparse
import copy
import html as html_lib
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SOLUTION_TAG = "solution"
STUB_TAG = "exercise-stub"
STUB_SOURCE = "# Your solution here"
DEFAULT_TIMEOUT = 1800
_EXERCISES_HEADING = re.compile(r"^ {0,3}#{1,6}\s+Exercises?\b", re.IGNORECASE | re.MULTILINE)
_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
_IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
_WIDGET_NOTE = "Interactive controls: run the notebook to use them."
_WIDGET_NOTE_OUTPUT = "Interactive controls: run the notebook to use them. Below, the output of their first call."

# nbconvert's lab template, less everything it would fetch from a CDN
_PAGE_TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}
<link rel="icon" href="data:,">
<style type="text/css">
.course-widget-note { color: var(--jp-ui-font-color2, #616161); font-style: italic; margin: 0.25em 0; }
</style>
{%- endblock extra_css -%}
"""


class CourseError(ValueError):
    """A command refused its input: an unknown notebook, an unsafe output folder, a notebook whose
    exercises and solutions do not match, or a cell that failed while rendering."""


def notebooks_dir() -> Path:
    """The course's ``notebooks/`` folder."""
    return Path(__file__).resolve().parents[1] / "notebooks"


def select_notebooks(names=None, directory=None) -> list[Path]:
    """The notebooks in ``directory`` (default ``notebooks/``), all or those named, in course order.

    A name is a file name, a name without ``.ipynb`` or a two-digit number; an unknown one is an error.
    """
    directory = Path(directory) if directory is not None else notebooks_dir()
    available = sorted(directory.glob("*.ipynb"))
    if not available:
        raise CourseError(f"no notebooks in {directory}")
    if not names:
        return available
    chosen = []
    for name in names:
        stem = str(name).removesuffix(".ipynb")
        matches = [p for p in available if p.stem == stem or (len(stem) == 2 and stem.isdigit() and p.stem[:3] == stem + "_")]
        if not matches:
            known = ", ".join(p.stem for p in available)
            raise CourseError(f"unknown notebook {name!r} in {directory}; the notebooks are {known}")
        chosen += [p for p in matches if p not in chosen]
    return sorted(chosen)


def _output_dir(out, sources: list[Path]) -> Path:
    """``out`` resolved, refused when it is the notebooks' own folder or a file; not created yet."""
    out = Path(out).resolve()
    for folder in {p.parent.resolve() for p in sources} | {notebooks_dir()}:
        if out == folder:
            raise CourseError(f"--out {out} is the notebooks' own folder: refusing to overwrite the course's sources")
    if out.exists() and not out.is_dir():
        raise CourseError(f"--out {out} exists and is not a folder")
    return out


def _read(path: Path):
    import nbformat

    return nbformat.read(path, as_version=4)


# ---------------------------------------------------------------- student copy


def is_solution(cell) -> bool:
    """Whether a cell is part of a solution (its metadata tags include ``"solution"``)."""
    return SOLUTION_TAG in (cell.get("metadata", {}).get("tags") or [])


def has_exercises_heading(nb) -> bool:
    """Whether a markdown cell that is not a solution has an ``Exercises`` heading (any level)."""
    return any(c.cell_type == "markdown" and not is_solution(c) and _EXERCISES_HEADING.search(c.source) for c in nb.cells)


def exercise_problem(nb, name: str) -> str | None:
    """Why the notebook's exercises and solutions do not match, or ``None`` when they do (both present,
    or neither)."""
    solutions = sum(is_solution(c) for c in nb.cells)
    heading = has_exercises_heading(nb)
    if heading and not solutions:
        return f"{name} has an Exercises section but no cell tagged {SOLUTION_TAG!r}: tag its solution cells (or remove the section)"
    if solutions and not heading:
        return f"{name} has {solutions} cell(s) tagged {SOLUTION_TAG!r} but no Exercises heading outside them"
    return None


def _stub_cell(nb, first_removed):
    import nbformat

    cell = nbformat.v4.new_code_cell(source=STUB_SOURCE, metadata={"tags": [STUB_TAG]})
    if "id" in first_removed:  # deterministic: named after the first cell it replaces
        cell["id"] = f"stub-{first_removed['id']}"[:64]
    elif "id" in cell and (nb.nbformat, nb.nbformat_minor) < (4, 5):
        del cell["id"]
    return cell


def student_notebook(nb):
    """The student copy of a notebook: each run of consecutive solution cells replaced by one stub
    code cell (``# Your solution here``, tag ``"exercise-stub"``), every other cell unchanged except
    that code cells lose their outputs. The input is not modified."""
    out = copy.deepcopy(nb)
    cells = []
    previous_was_solution = False
    for cell in nb.cells:
        if is_solution(cell):
            if not previous_was_solution:
                cells.append(_stub_cell(nb, cell))
            previous_was_solution = True
            continue
        previous_was_solution = False
        cell = copy.deepcopy(cell)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cells.append(cell)
    out.cells = cells
    return out


def write_student_copy(out, names=None, directory=None, check: bool = True) -> list[Path]:
    """Write the student copy of the chosen notebooks to ``out``; return the files written.

    With ``check`` (as the ``student`` command runs it) every notebook's exercises and solutions must
    match (see ``exercise_problem``), else nothing is written.
    """
    import nbformat

    sources = select_notebooks(names, directory)
    target = _output_dir(out, sources)
    notebooks = {p: _read(p) for p in sources}
    if check:
        problems = [msg for p, nb in notebooks.items() if (msg := exercise_problem(nb, p.name))]
        if problems:
            raise CourseError("no student copy written:\n  " + "\n  ".join(problems))
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for path, nb in notebooks.items():
        copy_ = student_notebook(nb)
        nbformat.validate(copy_)
        dest = target / path.name
        nbformat.write(copy_, dest)
        written.append(dest)
    return written


# ---------------------------------------------------------------- HTML pages


@dataclass
class Page:
    """One rendered page: the notebook it came from, its title, the file, seconds to execute and render,
    and the notebook as rendered (executed, widgets made static)."""

    name: str
    title: str
    path: Path
    seconds: float
    notebook: object = field(repr=False)

    @property
    def n_images(self) -> int:
        """Image outputs in the rendered notebook, each one ``<img>`` on the page."""
        return count_image_outputs(self.notebook)


def notebook_title(nb, fallback: str) -> str:
    """The text of the notebook's first heading, without markdown markup, else ``fallback``."""
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            m = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
            if m and m.group(1):
                return re.sub(r"[`*_]", "", m.group(1))
    return fallback


def count_image_outputs(nb) -> int:
    """The image outputs (PNG, JPEG, GIF, WebP) of a notebook's code cells."""
    return sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if any(t in o.get("data", {}) for t in _IMAGE_TYPES))


def _current_env_kernel_manager():
    from ipykernel.kernelspec import RESOURCES, get_kernel_dict
    from jupyter_client import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from traitlets import default

    class CurrentPythonKernelSpecs(KernelSpecManager):
        def get_kernel_spec(self, kernel_name, *args, **kwargs):
            return KernelSpec(resource_dir=RESOURCES, **get_kernel_dict())  # argv[0] is sys.executable

    class CurrentPythonKernelManager(AsyncKernelManager):
        """Whatever the notebook's kernelspec says, a kernel of the Python running the command."""

        @default("kernel_spec_manager")
        def _kernel_spec_manager_default(self):
            return CurrentPythonKernelSpecs(data_dir=self.data_dir)

        @default("transport_encryption")
        def _transport_encryption_default(self):  # CurveZMQ keys when pyzmq has them
            import zmq

            return "auto" if zmq.has("curve") else "disabled"

    return CurrentPythonKernelManager


def kernel_environment(profile: str) -> dict:
    """The environment for the notebooks' kernels: this one, with the profile, inline figures and no
    progress bars."""
    env = dict(os.environ)
    env.update({
        "TUTORIAL_PROFILE": profile,
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "TQDM_DISABLE": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    })
    return env


def execute_notebook(nb, name: str, cwd, profile: str, timeout: float = DEFAULT_TIMEOUT):
    """Run a notebook top to bottom in a fresh kernel of this Python, ``cwd`` as working directory;
    return it with its outputs (and widget state). A failing cell raises ``CourseError`` naming the
    notebook and the cell."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError

    where = {"index": None}

    def started(cell, cell_index, **_):
        where["index"] = cell_index

    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}},
                            kernel_manager_class=_current_env_kernel_manager(), store_widget_state=True,
                            on_cell_start=started)
    try:
        client.execute(env=kernel_environment(profile))
    except Exception as err:  # nbclient's CellExecutionError, CellTimeoutError, DeadKernelError
        i = where["index"]
        if i is None:
            raise CourseError(f"{name}: the kernel did not start: {type(err).__name__}: {err}") from err
        first = nb.cells[i].source.strip().splitlines()[:1]
        if isinstance(err, CellTimeoutError):
            what = f"timed out after {timeout:g} s"
        elif hasattr(err, "ename"):
            what = f"{err.ename}: {err.evalue}"
        else:
            what = f"{type(err).__name__}: {err}".strip()
        raise CourseError(f"{name}: cell {i} ({first[0] if first else 'empty'!r}) failed: {what}") from err
    return nb


def _widget_outputs(model_id: str, state: dict, seen: set) -> list:
    """The outputs captured by the Output widgets inside a widget, depth first."""
    if model_id in seen or model_id not in state:
        return []
    seen.add(model_id)
    model = state[model_id]
    inner = model.get("state", {})
    found = list(inner.get("outputs", [])) if model.get("model_name") == "OutputModel" else []
    children = inner.get("children", [])
    for child in children if isinstance(children, list) else []:
        if isinstance(child, str) and child.startswith("IPY_MODEL_"):
            found += _widget_outputs(child.removeprefix("IPY_MODEL_"), state, seen)
    return found


def static_widgets(nb):
    """Replace every widget view by a note and the outputs its Output widgets captured (an
    ``interact``'s first call), and drop the widget state, so that the page needs no widget manager."""
    import nbformat

    state = nb.metadata.get("widgets", {}).get(_WIDGET_STATE, {}).get("state", {})
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(_WIDGET_VIEW) if output.get("output_type") in ("display_data", "execute_result") else None
            if view is None:
                outputs.append(output)
                continue
            captured = [nbformat.from_dict(o) for o in _widget_outputs(view.get("model_id", ""), state, set())]
            note = _WIDGET_NOTE_OUTPUT if captured else _WIDGET_NOTE
            outputs.append(nbformat.v4.new_output("display_data", data={
                "text/html": f'<p class="course-widget-note">{html_lib.escape(note)}</p>', "text/plain": note}))
            outputs += captured
        cell.outputs = outputs
    nb.metadata.pop("widgets", None)
    return nb


def _link_pages(nb, names: set[str]):
    """Point markdown links to rendered notebooks at their pages."""
    pattern = re.compile(r"(\]\(\s*<?)([^)\s#>]+)\.ipynb(?=[)#>\s])")

    def repl(m):
        return f"{m.group(1)}{m.group(2)}.html" if Path(m.group(2)).name in names else m.group(0)

    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = pattern.sub(repl, cell.source)
    return nb


def _exporter():
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    return HTMLExporter(template_name="lab", extra_loaders=[DictLoader({"course_page.html.j2": _PAGE_TEMPLATE})],
                        template_file="course_page.html.j2", embed_images=True)


def _index_html(pages: list[Page], note: str) -> str:
    items = "\n".join(f'<li><a href="{html_lib.escape(p.path.name)}">{html_lib.escape(p.title)}</a> '
                      f'<span class="file">{html_lib.escape(p.name)}</span></li>' for p in pages)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>Second-order machine unlearning for language models: the course</title>
<link rel="icon" href="data:,">
<style>
body {{ font-family: system-ui, sans-serif; max-width: 48em; margin: 2em auto; padding: 0 1em; line-height: 1.5; }}
li {{ margin: 0.4em 0; }}
.file {{ color: #666; font-family: monospace; font-size: 0.9em; margin-left: 0.5em; }}
</style>
</head>
<body>
<h1>Second-order machine unlearning for language models</h1>
<p>{html_lib.escape(note)}</p>
<ol>
{items}
</ol>
</body>
</html>
"""


def render_html(out, profile: str | None = None, names=None, execute: bool = True, timeout: float = DEFAULT_TIMEOUT,
                directory=None, log=print) -> list[Page]:
    """Execute (unless ``execute=False``) and render the chosen notebooks to ``out/NAME.html`` and write
    ``out/index.html``; return the pages in course order. See the module docstring for what the pages
    contain and leave out."""
    from .profiles import resolve_profile

    sources = select_notebooks(names, directory)
    target = _output_dir(out, sources)
    target.mkdir(parents=True, exist_ok=True)
    profile = resolve_profile(profile)
    exporter = _exporter()
    rendered = {p.stem for p in sources}
    pages = []
    for path in sources:
        start = time.perf_counter()
        nb = _read(path)
        title = notebook_title(nb, path.stem)
        if execute:
            nb = execute_notebook(nb, path.name, path.parent, profile, timeout)
        nb = _link_pages(static_widgets(nb), rendered)
        nb.metadata["title"] = title
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": path.stem, "path": str(path.parent)}})
        dest = target / f"{path.stem}.html"
        dest.write_text(body, encoding="utf-8")
        pages.append(Page(path.stem, title, dest, time.perf_counter() - start, nb))
        log(f"  {dest.name}: {'executed and ' if execute else ''}rendered in {pages[-1].seconds:.1f} s, "
            f"{pages[-1].n_images} figure(s)")
    if execute:
        note = f"Executed at the {profile!r} profile."
    elif any(c.get("outputs") for p in pages for c in p.notebook.cells if c.cell_type == "code"):
        note = "Rendered from notebooks executed beforehand."
    else:
        note = "Not executed: the notebooks as committed, without outputs."
    (target / "index.html").write_text(_index_html(pages, note), encoding="utf-8")
    return pages


# ---------------------------------------------------------------- command line


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
    from .profiles import resolve_profile

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
            from .warm_cache import warm

            profile = _profile(args.profile)
            print(f"warming the model cache for profile {profile!r}, seed {args.seed}", flush=True)
            warm(profile, args.seed)
            from .cache import cache_root

            print(f"cache {cache_root()} warm in {time.perf_counter() - start:.1f} s")
    except CourseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
