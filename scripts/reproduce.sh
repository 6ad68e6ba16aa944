#!/usr/bin/env bash
# The reproduction: runs the course's experiments at the default profile (or --profile NAME) and
# writes markdown + JSON tables and PNG figures under results/. Sets itself up on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_env.sh
exec "$PY" -m tutorial_lib.course.reproduce "$@"
