"""The chart reads the pipeline's release and survives a rollout (issue 16, items 1 and 5): the rendered chart
(helm template, no cluster) with the production profile and the deploy step's release file layered on it."""

from __future__ import annotations

import json

import yaml

from test_chart import (CHART, FULL, KSERVE, PROD_VALUES, RELEASE_VALUES, _helm, configmap_file, helm, one,  # noqa: F401
                        pod_spec, properties, render)

PROD_RELEASE = ["-f", str(PROD_VALUES), "-f", str(RELEASE_VALUES)]


def _render(helm, *args: str) -> list[dict]:
    out = _helm(helm, "template", "rec", str(CHART), "-n", "recsys", *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _container(spec: dict, name: str, init: bool = False) -> dict:
    return next(c for c in spec["initContainers" if init else "containers"] if c["name"] == name)


def test_serving_pods_fetch_the_release_with_credentials_and_checksums(helm):
    docs = _render(helm, *PROD_RELEASE, "--set", "release.endpointUrl=https://minio.example.internal")
    spec = pod_spec(one(docs, "Deployment", f"{FULL}-serving"))
    fetch = _container(spec, "fetch-models", init=True)
    assert fetch["command"] == ["mirec", "release", "fetch", "--part", "model-store", "--strip", "--dest",
                                "/home/model-server/model-store"]
    env = {e["name"]: e.get("value") for e in fetch["env"]}
    release = yaml.safe_load(RELEASE_VALUES.read_text())["release"]["uri"]
    assert env["MIREC_RELEASE_URI"] == release and env["AWS_ENDPOINT_URL"] == "https://minio.example.internal"
    assert fetch["envFrom"] == [{"secretRef": {"name": "mirec-object-store"}}]  # S3 signing credentials
    assert fetch["image"].startswith("ghcr.io/mirec-project/mirec:")  # the project image: `mirec release` is in it
    vols = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in vols["model-store"]
    # KServe reads the same release
    kdocs = _render(helm, *PROD_RELEASE, "--set", "kserve.enabled=true")
    isvc = one(kdocs, "InferenceService", f"{FULL}-ts")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == release


def test_monitoring_cronjob_reads_the_releases_reference(helm):
    docs = render(helm, "production")
    job = one(docs, "CronJob", f"{FULL}-monitor")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    init = _container(job, "fetch-reference", init=True)
    assert init["command"][:5] == ["mirec", "release", "fetch", "--part", "reference"]
    assert init["envFrom"] == [{"secretRef": {"name": "mirec-object-store"}}]
    args = _container(job, "monitor")["args"]
    assert args[args.index("--reference") + 1] == "/var/run/mirec/release/reference"
    # the webhook Secret key is the one values-production.yaml documents (and the monitoring pipeline reads)
    env = {e["name"]: e for e in _container(job, "monitor")["env"]}
    assert env["MIREC_MONITOR_WEBHOOK_URL"]["valueFrom"]["secretKeyRef"] == {"name": "mirec-monitor-webhook",
                                                                             "key": "webhook-url"}


def test_release_file_keeps_production_settings_and_sets_versions_and_split(helm):
    docs = render(helm, "production")
    props = properties(configmap_file(docs, f"{FULL}-torchserve", "config.properties"))
    snap = json.loads(props["model_snapshot"])
    for name in ("mirec_a", "mirec_b"):
        v = snap["models"][name]["20261201"]  # the release's version ...
        assert (v["minWorkers"], v["maxWorkers"], v["batchSize"], v["maxBatchDelay"], v["responseTimeout"]) == \
            (2, 4, 32, 2, 10)  # ... production's workers, batch and timeouts
    api = yaml.safe_load(configmap_file(docs, f"{FULL}-api", "api.yaml"))
    assert [a["weight"] for a in api["experiment"]["arms"]] == [0.9, 0.1]
    assert api["experiment"]["salt"] == "exp-2026-q4"  # the profile's, untouched by the release


def test_rollouts_drain_before_stopping(helm):
    docs = render(helm, "production")
    spec = pod_spec(one(docs, "Deployment", f"{FULL}-serving"))
    grace = spec["terminationGracePeriodSeconds"]
    ts, api = _container(spec, "torchserve"), _container(spec, "api")
    for c in (ts, api):
        cmd = c["lifecycle"]["preStop"]["exec"]["command"]
        assert cmd[0] == "sleep" and 0 < int(cmd[1]) < grace
    # TorchServe runs under the image's signal-handling entrypoint (SIGTERM -> torchserve --stop)
    assert ts["command"] == ["mirec-torchserve-entrypoint"] and ts["args"][0] == "torchserve"


def test_api_liveness_does_not_depend_on_torchserve(helm):
    values = yaml.safe_load((CHART / "values.yaml").read_text())["api"]
    for profile in ("default", "production"):
        api = _container(pod_spec(one(render(helm, profile), "Deployment", f"{FULL}-serving")), "api")
        assert api["livenessProbe"]["httpGet"]["path"] == values["livenessPath"] == "/healthz"
        assert api["readinessProbe"]["httpGet"]["path"] == values["readinessPath"] != values["livenessPath"]


def test_helm_test_passes_production_networkpolicy_and_pulls_private_images(helm):
    out = _helm(helm, "template", "rec", str(CHART), "-n", "recsys", *PROD_RELEASE,
                "--set-json", 'imagePullSecrets=[{"name": "mirec-registry"}]').stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    test_pod = one(docs, "Pod", f"{FULL}-test-api")
    assert test_pod["spec"]["imagePullSecrets"] == [{"name": "mirec-registry"}]
    policy = one(docs, "NetworkPolicy", f"{FULL}-serving")
    peers = policy["spec"]["ingress"][0]["from"]
    labels = test_pod["metadata"]["labels"]
    admitted = [p for p in peers if "podSelector" in p and "namespaceSelector" not in p
                and all(labels.get(k) == v for k, v in p["podSelector"]["matchLabels"].items())]
    assert admitted, f"no ingress peer admits the helm test pod {labels}: {peers}"


def test_kserve_predictor_has_probes(helm):
    docs = _render(helm, *KSERVE)
    model = one(docs, "InferenceService", f"{FULL}-ts")["spec"]["predictor"]["model"]
    assert model["readinessProbe"]["httpGet"] == {"path": "/ping", "port": 8080}
    assert model["startupProbe"]["httpGet"]["path"] == "/ping" and "tcpSocket" in model["livenessProbe"]


def test_production_redis_leaves_room_for_the_aof_rewrite(helm):
    prod = yaml.safe_load(PROD_VALUES.read_text())["feast"]["onlineStore"]["redis"]
    assert prod["persistence"]["enabled"]
    gb = float(prod["maxmemory"].rstrip("gb"))
    limit_gi = float(prod["resources"]["limits"]["memory"].rstrip("Gi"))
    assert gb <= 0.6 * limit_gi


def test_production_feast_registry_is_the_shared_sql_registry(helm):
    docs = render(helm, "production")
    store = yaml.safe_load(configmap_file(docs, f"{FULL}-feast", "feature_store.yaml"))
    assert store["registry"]["registry_type"] == "sql"
    assert store["registry"]["path"].startswith("postgresql+psycopg://")
    for name in (f"{FULL}-serving", f"{FULL}-feast-server"):
        spec = pod_spec(one(docs, "Deployment", name))
        c = spec["containers"][0]
        env = {e["name"]: e for e in c.get("env", [])}
        assert env["FEAST_REGISTRY_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mirec-feast-registry",
                                                                               "key": "password"}, name


def test_images_leave_the_test_tools_out():
    """The Dockerfile installs the lock without DEV_ONLY (pytest, mypy, moto ...): every name there is a locked
    distribution, and nothing the image runs (mirec/, components/, pipelines/, serving/, monitoring/) imports one."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    docker = (root / "Dockerfile").read_text()
    dev_only = re.search(r'^ARG DEV_ONLY="([^"]+)"', docker, flags=re.M).group(1).split()
    assert {"pytest", "mypy", "moto", "kubernetes-validate"} <= set(dev_only)
    locked = {ln.split("==")[0].lower().replace("_", "-") for ln in (root / "requirements.lock").read_text().split()
              if "==" in ln}
    assert not [d for d in dev_only if d.lower() not in locked], "DEV_ONLY names a package the lock lacks"
    assert "grep -viE" in docker and "${DEV_ONLY}" in docker
    modules = {"pytest", "mypy", "moto", "kubernetes_validate", "responses", "cfnlint"}
    offenders = []
    for top in ("mirec", "components", "pipelines", "serving", "monitoring"):
        for f in (root / top).rglob("*.py"):
            for m in re.findall(r"^\s*(?:from|import) (\w+)", f.read_text(), flags=re.M):
                if m in modules:
                    offenders.append(f"{f.relative_to(root)}: {m}")
    assert not offenders, offenders
