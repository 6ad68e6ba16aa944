#!/usr/bin/env bash
# Opens the course: JupyterLab on notebooks/, running the notebooks in this project's environment, whose
# kernel "Python (tutorial_lib)" is registered inside .venv. Sets itself up on a fresh machine. Extra
# arguments go to JupyterLab, e.g. `bash scripts/lab.sh --no-browser --port 8899`.
#
# `bash scripts/lab.sh --check` opens nothing: it sets up, registers the kernel, starts the server on a free
# localhost port with a token and no browser, waits until it answers, runs one line in the course's kernel
# and in the one the notebooks name ("python3") to see which Python they are, stops the server and prints
# what it found. It fails with a message if anything is off or takes over $TUTORIAL_LAB_TIMEOUT s (60 by
# default). tests/course/test_lab.py runs it.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=open
if [ "${1:-}" = "--check" ]; then
  mode=check
  shift
fi

had_mplbackend="${MPLBACKEND+set}"
source scripts/_env.sh
# _env.sh picks the Agg backend for scripts; in the lab the notebooks draw their figures inline
if [ -z "$had_mplbackend" ]; then
  unset MPLBACKEND
fi
# kernels installed in the environment come before any of the same name in the user's home directory, so
# the notebooks' "python3" is this environment's Python too
export JUPYTER_PREFER_ENV_PATH=1
# OpenMP threads that wait by sleeping instead of spinning: a kernel beside another busy program (a
# reproduction, a cache warm-up) then slows about 1.5x instead of 3-4x (bench/threads_under_load.py)
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

KERNEL_NAME=tutorial-lib
KERNEL_DISPLAY_NAME="Python (tutorial_lib)"
as_root=""  # JupyterLab refuses to start as root (in a container, say) unless told
if [ "$(id -u)" -eq 0 ]; then
  as_root=1
fi

# --sys-prefix: the kernel lives in $VENV/share/jupyter/kernels, and goes when .venv goes
"$PY" -m ipykernel install --sys-prefix --name "$KERNEL_NAME" --display-name "$KERNEL_DISPLAY_NAME" >/dev/null
# its kernel.json must start this environment's interpreter by its full path, whatever ipykernel wrote
# (a bare "python" would be whichever one is first on PATH); prints the spec's path and its interpreter
spec_info="$("$PY" - "$KERNEL_NAME" <<'EOF'
import json
import os
import sys

from jupyter_client.kernelspec import KernelSpecManager

name = sys.argv[1]
path = os.path.join(sys.prefix, "share", "jupyter", "kernels", name, "kernel.json")
with open(path) as f:
    spec = json.load(f)
if spec["argv"][0] != sys.executable:
    spec["argv"][0] = sys.executable
    with open(path, "w") as f:
        json.dump(spec, f, indent=1)
found = KernelSpecManager().find_kernel_specs()
if os.path.realpath(found.get(name, "")) != os.path.realpath(os.path.dirname(path)):
    sys.exit(f"lab.sh: Jupyter finds the kernel {name!r} in {found.get(name)}, not in this environment ({path}); "
             "is JUPYTER_PATH set?")
print(path)
print(spec["argv"][0])
EOF
)"
spec_path="${spec_info%%$'\n'*}"
spec_python="${spec_info#*$'\n'}"

if [ "$mode" = open ]; then
  echo "kernel \"$KERNEL_DISPLAY_NAME\" ($KERNEL_NAME): $spec_path, runs $spec_python"
  echo "opening JupyterLab on notebooks/ (stop it with Ctrl-C, twice) ..."
  exec "$PY" -m jupyterlab --notebook-dir=notebooks ${as_root:+--allow-root} --MappingKernelManager.default_kernel_name="$KERNEL_NAME" "$@"
fi

