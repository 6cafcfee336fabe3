"""Alert sinks: Prometheus metrics (text exposition file / push gateway), Alertmanager's `/api/v2/alerts`, and a
Slack (or generic) webhook. Alert state (which alerts are open) is kept between runs in a JSON file so that an
alert whose check passes again is sent as resolved.

Alertmanager API v2 (`POST <url>/api/v2/alerts`, body: a JSON list of postableAlert):
  {"labels": {"alertname": "MirecMonitor", "check", "model", "arm", "severity"},
   "annotations": {"summary", "description", "runbook"}, "startsAt", "endsAt", "generatorURL"}
A firing alert is re-posted every run with endsAt = now + `resolve_after` (Alertmanager resolves it by itself if
the monitor stops running); a resolved one with endsAt = the window's end.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from mirec.monitoring.config import CHECKS

ALERTNAME = "MirecMonitor"
RUNBOOK = "docs/monitoring.md#runbook"

#: measure key in a group's values -> Prometheus metric name (the chart's PrometheusRule and dashboard use these)
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
    "cold_start_rate": "mirec_monitor_cold_start_rate",
    "window_requests": "mirec_monitor_window_requests",
    "history_category_drift_score": "mirec_monitor_history_category_drift_score",
    "under_delivered_rate": "mirec_monitor_under_delivered_rate",
    "head_share": "mirec_monitor_history_head_share",
}
HELP = {
    "mirec_monitor_mean_pairwise_cos": "Mean pairwise cosine between a user's interests (window mean)",
    "mirec_monitor_effective_interests": "Effective number of interests supplying a served list (window mean)",
    "mirec_monitor_single_interest_share": "Share of answers whose whole list came from one interest",
    "mirec_monitor_dead_interests": "Interest slots that supplied no served item in the window",
    "mirec_monitor_category_drift_score": "Drift score of the served-category mix vs the reference (Evidently)",
    "mirec_monitor_ild": "Mean category intra-list diversity of served lists",
    "mirec_monitor_coverage": "Distinct served items / catalogue size (at the matched number of answers)",
    "mirec_monitor_exposure_gini": "Gini coefficient of item exposure over the catalogue (matched number of answers)",
    "mirec_monitor_fallback_rate": "Share of answers served by the popularity fallback",
    "mirec_monitor_unknown_item_rate": "Share of request history items unknown to the model",
    "mirec_monitor_cold_start_rate": "Share of requests without a known history item",
    "mirec_monitor_window_requests": "Answers in the monitored window",
    "mirec_monitor_history_category_drift_score": "Drift score of the users' history-category mix vs the reference",
    "mirec_monitor_under_delivered_rate": "Share of (user, strong history category) pairs under-delivered",
    "mirec_monitor_history_head_share": "Share of the requests' known history items in the catalogue's head (top 10%)",
}
#: every metric name the monitor exports (the dashboard test checks panels against this)
EXPORTED = sorted({*GAUGES.values(), "mirec_monitor_alert", "mirec_monitor_window_tested", "mirec_monitor_value",
                   "mirec_monitor_limit", "mirec_monitor_under_delivered_users", "mirec_monitor_last_run_timestamp_seconds",
                   "mirec_monitor_log_lines", "mirec_monitor_log_bad_lines", "mirec_monitor_log_bad_line_share",
                   "mirec_monitor_check_error"})


def iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(float(v)) else None


def registry_for(groups: list[dict], log_stats: dict | None = None):
    """A prometheus_client registry holding the gauges of every (model, arm) group and the log quality."""
    from prometheus_client import CollectorRegistry, Gauge

    reg = CollectorRegistry()
    alert = Gauge("mirec_monitor_alert", "1 when the monitoring check fires for the model/arm in the last window",
                  ["check", "model", "arm"], registry=reg)
    tested = Gauge("mirec_monitor_window_tested", "1 when the last window of the model/arm was tested, 0 when it "
                   "had too few answers (insufficient_data) or a check could not run", ["model", "arm"], registry=reg)
    error = Gauge("mirec_monitor_check_error", "1 when a check could not run (a field it needs is missing)",
                  ["check", "model", "arm"], registry=reg)
    value = Gauge("mirec_monitor_value", "Value of a tested measure in the last window (drift scores included)",
                  ["model", "arm", "check", "measure"], registry=reg)
    limit = Gauge("mirec_monitor_limit", "Limit of a tested measure in the last window (bound=lower|upper)",
                  ["model", "arm", "check", "measure", "bound"], registry=reg)
    gauges = {name: Gauge(name, HELP[name], ["model", "arm"], registry=reg) for name in GAUGES.values()}
    under = Gauge("mirec_monitor_under_delivered_users", "Users for whom the category is strong in the history but "
                  "under-delivered in the window (top categories only)", ["model", "arm", "category"], registry=reg)
    last = Gauge("mirec_monitor_last_run_timestamp_seconds", "Unix time of the last monitoring run", registry=reg)
    lines = Gauge("mirec_monitor_log_lines", "Non-empty served-log lines in the window", registry=reg)
    bad = Gauge("mirec_monitor_log_bad_lines", "Bad served-log lines in the window by reason", ["reason"], registry=reg)
    share = Gauge("mirec_monitor_log_bad_line_share", "Share of the window's served-log lines that are bad",
                  registry=reg)
    for g in groups:
        lab = {"model": g["model"], "arm": g["arm"]}
        tested.labels(**lab).set(1.0 if g["status"] in ("ok", "firing") else 0.0)
        for check in CHECKS:
            if check == "log_quality":
                continue
            res = g["checks"].get(check, {})
            alert.labels(check=check, **lab).set(1.0 if res.get("firing") else 0.0)
            error.labels(check=check, **lab).set(1.0 if res.get("error") else 0.0)
        for row in g.get("under_delivered_top") or []:
            under.labels(category=str(row["category"]), **lab).set(float(row["users_under_delivered"]))
        for key, name in GAUGES.items():
            v = _num(g["values"].get(key))
            if v is not None:
                gauges[name].labels(**lab).set(v)
        for check, by in (g.get("limits") or {}).items():
            for measure, lim in by.items():
                v = _num((g.get("tested") or {}).get(measure))
                if v is not None:
                    value.labels(check=check, measure=measure, **lab).set(v)
                for bound in ("lower", "upper"):
                    b = _num(lim.get(bound))
                    if b is not None:
                        limit.labels(check=check, measure=measure, bound=bound, **lab).set(b)
    if log_stats is not None:
        lq = log_stats.get("firing", False)
        alert.labels(check="log_quality", model="*", arm="*").set(1.0 if lq else 0.0)
        lines.set(float(log_stats.get("lines", 0)))
        for reason in ("not_json", "no_ts", "wrong_schema", "unknown_schema_version", "no_interest_stats"):
            bad.labels(reason=reason).set(float((log_stats.get("bad_by_reason") or {}).get(reason, 0)))
        share.set(float(log_stats.get("bad_share", 0.0)))
    last.set(time.time())
    return reg


def write_prom_file(groups: list[dict], path, log_stats: dict | None = None) -> None:
    from prometheus_client import write_to_textfile

    write_to_textfile(str(path), registry_for(groups, log_stats))


def push_gateway(groups: list[dict], url: str, log_stats: dict | None = None, job: str = "mirec_monitor") -> None:
    from prometheus_client import push_to_gateway

    push_to_gateway(url, job=job, registry=registry_for(groups, log_stats), timeout=10)


# ---- alert state -----------------------------------------------------------------------------------------------
def fingerprint(a: dict) -> str:
    return f"{a['check']}|{a['model']}|{a['arm']}"


def load_state(path: Path | None) -> dict:
    if path is None or not path.is_file():
        return {"open": {}}
    try:
        s = json.loads(path.read_text())
        return s if isinstance(s.get("open"), dict) else {"open": {}}
    except ValueError:
        return {"open": {}}


def transition(state: dict, alerts: list[dict], tested: set[tuple[str, str]], window: dict) -> tuple[list[dict], dict]:
    """Firing alerts of this window + the open alerts of tested groups that no longer fire (-> resolved).

    -> (alerts to send, each with status firing|resolved and startsAt, new state). An open alert of a group
    that was not tested this window (insufficient data, check error) stays open, neither resolved nor re-sent."""
    opened = dict(state.get("open", {}))
    out = []
    now_firing = set()
    for a in alerts:
        fp = fingerprint(a)
        now_firing.add(fp)
        starts = opened.get(fp, {}).get("startsAt") or window["end"]
        opened[fp] = {k: a[k] for k in ("check", "model", "arm", "severity", "summary", "description")}
        opened[fp]["startsAt"] = starts
        out.append({**a, "status": "firing", "startsAt": starts})
    for fp, a in list(opened.items()):
        if fp in now_firing:
            continue
        group_tested = (a["model"], a["arm"]) in tested or a["check"] == "log_quality"
        if group_tested:
            out.append({**a, "status": "resolved", "endsAt": window["end"],
                        "summary": f"resolved: {a['summary']}", "description": f"passes again in window {window['name']}"})
            del opened[fp]
    return out, {"open": opened, "updated": window["end"]}


def save_state(path: Path | None, state: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(path)


# ---- Alertmanager v2 ---------------------------------------------------------------------------------------------
def alertmanager_alerts(alerts: list[dict], window: dict, *, resolve_after: timedelta = timedelta(hours=3),
                        generator_url: str = "", now: datetime | None = None) -> list[dict]:
    """The body of `POST /api/v2/alerts`: a list of postableAlert."""
    now = now or datetime.now(timezone.utc)
    out = []
    for a in alerts:
        firing = a["status"] == "firing"
        out.append({
            "labels": {"alertname": ALERTNAME, "check": a["check"], "model": a["model"], "arm": a["arm"] or "-",
                       "severity": a.get("severity", "warning")},
            "annotations": {"summary": a["summary"], "description": a["description"],
                            "runbook": f"{RUNBOOK}-{a['check'].replace('_', '-')}", "window": window["name"]},
            "startsAt": a.get("startsAt") or window["end"],
            "endsAt": iso(now + resolve_after) if firing else a.get("endsAt") or window["end"],
            "generatorURL": generator_url,
        })
    return out


def post_alertmanager(url: str, alerts: list[dict], timeout: float = 10.0, retries: int = 2) -> dict:
    """POST to <url>/api/v2/alerts (url = Alertmanager's base URL, or the full endpoint)."""
    endpoint = url.rstrip("/")
    if not endpoint.endswith("/api/v2/alerts"):
        endpoint += "/api/v2/alerts"
    return post_json(endpoint, alerts, timeout, retries)


# ---- Slack / generic webhook -----------------------------------------------------------------------------------
def slack_text(alerts: list[dict], window: dict) -> str:
    firing = [a for a in alerts if a["status"] == "firing"]
    resolved = [a for a in alerts if a["status"] == "resolved"]
    head = f"*mirec monitor* window {window['start']} .. {window['end']}: "
    head += ", ".join(x for x in (f"{len(firing)} alert(s) firing" if firing else "",
                                  f"{len(resolved)} resolved" if resolved else "") if x) or "no change"
    lines = [head]
    lines += [f"- :red_circle: [{a['check']}] {a['model']}/{a['arm'] or '-'}: {a['headline']}" for a in firing]
    lines += [f"- :large_green_circle: [{a['check']}] {a['model']}/{a['arm'] or '-'}: passes again" for a in resolved]
    return "\n".join(lines)


def webhook_payload(alerts: list[dict], window: dict, external_url: str = "") -> dict:
    """Alertmanager-webhook-shaped body (version 4) + `text` (Slack incoming-webhook field)."""
    firing = [a for a in alerts if a["status"] == "firing"]
    items = [{"status": a["status"],
              "labels": {"alertname": ALERTNAME, "check": a["check"], "model": a["model"], "arm": a["arm"],
                         "severity": a.get("severity", "warning")},
              "annotations": {"summary": a["summary"], "description": a["description"]},
              "startsAt": a.get("startsAt") or window["end"],
              "endsAt": "0001-01-01T00:00:00Z" if a["status"] == "firing" else (a.get("endsAt") or window["end"]),
              "generatorURL": external_url, "fingerprint": fingerprint(a)} for a in alerts]
    common = {"alertname": ALERTNAME}
    return {"version": "4", "groupKey": "{}:{alertname=\"MirecMonitor\"}", "truncatedAlerts": 0,
            "status": "firing" if firing else "resolved", "receiver": "mirec-monitor", "groupLabels": common,
            "commonLabels": common, "commonAnnotations": {}, "externalURL": external_url, "alerts": items,
            "text": slack_text(alerts, window)}


def post_webhook(url: str, payload: dict, timeout: float = 10.0, retries: int = 2) -> dict:
    return post_json(url, payload, timeout, retries)


def post_json(url: str, payload, timeout: float = 10.0, retries: int = 2) -> dict:
    """POST JSON; -> {"ok", "status_code" | "error"}. Never raises; retries on 5xx and connection errors."""
    import requests

    last: dict = {}
    for attempt in range(retries + 1):
        try:
            r = requests.post(url, json=payload, timeout=timeout)
            last = {"ok": 200 <= r.status_code < 300, "status_code": r.status_code}
            if not last["ok"]:
                last["body"] = r.text[:300]
            if last["ok"] or r.status_code < 500:
                return last
        except requests.RequestException as exc:
            last = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        if attempt < retries:
            time.sleep(0.5 * (attempt + 1))
    return last
