#!/usr/bin/env bash
# Every test: the library (tiny profile) and all notebooks under nbval (small profile).
# Sets itself up on a fresh machine. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_env.sh
export TUTORIAL_PROFILE="${TUTORIAL_PROFILE:-small}"
export TUTORIAL_CACHE_DIR="${TUTORIAL_CACHE_DIR:-$PWD/.cache/tutorial_lib}"
export PYDEVD_DISABLE_FILE_VALIDATION=1
# the notebooks' models are trained (or found in the cache) here, so that no notebook cell trains one
"$PY" -m tutorial_lib.warm_cache --profile "$TUTORIAL_PROFILE"
rc=0
"$PY" -m pytest tests notebooks --nbval --nbval-current-env --nbval-cell-timeout=1800 -p no:cacheprovider --durations=15 "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
