"""Top-level `mirec` commands of this subsystem. COMMANDS: [{"fn": callable, "kwargs": {...}}].

`mirec monitor --reference REF_DIR --log LOG_FILE_OR_GLOB --since 1h [--until ...] --out OUT_DIR
 [--thresholds FILE] [--webhook-url URL] [--prom-file PATH] [--pushgateway URL]`
exit 0 = healthy, 1 = alert fired, 2 = bad input (MirecError, printed as one line by mirec.cli.run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def monitor(
    reference: Path = typer.Option(..., "--reference", help="Reference folder (REF_DIR) made at evaluation time."),
    log: str = typer.Option(..., "--log", help="Serving log: a JSONL file, a folder of *.jsonl, or a glob (quote it)."),
    since: str = typer.Option("1h", "--since", help="Window start: a duration before --until (1h, 30m, 1d) or ISO-8601."),
    until: Optional[str] = typer.Option(None, "--until", help="Window end: ISO-8601, 'now' (default) or a duration ago."),
    out: Path = typer.Option(Path("artifacts/monitoring/windows"), "--out", help="Output folder; one sub-folder per window."),
    thresholds: Optional[Path] = typer.Option(None, "--thresholds", help="Thresholds YAML (default: built-in = monitoring/thresholds.yaml)."),
    webhook_url: Optional[str] = typer.Option(None, "--webhook-url", envvar="MIREC_MONITOR_WEBHOOK_URL",
                                              help="POST an Alertmanager-compatible JSON (with a Slack 'text') when alerts fire."),
    prom_file: Optional[Path] = typer.Option(None, "--prom-file", help="Also write Prometheus text metrics here (node-exporter textfile)."),
    pushgateway: Optional[str] = typer.Option(None, "--pushgateway", help="Push the metrics to this Prometheus push gateway."),
    html: bool = typer.Option(True, "--html/--no-html", help="Write the Evidently HTML report (~4 MB)."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", help="Also add the snapshots to this local Evidently workspace (UI)."),
) -> None:
    """Compare one window of the serving log with the evaluation reference; alert on collapse and drift.

    Exit code: 0 healthy, 1 an alert fired, 2 bad input."""
    from mirec.monitoring import run_monitor

    res = run_monitor(reference, log, since=since, until=until, out=out, thresholds=thresholds,
                      webhook_url=webhook_url, prom_file=prom_file, pushgateway=pushgateway, html=html,
                      workspace=workspace)
    for g in res.groups:
        v = g["values"]
        firing = [c for c, r in g["checks"].items() if r.get("firing")]
        typer.echo(f"{g['model']}/{g['arm'] or '-'}: {g['requests']} answers, status={g['status']}"
                   f"{' firing=' + ','.join(firing) if firing else ''} "
                   f"cos={_f(v.get('mean_pairwise_cos'))} eff_interests={_f(v.get('effective_interests'))} "
                   f"ild={_f(v.get('ild'))} category_drift={_f(v.get('category_drift_score'))} "
                   f"fallback={_f(v.get('fallback_rate'))}")
        if g.get("under_delivered_top"):
            typer.echo("  under-delivered: " + ", ".join(
                f"{x['category']} ({x['users_under_delivered']}/{x['users_strong']} users)" for x in g["under_delivered_top"]))
    for name, s in res.sinks.items():
        if isinstance(s, dict) and not s.get("ok", True):
            typer.secho(f"warning: sink {name} failed: {s}", fg="yellow", err=True)
    typer.echo(f"window {res.window['start']} .. {res.window['end']}: "
               f"{'ALERT ' + ','.join(res.firing) if res.firing else 'healthy'}; outputs in {res.out_dir}")
    raise typer.Exit(code=res.exit_code)


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}"


COMMANDS: list[dict] = [{"fn": monitor, "kwargs": {"name": "monitor"}}]
