"""kfp v2 components of the monitoring pipeline: thin wrappers around `mirec.monitoring.run_monitor`.

`monitor_op` always succeeds when the input is usable (so its report and alerts artifacts are kept,
KFP uploads outputs only of successful tasks) and returns "ok" | "firing" | "error" | "insufficient_data";
`alert_gate_op` runs unless it is "ok" and fails the run visibly (non-zero exit) with the alert summary
("insufficient_data" fails only with fail_on_insufficient_data). Bad input (no reference, no log, empty window,
a reference made with other serving settings than `served_meta`) fails `monitor_op` itself.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Metrics, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def monitor_op(reference_dir: str, log: str, since: str, until: str, thresholds_path: str, webhook_url: str,
               pushgateway: str, served_meta: str, allow_settings_mismatch: bool, alertmanager_url: str,
               state_dir: str, report: Output[HTML], alerts: Output[Artifact], metrics: Output[Metrics]) -> str:
    """One window of the serving log vs the evaluation reference (Evidently report + tests + alert sinks)."""
    import json
    import shutil
    from pathlib import Path

    from mirec.monitoring import run_monitor

    out = Path(alerts.path)
    out.mkdir(parents=True, exist_ok=True)
    res = run_monitor(reference_dir, log, since=since, until=until or None, out=out,
                      thresholds=thresholds_path or None, webhook_url=webhook_url or None,
                      pushgateway=pushgateway or None, html=True, served_meta=served_meta or None,
                      allow_settings_mismatch=allow_settings_mismatch, alertmanager_url=alertmanager_url or None,
                      state_dir=state_dir or None)
    html = res.out_dir / "report.html"
    if html.is_file():
        shutil.copyfile(html, report.path)
    else:
        Path(report.path).write_text("<html><body>no report (window below min_requests)</body></html>")
    status = res.status
    alerts.metadata.update({"status": status, "window": res.window["name"], "firing": ",".join(res.firing),
                            "window_dir": res.out_dir.name})
    for g in res.groups:
        prefix = f"{g['model']}.{g['arm'] or '-'}."
        for k, v in g["values"].items():
            if isinstance(v, (int, float)):
                metrics.log_metric(prefix + k, float(v))
    errors = [f"{g['model']}/{g['arm'] or '-'} {c}: {r['error']}" for g in res.groups
              for c, r in g["checks"].items() if r.get("error")]
    (out / "summary.json").write_text(json.dumps({"status": status, "firing": res.firing,
                                                  "alerts": [a["summary"] for a in res.alerts], "errors": errors}))
    return status


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def alert_gate_op(alerts: Input[Artifact], fail_on_alert: bool, fail_on_insufficient_data: bool) -> str:
    """Fails (non-zero exit) when the monitor fired (fail_on_alert), a check could not run, or the window had too
    few answers (fail_on_insufficient_data): the run shows red in the UI."""
    import json
    from pathlib import Path

    summary = json.loads((Path(alerts.path) / "summary.json").read_text())
    text = "; ".join(summary["alerts"] + summary.get("errors", [])) or summary["status"]
    if summary["status"] == "error":
        raise RuntimeError(f"mirec monitor: a check could not run: {text}")
    if fail_on_alert and summary["status"] == "firing":
        raise RuntimeError(f"mirec monitor alert: {text}")
    if fail_on_insufficient_data and summary["status"] == "insufficient_data":
        raise RuntimeError("mirec monitor: insufficient data (a group below min_requests; nothing tested)")
    return text
