"""The ``html`` command (:mod:`tutorial_lib.course.commands`): the executed course as static HTML pages.

:func:`render_html` runs each chosen notebook top to bottom in a fresh kernel of this Python
(:func:`execute_notebook`, with the profile set, inline figures and no progress bars), renders it with
nbconvert's ``lab`` template to ``NAME.html`` and writes ``index.html`` listing every page under its
title. The pages are self-contained and work offline: figures are embedded as ``data:`` images, the
style sheets are inlined, and the template's scripts that load from a CDN (MathJax, require.js,
Mermaid, the widget manager) are left out. So formulas show as their TeX source, and widgets are
static: an ``interact`` shows the output of its first call under a note that the controls need a
running notebook (:func:`static_widgets`). Links to other rendered notebooks point to their pages, and
links to the course glossary (``docs/glossary.md``) to its page, ``glossary.html``, listed on the index. A
failing or timed-out cell raises :class:`~tutorial_lib.course.student.CourseError` naming the notebook
and the cell.

Used by ``python -m tutorial_lib.course html`` and the test suite's browser check, not by the notebooks.
"""
from __future__ import annotations

import html as html_lib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.profiles import resolve_profile
from .student import (
    DEFAULT_TIMEOUT,
    CourseError,
    output_dir,
    read_notebook,
    select_notebooks,
)

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
{% block data_png scoped %}
<div class="jp-RenderedImage jp-OutputArea-output {{ extra_class }}">
<img src="data:image/png;base64,{{ output.data['image/png'] | escape_html }}" alt="{{ output.data.get('text/plain', '') | escape_html }}">
</div>
{%- endblock data_png %}
"""


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


GLOSSARY = Path(__file__).resolve().parents[2] / "docs" / "glossary.md"


_GLOSSARY_LINK = re.compile(r"(\]\(\s*<?)[^)\s#>]*docs/glossary\.md(?=[)#>\s])")


def _link_pages(nb, names: set[str], glossary: bool = False):
    """Point markdown links to rendered notebooks at their pages (and, with ``glossary``, links to
    ``docs/glossary.md`` at ``glossary.html``)."""
    pattern = re.compile(r"(\]\(\s*<?)([^)\s#>]+)\.ipynb(?=[)#>\s])")

    def repl(m):
        return f"{m.group(1)}{m.group(2)}.html" if Path(m.group(2)).name in names else m.group(0)

    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = pattern.sub(repl, cell.source)
            if glossary:
                cell.source = _GLOSSARY_LINK.sub(lambda m: f"{m.group(1)}glossary.html", cell.source)
    return nb


_PLAIN_STYLE = """<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link rel="icon" href="data:,">
<style>
body { font-family: system-ui, sans-serif; max-width: 48em; margin: 2em auto; padding: 0 1em; line-height: 1.5; }
li { margin: 0.4em 0; }
.file { color: #666; font-family: monospace; font-size: 0.9em; margin-left: 0.5em; }
</style>"""


def _glossary_html(markdown: str) -> str:
    """The glossary page: ``docs/glossary.md`` rendered by nbconvert's markdown filter (formulas as TeX)."""
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<title>Glossary</title>
{_PLAIN_STYLE}
</head>
<body>
<p><a href="index.html">The course</a></p>
{markdown2html_mistune(markdown)}
</body>
</html>
"""


def _exporter():
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    return HTMLExporter(template_name="lab", extra_loaders=[DictLoader({"course_page.html.j2": _PAGE_TEMPLATE})],
                        template_file="course_page.html.j2", embed_images=True)


def _index_html(pages: list[Page], note: str, glossary: bool = False) -> str:
    items = "\n".join(f'<li><a href="{html_lib.escape(p.path.name)}">{html_lib.escape(p.title)}</a> '
                      f'<span class="file">{html_lib.escape(p.name)}</span></li>' for p in pages)
    extra = '<p>Every symbol and term: <a href="glossary.html">the glossary</a>.</p>' if glossary else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<title>Second-order machine unlearning for language models: the course</title>
{_PLAIN_STYLE}
</head>
<body>
<h1>Second-order machine unlearning for language models</h1>
<p>{html_lib.escape(note)}</p>
{extra}
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

    sources = select_notebooks(names, directory)
    target = output_dir(out, sources)
    target.mkdir(parents=True, exist_ok=True)
    profile = resolve_profile(profile)
    exporter = _exporter()
    rendered = {p.stem for p in sources}
    glossary = GLOSSARY.is_file()
    if glossary:
        (target / "glossary.html").write_text(_glossary_html(GLOSSARY.read_text(encoding="utf-8")), encoding="utf-8")
    pages = []
    for path in sources:
        start = time.perf_counter()
        nb = read_notebook(path)
        title = notebook_title(nb, path.stem)
        if execute:
            nb = execute_notebook(nb, path.name, path.parent, profile, timeout)
        nb = _link_pages(static_widgets(nb), rendered, glossary)
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
    (target / "index.html").write_text(_index_html(pages, note, glossary), encoding="utf-8")
    return pages
