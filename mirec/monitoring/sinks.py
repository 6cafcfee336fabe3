"""Alert sinks: Prometheus metrics (text exposition file / push gateway) and a webhook POST whose
body is an Alertmanager webhook payload (version 4) with an extra `text` field for Slack."""

from __future__ import annotations

import math
import time
from datetime import datetime

from mirec.monitoring.config import CHECKS

#: measure key in a group's values -> Prometheus metric name (the chart's PrometheusRule uses these)
GAUGES = {
    "mean_pairwise_cos": "mirec_monitor_mean_pairwise_cos",
    "effective_interests": "mirec_monitor_effective_interests",
    "single_interest_share": "mirec_monitor_single_interest_share",
    "dead_interests": "mirec_monitor_dead_interests",
    "category_drift_score": "mirec_monitor_category_drift_score",
    "ild": "mirec_monitor_ild",
    "coverage": "mirec_monitor_coverage",
    "exposure_gini": "mirec_monitor_exposure_gini",
    "fallback_rate": "mirec_monitor_fallback_rate",
    "unknown_item_rate": "mirec_monitor_unknown_item_rate",
    "window_requests": "mirec_monitor_window_requests",
    "history_category_drift_score": "mirec_monitor_history_category_drift_score",
    "under_delivered_rate": "mirec_monitor_under_delivered_rate",
}
HELP = {
    "mirec_monitor_mean_pairwise_cos": "Mean pairwise cosine between a user's interests (window mean)",
    "mirec_monitor_effective_interests": "Effective number of interests supplying a served list (window mean)",
    "mirec_monitor_single_interest_share": "Share of answers whose whole list came from one interest",
    "mirec_monitor_dead_interests": "Interest slots that supplied no served item in the window",
    "mirec_monitor_category_drift_score": "Drift score of the served-category mix vs the reference (Evidently)",
    "mirec_monitor_ild": "Mean category intra-list diversity of served lists",
    "mirec_monitor_coverage": "Distinct served items / catalogue size in the window",
    "mirec_monitor_exposure_gini": "Gini coefficient of item exposure over the catalogue",
    "mirec_monitor_fallback_rate": "Share of answers served by the popularity fallback",
    "mirec_monitor_unknown_item_rate": "Share of request history items unknown to the model",
    "mirec_monitor_window_requests": "Answers in the monitored window",
    "mirec_monitor_history_category_drift_score": "Drift score of the users' history-category mix vs the reference",
    "mirec_monitor_under_delivered_rate": "Share of (user, strong history category) pairs under-delivered",
}


def registry_for(groups: list[dict]):
    """A prometheus_client registry holding the gauges of every (model, arm) group."""
    from prometheus_client import CollectorRegistry, Gauge

    reg = CollectorRegistry()
    alert = Gauge("mirec_monitor_alert", "1 when the monitoring check fires for the model/arm in the last window",
                  ["check", "model", "arm"], registry=reg)
    gauges = {name: Gauge(name, HELP[name], ["model", "arm"], registry=reg) for name in GAUGES.values()}
    under = Gauge("mirec_monitor_under_delivered_users", "Users for whom the category is strong in the history but "
                  "under-delivered in the window (top categories only)", ["model", "arm", "category"], registry=reg)
    last = Gauge("mirec_monitor_last_run_timestamp_seconds", "Unix time of the last monitoring run", registry=reg)
    for g in groups:
        lab = {"model": g["model"], "arm": g["arm"]}
        for check in CHECKS:
            alert.labels(check=check, **lab).set(1.0 if g["checks"].get(check, {}).get("firing") else 0.0)
        for row in g.get("under_delivered_top") or []:
            under.labels(category=str(row["category"]), **lab).set(float(row["users_under_delivered"]))
        for key, name in GAUGES.items():
            v = g["values"].get(key)
            if isinstance(v, (int, float)) and not math.isnan(float(v)):
                gauges[name].labels(**lab).set(float(v))
    last.set(time.time())
    return reg


def write_prom_file(groups: list[dict], path) -> None:
    from prometheus_client import write_to_textfile

    write_to_textfile(str(path), registry_for(groups))


def push_gateway(groups: list[dict], url: str, job: str = "mirec_monitor") -> None:
    from prometheus_client import push_to_gateway

    push_to_gateway(url, job=job, registry=registry_for(groups), timeout=10)


def alertmanager_payload(alerts: list[dict], window: dict, external_url: str = "") -> dict:
    """Alertmanager webhook (version 4) body + `text` (Slack incoming-webhook field)."""
    firing = [a for a in alerts if a["status"] == "firing"]
    items = []
    for a in alerts:
        items.append({
            "status": a["status"],
            "labels": {"alertname": "MirecMonitor", "check": a["check"], "model": a["model"], "arm": a["arm"],
                       "severity": a.get("severity", "warning")},
            "annotations": {"summary": a["summary"], "description": a["description"]},
            "startsAt": window["end"],
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": external_url,
            "fingerprint": f"{a['check']}-{a['model']}-{a['arm']}",
        })
    common = {"alertname": "MirecMonitor"}
    lines = [f"*mirec monitor* window {window['start']} .. {window['end']}: "
             f"{len(firing)} alert(s) firing" if firing else f"*mirec monitor* window {window['start']} .. {window['end']}: resolved"]
    lines += [f"- [{a['check']}] {a['model']}/{a['arm']}: {a['summary']}" for a in firing]
    return {
        "version": "4",
        "groupKey": "{}:{alertname=\"MirecMonitor\"}",
        "truncatedAlerts": 0,
        "status": "firing" if firing else "resolved",
        "receiver": "mirec-monitor",
        "groupLabels": common,
        "commonLabels": common,
        "commonAnnotations": {},
        "externalURL": external_url,
        "alerts": items,
        "text": "\n".join(lines),
    }


def post_webhook(url: str, payload: dict, timeout: float = 10.0, retries: int = 2) -> dict:
    """POST the payload as JSON; -> {"ok", "status_code" | "error"}. Never raises."""
    import requests

    last: dict = {}
    for attempt in range(retries + 1):
        try:
            r = requests.post(url, json=payload, timeout=timeout)
            last = {"ok": 200 <= r.status_code < 300, "status_code": r.status_code}
            if last["ok"] or r.status_code < 500:
                return last
        except requests.RequestException as exc:
            last = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        if attempt < retries:
            time.sleep(0.5 * (attempt + 1))
    return last


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")
