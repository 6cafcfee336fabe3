"""Top-level `mirec` commands of this subsystem. COMMANDS: [{"fn": callable, "kwargs": {...}}].

`mirec monitor --reference REF_DIR --log LOG_FILE_OR_GLOB --since 1h [--until ...] --out OUT_DIR
 [--thresholds FILE] [--served-meta PATH] [--alertmanager-url URL] [--webhook-url URL] [--prom-file PATH]
 [--pushgateway URL] [--state-dir DIR]`
exit 0 = healthy, 1 = alert fired, 2 = bad input or a check could not run (one `error:` line), 3 = insufficient data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def monitor(
    reference: Path = typer.Option(..., "--reference", help="Reference folder (REF_DIR, or a folder of per-model REF_DIRs)."),
    log: str = typer.Option(..., "--log", help="Serving log: a JSONL file, a folder of *.jsonl, or a glob (quote it)."),
    since: str = typer.Option("1h", "--since", help="Window start: a duration before --until (1h, 30m, 1d) or ISO-8601."),
    until: Optional[str] = typer.Option(None, "--until", help="Window end: ISO-8601, 'now' (default) or a duration ago."),
    out: Path = typer.Option(Path("artifacts/monitoring/windows"), "--out", help="Output folder; one sub-folder per window."),
    thresholds: Optional[Path] = typer.Option(None, "--thresholds", help="Thresholds YAML (default: built-in = monitoring/thresholds.yaml)."),
    served_meta: Optional[Path] = typer.Option(None, "--served-meta", envvar="MIREC_MONITOR_SERVED_META",
                                               help="The served model's meta.json, MAR, unpacked MAR or model store: refuse "
                                                    "a reference made with other serving settings."),
    allow_settings_mismatch: bool = typer.Option(False, "--allow-settings-mismatch",
                                                 help="Monitor even when the reference's version/serving settings differ "
                                                      "from what is served (recorded in alerts.json)."),
    allow_model_mismatch: bool = typer.Option(False, "--allow-model-mismatch",
                                              help="Compare a model absent from the reference with the whole reference."),
    alertmanager_url: Optional[str] = typer.Option(None, "--alertmanager-url", envvar="MIREC_MONITOR_ALERTMANAGER_URL",
                                                   help="Post firing and resolved alerts to Alertmanager (<url>/api/v2/alerts)."),
    webhook_url: Optional[str] = typer.Option(None, "--webhook-url", envvar="MIREC_MONITOR_WEBHOOK_URL",
                                              help="POST a Slack-compatible JSON ('text' + Alertmanager-webhook fields) "
                                                   "when alerts fire or resolve."),
    prom_file: Optional[Path] = typer.Option(None, "--prom-file", help="Also write Prometheus text metrics here (node-exporter textfile)."),
    pushgateway: Optional[str] = typer.Option(None, "--pushgateway", help="Push the metrics to this Prometheus push gateway."),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", envvar="MIREC_MONITOR_STATE_DIR",
                                             help="Alert state + window history (resolved alerts, trend.png); default OUT/state."),
    html: bool = typer.Option(True, "--html/--no-html", help="Write the Evidently HTML reports (~4 MB each)."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", help="Also add the snapshots to this local Evidently workspace (UI)."),
) -> None:
    """Compare one window of the serving log with the reference; alert on log quality, collapse and drift.

    Exit code: 0 healthy, 1 an alert fired, 2 bad input or a check could not run, 3 insufficient data."""
    from mirec.monitoring import run_monitor

    res = run_monitor(reference, log, since=since, until=until, out=out, thresholds=thresholds,
                      webhook_url=webhook_url, alertmanager_url=alertmanager_url, prom_file=prom_file,
                      pushgateway=pushgateway, html=html, workspace=workspace, served_meta=served_meta,
                      allow_settings_mismatch=allow_settings_mismatch, allow_model_mismatch=allow_model_mismatch,
                      state_dir=state_dir)
    lq = res.log
    typer.echo(f"log: {lq['lines']} lines in the window, {lq['bad_lines']} bad ({lq['bad_share']:.2%})"
               + (" -> ALERT log_quality" if lq["firing"] else ""))
    if lq["firing"]:
        for e in lq.get("examples", [])[:3]:
            typer.echo(f"  bad line {e['file']}:{e['line'] or '?'}: {e['reason']}: {e['detail']}")
    for model, s in res.settings.items():
        if s.get("differences"):
            typer.secho(f"warning: {model}: reference differs from what is served: {'; '.join(s['differences'])}",
                        fg="yellow", err=True)
    for g in res.groups:
        v = g["values"]
        firing = [c for c, r in g["checks"].items() if r.get("firing")]
        typer.echo(f"{g['model']}/{g['arm'] or '-'}: {g['requests']} answers, status={g['status']}"
                   f"{' firing=' + ','.join(firing) if firing else ''} "
                   f"cos={_f(v.get('mean_pairwise_cos'))} eff_interests={_f(v.get('effective_interests'))} "
                   f"ild={_f(v.get('ild'))} category_drift={_f(v.get('category_drift_score'))} "
                   f"fallback={_f(v.get('fallback_rate'))}")
        for c in firing:
            for t in g["checks"][c]["tests"]:
                if t["firing"]:
                    typer.echo(f"  [{c}] {t['message']}")
        for c, r in g["checks"].items():
            if r.get("error"):
                typer.secho(f"error: {g['model']}/{g['arm'] or '-'} check {c} could not run: {r['error']}", fg="red", err=True)
            for label, why in (r.get("not_tested") or {}).items():
                typer.echo(f"  not tested [{c}] {label}: {why}")
        if g["status"] == "insufficient_data":
            typer.echo(f"  insufficient data: {g['requests']} answers < min_requests; nothing was tested")
        if g.get("under_delivered_top") and "under_delivered" in firing:
            typer.echo("  under-delivered: " + ", ".join(
                f"{x['category']} ({x['users_under_delivered']}/{x['users_strong']} users)" for x in g["under_delivered_top"]))
    for a in res.sent:
        if a["status"] == "resolved":
            typer.echo(f"resolved: [{a['check']}] {a['model']}/{a['arm'] or '-'}")
    for name, s in res.sinks.items():
        if isinstance(s, dict) and not s.get("ok", True):
            typer.secho(f"warning: sink {name} failed: {s}", fg="yellow", err=True)
    verdict = {0: "healthy", 1: "ALERT " + ",".join(res.firing), 2: "ERROR (a check could not run)",
               3: "INSUFFICIENT DATA (not tested)"}[res.exit_code]
    typer.echo(f"window {res.window['start']} .. {res.window['end']}: {verdict}; outputs in {res.out_dir}")
    raise typer.Exit(code=res.exit_code)


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}"


COMMANDS: list[dict] = [{"fn": monitor, "kwargs": {"name": "monitor"}}]
