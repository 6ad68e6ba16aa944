"""``python -m tutorial_lib.course``: the student copy, the command line, the unexecuted HTML pages
(the executed course in a browser is ``test_course_html.py``); ``python -m tutorial_lib``: every command."""
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from tutorial_lib.course import commands, student
from tutorial_lib.course.commands import main
from tutorial_lib.course.student import (
    CourseError,
    notebooks_dir,
    select_notebooks,
    student_notebook,
    write_student_copy,
)

NOTEBOOKS = select_notebooks()
EXERCISES = re.compile(r"^#{1,6}\s+Exercises\b", re.MULTILINE)


def tagged(cell) -> bool:
    return "solution" in cell.metadata.get("tags", [])


def stub(cell) -> bool:
    return (cell.cell_type == "code" and cell.source == "# Your solution here" and cell.metadata.get("tags") == ["exercise-stub"]
            and cell.outputs == [] and cell.execution_count is None)


def synthetic(folder=None, name="00_synthetic.ipynb", with_heading=True, with_solutions=True):
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    sol = {"tags": ["solution"]}
    cells = [md("# Title", id="title"), code("x = 1", id="setup", metadata={"tags": ["keep"], "collapsed": True}),
             md("## Exercises" if with_heading else "## Questions", id="ex"), md("1. Do it.", id="q1")]
    if with_solutions:
        cells += [md("**Solution 1.** Because.", id="s1a", metadata=sol), code("x + 1", id="s1b", metadata=sol),
                  md("2. Then this.", id="q2"), code("y = 2", id="s2", metadata={"tags": ["solution", "other"]}),
                  md("## Summary", id="summary"), code("z = 3", id="s3", metadata=sol)]
    cells[1].outputs = [nbformat.v4.new_output("stream", text="out\n")]
    cells[1].execution_count = 4
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.validate(nb)
    if folder is not None:
        nbformat.write(nb, folder / name)
    return nb


def test_synthetic_notebook_exact_result():
    nb = synthetic()
    original = json.dumps(nb, sort_keys=True)
    copy = student_notebook(nb)
    assert json.dumps(nb, sort_keys=True) == original, "the input notebook was modified"
    assert [c.get("id") for c in copy.cells] == ["title", "setup", "ex", "q1", "stub-s1a", "q2", "stub-s2", "summary", "stub-s3"]
    assert all(stub(copy.cells[i]) for i in (4, 6, 8))
    assert copy.cells[1].metadata == {"tags": ["keep"], "collapsed": True} and copy.cells[1].source == "x = 1"
    assert copy.cells[1].outputs == [] and copy.cells[1].execution_count is None
    for i, j in [(0, 0), (2, 2), (3, 3), (5, 6), (7, 8)]:
        assert copy.cells[i] == nb.cells[j]
    assert copy.metadata == nb.metadata
    nbformat.validate(copy)


def test_notebook_without_solutions_is_unchanged_but_stripped():
    nb = synthetic(with_solutions=False)
    copy = student_notebook(nb)
    assert [c.source for c in copy.cells] == [c.source for c in nb.cells] and copy.cells[1].outputs == []


def _runs_as_stubs(cells):
    """The cell sequence with each run of solution cells folded into one marker."""
    folded = []
    for is_solution, run in itertools.groupby(cells, key=tagged):
        folded += ["STUB"] if is_solution else list(run)
    return folded


def test_student_copy_of_every_committed_notebook(tmp_path):
    written = write_student_copy(tmp_path, check=False)
    assert [p.name for p in written] == [p.name for p in NOTEBOOKS]
    for source in NOTEBOOKS:
        original = nbformat.read(source, as_version=4)
        copy = nbformat.read(tmp_path / source.name, as_version=4)
        nbformat.validate(copy)
        assert not any(tagged(c) for c in copy.cells), f"{source.name}: a solution cell remains"
        assert copy.metadata == original.metadata, f"{source.name}: notebook metadata changed"
        expected = _runs_as_stubs(original.cells)
        assert len(copy.cells) == len(expected), f"{source.name}: {len(copy.cells)} cells, expected {len(expected)}"
        for i, (got, want) in enumerate(zip(copy.cells, expected)):
            if want == "STUB":
                assert stub(got), f"{source.name}: cell {i} should be the stub of a solution run, got {got.source[:60]!r}"
                continue
            want = nbformat.from_dict(json.loads(json.dumps(want)))
            if want.cell_type == "code":
                want.outputs, want.execution_count = [], None
            assert got == want, f"{source.name}: cell {i} differs from the original"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_has_exercises_and_solutions(path):
    """The course's convention: an Exercises section, its solutions tagged ``solution``."""
    nb = nbformat.read(path, as_version=4)
    assert any(c.cell_type == "markdown" and not tagged(c) and EXERCISES.search(c.source) for c in nb.cells), \
        f"{path.name} has no Exercises heading"
    assert any(tagged(c) for c in nb.cells), f"{path.name} has no cell tagged 'solution'"


