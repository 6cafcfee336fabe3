"""`run_monitor`: one window of the serving log vs the evaluation reference -> report, alerts, sinks.

Outputs under OUT_DIR/<window>/ (window = <start>_<end>, UTC):
  report.json   Evidently snapshots (one per model/arm group) + the window measures
  report.html   Evidently HTML of the largest group (report-<model>-<arm>.html for the others)
  alerts.json   checks, their Evidently tests, limits, values, under-delivered categories, sink results
  metrics.prom  Prometheus text exposition (also written to --prom-file when given)
Exit code (MonitorResult.exit_code): 0 healthy, 1 an alert fired. Bad input raises DataError (CLI: 2).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from mirec.errors import DataError
from mirec.monitoring import measures as M
from mirec.monitoring import sinks
from mirec.monitoring.config import CHECKS, Thresholds, load_thresholds
from mirec.monitoring.logs import read_window, window_bounds, window_name
from mirec.monitoring.reference import Reference, load_reference

DESCRIPTIONS = {
    "interest_collapse": "interests collapsed (too similar, too few supply the lists, or dead slots)",
    "diversity_drift": "served lists are less diverse than the reference (ILD, coverage, exposure)",
    "category_drift": "the category mix of served items drifted from the reference",
    "input_drift": "request inputs drifted (history length, history categories, unknown items)",
    "fallback_rate": "too many cold-start/popularity fallback answers",
    "under_delivered": "categories strong in users' histories are rarely served",
}


@dataclass
class MonitorResult:
    exit_code: int
    window: dict
    out_dir: Path | None
    groups: list[dict] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)
    sinks: dict = field(default_factory=dict)

    @property
    def firing(self) -> list[str]:
        return sorted({a["check"] for a in self.alerts if a["status"] == "firing"})


def _clean(v):
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s) or "_"


def monitor_records(records: list[dict], reference: Reference, th: Thresholds, *, window: dict,
                    html_dir: Path | None = None, evidently: bool = True,
                    snapshots: list | None = None) -> list[dict]:
    """Check one window's records per (model, arm) group -> group results (no sinks, no files but HTML)."""
    from mirec.monitoring import evidently_report as E

    u = th.under_delivered
    cur_all = M.build_frame(records, reference.item_category, strong_share=u.strong_share,
                            min_delivery_ratio=u.min_delivery_ratio)
    groups = []
    keys = sorted({(r["model"], r.get("arm") or "") for r in records},
                  key=lambda k: -sum(1 for r in records if (r["model"], r.get("arm") or "") == k))
    for gi, (model, arm) in enumerate(keys):
        cur = cur_all[(cur_all["model"] == model) & (cur_all["arm"] == arm)]
        ref, same_model = reference.model_frame(model, u.strong_share, u.min_delivery_ratio)
        recs = [r for r in records if r["model"] == model and (r.get("arm") or "") == arm]
        summary = M.summarise(cur, reference.catalogue_size)
        g = {"model": model, "arm": arm, "requests": summary["window_requests"],
             "reference_model": model if same_model else "(all)", "status": "ok",
             "checks": {}, "values": {}, "limits": {}, "summary": _clean(summary),
             "under_delivered_top": M.under_delivered_top(recs, reference.item_category, u.strong_share,
                                                          u.min_delivery_ratio, u.top_n),
             "evidently": None}
        vals = {k: summary[k] for k in ("window_requests", "mean_pairwise_cos", "effective_interests",
                                         "single_interest_share", "dead_interests", "ild", "coverage",
                                         "exposure_gini", "fallback_rate", "unknown_item_rate", "under_delivered_rate")}
        if summary["window_requests"] < th.min_requests:
            g["status"] = "insufficient_data"
            g["checks"] = {c: {"firing": False, "skipped": f"fewer than min_requests={th.min_requests} answers"}
                           for c in CHECKS}
        elif evidently:
            snap, owner, limits = E.run_report(cur, ref, reference.catalogue_size, th,
                                               name=f"mirec monitor {model}/{arm} {window['name']}",
                                               metadata={"model": model, "arm": arm, **window})
            checks = E.checks_from_snapshot(snap, owner)
            ev = E.metric_values(snap, owner)
            vals["category_drift_score"] = ev.get("served_category_drift")
            vals["history_category_drift_score"] = ev.get("history_category_drift")
            vals["history_len_drift_score"] = ev.get("history_len_drift")
            vals["ild_drift_score"] = ev.get("ild_drift")
            skipped = limits.get("skipped", {})
            g["checks"] = {c: checks.get(c, {"firing": False, "tests": [],
                                             "skipped": "; ".join(f"{k}: {v}" for k, v in skipped.get(c, {}).items())
                                             or "not applicable (single-interest model or no model answers)"})
                           for c in CHECKS}
            for c, why in skipped.items():
                if c in g["checks"] and g["checks"][c].get("tests"):
                    g["checks"][c]["partly_skipped"] = why
            g["limits"] = limits
            g["evidently"] = json.loads(snap.json())
            if snapshots is not None:
                snapshots.append((model, arm, snap))
            if html_dir is not None:
                name = "report.html" if gi == 0 else f"report-{_slug(model)}-{_slug(arm)}.html"
                snap.save_html(str(html_dir / name))
            if any(c["firing"] for c in g["checks"].values()):
                g["status"] = "firing"
        g["values"] = _clean(vals)
        groups.append(g)
    return groups


