"""The chart's side of issue 15: the fetch-models init container verifies each MAR's sha256 (the script the chart
renders, run here with sh + curl on file:// URLs), the API's readiness probe is /readyz and its startup/liveness
probe /healthz, and the rendered api.yaml with access control loads with the project's settings model."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "mirec"
HELM = os.environ.get("MIREC_HELM") or str(ROOT / ".tools" / "bin" / "helm")
pytestmark = pytest.mark.skipif(not Path(HELM).exists() and shutil.which(HELM) is None,
                                reason="helm not in .tools/bin (scripts/get-helm-tools.sh; tests/test_chart.py fetches it)")


def render(*args: str) -> list[dict]:
    proc = subprocess.run([HELM, "template", "rec", str(CHART), "-n", "recsys", "--skip-tests", *args],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "KUBECONFIG": os.devnull})
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def serving_pod(docs):
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-serving"))
    return dep["spec"]["template"]["spec"]


def test_fetcher_verifies_the_mar_sha256(tmp_path):
    if shutil.which("curl") is None or shutil.which("sha256sum") is None:
        pytest.skip("curl / sha256sum not available to run the fetcher script")
    src = tmp_path / "bucket"
    src.mkdir()
    (src / "mirec_a.mar").write_bytes(b"A" * 1000)
    (src / "mirec_b.mar").write_bytes(b"B" * 1000)
    sums = {n: hashlib.sha256((src / n).read_bytes()).hexdigest() for n in ("mirec_a.mar", "mirec_b.mar")}
    models = [{"name": n[:-4], "marFile": n, "version": "1.0", "minWorkers": 1, "maxWorkers": 1, "batchSize": 8,
               "maxBatchDelayMs": 1, "responseTimeoutS": 30, "sha256": sums[n]} for n in sums]
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"torchserve": {"models": models, "modelStore": {
        "type": "url", "url": {"baseUrl": f"file://{src}"}}}}))
    pod = serving_pod(render("-f", str(values)))
    fetch = next(c for c in pod["initContainers"] if c["name"] == "fetch-models")
    env = {e["name"]: e["value"] for e in fetch["env"] if "value" in e}
    assert env["MODEL_SHA256"].splitlines() == [f"{sums[n]}  {n}" for n in sums]

    def run(dest: Path) -> subprocess.CompletedProcess:
        dest.mkdir()
        e = {**os.environ, **env, "DEST": str(dest), "HOME": str(tmp_path)}
        return subprocess.run(fetch["command"], env=e, capture_output=True, text=True, timeout=60)

    ok = run(tmp_path / "ok")
    assert ok.returncode == 0, ok.stderr
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["mirec_a.mar", "mirec_b.mar"]
    (src / "mirec_b.mar").write_bytes(b"B" * 500)  # the bucket holds a truncated upload
    bad = run(tmp_path / "bad")
    assert bad.returncode != 0 and "sha256 mismatch" in bad.stderr, (bad.stdout, bad.stderr)
    assert not (tmp_path / "bad" / "mirec_b.mar").exists()  # nothing unverified is left for TorchServe
    # without sha256 values nothing is checked (older package.json)
    for m in models:
        m.pop("sha256")
    values.write_text(yaml.safe_dump({"torchserve": {"models": models, "modelStore": {
        "type": "url", "url": {"baseUrl": f"file://{src}"}}}}))
    fetch = next(c for c in serving_pod(render("-f", str(values)))["initContainers"] if c["name"] == "fetch-models")
    assert next(e for e in fetch["env"] if e["name"] == "MODEL_SHA256")["value"] == ""


def test_api_probes_liveness_vs_readiness():
    api = next(c for c in serving_pod(render())["containers"] if c["name"] == "api")
    assert api["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_api_keys_from_a_secret(tmp_path):
    from mirec.serving.settings import load_settings

    docs = render("--set", "api.auth.apiKeysSecret=mirec-api-keys", "--set", "api.auth.rateLimitPerS=50")
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-api"))
    (tmp_path / "api.yaml").write_text(cm["data"]["api.yaml"])
    s = load_settings(tmp_path / "api.yaml")
    assert s.auth.api_keys_file == "/etc/mirec-api-keys/api-keys.yaml" and s.auth.rate_limit_per_s == 50
    assert s.docs is False
    pod = serving_pod(docs)
    api = next(c for c in pod["containers"] if c["name"] == "api")
    mount = next(m for m in api["volumeMounts"] if m["mountPath"] == "/etc/mirec-api-keys")
    vol = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert vol["secret"]["secretName"] == "mirec-api-keys" and mount["readOnly"]
    # off by default: no auth block, no mount
    cm = next(d for d in render() if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-api"))
    assert "auth" not in yaml.safe_load(cm["data"]["api.yaml"])
