#!/usr/bin/env bash
# Every test: the library (tiny profile), all notebooks under nbval (small profile), then the course's HTML
# pages, rendered from the notebooks nbval ran, opened in headless Chromium. Sets itself up on a fresh
# machine. Extra arguments go to both pytest runs (library and notebooks).
#
# Where the time goes: the cache warm-up runs the notebooks' models and studies in one worker process per
# core (one torch thread each); then the library tests and the notebooks run side by side, one torch thread
# each, their logs printed when both are done. With $TUTORIAL_ALSO_PYTHON set (CI sets the newest Python on
# the machine, e.g. a python3.13), the fast library tests (-m "not slow") also run under that Python, in
# .venv-py<version>, installed in the background while the cache warms, and started when the first of the two
# others is done. The run ends with a time breakdown.
set -euo pipefail
cd "$(dirname "$0")/.."
logs="$(mktemp -d "${TMPDIR:-/tmp}/tutorial-test.XXXXXX")"
executed="$logs/executed"  # nbval writes each notebook it ran here (notebooks/conftest.py), for the page test
trap 'rm -rf "$logs"' EXIT
start=$(date +%s)
last=$start
breakdown=()
mark() {  # mark LABEL: the time since the previous mark, into the breakdown
  local now
  now=$(date +%s)
  breakdown+=("$(printf '%6d s  %s' $((now - last)) "$1")")
  last=$now
}

also="${TUTORIAL_ALSO_PYTHON:-}"
if [ -n "$also" ]; then  # its environment installs in the background (mostly downloads) while the cache warms
  also_version="$("$also" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  also_venv=".venv-py$also_version"
  echo "installing the environment for Python $also_version ($also) in $also_venv in the background"
  ( rc=0; TUTORIAL_VENV="$also_venv" TUTORIAL_PYTHON="$also" bash -c 'source scripts/_env.sh' > "$logs/also-env.log" 2>&1 || rc=$?
    echo "$rc" > "$logs/also-env.rc" ) &
fi

source scripts/_env.sh
mark "set-up: environment ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"
export TUTORIAL_PROFILE="${TUTORIAL_PROFILE:-small}"
export PYDEVD_DISABLE_FILE_VALIDATION=1
# tests/course/test_course_html.py opens the rendered course in Debian's headless Chromium. In CI it must run
# (it fails without Chromium); elsewhere it is skipped, with a message, where Chromium cannot be installed.
if [ -n "${CI:-}" ]; then
  export TUTORIAL_REQUIRE_BROWSER=1
