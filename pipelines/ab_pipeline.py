"""The mirec A/B report pipeline (kfp v2), meant as a recurring run (daily): the always-valid sequential test
in `mirec ab report` may be looked at every day without inflating its error rate.

    ab_report (served log + feedback log on the artifacts PVC -> report.html, report.json, decision)

Promotion stays a deliberate step (`mirec ab promote --report ...`, which refuses on SRM or a guardrail breach).
Paths are on the artifacts PVC (parameter artifacts_pvc, mounted at ARTIFACTS_MOUNT; ignored by the local runner).

Compile:   python -m pipelines.ab_pipeline   (-> pipelines/compiled/ab_pipeline.yaml)
Schedule:  create_recurring_run(host, ...) below, or upload the YAML in the Kubeflow UI and create a recurring run
           (cron "0 30 6 * * *" = 06:30 every day; KFP cron has seconds).
"""

from pathlib import Path

from kfp import dsl, kubernetes

from components.ab_report import ab_report_op

PIPELINE_NAME = "mirec-ab-report"
ARTIFACTS_MOUNT = "/mnt/mirec"
DEFAULT_SERVED = f"{ARTIFACTS_MOUNT}/logs/served.jsonl*"
DEFAULT_FEEDBACK = f"{ARTIFACTS_MOUNT}/logs/feedback.jsonl*"
COMPILED = Path(__file__).resolve().parent / "compiled" / "ab_pipeline.yaml"


@dsl.pipeline(name=PIPELINE_NAME, description="mirec A/B report: per-arm outcomes over users, always-valid "
                                               "sequential test, SRM, guardrails, decision")
def ab_pipeline(served_log: str = DEFAULT_SERVED, feedback_log: str = DEFAULT_FEEDBACK, arms: str = "A=0.5,B=0.5",
                config_path: str = "", metrics_path: str = "", artifacts_pvc: str = "mirec-artifacts"):
    rep = ab_report_op(served_log=served_log, feedback_log=feedback_log, arms=arms, config_path=config_path,
                       metrics_path=metrics_path)
    rep.set_caching_options(False)  # a recurring run must read the new days every time
    rep.set_cpu_limit("2").set_memory_limit("8G")
    kubernetes.mount_pvc(rep, pvc_name=artifacts_pvc, mount_path=ARTIFACTS_MOUNT)


PIPELINE = ab_pipeline


def compile(out: str | Path = COMPILED) -> Path:
    from pipelines.local import compile_pipeline

    return compile_pipeline("ab_pipeline", out)


def create_recurring_run(host: str, experiment: str = "mirec-ab", cron: str = "0 30 6 * * *",
                         params: dict | None = None, package: str | Path = COMPILED):  # pragma: no cover (cluster)
    """Schedule the compiled pipeline on a Kubeflow Pipelines host (pipelines.local.create_recurring_run)."""
    from pipelines.local import create_recurring_run as schedule

    return schedule("ab_pipeline", host, experiment, cron, params, package)


if __name__ == "__main__":
    print(compile())
