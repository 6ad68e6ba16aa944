# Sourced by scripts/test.sh and scripts/reproduce.sh: make .venv and install the project into it
# (with its dev and notebook extras) when it is missing or pyproject.toml changed since the last install.
VENV="${TUTORIAL_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3.11 -m venv "$VENV" 2>/dev/null || python3 -m venv "$VENV"
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
