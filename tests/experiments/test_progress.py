"""Every study hands its ``progress`` on. Inside a function that takes ``progress``, each call of a
function that draws a bar (``unlearn``, exact exposure, training, the sweeps and the other studies)
passes it, so that ``progress=False`` (the cache warm-up, the benchmark's cells) draws none at any
depth. Static: reads the sources of ``tutorial_lib.experiments``."""
import ast
from pathlib import Path

import pytest

import tutorial_lib.experiments

SOURCES = sorted(Path(tutorial_lib.experiments.__file__).parent.glob("*.py"))
#: functions (and ``UnlearningSetup`` methods) that draw a progress bar unless told not to
DRAWING = {"unlearn", "compute_exposure", "evaluate_unlearning", "evaluate_pii", "benchmark_cell", "repeated_unlearning",
           "sweep_unlearning", "trace_sweep", "unlearning_setup", "reference_points", "run_unlearning_methods", "run_dp_study",
           "train_memorization_model", "train_retrained_model", "train_language_model", "train_case_study_model", "train_dp_model",
           "train_dp_language_model"}


def _called(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):  # a local ``evaluate`` closure is not the setup's
        return node.func.id if node.func.id in DRAWING else None
    if isinstance(node.func, ast.Attribute):  # setup.unlearn(...), setup.evaluate(...)
        return node.func.attr if node.func.attr in DRAWING | {"evaluate"} else None
    return None


def _passes_progress(node: ast.Call) -> bool:
    return any(k.arg == "progress" for k in node.keywords) or any(isinstance(a, ast.Name) and a.id == "progress" for a in node.args)


def calls_dropping_progress(tree: ast.AST) -> list[str]:
    """``name:line`` of every drawing call, inside a function that takes ``progress``, that does not pass it on."""
    found = []

    def visit(node, inside: bool):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside = inside or any(a.arg == "progress" for a in node.args.args + node.args.kwonlyargs)
        if isinstance(node, ast.Call) and inside and _called(node) in DRAWING | {"evaluate"} and not _passes_progress(node):
            found.append(f"{_called(node)}:{node.lineno}")
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(tree, False)
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_studies_pass_progress_on(path):
    assert calls_dropping_progress(ast.parse(path.read_text())) == []


def test_the_check_finds_a_dropped_progress():
    tree = ast.parse("def run(cfg, progress=True):\n    def compute():\n        return setup.unlearn('npo'), unlearn(m, progress=progress)\n"
                     "def quiet(cfg):\n    return compute_exposure(m, t, c)\n")
    assert calls_dropping_progress(tree) == ["unlearn:3"]
