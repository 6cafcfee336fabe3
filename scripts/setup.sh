#!/usr/bin/env bash
# Create/refresh .venv with the locked dependencies. Idempotent: re-installs only when
# requirements.lock or pyproject.toml changed. Used by scripts/main.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${MIREC_PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY="$cand"; break
    fi
  done
fi
[ -n "$PY" ] || { echo "error: Python 3.11 is required (set MIREC_PYTHON=/path/to/python3.11)" >&2; exit 2; }

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $PY"
  "$PY" -m venv .venv
fi
want="$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)"
have="$(cat .venv/.mirec-installed 2>/dev/null || true)"
if [ "$want" != "$have" ]; then
  echo "[setup] installing locked dependencies into .venv (first run: a few minutes)"
  start=$(date +%s)
  # pip's 'Location ... is ignored' warnings come from this machine's pip.conf, not from us.
  .venv/bin/python -m pip install -q -U pip 2> >(grep -v 'is ignored: it is neither' >&2)
  .venv/bin/python -m pip install -q -r requirements.lock 2> >(grep -v 'is ignored: it is neither' >&2)
  .venv/bin/python -m pip install -q --no-deps -e . 2> >(grep -vE 'is ignored: it is neither|BuildBackendWarning|^\s' >&2 || true)
  .venv/bin/python -m pip check
  echo "$want" > .venv/.mirec-installed
  echo "[setup] done in $(( $(date +%s) - start )) s"
fi
