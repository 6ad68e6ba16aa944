# Sourced by scripts/test.sh, scripts/reproduce.sh and scripts/lab.sh: make the virtual environment
# ($TUTORIAL_VENV, default .venv) and install the project into it (with its dev and notebook extras) when it
# is missing or pyproject.toml changed since the last install. The environment's Python is
# $TUTORIAL_PYTHON if set, else the first of python3.11, python3, python3.13, python3.12 that is a
# Python 3.11-3.13 (pyproject.toml's requires-python: transformers 5.24 needs 3.11 or newer).
VENV="${TUTORIAL_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  base="${TUTORIAL_PYTHON:-}"
  if [ -z "$base" ]; then
    for candidate in python3.11 python3 python3.13 python3.12; do
      if command -v "$candidate" >/dev/null 2>&1 \
         && "$candidate" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' 2>/dev/null; then
        base="$candidate"
        break
      fi
    done
  fi
  if [ -z "$base" ]; then
    echo "no Python 3.11, 3.12 or 3.13 found on PATH: install one, or set TUTORIAL_PYTHON=/path/to/python3.x" >&2
    return 1 2>/dev/null || exit 1
  fi
  echo "creating $VENV with $("$base" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
  "$base" -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.tutorial_lib-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing tutorial_lib and its dependencies into $VENV ..."
  "$PY" -m pip install --quiet --upgrade pip
  # torch first, pinned, so that nothing else can pull a different build
  "$PY" -m pip install --quiet "torch==2.13.0"
  "$PY" -m pip install --quiet -e ".[dev,notebooks]"
  echo "$want" > "$stamp"
fi
export TQDM_DISABLE="${TQDM_DISABLE:-}"
export MPLBACKEND="${MPLBACKEND:-Agg}"