fi
if [ ! -x /usr/bin/chromium ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  if command -v apt-get >/dev/null 2>&1 && { [ -z "$sudo" ] || sudo -n true 2>/dev/null; }; then
    echo "installing Debian's chromium for the HTML page test: ${sudo:+$sudo }apt-get install chromium"
    if ! { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }; then
      echo "could not install chromium; tests/course/test_course_html.py will ${CI:+fail}${CI:-be skipped}" >&2
    fi
  else
    echo "Chromium (/usr/bin/chromium) is missing and cannot be installed here (no apt-get, or no root and no"
    echo "password-less sudo): tests/course/test_course_html.py will ${CI:+fail}${CI:-be skipped}."
  fi
  mark "set-up: chromium"
fi

# the notebooks' models and studies are trained (or found in the cache) here, so that no notebook cell
# trains one; the cache is the default one that the notebooks and the reproduction use too
"$PY" -m tutorial_lib.course.warm_cache --profile "$TUTORIAL_PROFILE" --report "$logs/warm.tsv"
mark "warm-up of the cache (by item below)"

# (MPLBACKEND unset: the notebooks' kernels then draw figures inline, so the executed notebooks and pages hold them)
( t=$(date +%s); rc=0
  OMP_NUM_THREADS=1 TUTORIAL_JOBS=1 "$PY" -m pytest tests -p no:cacheprovider --durations=15 \
    --ignore=tests/course/test_course_html.py "$@" > "$logs/library.log" 2>&1 || rc=$?
  echo "$rc $(( $(date +%s) - t ))" > "$logs/library.rc"
 ) &
library_pid=$!
( t=$(date +%s); rc=0
  OMP_NUM_THREADS=1 env -u MPLBACKEND TUTORIAL_EXECUTED_DIR="$executed" "$PY" -m pytest notebooks --nbval --nbval-current-env \
    --nbval-cell-timeout=1800 -p no:cacheprovider --durations=10 "$@" > "$logs/notebooks.log" 2>&1 || rc=$?
  echo "$rc $(( $(date +%s) - t ))" > "$logs/notebooks.rc"
  t=$(date +%s); rc=0
  TUTORIAL_EXECUTED_DIR="$executed" "$PY" -m pytest tests/course/test_course_html.py -p no:cacheprovider --durations=5 \
    > "$logs/pages.log" 2>&1 || rc=$?
  echo "$rc $(( $(date +%s) - t ))" > "$logs/pages.rc" ) &
notebooks_pid=$!
echo "library tests and notebooks running side by side (one torch thread each; logs printed when both are done) ..."
if [ -n "$also" ]; then  # the fast tests under the other Python start when the first of the two is done
  wait -n "$library_pid" "$notebooks_pid" || true
  ( t=$(date +%s)
    while [ ! -f "$logs/also-env.rc" ]; do sleep 2; done
    rc=0
    if [ "$(cat "$logs/also-env.rc")" = 0 ]; then
      OMP_NUM_THREADS=1 TUTORIAL_JOBS=1 "$also_venv/bin/python" -m pytest tests -m "not slow" -p no:cacheprovider -q \
        --ignore=tests/course/test_course_html.py "$@" > "$logs/also.log" 2>&1 || rc=$?
    else
      cp "$logs/also-env.log" "$logs/also.log"; rc=1
    fi
    echo "$rc $(( $(date +%s) - t ))" > "$logs/also.rc" ) &
fi
wait || true
mark "the tests, two at a time, one torch thread each (by part below)"

status=0
parts=()
collected=0
for part in library also notebooks pages; do
  [ -f "$logs/$part.rc" ] || continue
  read -r rc seconds < "$logs/$part.rc"
  case $part in
    library) title="library tests (Python $("$PY" -c 'import sys; print(sys.version.split()[0])'))" ;;
    also) title="fast library tests (-m \"not slow\") under Python $also_version" ;;
    notebooks) title="notebooks under nbval (profile $TUTORIAL_PROFILE)" ;;
    pages) title="HTML pages in Chromium" ;;
  esac
  echo
  echo "=============== $title: exit $rc, $seconds s ==============="
  cat "$logs/$part.log"
  if [ "$rc" -eq 5 ]; then  # extra arguments may select nothing in one part; the pages always have tests
    echo "$title: pytest collected no tests" >&2
    if [ "$part" = pages ]; then status=1; fi
  elif [ "$rc" -ne 0 ]; then
    status=1
  fi
  if [ "$rc" -ne 5 ] && { [ "$part" = library ] || [ "$part" = notebooks ]; }; then collected=1; fi
  parts+=("$(printf '%6d s    %s (exit %s)' "$seconds" "$title" "$rc")")
done

if [ "$collected" -eq 0 ]; then
  echo "pytest collected no tests: failing" >&2
  status=1
fi

echo
echo "=============== time breakdown (wall clock) ==============="
for line in "${breakdown[@]}"; do
  echo "$line"
  case $line in
    *"warm-up of the cache"*) sort -rn "$logs/warm.tsv" | awk -F'\t' '{printf "%14d s  %s\n", $1, $2}' ;;
    *"two at a time"*)
      for p in "${parts[@]}"; do echo "    $p"; done
      grep -E '^[0-9]{2}_.*\.ipynb: [0-9]+ s$' "$logs/notebooks.log" | sed 's/^/               /' || true ;;
  esac
done
printf '%6d s  in all\n' $(( $(date +%s) - start ))
exit "$status"