def test_command_writes_student_copy(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "src"
    folder.mkdir()
    synthetic(folder, "00_synthetic.ipynb")
    synthetic(folder, "01_plain.ipynb", with_heading=False, with_solutions=False)  # neither: fine
    out = tmp_path / "student"
    written = write_student_copy(out, directory=folder)
    assert [p.name for p in written] == ["00_synthetic.ipynb", "01_plain.ipynb"]
    assert sum(stub(c) for c in nbformat.read(out / "00_synthetic.ipynb", as_version=4).cells) == 3
    monkeypatch.setattr(student, "notebooks_dir", lambda: folder)
    assert main(["student", "--out", str(tmp_path / "cli"), "--notebooks", "00"]) == 0
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["00_synthetic.ipynb"]
    assert re.search(rf"wrote 1 student notebook\(s\) to {re.escape(str(tmp_path / 'cli'))} in \d+\.\d s", capsys.readouterr().out)


@pytest.mark.parametrize("with_heading, with_solutions, why", [
    (True, False, "has an Exercises section but no cell tagged 'solution'"),
    (False, True, "has 4 cell(s) tagged 'solution' but no Exercises heading"),
])
def test_command_refuses_exercises_without_solutions_and_back(tmp_path, with_heading, with_solutions, why):
    folder = tmp_path / "src"
    folder.mkdir()
    synthetic(folder, "00_good.ipynb")
    synthetic(folder, "01_bad.ipynb", with_heading=with_heading, with_solutions=with_solutions)
    out = tmp_path / "student"
    with pytest.raises(CourseError, match=re.escape(f"01_bad.ipynb {why}")):
        write_student_copy(out, directory=folder)
    assert not out.exists(), "nothing is written when a notebook is refused"
    assert len(write_student_copy(out, directory=folder, check=False)) == 2


def test_unknown_notebook_and_notebook_names(tmp_path, capsys):
    with pytest.raises(CourseError, match=r"unknown notebook '99_nope'.*00_welcome_and_setup"):
        select_notebooks(["99_nope"])
    assert select_notebooks(["01"]) == select_notebooks(["01_newton_updates_and_influence.ipynb"]) == [NOTEBOOKS[1]]
    assert main(["student", "--out", str(tmp_path / "x"), "--notebooks", "00", "99_nope"]) == 1
    assert "unknown notebook '99_nope'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("command", [["student"], ["html", "--no-execute"]])
def test_refuses_to_write_into_the_notebooks(command, capsys):
    before = {p: p.stat().st_mtime_ns for p in notebooks_dir().iterdir()}
    assert main([*command, "--out", str(notebooks_dir()), "--notebooks", "00"]) == 1
    assert "refusing to overwrite the course's sources" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in notebooks_dir().iterdir()} == before


def test_html_without_execution_is_offline(tmp_path, capsys):
    out = tmp_path / "site"
    assert main(["html", "--out", str(out), "--no-execute", "--notebooks", "00", "01"]) == 0
    printed = capsys.readouterr().out
    assert f"to {out}" in printed and re.search(r"in \d+\.\d s", printed)
    assert sorted(p.name for p in out.iterdir()) == ["00_welcome_and_setup.html", "01_newton_updates_and_influence.html", "glossary.html",
                                                     "index.html"]
    page = (out / "00_welcome_and_setup.html").read_text()
    assert 'href="glossary.html"' in page and 'href="../docs/glossary.md"' not in page  # the glossary's page, not its source
    assert "<title>00 · Welcome" in page and "<script" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "the page loads something from outside"
    assert 'href="01_newton_updates_and_influence.html"' in page and 'href="01_newton_updates_and_influence.ipynb"' not in page
    index = (out / "index.html").read_text()
    assert index.count("<li>") == 2 and 'href="00_welcome_and_setup.html"' in index and "Not executed" in index


def test_html_rejects_a_bad_profile_and_timeout(tmp_path, capsys):
    assert main(["html", "--out", str(tmp_path), "--profile", "huge"]) == 1
    assert "unknown profile 'huge'" in capsys.readouterr().err
    assert main(["html", "--out", str(tmp_path), "--timeout", "0"]) == 1
    assert "--timeout must be positive, got 0" in capsys.readouterr().err


def test_warm_is_warm_cache(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr("tutorial_lib.course.commands.warm", lambda profile, seed, **kw: calls.append((profile, seed, kw)) or [])
    monkeypatch.setenv("TUTORIAL_JOBS", "2")
    assert main(["warm", "--profile", "tiny", "--seed", "3"]) == 0
    assert calls == [("tiny", 3, {"progress": True, "jobs": 2})]
    assert "warm in" in capsys.readouterr().out


def test_module_docstring_documents_every_command():
    doc = commands.__doc__
    for usage in ("student --out DIR", "html --out DIR", "--no-execute", "--timeout S", "warm [--profile P]"):
        assert usage in doc
    assert "TeX source" in doc and '"solution"' in doc and "exercise-stub" in doc


def test_python_m_tutorial_lib_lists_every_command():
    env = {**os.environ, "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-m", "tutorial_lib"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    listed = [line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(commands.COMMANDS) + [name for name, _, _ in commands.SCRIPTS]
    assert list(commands.COMMANDS) == ["reproduce", "warm", "student", "html", "full-profile", "unlearn", "smollm2", "data"]
    for command in commands.COMMANDS.values():
        assert command.what in done.stdout and command.direct in done.stdout
    for name, _, direct in commands.SCRIPTS:  # the shell commands exist in the repository
        assert (Path(commands.__file__).resolve().parents[2] / direct.split()[-1]).is_file(), name


@pytest.mark.parametrize("name", list(commands.COMMANDS))
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        commands.dispatch([name, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ")


def test_dispatch_runs_a_command_and_refuses_an_unknown_one(tmp_path, capsys):
    assert commands.dispatch(["student", "--out", str(tmp_path / "x"), "--notebooks", "99_nope"]) == 1
    assert "unknown notebook '99_nope'" in capsys.readouterr().err
    assert commands.dispatch([]) == 0 and "full-profile" in capsys.readouterr().out
    assert commands.dispatch(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err
    saved = list(sys.argv)
    assert commands.dispatch(["full-profile", "--model-path", "/nonexistent/model", "--device", "cpu"]) == 2
    assert sys.argv == saved  # put back after the command
