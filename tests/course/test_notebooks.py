"""Static checks of the committed notebooks; nbval runs them (see README)."""
import ast
import re
from pathlib import Path

import nbformat
import pytest

import tutorial_lib

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks_in_order():
    names = [p.name for p in NOTEBOOKS]
    assert "00_welcome_and_setup.ipynb" in names and "03_memorization_and_exposure.ipynb" in names
    assert all(re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", n) for n in names)
    numbers = [int(n[:2]) for n in names]
    assert numbers == sorted(set(numbers))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_valid_and_stripped(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} carries outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_skeleton(path):
    nb = nbformat.read(path, as_version=4)
    intro = nb.cells[0].source
    assert intro.startswith("# ") and "Learning goals" in intro
    assert re.search(r"[Rr]untime.*measured", intro), "the intro states the measured runtime"
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert "setup_notebook(" in code[0] or "setup_notebook(" in code[1]
    assert "!pip" not in "\n".join(code)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_library_name_exists(path):
    nb = nbformat.read(path, as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tutorial_lib"):
            module = __import__(node.module, fromlist=["x"])
            for alias in node.names:
                assert hasattr(module, alias.name), f"{path.name}: {node.module}.{alias.name} does not exist"
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "tl":
            assert hasattr(tutorial_lib, node.attr), f"{path.name}: tl.{node.attr} does not exist"
