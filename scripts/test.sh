#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs, then runs pytest.
# pytest's exit code 5 ("no tests collected") is a failure here, not a pass.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -f scripts/get-test-services.sh ]; then bash scripts/get-test-services.sh; fi
if [ -f scripts/get-helm-tools.sh ]; then bash scripts/get-helm-tools.sh --checkov >/dev/null; fi
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi
exit "$rc"
