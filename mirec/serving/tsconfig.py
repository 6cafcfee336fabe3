"""Render TorchServe's `config.properties` (what TorchServe and KServe's TorchServe runtime read).

Profiles:
  local       - everything on 127.0.0.1, token authorization explicitly DISABLED (local/test only).
  production  - inference + metrics on 0.0.0.0, management on 127.0.0.1, token authorization ON (the
                TorchServe default; clients read key_file.json).
  kserve      - production + KServe's conventions: inference on :8085, model store /mnt/models/model-store
                (fields set explicitly in ServerSettings win: a local kserve-profile TorchServe for tests),
                environment overrides enabled (the runtime mounts this file as /mnt/models/config/config.properties),
                and token authorization DISABLED: the API runs in another pod and cannot read the predictor's
                key_file.json; the chart protects the predictor with a NetworkPolicy (RawDeployment) or leaves it
                to KServe's / the mesh's authentication (Serverless), see docs/helm.md.
Per-model workers / batch size / max batch delay / response timeout go into `model_snapshot`.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field

from mirec.config import StrictModel

Profile = Literal["local", "production", "kserve"]
KSERVE_LOG_CONFIG = "/mnt/models/config/log4j2.xml"  # written by `mirec package` next to config.properties


class ModelServing(StrictModel):
    """How TorchServe runs one model."""

    name: str
    version: str = "1.0"
    mar: str  # file (or folder, no-archive) name inside the model store
    workers: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1)
    max_batch_delay_ms: int = Field(1, ge=0)
    #: TorchServe's responseTimeout: a worker that does not answer one batch within this is deemed hung and
    #: restarted (a watchdog for the worker, not a request deadline; the MAR's model-config.yaml carries it too)
    response_timeout_s: int = Field(30, ge=1)
    #: TorchServe's clientTimeoutInMills (from the MAR's model-config.yaml): a request still queued after this
    #: long is dropped instead of answered. Set to the API's deadline (`timeout_ms`), so TorchServe does not
    #: keep working for a client that has given up. None: never dropped (TorchServe's default).
    client_timeout_ms: int | None = Field(None, ge=1)
    #: sha256 of the MAR file (or no-archive folder, `mirec.serving.torchserve.mar_sha256`), recorded by
    #: `mirec package`; verified before TorchServe starts. None: not verified.
    sha256: str | None = None


class ServerSettings(StrictModel):
    profile: Profile = "local"
    host: str | None = None  # None: from the profile
    inference_port: int = 8080
    management_port: int = 8081
    metrics_port: int = 8082
    grpc_inference_port: int = 7070  # TorchServe always starts its gRPC servers (on 127.0.0.1)
    grpc_management_port: int = 7071
    model_store: str = "model-store"
    netty_threads: int = Field(2, ge=1)
    job_queue_size: int = Field(256, ge=1)
    max_request_size: int = 1 << 20


#: glibc >= 2.35 malloc asks for transparent huge pages (madvise) on its big mmap'd chunks: the FAISS index
#: (~0.5 GB at 10^6 items: vectors + HNSW graph) is then mapped with 2 MB pages, and HNSW's random reads take
#: far fewer TLB misses. Measured at 10^6 items, efSearch 768, 1 thread, 3 interleaved A/B runs of a
#: standalone worker-like process: p50 14.0-14.7 ms vs 16.1-17.0 ms, CPU 14.6-15.7 vs 17.2-18.2 ms per request.
#: Read at process start, so it is set in the TorchServe process's environment (workers inherit it); a no-op
#: where THP is "never" or glibc is older.
HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"


def with_hugepage_malloc(environ: dict[str, str]) -> dict[str, str]:
    """`environ` with HUGEPAGE_TUNABLE added to GLIBC_TUNABLES (other tunables, or an explicit hugetlb, kept)."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables:
        return dict(environ)
    return {**environ, "GLIBC_TUNABLES": f"{tunables}:{HUGEPAGE_TUNABLE}" if tunables else HUGEPAGE_TUNABLE}


