"""`run_monitor`: one window of the serving log vs the reference -> checks, alerts, sinks, report files.

Outputs under OUT_DIR/<window>/ (window = <start>_<end>, UTC):
  report.html / report-items.html   Evidently HTML (answers / items datasets) of the largest group
                                    (report-<model>-<arm>[-items].html for the others)
  report.json   Evidently snapshots (both datasets, every group) + the window measures
  alerts.json   status, exit code, log quality, checks (each test with status, direction and wording), limits,
                values, under-delivered categories, alerts sent (firing and resolved), sink results
  metrics.prom  Prometheus text exposition (also written to --prom-file when given)
  trend.png     each tested measure against its limits over the last windows (from STATE_DIR/history.jsonl)
STATE_DIR (default OUT_DIR/state): state.json (open alerts: "resolved" is sent when a check passes again) and
history.jsonl (one line per window: values and limits, for the trend picture).

Exit code (MonitorResult.exit_code): 0 healthy, 1 an alert fired, 2 a check could not run (a field it needs is
missing; bad input raises DataError before, the CLI also exits 2), 3 insufficient data (a group below
`min_requests` and nothing fired).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from mirec.errors import DataError
from mirec.monitoring import measures as M
from mirec.monitoring import sinks
from mirec.monitoring.config import CHECKS, SEVERITY, Thresholds, load_thresholds
from mirec.monitoring.logs import LogData, read_window, window_bounds, window_name
from mirec.monitoring.reference import Reference, check_serving, load_reference, read_served_meta

EXIT_OK, EXIT_ALERT, EXIT_ERROR, EXIT_INSUFFICIENT = 0, 1, 2, 3

HEADLINES = {
    "log_quality": "the served log has bad lines",
    "interest_collapse": "interests collapsed",
    "diversity_drift": "the diversity of the served lists changed",
    "category_drift": "the category mix of served items drifted",
    "input_drift": "request inputs drifted",
    "fallback_rate": "too many fallback answers",
    "under_delivered": "strong history categories are rarely served",
}
#: measures drawn in the trend picture (the first that a group tested)
TREND = ["mean_pairwise_cos", "cos_drift", "effective_interests", "ild", "coverage", "exposure_gini",
         "served_category_drift", "history_category_drift", "history_len_drift", "head_share_drift",
         "fallback_rate", "under_delivered_rate"]


@dataclass
class MonitorResult:
    exit_code: int
    window: dict
    out_dir: Path | None
    groups: list[dict] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)
    sent: list[dict] = field(default_factory=list)
    log: dict = field(default_factory=dict)
    sinks: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    @property
    def firing(self) -> list[str]:
        return sorted({a["check"] for a in self.alerts if a["status"] == "firing"})

    @property
    def status(self) -> str:
        return {EXIT_OK: "ok", EXIT_ALERT: "firing", EXIT_ERROR: "error", EXIT_INSUFFICIENT: "insufficient_data"}[self.exit_code]


def _clean(v):
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, (np.floating,)):
        return _clean(float(v))
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s) or "_"


# ---------------------------------------------------------------------------------------------- settings
def check_settings(ref: Reference, data: LogData, served_meta: str | Path | None, allow: bool) -> dict:
    """The reference must come from what is served: same model version as the window's answers and, with
    `served_meta`, the same aggregator/parameters/weights/index as the served meta.json."""
    a = data.answers
    out: dict = {}
    problems = []
    for model in sorted(a["model"].astype(str).unique()):
        if ref.part_of(model) is None:
            continue
        rv = ref.versions_of(model)
        wv = sorted(a.loc[a["model"] == model, "version"].astype(str).unique())
        diffs = []
        if rv and set(wv) - set(rv):
            diffs.append(f"version: reference {', '.join(rv)} vs served {', '.join(wv)}")
        if served_meta is not None:
            meta = read_served_meta(served_meta, model)
            if meta.get("name") not in (None, model):
                diffs.append(f"--served-meta {served_meta} describes model {meta.get('name')!r}, not {model!r} "
                             "(give a model store holding <model>.mar for several models)")
            else:
                diffs += check_serving(ref.serving_of(model), meta, model)
        out[model] = {"reference_versions": rv, "window_versions": wv, "differences": diffs,
                      "served_meta": str(served_meta) if served_meta else None}
        if diffs:
            problems.append(f"{model}: " + "; ".join(diffs))
    if problems and not allow:
        raise DataError("the reference was not made with what is served (" + " | ".join(problems) +
                        "); rebuild it from the served MAR (mirec.monitoring.reference.build_reference_from_mar) "
                        "or pass --allow-settings-mismatch")
    return out


# ---------------------------------------------------------------------------------------------- groups
def _group_checks(rep, skipped_all: dict) -> dict:
    checks = {}
    for check in CHECKS:
        if check == "log_quality":
            continue
        if check in rep.errors:
            checks[check] = {"firing": False, "error": rep.errors[check], "tests": []}
            continue
        tests = [{"measure": label, "status": e["status"], "firing": e["firing"], "direction": e["direction"],
                  "value": e["value"], "message": e["message"], "evidently": [t["description"] for t in e["tests"]]}
                 for label, e in rep.results.items() if e["check"] == check]
        entry = {"firing": any(t["firing"] for t in tests), "tests": tests}
        sk = rep.skipped.get(check)
        if sk and not tests:
            entry["skipped"] = "; ".join(f"{k}: {v}" if k != "all" else v for k, v in sk.items())
        elif sk:
            entry["not_tested"] = {k: v for k, v in sk.items()}
        checks[check] = entry
    return checks


def monitor_frames(cur_all: M.Frame, ref: Reference, th: Thresholds, *, window: dict, allow_model_mismatch: bool,
                   html_dir: Path | None = None, snapshots: list | None = None, evidently: bool = True) -> list[dict]:
    from mirec.monitoring import evidently_report as E

    u = th.under_delivered
    a = cur_all.answers
    keys = a.groupby(["model", "arm"], sort=False).size().sort_values(ascending=False)
    groups = []
    for gi, ((model, arm), _) in enumerate(keys.items()):
        mask = (a["model"].to_numpy() == model) & (a["arm"].to_numpy() == arm)
        if ref.part_of(model) is not None:
            rframe, ref_model = ref.model_frame(model, u.strong_share, u.min_delivery_ratio), model
        else:
            rframe, ref_model = ref.all_frame(u.strong_share, u.min_delivery_ratio), "(all)"
        cur = cur_all.where(mask).with_categories(rframe.categories)
        summary = M.summarise(cur)
        g = {"model": model, "arm": arm, "requests": summary["window_requests"], "reference_model": ref_model,
             "reference_answers": rframe.n_answers, "status": "ok", "checks": {}, "values": {}, "tested": {},
             "limits": {}, "summary": _clean(summary),
             "under_delivered_top": M.under_delivered_top(cur, u.strong_share, u.min_delivery_ratio, u.top_n),
             "evidently": None}
        vals = {k: summary[k] for k in ("window_requests", "mean_pairwise_cos", "effective_interests",
                                         "single_interest_share", "dead_interests", "ild", "coverage", "exposure_gini",
                                         "fallback_rate", "unknown_item_rate", "cold_start_rate", "head_share",
                                         "under_delivered_rate")}
        if summary["window_requests"] < th.min_requests:
            g["status"] = "insufficient_data"
            g["checks"] = {c: {"firing": False, "skipped": f"insufficient data: {summary['window_requests']} answers, "
                                                            f"fewer than min_requests={th.min_requests}"}
                           for c in CHECKS if c != "log_quality"}
        elif evidently:
            rep = E.run_report(cur, rframe, th, name=f"mirec monitor {model}/{arm or '-'} {window['name']}",
                               metadata={"model": model, "arm": arm, **{k: window[k] for k in ("name", "start", "end")}})
            g["checks"] = _group_checks(rep, rep.skipped)
            g["tested"] = {label: e["value"] for label, e in rep.results.items()}
            vals["category_drift_score"] = g["tested"].get("served_category_drift")
            vals["history_category_drift_score"] = g["tested"].get("history_category_drift")
            # coverage/Gini at the matched number of answers (what the tests compare)
            for k in ("coverage", "exposure_gini"):
                if k in g["tested"]:
                    vals[k] = g["tested"][k]
            g["limits"] = E.limits_of(rep.specs)
            g["evidently"] = {lv: json.loads(s.json()) for lv, s in rep.snapshots.items()}
            if snapshots is not None:
                snapshots.append((model, arm, rep.snapshots))
            if html_dir is not None:
                base = "report" if gi == 0 else f"report-{_slug(model)}-{_slug(arm)}"
                rep.snapshots["answers"].save_html(str(html_dir / f"{base}.html"))
                rep.snapshots["items"].save_html(str(html_dir / f"{base}-items.html"))
            if any(c.get("error") for c in g["checks"].values()):
                g["status"] = "error"
            elif any(c["firing"] for c in g["checks"].values()):
                g["status"] = "firing"
        g["values"] = _clean(vals)
        groups.append(g)
    return groups


def _alerts(groups: list[dict], log_check: dict) -> list[dict]:
    out = []
    if log_check.get("firing"):
        out.append({"status": "firing", "check": "log_quality", "model": "*", "arm": "*",
                    "severity": SEVERITY["log_quality"], "headline": log_check["message"],
                    "summary": f"served log: {log_check['message']}", "description": log_check["description"],
                    "failed_tests": ["bad_line_share"]})
    for g in groups:
        for check, res in g["checks"].items():
            if not res.get("firing"):
                continue
            failed = [t for t in res.get("tests", []) if t["firing"]]
            desc = "; ".join(t["message"] for t in failed)
            headline = failed[0]["message"].split(":")[0] if failed else HEADLINES[check]
            if check == "under_delivered" and g["under_delivered_top"]:
                desc += "; top under-delivered: " + ", ".join(
                    f"{x['category']} ({x['users_under_delivered']}/{x['users_strong']} users)" for x in g["under_delivered_top"])
            out.append({"status": "firing", "check": check, "model": g["model"], "arm": g["arm"],
                        "severity": SEVERITY.get(check, "warning"), "headline": headline,
                        "summary": f"{g['model']}/{g['arm'] or '-'}: {headline}", "description": desc,
                        "failed_tests": [t["measure"] for t in failed]})
    return out


def log_quality(stats: dict, frame: M.Frame, ref: Reference, th: Thresholds) -> dict:
    """Bad lines + model answers without interest statistics (for a multi-interest reference) vs the threshold."""
    a = frame.answers
    model = a["fallback"].to_numpy() == 0
    no_stats = model & ((a["k"].to_numpy() <= 0) | np.isnan(a["mean_pairwise_cos"].to_numpy()))
    multi = {m for m in ref.models if ref.part_of(m) is not None and M.dead_interests(ref.model_frame(m))[1] > 1}
    no_stats &= np.isin(a["model"].to_numpy(), list(multi)) if multi else np.zeros(len(a), bool)
    by = dict(stats.get("bad_by_reason") or {})
    if no_stats.any():
        by["no_interest_stats"] = int(no_stats.sum())
    bad = int(stats.get("bad_lines", 0)) + int(no_stats.sum())
    lines = int(stats.get("lines", 0)) or len(a)
    share = bad / lines if lines else 0.0
    firing = share > th.log_quality.max_bad_share
    parts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in by.items())
    msg = (f"{bad} of {lines} lines bad ({share:.1%} > {th.log_quality.max_bad_share:.1%}: {parts})" if firing else
           f"{bad} of {lines} lines bad ({share:.2%})")
    ex = "; ".join(f"{e['file']}:{e['line'] or '?'} {e['reason']}: {e['detail']}" for e in stats.get("examples", []))
    return {"firing": firing, "bad_lines": bad, "lines": lines, "bad_share": round(share, 6), "bad_by_reason": by,
            "limit": th.log_quality.max_bad_share, "message": msg, "description": msg + (f"; e.g. {ex}" if ex else ""),
            "examples": stats.get("examples", [])}


# ---------------------------------------------------------------------------------------------- history, trend
def append_history(state_dir: Path, window: dict, groups: list[dict], log_check: dict) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    row = {"window": window["name"], "end": window["end"], "bad_share": log_check.get("bad_share"),
           "groups": {f"{g['model']}/{g['arm'] or '-'}": {"status": g["status"], "tested": g.get("tested", {}),
                                                           "limits": {lab: {"lower": lim.get("lower"), "upper": lim.get("upper")}
                                                                      for by in (g.get("limits") or {}).values()
                                                                      for lab, lim in by.items()},
                                                           "firing": [c for c, r in g["checks"].items() if r.get("firing")]}
                      for g in groups}}
    with (state_dir / "history.jsonl").open("a") as f:
        f.write(json.dumps(_clean(row)) + "\n")


def write_trend(state_dir: Path, path: Path, last: int = 48) -> Path | None:
    """Each tested measure against its limits over the last `last` windows -> PNG."""
    hist_file = state_dir / "history.jsonl"
    if not hist_file.is_file():
        return None
    rows = [json.loads(x) for x in hist_file.read_text().splitlines() if x.strip()]
    rows = sorted({r["window"]: r for r in rows}.values(), key=lambda r: r["end"])[-last:]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({g for r in rows for g in r["groups"]})
    measures = [m for m in TREND if any(m in r["groups"].get(g, {}).get("tested", {}) for r in rows for g in groups)]
    if not measures:
        return None
    cols = 3
    nrows = math.ceil(len(measures) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 2.8 * nrows), squeeze=False)
    x = list(range(len(rows)))
    labels = [r["end"][5:16].replace("T", " ") for r in rows]
    for ax, m in zip(axes.flat, measures):
        for gi, g in enumerate(groups):
            color = f"C{gi}"
            val = [r["groups"].get(g, {}).get("tested", {}).get(m) for r in rows]
            lo = [r["groups"].get(g, {}).get("limits", {}).get(m, {}).get("lower") for r in rows]
            hi = [r["groups"].get(g, {}).get("limits", {}).get(m, {}).get("upper") for r in rows]
            f = lambda v: [np.nan if y is None else y for y in v]  # noqa: E731
            ax.plot(x, f(val), "o-", color=color, ms=3, lw=1.2, label=g)
            if any(v is not None for v in hi):
                ax.plot(x, f(hi), "--", color=color, lw=0.9, alpha=0.7, marker="v", ms=3)
            if any(v is not None for v in lo):
                ax.plot(x, f(lo), ":", color=color, lw=0.9, alpha=0.7, marker="^", ms=3)
            bad = [i for i, r in enumerate(rows) if val[i] is not None and (
                (hi[i] is not None and val[i] > hi[i]) or (lo[i] is not None and val[i] < lo[i]))]
            ax.plot(bad, [val[i] for i in bad], "x", color="red", ms=7)
        ax.set_title(m, fontsize=9)
        ax.tick_params(labelsize=7)
        step = max(1, len(x) // 6)
        ax.set_xticks(x[::step], labels[::step], rotation=20)
    for ax in list(axes.flat)[len(measures):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("mirec monitor: value (solid), upper limit (dashed, v), lower limit (dotted, ^), outside a limit (x)",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- main
def run_monitor(reference: str | Path | Reference, log: str | Path | None, since: str = "1h", until: str | None = None,
                out: str | Path | None = "artifacts/monitoring/windows", thresholds: str | Path | Thresholds | None = None, *,
                webhook_url: str | None = None, alertmanager_url: str | None = None, prom_file: str | Path | None = None,
                pushgateway: str | None = None, html: bool = True, now: datetime | None = None,
                workspace: str | Path | None = None, data: tuple[LogData, dict] | None = None,
                records: list[dict] | None = None, served_meta: str | Path | None = None,
                allow_settings_mismatch: bool = False, allow_model_mismatch: bool = False,
                state_dir: str | Path | None = None, trend: bool = True) -> MonitorResult:
    """Monitor one window [until - since, until) of the serving log against the reference.

    `data` (already-read LogData + stats) or `records` (ServedLog dicts, written to a temporary file and read the
    same way) replace reading `log`. Raises DataError / ConfigError on bad input (the CLI exits 2)."""
    th = thresholds if isinstance(thresholds, Thresholds) else load_thresholds(thresholds)
    ref = reference if isinstance(reference, Reference) else load_reference(reference)
    start, end = window_bounds(since, until, now)
    wname = window_name(start, end)
    window = {"name": wname, "start": sinks.iso(start), "end": sinks.iso(end)}
    u = th.under_delivered
    catalogue = ref.parts[0].items
    if records is not None:
        import tempfile

        from mirec.monitoring.simulate import write_jsonl

        with tempfile.TemporaryDirectory(prefix="mirec-monitor-") as tmp:
            data = read_window([write_jsonl(records, Path(tmp) / "served.jsonl")], start, end,
                               catalogue_ids=catalogue["item_id"].to_numpy(),
                               catalogue_categories=catalogue["category"].to_numpy())
    if data is None:
        if log is None:
            raise DataError("no serving log given (--log)")
        data = read_window(log, start, end, catalogue_ids=catalogue["item_id"].to_numpy(),
                           catalogue_categories=catalogue["category"].to_numpy())
    logdata, read_stats = data
    window["read"] = {k: v for k, v in read_stats.items() if k != "examples"}
    if len(logdata) == 0:
        raise DataError(f"no served records in the window {window['start']} .. {window['end']} "
                        f"(log {log}: {read_stats.get('lines', 0)} lines in the window); is the serving log being written?")
    missing = sorted(set(logdata.answers["model"].astype(str)) - set(ref.models))
    if missing and not allow_model_mismatch:
        raise DataError(f"model(s) {', '.join(missing)} of the window are not in the reference {ref.path} (it holds "
                        f"{', '.join(ref.models)}): build their reference, or pass --allow-model-mismatch to compare "
                        "them with the whole reference")
    settings = check_settings(ref, logdata, served_meta, allow_settings_mismatch)
    frame = M.build_frame(logdata, catalogue, strong_share=u.strong_share, min_delivery_ratio=u.min_delivery_ratio)
    out_dir = None
    if out is not None:
        out_dir = Path(out) / wname
        out_dir.mkdir(parents=True, exist_ok=True)
    sdir = Path(state_dir) if state_dir is not None else (Path(out) / "state" if out is not None else None)
    snaps: list | None = [] if workspace else None
    groups = monitor_frames(frame, ref, th, window=window, allow_model_mismatch=allow_model_mismatch,
                            html_dir=out_dir if html else None, snapshots=snaps)
    lq = log_quality(read_stats, frame, ref, th)
    alerts = _alerts(groups, lq)
    if any(g["status"] == "error" for g in groups):
        code = EXIT_ERROR
    elif alerts:
        code = EXIT_ALERT
    elif any(g["status"] == "insufficient_data" for g in groups):
        code = EXIT_INSUFFICIENT
    else:
        code = EXIT_OK
    res = MonitorResult(exit_code=code, window=window, out_dir=out_dir, groups=groups, alerts=alerts, log=lq,
                        settings=settings)
    # ---- alert state: firing now + resolved since the last run (tested groups only)
    state = sinks.load_state(sdir / "state.json" if sdir else None)
    tested = {(g["model"], g["arm"]) for g in groups if g["status"] in ("ok", "firing")}
    res.sent, new_state = sinks.transition(state, alerts, tested, window)
    sinks.save_state(sdir / "state.json" if sdir else None, new_state)
    if alertmanager_url and res.sent:
        resolve_after = max(timedelta(hours=1), 3 * (end - start))
        res.sinks["alertmanager"] = sinks.post_alertmanager(
            alertmanager_url, sinks.alertmanager_alerts(res.sent, window, resolve_after=resolve_after))
    if webhook_url and res.sent:
        res.sinks["webhook"] = sinks.post_webhook(webhook_url, sinks.webhook_payload(res.sent, window))
    log_gauges = {**lq, "firing": lq["firing"]}
    if pushgateway:
        try:
            sinks.push_gateway(groups, pushgateway, log_gauges)
            res.sinks["pushgateway"] = {"ok": True}
        except Exception as exc:  # a metrics sink must not hide the alert decision
            res.sinks["pushgateway"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    if prom_file:
        Path(prom_file).parent.mkdir(parents=True, exist_ok=True)
        sinks.write_prom_file(groups, prom_file, log_gauges)
        res.sinks["prom_file"] = str(prom_file)
    if workspace:
        try:
            from mirec.monitoring.workspace import add_to_workspace

            res.sinks["workspace"] = add_to_workspace(workspace, snaps or [], window)
        except Exception as exc:
            res.sinks["workspace"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    if sdir is not None:
        append_history(sdir, window, groups, lq)
    if out_dir is not None:
        sinks.write_prom_file(groups, out_dir / "metrics.prom", log_gauges)
        if trend and sdir is not None:
            try:
                t = write_trend(sdir, out_dir / "trend.png")
                res.sinks["trend"] = str(t) if t else None
            except Exception as exc:  # a picture must not hide the alert decision
                res.sinks["trend"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        report = {"window": window, "groups": [{"model": g["model"], "arm": g["arm"], "measures": g["summary"],
                                                "evidently": g["evidently"]} for g in groups]}
        (out_dir / "report.json").write_text(json.dumps(_clean(report), indent=1, default=str))
        alerts_doc = {"window": window, "status": res.status, "exit_code": code, "log_quality": lq,
                      "settings": settings, "thresholds": th.model_dump(mode="json"), "reference": str(ref.path),
                      "groups": [{k: v for k, v in g.items() if k != "evidently"} for g in groups],
                      "alerts": alerts, "sent": res.sent, "sinks": res.sinks,
                      "generated": sinks.iso(datetime.now(timezone.utc))}
        (out_dir / "alerts.json").write_text(json.dumps(_clean(alerts_doc), indent=1, default=str))
    return res
