"""``bash scripts/lab.sh --check``: the course opens in one step. In this environment (never a new one) the
script registers the kernel "Python (tutorial_lib)", starts JupyterLab on notebooks/ at a free localhost
port, runs a line in that kernel and in the notebooks' own ("python3"), and stops the server again."""
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent  # the environment running the tests: lab.sh sets up nothing else

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("jupyterlab") is None,
                       reason="jupyterlab is not installed (the project's `notebooks` extra: pip install -e '.[notebooks]')"),
    pytest.mark.skipif(shutil.which("bash") is None, reason="scripts/lab.sh needs bash"),
]


def install_is_current() -> bool:
    """scripts/_env.sh reinstalls the project when this stamp differs from pyproject.toml's sha256."""
    stamp = VENV / ".tutorial_lib-installed"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    return stamp.is_file() and stamp.read_text().strip() == want


def run_check(cwd: Path) -> subprocess.CompletedProcess:
    """Runs the check in its own process group, so that a timeout stops the script (its trap then stops
    the server) rather than leaving the server behind."""
    env = {**os.environ, "TUTORIAL_VENV": str(VENV)}
    proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "lab.sh"), "--check"], cwd=cwd, env=env, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"lab.sh --check ran over 300 s\n{out}\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def processes_mentioning(*words: str) -> list[str]:
    """Command lines of running processes that contain any of ``words`` (Linux /proc; [] elsewhere)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmdline.parent.name != str(os.getpid()) and any(word in text for word in words):
            found.append(f"{cmdline.parent.name}: {text}")
    return found


def test_lab_check_opens_the_course_in_this_environment_and_stops(tmp_path):
    if not install_is_current():
        pytest.skip(f"{VENV} was installed from another pyproject.toml, so lab.sh would reinstall the project "
                    "first: run `bash scripts/lab.sh --check` (or scripts/test.sh) once")
    result = run_check(cwd=tmp_path)  # from any working directory
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    found = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)

    # the kernel lives inside the environment and starts the environment's own interpreter
    spec_path = Path(found["kernel spec"])
    assert spec_path.is_file() and spec_path.parent.name == "tutorial-lib", report
    assert spec_path.resolve().is_relative_to(VENV.resolve()), report
    spec = json.loads(spec_path.read_text())
    python = spec["argv"][0]
    assert spec["display_name"] == "Python (tutorial_lib)" and python == found["kernel python"]
    assert Path(python).is_absolute() and os.path.samefile(python, sys.executable), python
    assert Path(python).parent.parent.samefile(VENV), f"{python} is not in {VENV}"

    # the server answered on localhost, with the lab page and both kernels
    server = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/lab \(pid (\d+), runtime dir (.+)\)", found["server"])
    assert server, found["server"]
    port, pid, runtime = server.groups()
    assert "GET /api/status 200" in found["answer"] and "GET /lab 200 text/html" in found["answer"], report
    assert "default 'tutorial-lib'" in found["answer"], report
    named = {json.loads(p.read_text())["metadata"]["kernelspec"]["name"] for p in (ROOT / "notebooks").glob("*.ipynb")}
    for name in {"tutorial-lib"} | named:  # the course's kernel, and the one a notebook opens with
        line = next(v for k, v in found.items() if k.startswith(f"kernel {name} ("))
        ran = re.fullmatch(r"ran (.+) \(environment (.+)\), tutorial_lib from (\S+)(; the notebooks name this kernel)?", line)
        assert ran and os.path.samefile(ran[2], VENV), f"kernel {name}: {line}"
        assert Path(ran[3]).resolve().is_relative_to(ROOT / "tutorial_lib"), f"kernel {name}: {line}"

    # stopped cleanly, nothing left running or lying around
    assert found["server stopped"].startswith(f"pid {pid} exited"), report
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid), 0)
    assert processes_mentioning(runtime, f"--port={port}") == []
    assert not Path(runtime).parent.exists()
