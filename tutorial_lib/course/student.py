"""The ``student`` command (:mod:`tutorial_lib.course.commands`): the course without its solutions,
and the notebook selection the instructor's commands share.

:func:`student_notebook` replaces each run of consecutive solution cells (tagged ``"solution"``) by one
stub code cell (``# Your solution here``, tagged ``"exercise-stub"``) and clears code outputs.
:func:`write_student_copy` writes the chosen notebooks to an output folder, after checking that each
notebook's ``Exercises`` heading and solution cells match (:func:`exercise_problem`), and never into
``notebooks/`` itself. :func:`select_notebooks` and :func:`output_dir` choose the notebooks and check the
output folder for both ``student`` and ``html``; :class:`CourseError` is the commands' refusal.

Used by ``python -m tutorial_lib.course student``, not by the notebooks.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

SOLUTION_TAG = "solution"


STUB_TAG = "exercise-stub"


STUB_SOURCE = "# Your solution here"


DEFAULT_TIMEOUT = 1800


_EXERCISES_HEADING = re.compile(r"^ {0,3}#{1,6}\s+Exercises?\b", re.IGNORECASE | re.MULTILINE)


class CourseError(ValueError):
    """A command refused its input: an unknown notebook, an unsafe output folder, a notebook whose
    exercises and solutions do not match, or a cell that failed while rendering."""


def notebooks_dir() -> Path:
    """The course's ``notebooks/`` folder."""
    return Path(__file__).resolve().parents[2] / "notebooks"


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


def output_dir(out, sources: list[Path]) -> Path:
    """``out`` resolved, refused when it is the notebooks' own folder or a file; not created yet."""
    out = Path(out).resolve()
    for folder in {p.parent.resolve() for p in sources} | {notebooks_dir()}:
        if out == folder:
            raise CourseError(f"--out {out} is the notebooks' own folder: refusing to overwrite the course's sources")
    if out.exists() and not out.is_dir():
        raise CourseError(f"--out {out} exists and is not a folder")
    return out


def read_notebook(path: Path):
    import nbformat

    return nbformat.read(path, as_version=4)


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
    target = output_dir(out, sources)
    notebooks = {p: read_notebook(p) for p in sources}
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
