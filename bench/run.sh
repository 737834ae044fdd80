#!/bin/bash
# ipcproxy's benchmark in one command (see bench/bench.py for what it runs):
#   bench/run.sh            short run (--reps 2 --window 2)
#   bench/run.sh --full     longer run (--reps 5 --window 4)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY=$(command -v python3)
exec "$PY" "$ROOT/bench/bench.py" "$@"