# --check
echo "kernel spec: $spec_path"
echo "kernel python: $spec_python"
timeout_s="${TUTORIAL_LAB_TIMEOUT:-60}"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/tutorial-lab-check.XXXXXX")"
server_pid=""
running() {  # alive and not a zombie waiting to be reaped
  kill -0 "$1" 2>/dev/null && [ "$(ps -o stat= -p "$1" 2>/dev/null | cut -c1)" != Z ]
}
stop_server() {  # SIGTERM: the server shuts its kernels down and removes its runtime files; SIGKILL after 20 s
  [ -n "$server_pid" ] || return 0
  local pid="$server_pid" waited=0
  server_pid=""
  kill -TERM "$pid" 2>/dev/null || true
  while running "$pid" && [ "$waited" -lt 100 ]; do
    sleep 0.2
    waited=$((waited + 1))
  done
  if running "$pid"; then
    echo "lab.sh --check: the server (pid $pid) did not stop within 20 s of SIGTERM: killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    return 1
  fi
  wait "$pid" 2>/dev/null || true
}
trap 'stop_server || true; rm -rf "$tmp"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

read -r port token < <("$PY" -c 'import secrets, socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], secrets.token_hex(24))
s.close()')
mkdir "$tmp/runtime"
JUPYTER_TOKEN="$token" JUPYTER_RUNTIME_DIR="$tmp/runtime" \
  "$PY" -m jupyterlab --notebook-dir=notebooks ${as_root:+--allow-root} --no-browser --ip=127.0.0.1 --port="$port" --ServerApp.port_retries=0 \
  --MappingKernelManager.default_kernel_name="$KERNEL_NAME" "$@" >"$tmp/server.log" 2>&1 &
server_pid=$!
echo "server: http://127.0.0.1:$port/lab (pid $server_pid, runtime dir $tmp/runtime)"

# waits for the server, asks it for its status, the lab page and the kernel specs, then starts the course's
# kernel and every one a notebook names, and runs one line in each over its websocket, as the lab page does
JUPYTER_TOKEN="$token" "$PY" - "http://127.0.0.1:$port" "$timeout_s" "$server_pid" "$tmp/server.log" "$had_mplbackend" "$KERNEL_NAME" <<'EOF'
import asyncio
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

base, timeout, pid, log, user_mplbackend = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
named = {json.loads(p.read_text()).get("metadata", {}).get("kernelspec", {}).get("name") for p in Path("notebooks").glob("*.ipynb")}
kernel_names = [sys.argv[6], *sorted(named - {sys.argv[6], None})]
auth = {"Authorization": f"token {os.environ['JUPYTER_TOKEN']}"}
deadline = time.monotonic() + timeout


def fail(message):
    with open(log, errors="replace") as f:
        tail = "".join(f.readlines()[-30:])
    sys.exit(f"lab.sh --check: {message}\n--- the server's log (last lines) ---\n{tail}")


def request(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers={**auth, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=max(1.0, deadline - time.monotonic())) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as err:
        fail(f"{method} {path} answered {err.code} {err.reason}")


def server_running():
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


while True:
    try:
        status, _, body = request("GET", "/api/status")
        break
    except (urllib.error.URLError, OSError):
        if not server_running():
            fail("the server exited before it answered")
        if time.monotonic() > deadline:
            fail(f"no answer from {base} within {timeout:.0f} s")
        time.sleep(0.25)
server_status = json.loads(body)
lab_status, lab_type, lab_page = request("GET", "/lab")
if lab_status != 200 or not lab_type.startswith("text/html") or b"jupyter-config-data" not in lab_page:
    fail(f"GET /lab answered {lab_status} {lab_type}, not JupyterLab's page")
_, _, body = request("GET", "/api/kernelspecs")
kernelspecs = json.loads(body)
missing = [name for name in kernel_names if name not in kernelspecs["kernelspecs"]]
if missing:
    fail(f"the server lists no kernel {missing} (it has {sorted(kernelspecs['kernelspecs'])})")
print(f"answer: GET /api/status {status} (started {server_status.get('started')}), GET /lab {lab_status} {lab_type.split(';')[0]}, "
      f"kernels {sorted(kernelspecs['kernelspecs'])}, default {kernelspecs['default']!r}")
if kernelspecs["default"] != kernel_names[0]:
    fail(f"the default kernel for new notebooks is {kernelspecs['default']!r}, not {kernel_names[0]!r}")

INLINE = "module://matplotlib_inline.backend_inline"
CODE = ("import importlib.util, json, os, sys; spec = importlib.util.find_spec('tutorial_lib'); "
        "print(json.dumps({'executable': sys.executable, 'prefix': sys.prefix, 'tutorial_lib': spec and spec.origin, "
        "'MPLBACKEND': os.environ.get('MPLBACKEND')}))")


async def run_line(kernel_id):
    """Runs CODE in the kernel through its websocket (the lab page's channel) and returns what it printed."""
    ws_url = base.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4().hex}"
    conn = await websocket_connect(HTTPRequest(ws_url, headers=auth))
    msg_id = uuid.uuid4().hex
    header = {"msg_id": msg_id, "msg_type": "execute_request", "username": "lab-check", "session": uuid.uuid4().hex,
              "date": "", "version": "5.3"}
    content = {"code": CODE, "silent": False, "store_history": False, "user_expressions": {}, "allow_stdin": False,
               "stop_on_error": True}
    await conn.write_message(json.dumps({"header": header, "parent_header": {}, "metadata": {}, "content": content,
                                         "channel": "shell", "buffers": []}))
    printed = []
    try:
        while True:
            raw = await asyncio.wait_for(conn.read_message(), max(0.1, deadline - time.monotonic()))
            if raw is None:
                raise RuntimeError("the kernel's websocket closed")
            if isinstance(raw, bytes):
                continue
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                printed.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                raise RuntimeError(f"{msg['content']['ename']}: {msg['content']['evalue']}")
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return json.loads("".join(printed))
    finally:
        conn.close()


async def check_kernels():
    started = {name: json.loads(request("POST", "/api/kernels", {"name": name})[2])["id"] for name in kernel_names}
    try:
        return dict(zip(started, await asyncio.gather(*(run_line(kid) for kid in started.values()))))
    finally:
        for kid in started.values():
            request("DELETE", f"/api/kernels/{kid}")


try:
    ran = asyncio.run(check_kernels())
except (asyncio.TimeoutError, TimeoutError):
    fail(f"the kernels did not answer within {timeout:.0f} s of the check's start")
except (RuntimeError, OSError, ValueError) as err:
    fail(f"running a line in a kernel failed: {err}")
here = os.path.realpath(sys.prefix)
for name, info in ran.items():
    display = kernelspecs["kernelspecs"][name]["spec"]["display_name"]
    print(f"kernel {name} ({display}): ran {info['executable']} (environment {info['prefix']}), tutorial_lib from {info['tutorial_lib']}"
          + ("" if name == kernel_names[0] else "; the notebooks name this kernel"))
    if os.path.realpath(info["prefix"]) != here:
        fail(f"the kernel {name!r} runs {info['executable']}, outside this environment ({sys.prefix})")
    if info["tutorial_lib"] is None:
        fail(f"the kernel {name!r} cannot import tutorial_lib")
    # unless the user set MPLBACKEND, ipykernel picks its inline backend: _env.sh's Agg must not reach the kernels
    if info["MPLBACKEND"] not in ({os.environ.get("MPLBACKEND")} if user_mplbackend else {None, INLINE}):
        fail(f"the kernel {name!r} has MPLBACKEND={info['MPLBACKEND']!r}: the notebooks' figures would not show inline")
EOF

pid="$server_pid"
if ! stop_server; then
  exit 1
fi
if ls "$tmp/runtime"/jpserver-*.json >/dev/null 2>&1; then
  echo "lab.sh --check: the server stopped without removing its runtime files" >&2
  exit 1
fi
echo "server stopped: pid $pid exited on SIGTERM and removed its runtime files"
echo "check passed in ${SECONDS} s"
