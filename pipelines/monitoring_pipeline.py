"""The mirec monitoring pipeline (kfp v2), meant as a recurring run (e.g. hourly).

    monitor (serving log window vs the reference: Evidently reports, tests, alert sinks)
      -> [unless ok] alert_gate (fails the run on an alert or a check that could not run, so it shows red;
         fail_on_alert=False keeps alert runs green, fail_on_insufficient_data=True fails too-small windows)
`served_meta` (the served MAR / meta.json / model store) makes the monitor refuse a reference made with other
serving settings (allow_settings_mismatch=True overrides); `state_dir` keeps alert state (resolved
notifications) and the window history (trend picture) between runs.

The same job runs as a Kubernetes CronJob (`mirec monitor ...`, charts/), which is the production path: it reads the
release's reference from the release store and the served log on the chart's shared volume. This pipeline reads the
same files with the chart's layout: the chart's shared volume (pipeline parameter artifacts_pvc = the chart's
sharedStorage claim, mounted where the chart mounts it, sharedStorage.mountPath) -- so it must run in the chart's
namespace (a PVC cannot be mounted across namespaces); the webhook Secret is the chart's (key `webhook-url`).

Compile:   python -m pipelines.monitoring_pipeline   (-> pipelines/compiled/monitoring_pipeline.yaml)
Schedule:  create_recurring_run(host, ...) below (kfp.Client), or upload the YAML in the Kubeflow UI and
           create a recurring run there (cron "0 5 * * * *" = five minutes past every hour; KFP cron has seconds).
"""

from pathlib import Path

from kfp import dsl, kubernetes

from components.monitor import alert_gate_op, monitor_op

PIPELINE_NAME = "mirec-monitoring"
ARTIFACTS_MOUNT = "/var/lib/mirec/shared"  # the chart's sharedStorage.mountPath
DEFAULT_REFERENCE = f"{ARTIFACTS_MOUNT}/reference"  # the chart's monitoring.cronjob.referencePath: one folder per model
DEFAULT_SERVED_META = ""  # e.g. f"{ARTIFACTS_MOUNT}/serving/model-store": each served model's MAR
DEFAULT_STATE = ""  # e.g. f"{ARTIFACTS_MOUNT}/monitor/state" (the chart's stateDir): alerts + window history; "" = this run's artifact
DEFAULT_LOG = f"{ARTIFACTS_MOUNT}/served/*/served.jsonl*"  # the chart's monitoring.cronjob.logGlob (one folder per API pod)
COMPILED = Path(__file__).resolve().parent / "compiled" / "monitoring_pipeline.yaml"
#: the webhook URL is a secret in production: read from this Kubernetes secret (the chart's
#: monitoring.cronjob.webhook.existingSecret / existingSecretKey in values-production.yaml) as MIREC_MONITOR_WEBHOOK_URL
WEBHOOK_SECRET = "mirec-monitor-webhook"
WEBHOOK_KEY = "webhook-url"


@dsl.pipeline(name=PIPELINE_NAME, description="mirec monitoring: interest collapse, diversity/category/input drift, "
                                               "fallback and under-delivered interests vs the evaluation reference")
def monitoring_pipeline(reference_dir: str = DEFAULT_REFERENCE, log: str = DEFAULT_LOG, since: str = "1h",
                        until: str = "", thresholds_path: str = "", webhook_url: str = "", pushgateway: str = "",
                        served_meta: str = DEFAULT_SERVED_META, allow_settings_mismatch: bool = False,
                        alertmanager_url: str = "", state_dir: str = DEFAULT_STATE,
                        fail_on_alert: bool = True, fail_on_insufficient_data: bool = False,
                        artifacts_pvc: str = "mirec-shared"):
    mon = monitor_op(reference_dir=reference_dir, log=log, since=since, until=until, thresholds_path=thresholds_path,
                     webhook_url=webhook_url, pushgateway=pushgateway, served_meta=served_meta,
                     allow_settings_mismatch=allow_settings_mismatch, alertmanager_url=alertmanager_url,
                     state_dir=state_dir)
    mon.set_caching_options(False)  # a recurring run must look at the new window every time
    mon.set_cpu_limit("2").set_memory_limit("4G")
    kubernetes.mount_pvc(mon, pvc_name=artifacts_pvc, mount_path=ARTIFACTS_MOUNT)
    kubernetes.use_secret_as_env(mon, secret_name=WEBHOOK_SECRET,
                                 secret_key_to_env={WEBHOOK_KEY: "MIREC_MONITOR_WEBHOOK_URL"}, optional=True)
    with dsl.If(mon.outputs["Output"] != "ok", name="not-healthy"):
        gate = alert_gate_op(alerts=mon.outputs["alerts"], fail_on_alert=fail_on_alert,
                             fail_on_insufficient_data=fail_on_insufficient_data)
        gate.set_caching_options(False)


PIPELINE = monitoring_pipeline


def compile(out: str | Path = COMPILED) -> Path:
    from pipelines.local import compile_pipeline

    return compile_pipeline("monitoring_pipeline", out)


def create_recurring_run(host: str, experiment: str = "mirec-monitoring", cron: str = "0 5 * * * *",
                         params: dict | None = None, package: str | Path = COMPILED):  # pragma: no cover (cluster)
    """Schedule the compiled pipeline on a Kubeflow Pipelines host (pipelines.local.create_recurring_run)."""
    from pipelines.local import create_recurring_run as schedule

    return schedule("monitoring_pipeline", host, experiment, cron, params, package)


if __name__ == "__main__":
    print(compile())
