"""kfp v2 component of the A/B pipeline: a thin wrapper around `mirec.ab.report` (docs/ab.md).

`ab_report_op` writes the HTML report and report.json, logs the primary metric per arm and the decision as kfp
Metrics, and returns the decision status ("winner" | "no_winner" | "srm" | "vetoed" | "insufficient_data"); it
succeeds whatever the decision (so the report is kept: KFP uploads outputs only of successful tasks). Bad input
(no logs, unknown arms) fails it.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Metrics, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def ab_report_op(served_log: str, feedback_log: str, arms: str, config_path: str, metrics_path: str,
                 report: Output[HTML], report_json: Output[Artifact], metrics: Output[Metrics]) -> str:
    """Per-arm outcomes, CIs over users, the always-valid sequential test, SRM, guardrails and the decision.
    `arms`: "A=0.5,B=0.5" (the experiment's split, control first)."""
    import shutil
    from pathlib import Path

    import yaml

    from mirec.ab.config import ABConfig
    from mirec.ab.report import build_report, write_report

    split = {}
    for part in arms.split(","):
        name, _, w = part.partition("=")
        split[name.strip()] = float(w or 1.0)
    cfg = ABConfig.model_validate(yaml.safe_load(Path(config_path).read_text()) or {}) if config_path else ABConfig()
    text = Path(metrics_path).read_text() if metrics_path else None
    rep = build_report(served_log, feedback_log, split, cfg, metrics_text=text)
    out = Path(report_json.path)
    paths = write_report(rep, out)
    shutil.copyfile(paths["html"], report.path)
    d = rep.decision
    report_json.metadata.update({"status": d.status, "winner": d.winner or "", "day": -1 if d.day is None else d.day})
    if rep.cumulative:
        last = rep.cumulative[-1]
        for arm, r in last.arms.items():
            v = r.metrics[cfg.primary]["value"]
            if v is not None:
                metrics.log_metric(f"{arm}.{cfg.primary}", float(v))
            metrics.log_metric(f"{arm}.users", float(r.users))
        if last.srm is not None and last.srm.p_value is not None:
            metrics.log_metric("srm_p", float(last.srm.p_value))
    return d.status