def render_config_properties(models: list[ModelServing], server: ServerSettings | None = None) -> str:
    s = server or ServerSettings()
    if s.profile == "kserve":
        # KServe's layout; a field set explicitly wins (tests and `TorchServeProcess(profile="kserve")` run the
        # profile on loopback ports with a local model store; everything else, token auth included, stays)
        given = s.model_fields_set
        public = s.host if ("host" in given and s.host) else "0.0.0.0"
        inference_port = s.inference_port if "inference_port" in given else 8085
        model_store = s.model_store if "model_store" in given else "/mnt/models/model-store"
    else:
        public = s.host or ("127.0.0.1" if s.profile == "local" else "0.0.0.0")
        inference_port, model_store = s.inference_port, s.model_store
    snapshot = {
        "name": "startup.cfg",
        "modelCount": len(models),
        "models": {
            m.name: {m.version: {"defaultVersion": True, "marName": m.mar, "minWorkers": m.workers,
                                 "maxWorkers": m.workers, "batchSize": m.batch_size,
                                 "maxBatchDelay": m.max_batch_delay_ms, "responseTimeout": m.response_timeout_s}}
            for m in models
        },
    }
    lines = [
        f"# generated by mirec (mirec.serving.tsconfig), profile={s.profile}",
        f"inference_address=http://{public}:{inference_port}",
        f"management_address=http://127.0.0.1:{s.management_port}",  # management never leaves loopback
        f"metrics_address=http://{public}:{s.metrics_port}",
        "metrics_mode=prometheus",
        "enable_metrics_api=true",
        f"model_store={model_store}",
        f"number_of_netty_threads={s.netty_threads}",
        f"netty_client_threads={s.netty_threads}",
        f"job_queue_size={s.job_queue_size}",
        f"max_request_size={s.max_request_size}",
        f"max_response_size={4 * s.max_request_size}",
        "default_workers_per_model=1",
        "install_py_dep_per_model=false",
        "enable_model_api=false",  # models come from model_snapshot; no registration over HTTP
        "async_logging=true",  # access/model logs off the request path
        "disable_system_metrics=true",  # no per-minute psutil collector process; the platform has host metrics
    ]
    if s.profile == "local":
        lines.append("# local/test only: token authorization explicitly disabled (keep it on in production)")
        lines.append("disable_token_authorization=true")
    if s.profile == "kserve":
        lines += ["# KServe: the API runs in another pod and has no key (TorchServe writes key_file.json inside",
                  "# the predictor pod; no key file is shared across pods), so token authorization is off. The",
                  "# predictor is reachable inside the cluster only: the chart's NetworkPolicy admits just the API",
                  "# pods (RawDeployment); in Serverless mode KServe's/the mesh's own authentication protects it.",
                  "disable_token_authorization=true"]
        lines += ["enable_envvars_config=true",
                  f"grpc_inference_port={s.grpc_inference_port}", f"grpc_management_port={s.grpc_management_port}",
                  # the runtime starts TorchServe without --log-config: point the JVM at the packaged one
                  f"vmargs=-Dlog4j.configurationFile=file://{KSERVE_LOG_CONFIG}"]
    else:
        lines += [f"grpc_inference_port={s.grpc_inference_port}", f"grpc_management_port={s.grpc_management_port}"]
    lines.append("model_snapshot=" + json.dumps(snapshot))
    return "\n".join(lines) + "\n"