def _alerts(groups: list[dict]) -> list[dict]:
    out = []
    for g in groups:
        for check, res in g["checks"].items():
            if not res.get("firing"):
                continue
            failed = [t for t in res.get("tests", []) if t["status"] == "FAIL"]
            desc = "; ".join(t["description"] for t in failed) or DESCRIPTIONS[check]
            if check == "under_delivered" and g["under_delivered_top"]:
                desc += "; top under-delivered: " + ", ".join(
                    f"{x['category']} ({x['users_under_delivered']}/{x['users_strong']} users)" for x in g["under_delivered_top"])
            out.append({"status": "firing", "check": check, "model": g["model"], "arm": g["arm"],
                        "severity": "critical" if check == "interest_collapse" else "warning",
                        "summary": f"{g['model']}/{g['arm'] or '-'}: {DESCRIPTIONS[check]}", "description": desc,
                        "failed_tests": [t["measure"] for t in failed]})
    return out


def run_monitor(reference: str | Path | Reference, log: str | Path, since: str = "1h", until: str | None = None,
                out: str | Path | None = "artifacts/monitoring/windows", thresholds: str | Path | Thresholds | None = None, *,
                webhook_url: str | None = None, prom_file: str | Path | None = None, pushgateway: str | None = None,
                html: bool = True, now: datetime | None = None, workspace: str | Path | None = None,
                records: list[dict] | None = None) -> MonitorResult:
    """Monitor one window [until - since, until) of the serving log against the reference.

    `records` (already-read ServedLog dicts) replaces reading `log` (used by the benchmark).
    Raises DataError / ConfigError on bad input (the CLI exits 2)."""
    th = thresholds if isinstance(thresholds, Thresholds) else load_thresholds(thresholds)
    ref = reference if isinstance(reference, Reference) else load_reference(reference)
    start, end = window_bounds(since, until, now)
    wname = window_name(start, end)
    window = {"name": wname, "start": sinks.iso(start), "end": sinks.iso(end)}
    if records is None:
        records, read_stats = read_window(log, start, end)
    else:
        read_stats = {"in_window": len(records), "source": "in-memory"}
    window["read"] = read_stats
    if not records:
        raise DataError(f"no served records in the window {window['start']} .. {window['end']} "
                        f"(log {log}: {read_stats.get('lines', 0)} lines); is the serving log being written?")
    out_dir = None
    if out is not None:
        out_dir = Path(out) / wname
        out_dir.mkdir(parents=True, exist_ok=True)
    snaps: list | None = [] if workspace else None
    groups = monitor_records(records, ref, th, window=window, html_dir=out_dir if html else None, snapshots=snaps)
    alerts = _alerts(groups)
    res = MonitorResult(exit_code=1 if alerts else 0, window=window, out_dir=out_dir, groups=groups, alerts=alerts)
    if webhook_url and alerts:
        res.sinks["webhook"] = sinks.post_webhook(webhook_url, sinks.alertmanager_payload(alerts, window))
    if pushgateway:
        try:
            sinks.push_gateway(groups, pushgateway)
            res.sinks["pushgateway"] = {"ok": True}
        except Exception as exc:  # a metrics sink must not hide the alert decision
            res.sinks["pushgateway"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    if prom_file:
        Path(prom_file).parent.mkdir(parents=True, exist_ok=True)
        sinks.write_prom_file(groups, prom_file)
        res.sinks["prom_file"] = str(prom_file)
    if workspace:
        try:
            from mirec.monitoring.workspace import add_to_workspace

            res.sinks["workspace"] = add_to_workspace(workspace, snaps or [], window)
        except Exception as exc:
            res.sinks["workspace"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    if out_dir is not None:
        sinks.write_prom_file(groups, out_dir / "metrics.prom")
        report = {"window": window, "groups": [{"model": g["model"], "arm": g["arm"], "measures": g["summary"],
                                                "evidently": g["evidently"]} for g in groups]}
        (out_dir / "report.json").write_text(json.dumps(_clean(report), indent=1, default=str))
        alerts_doc = {"window": window, "status": "firing" if alerts else "ok", "exit_code": res.exit_code,
                      "thresholds": th.model_dump(mode="json"), "reference": str(ref.path),
                      "groups": [{k: v for k, v in g.items() if k != "evidently"} for g in groups],
                      "alerts": alerts, "sinks": res.sinks,
                      "generated": sinks.iso(datetime.now(timezone.utc))}
        (out_dir / "alerts.json").write_text(json.dumps(_clean(alerts_doc), indent=1, default=str))
    return res
