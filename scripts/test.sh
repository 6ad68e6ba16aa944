#!/usr/bin/env bash
# Every test: the library (tiny profile), all notebooks under nbval (small profile), then the course's HTML
# pages, rendered from the notebooks nbval ran, opened in headless Chromium.
# Sets itself up on a fresh machine. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_env.sh
export TUTORIAL_PROFILE="${TUTORIAL_PROFILE:-small}"
export TUTORIAL_CACHE_DIR="${TUTORIAL_CACHE_DIR:-$PWD/.cache/tutorial_lib}"
export PYDEVD_DISABLE_FILE_VALIDATION=1
# tests/course/test_course_html.py opens the rendered course in Debian's headless Chromium; without it that
# test fails (this variable), so a failed install shows there instead of stopping the other tests
export TUTORIAL_REQUIRE_BROWSER=1
if [ ! -x /usr/bin/chromium ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "installing Debian's chromium for the HTML page test: ${sudo:+$sudo }apt-get update && ${sudo:+$sudo }apt-get install chromium"
  if ! { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }; then
    echo "could not install chromium; tests/course/test_course_html.py will fail" >&2
  fi
fi
# the notebooks' models are trained (or found in the cache) here, so that no notebook cell trains one
"$PY" -m tutorial_lib.course.warm_cache --profile "$TUTORIAL_PROFILE"
# nbval writes each notebook it ran, with its outputs, into $TUTORIAL_EXECUTED_DIR (notebooks/conftest.py);
# the HTML page test then renders those instead of executing the whole course a second time
executed="$(mktemp -d)"
trap 'rm -rf "$executed"' EXIT
rc=0
# (MPLBACKEND unset: the notebooks' kernels then draw figures inline, so the executed notebooks and pages hold them)
env -u MPLBACKEND TUTORIAL_EXECUTED_DIR="$executed" "$PY" -m pytest tests notebooks --nbval --nbval-current-env --nbval-cell-timeout=1800 \
  -p no:cacheprovider --durations=15 --ignore=tests/course/test_course_html.py "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
html_rc=0
TUTORIAL_EXECUTED_DIR="$executed" "$PY" -m pytest tests/course/test_course_html.py -p no:cacheprovider --durations=5 || html_rc=$?
if [ "$html_rc" -eq 5 ]; then
  echo "the HTML page test collected nothing: failing" >&2
  exit 1
fi
[ "$rc" -ne 0 ] && exit "$rc"
exit "$html_rc"
