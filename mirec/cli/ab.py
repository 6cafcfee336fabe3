"""`mirec ab report | promote` (thin: logic in mirec.ab; docs/ab.md).

`mirec ab report --served LOG --feedback LOG (--settings API_SETTINGS.yaml | --arms A=0.5,B=0.5) --out DIR
 [--config AB.yaml] [--metrics PROM_TEXT_FILE] [--no-plots]`
   exit 0 = a winner, 1 = no winner yet / vetoed / SRM (the report says which), 2 = bad input.
`mirec ab promote --report DIR_OR_JSON --out DIR [--ramp 0.5,1.0]`
   exit 0 = values-release.yaml written, 1 = refused (no winner, SRM, guardrail), 2 = bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(no_args_is_help=True)


def _arms(settings: Optional[Path], arms: Optional[str]) -> dict[str, float]:
    from mirec.errors import ConfigError

    if settings is not None:
        from mirec.serving.settings import load_settings

        return {a.name: a.weight for a in load_settings(settings).experiment.arms}
    if not arms:
        raise ConfigError("give the experiment's split: --settings API_SETTINGS.yaml or --arms A=0.5,B=0.5")
    out = {}
    for part in arms.split(","):
        name, _, w = part.partition("=")
        try:
            out[name.strip()] = float(w) if w else 1.0
        except ValueError:
            raise ConfigError(f"--arms: {part!r} is not NAME=WEIGHT") from None
        if not name.strip() or out[name.strip()] <= 0:
            raise ConfigError(f"--arms: {part!r} needs a name and a weight > 0")
    return out


@app.command("report")
def report(
    served: str = typer.Option(..., "--served", help="Served log: a JSONL file, a folder of *.jsonl*, or a glob (quote it)."),
    feedback: str = typer.Option(..., "--feedback", help="Feedback log: a JSONL file, a folder or a glob."),
    out: Path = typer.Option(..., "--out", help="Output folder: report.json + report.html."),
    settings: Optional[Path] = typer.Option(None, "--settings", help="The API settings YAML (its experiment split)."),
    arms: Optional[str] = typer.Option(None, "--arms", help="The split instead of --settings: A=0.5,B=0.5 (first = control)."),
    config: Optional[Path] = typer.Option(None, "--config", help="A/B analysis YAML (mirec.ab.config.ABConfig)."),
    metrics: Optional[Path] = typer.Option(None, "--metrics", help="The API's /metrics text (error-rate guardrail)."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Embed the plots in report.html."),
) -> None:
    """Per-arm outcomes with CIs over users, the always-valid sequential test, SRM, guardrails and the decision."""
    import yaml

    from mirec.ab.config import ABConfig
    from mirec.ab.report import build_report, write_report
    from mirec.errors import ConfigError

    try:
        cfg = ABConfig.model_validate(yaml.safe_load(config.read_text()) or {}) if config else ABConfig()
    except Exception as exc:  # noqa: BLE001 - unreadable or invalid: one line
        raise ConfigError(f"--config {config}: {' '.join(str(exc).split())[:300]}") from None
    text = metrics.read_text() if metrics else None
    rep = build_report(served, feedback, _arms(settings, arms), cfg, metrics_text=text)
    paths = write_report(rep, out, with_plots=plots)
    d = rep.decision
    typer.echo(f"decision: {d.status}" + (f" -> {d.winner} (day {d.day})" if d.winner else ""))
    for r in d.reasons:
        typer.echo(f"  {r}")
    j = rep.data["join"]
    typer.echo(f"events joined: {j['request_id']} by request_id, {j['user_time']} by user+time, {j['unmatched']} "
               f"unmatched; bad lines: served {rep.data['served']['bad_lines']}, feedback {rep.data['feedback']['bad_lines']}")
    typer.echo(f"report: {paths['html']} ({rep.seconds:.1f} s)")
    raise typer.Exit(0 if d.status == "winner" else 1)


@app.command("promote")
def promote(
    report_path: Path = typer.Option(..., "--report", help="The report folder or its report.json."),
    out: Path = typer.Option(..., "--out", help="Where values-release.yaml + promotion.json go."),
    ramp: str = typer.Option("1.0", "--ramp", help="Shares the winner moves through, e.g. 0.5,0.9,1.0 (default 1.0: 100/0)."),
) -> None:
    """Turn a winning report into the next release's split; refuse on no winner, SRM or a guardrail breach."""
    from mirec.ab.promote import PromotionRefused, promotion_plan, write_promotion
    from mirec.ab.report import load_report
    from mirec.errors import ConfigError

    try:
        steps = [float(x) for x in ramp.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--ramp: {ramp!r} is not a list of numbers") from None
    try:
        plan = promotion_plan(load_report(report_path), steps)
    except PromotionRefused as exc:
        typer.secho(f"refused: {exc}", fg="red", err=True)
        raise typer.Exit(1)
    paths = write_promotion(plan, out)
    typer.echo(f"promote {plan.winner} ({plan.winner_model}) to {plan.step:.0%}: "
               + ", ".join(f"{a['name']}={a['weight']:g}" for a in plan.arms) + f" -> {paths['values']}")
