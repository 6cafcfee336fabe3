"""kfp v2 components of the monitoring pipeline: thin wrappers around `mirec.monitoring.run_monitor`.

`monitor_op` always succeeds when the input is usable (so its report and alerts artifacts are kept,
KFP uploads outputs only of successful tasks) and returns "ok" | "firing" | "insufficient_data";
`alert_gate_op` runs only when it fired and fails the run visibly (non-zero exit) with the alert summary.
Bad input (no reference, no log, empty window) fails `monitor_op` itself.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Metrics, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def monitor_op(reference_dir: str, log: str, since: str, until: str, thresholds_path: str, webhook_url: str,
               pushgateway: str, report: Output[HTML], alerts: Output[Artifact], metrics: Output[Metrics]) -> str:
    """One window of the serving log vs the evaluation reference (Evidently report + tests + alert sinks)."""
    import json
    import shutil
    from pathlib import Path

    from mirec.monitoring import run_monitor

    out = Path(alerts.path)
    out.mkdir(parents=True, exist_ok=True)
    res = run_monitor(reference_dir, log, since=since, until=until or None, out=out,
                      thresholds=thresholds_path or None, webhook_url=webhook_url or None,
                      pushgateway=pushgateway or None, html=True)
    html = res.out_dir / "report.html"
    if html.is_file():
        shutil.copyfile(html, report.path)
    else:
        Path(report.path).write_text("<html><body>no report (window below min_requests)</body></html>")
    status = "firing" if res.alerts else ("insufficient_data" if all(g["status"] == "insufficient_data"
                                                                     for g in res.groups) else "ok")
    alerts.metadata.update({"status": status, "window": res.window["name"], "firing": ",".join(res.firing),
                            "window_dir": res.out_dir.name})
    for g in res.groups:
        prefix = f"{g['model']}.{g['arm'] or '-'}."
        for k, v in g["values"].items():
            if isinstance(v, (int, float)):
                metrics.log_metric(prefix + k, float(v))
    (out / "summary.json").write_text(json.dumps({"status": status, "firing": res.firing,
                                                  "alerts": [a["summary"] for a in res.alerts]}))
    return status


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def alert_gate_op(alerts: Input[Artifact], fail_on_alert: bool) -> str:
    """Fails (non-zero exit) when the monitor fired and fail_on_alert is set: the run shows red in the UI."""
    import json
    from pathlib import Path

    summary = json.loads((Path(alerts.path) / "summary.json").read_text())
    text = "; ".join(summary["alerts"]) or "no alert"
    if fail_on_alert and summary["status"] == "firing":
        raise RuntimeError(f"mirec monitor alert: {text}")
    return text
