"""Keeps what nbval executed. With ``$TUTORIAL_EXECUTED_DIR`` set, every notebook run under
``pytest --nbval`` is written there, with the outputs of this run, when the session ends, so that
the course's HTML pages can be rendered from it without running every notebook a second time
(``scripts/test.sh`` does this for the browser test; ``python -m tutorial_lib.course html
--executed DIR``)."""
import os
import time
from collections import defaultdict
from pathlib import Path

import nbformat
import pytest

_EXECUTED = {}
_SECONDS = defaultdict(float)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    start = time.perf_counter()
    yield
    _SECONDS[Path(str(item.fspath)).name] += time.perf_counter() - start
    cell, outputs = getattr(item, "cell", None), getattr(item, "test_outputs", None)
    if cell is None or outputs is None or not hasattr(item.parent, "nb"):
        return
    cell.outputs = [nbformat.from_dict(dict(o)) for o in outputs]
    cell.execution_count = getattr(item, "cell_num", 0) + 1
    _EXECUTED[Path(str(item.parent.fspath)).name] = item.parent.nb


def pytest_terminal_summary(terminalreporter):
    """Each notebook's measured run time (the sum of its cells), for the README's table."""
    if _SECONDS:
        terminalreporter.section("notebook run times")
        for name, seconds in sorted(_SECONDS.items()):
            terminalreporter.write_line(f"{name}: {seconds:.0f} s")


def pytest_sessionfinish(session, exitstatus):
    target = os.environ.get("TUTORIAL_EXECUTED_DIR")
    if not target or not _EXECUTED:
        return
    Path(target).mkdir(parents=True, exist_ok=True)
    for name, nb in _EXECUTED.items():
        nbformat.write(nb, Path(target) / name)
