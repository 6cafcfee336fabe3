#!/usr/bin/env bash
# The main job, end to end on the embedded default (synthetic) data. Extra args go to `mirec main`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mirec main "$@"