def parse_properties(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


# Per-request loggers of the TorchServe 0.12 frontend: at TorchServe's default levels they write ~8 lines per
# request (twice into ts_log.log: `org.pytorch.serve` is at DEBUG and adds to the root's appenders too).
PER_REQUEST_LOGGERS = ("org.pytorch.serve.wlm.WorkerThread", "org.pytorch.serve.wlm.BatchAggregator",
                       "org.pytorch.serve.wlm.WorkerLifeCycle", "org.pytorch.serve.job.RestJob",
                       "org.pytorch.serve.job.GRPCJob")


WORKER_THREAD_LOGGER = "org.pytorch.serve.wlm.WorkerThread"
#: TorchServe 0.12's WorkerThread lines when a worker dies or hangs and is restarted (logged at INFO): the ones
#: mirec's log4j2.xml raises to WARN. Seen when a worker is killed: "9000 Worker disconnected. WORKER_MODEL_LOADED",
#: "Auto recovery start timestamp: ...", "Retry worker: 9000 in 1 seconds.".
WORKER_LIFECYCLE_MESSAGES = ("Worker disconnected", "Worker died", "Retry worker", "Auto recovery start",
                             "Backend worker did not respond", "Backend worker process died")


def render_log4j2(access_log: bool = False) -> str:
    """log4j2.xml for TorchServe's frontend (`torchserve --log-config FILE`): TorchServe's own appenders and
    file names, but INFO instead of DEBUG, no duplicated lines, and the per-request loggers at WARN.
    The access log is off by default: the recommendation API logs every answer (served log + Prometheus).
    Warnings and errors of every logger still reach ts_log.log and stdout."""

    def rolling(name: str, env: str, pattern: str) -> str:
        return (f'    <RollingFile name="{name}" fileName="${{env:{env}:-logs}}/{name}.log"'
                f' filePattern="${{env:{env}:-logs}}/{name}.%d{{dd-MMM}}.log.gz">\n'
                f'      <PatternLayout pattern="{pattern}"/>\n'
                '      <Policies><SizeBasedTriggeringPolicy size="100 MB"/><TimeBasedTriggeringPolicy/></Policies>\n'
                '      <DefaultRolloverStrategy max="5"/>\n    </RollingFile>')

    full, short = "%d{ISO8601} [%-5p] %t %c - %m%n", "%d{ISO8601} - %m%n"
    quiet = "\n".join(
        f'    <Logger name="{n}" level="warn" additivity="false"><AppenderRef ref="worker_lifecycle"/></Logger>'
        if n == WORKER_THREAD_LOGGER else f'    <Logger name="{n}" level="warn"/>' for n in PER_REQUEST_LOGGERS)
    lifecycle = "|".join(WORKER_LIFECYCLE_MESSAGES)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by mirec (mirec.serving.tsconfig.render_log4j2) -->
<Configuration>
  <!-- A worker's death and restart are INFO lines of WorkerThread, whose per-request lines are silenced (WARN):
       this context-wide filter lets them through (matched on the raw message, before formatting) and the
       worker_lifecycle appender writes them at WARN; the thread name (W-<port>-<model>_<version>) names the model. -->
  <RegexFilter regex="(?s).*({lifecycle}).*" useRawMsg="true" onMatch="ACCEPT" onMismatch="NEUTRAL"/>
  <Appenders>
{rolling("access_log", "LOG_LOCATION", short)}
{rolling("model_log", "LOG_LOCATION", full)}
{rolling("model_metrics", "METRICS_LOCATION", short)}
{rolling("ts_log", "LOG_LOCATION", full)}
{rolling("ts_metrics", "METRICS_LOCATION", short)}
    <Console name="STDOUT" target="SYSTEM_OUT"><PatternLayout pattern="{full}"/></Console>
    <Rewrite name="worker_lifecycle">
      <AppenderRef ref="STDOUT"/><AppenderRef ref="ts_log"/>
      <LoggerNameLevelRewritePolicy logger="{WORKER_THREAD_LOGGER}"><KeyValuePair key="INFO" value="WARN"/></LoggerNameLevelRewritePolicy>
    </Rewrite>
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="{"info" if access_log else "warn"}" additivity="false"><AppenderRef ref="access_log"/></Logger>
    <Logger name="MODEL_LOG" level="info" additivity="false"><AppenderRef ref="model_log"/></Logger>
    <Logger name="MODEL_METRICS" level="info" additivity="false"><AppenderRef ref="model_metrics"/></Logger>
    <Logger name="TS_METRICS" level="info" additivity="false"><AppenderRef ref="ts_metrics"/></Logger>
    <Logger name="io.netty" level="error"/>
    <Logger name="org.apache" level="off"/>
{quiet}
    <Root level="info"><AppenderRef ref="STDOUT"/><AppenderRef ref="ts_log"/></Root>
  </Loggers>
</Configuration>
"""
