"""Overload benchmark: what the real serving stack answers when more clients send than it can serve, and whether it
is still standing afterwards. The target (issue): under a 60 s overload at c=256 only 429s/timeouts besides the
200s, no 5xx from the API itself, served-log lines = 200 answers.

    .venv/bin/python benchmarks/overload.py                   # 10^4 items, c=256, 60 s, the product's default limits
    .venv/bin/python benchmarks/overload.py --quick           # 10^4 items, c=32, 10 s (a smoke run)
    .venv/bin/python benchmarks/overload.py --max-in-flight 16 --timeout-ms 300 --concurrency 128

The stack (everything real, on loopback): TorchServe (1 worker, batch size 8, max batch delay 1 ms,
responseTimeout 30 s = the product's worker watchdog, clientTimeoutInMills = the API's timeout_ms as `mirec
package` writes it into the MAR, so TorchServe drops what the API gave up on) serving one ComiRec-SA (K=4, d=64)
over --items items (default `iid` embeddings: random init, and a flat index: the fastest to stage; the staged
package is cached under --cache-dir like benchmarks/serving.py's), and the recommendation API as a subprocess
(`mirec api --settings FILE`, one arm) with the product's DEFAULT `timeout_ms` (1000) and `limits`
(max_in_flight 64, retry_after_s 1) unless --timeout-ms / --max-in-flight say otherwise.
Load: --concurrency client threads in this process, each with its own keep-alive http.client connection, each
sending its next POST /recommend (serving.py's `bodies`: 20..50 random items, n=50) as soon as the previous one
returned, for --seconds; each request has a client timeout of --client-timeout-s (socket timeout; the connection
is closed and a new one opened for the next request). Before it, --warmup sequential requests (not counted).
Every response's status is recorded (nothing raises); client timeouts and connection errors are counted apart.
After the run and --quiesce-s of quiet: counts by status (200, 429, 503, 504, other 4xx, other 5xx), client
timeouts, connection errors (by type), how many 429s carried Retry-After, p50/p99 latency of the 200s and of the
429s (client-side, send to last byte), a 5-s timeline of the statuses, the lines of the API's served log written
during the run (log_path and its rotated files beside it), the API's own /metrics counters, the CPU seconds of
client / API / TorchServe frontend / worker, whether the TorchServe worker was restarted (its pid), and a probe:
/healthz and /readyz of the API, /ping of TorchServe and one good /recommend through the API (200 with n items, one
more served-log line).
What the API answers by design (mirec/serving/api.py): 429 + Retry-After beyond limits.max_in_flight concurrent
/recommend requests (load shedding); 504 when TorchServe does not answer within timeout_ms (the documented
timeout); 503 when TorchServe cannot be reached or answers its own 503 (queue full / no worker: passed on
with Retry-After); 502 when TorchServe answers another 5xx or outside the contract; 500 for an unexpected exception. Checks (booleans in `checks`):
  no_api_5xx_other       no 5xx other than the documented 503/504 (i.e. no 500, no 502, ...)
  only_429_and_timeouts  every non-200 outcome is a 429, a 504 or a client timeout (no 503, no 4xx, no connection
                         error): the issue's "only 429s/timeouts"
  retry_after_on_429     every 429 carried Retry-After
  served_log_matches     served-log lines written during the run == 200 answers the clients received (a client
                         timeout on a request the API still answered with 200 makes it differ: reported, not hidden)
  alive_after            API and TorchServe processes running, /healthz, /ping and the good /recommend answered
  worker_not_restarted   the TorchServe worker's pid is the one from before the run
`target_met` = no_api_5xx_other and only_429_and_timeouts and served_log_matches and alive_after.
Also `shed`: whether any request was shed (429); at c <= max_in_flight nothing is expected to be.
Result: one JSON object in --out (benchmarks/results/overload.json): settings, counts, latency_ms, timeline,
served_log, api_metrics, cpu_s, checks, target_met. Missed targets are reported as such, the exit code is 0
either way (1 only when the stack could not be started).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving as sb  # noqa: E402  (benchmarks/serving.py: staging, payloads, CPU accounting)

from mirec.ab.events import rotated_files  # noqa: E402
from mirec.serving.packaging import IndexSpec, build_mar, torchserve_model_config  # noqa: E402
from mirec.serving.settings import ApiSettings  # noqa: E402
from mirec.serving.torchserve import TorchServeProcess  # noqa: E402
from mirec.serving.tsconfig import ModelServing  # noqa: E402

ROOT = sb.ROOT
DEFAULTS = ApiSettings()  # the product's defaults: timeout_ms, limits
TIMELINE_S = 5


# ---- the stack ---------------------------------------------------------------------------------------------------
def start_api(ts: TorchServeProcess, model: str, workdir: Path, timeout_ms: int | None,
              max_in_flight: int | None) -> tuple[subprocess.Popen, str, dict]:
    """`mirec api` as a subprocess with the product's defaults except what is given -> (process, url, settings)."""
    settings: dict = {"torchserve_url": ts.inference_url, "torchserve_management_url": ts.management_url,
                      "log_path": str(workdir / "served.jsonl"),
                      "experiment": {"salt": "overload", "arms": [{"name": "A", "model": model}]}}
    if timeout_ms is not None:
        settings["timeout_ms"] = timeout_ms
    if max_in_flight is not None:
        settings["limits"] = {"max_in_flight": max_in_flight}
    proc, url = sb.launch_api(settings, workdir, start_timeout_s=120)
    return proc, url, settings


def worker_pids(ts: TorchServeProcess, model: str) -> list[int] | None:
    try:
        r = requests.get(f"{ts.management_url}/models/{model}", timeout=5)
        return sorted(int(w["pid"]) for w in r.json()[0].get("workers", []) if w.get("pid"))
    except Exception:  # noqa: BLE001 - reported as unknown
        return None


def served_log_files(log_path: Path) -> list[Path]:
    """The served log and the files the API's writer rotated it into."""
    return ([log_path] if log_path.is_file() else []) + rotated_files(log_path)


def served_log_lines(log_path: Path) -> int:
    n = 0
    for p in served_log_files(log_path):
        with open(p, "rb") as fh:
            n += sum(1 for line in fh if line.strip())
    return n


_METRIC = re.compile(r'^(mirec_api_\w+?)(?:\{(.*)\})? ([0-9.eE+-]+)$')


def api_metrics(url: str) -> dict:
    """The API's own counters (/metrics): requests by status, shed by reason, upstream errors, log errors."""
    out: dict = {"requests_by_status": {}, "shed": {}, "upstream_errors": 0.0, "served_log_errors": 0.0}
    try:
        text = requests.get(f"{url}/metrics", timeout=10).text
    except requests.RequestException as exc:
        return {"error": str(exc)[:200]}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")), float(m.group(3))
        if name == "mirec_api_requests_total":
            s = labels.get("status", "?")
            out["requests_by_status"][s] = out["requests_by_status"].get(s, 0) + int(value)
        elif name == "mirec_api_shed_total":
            out["shed"][labels.get("reason", "?")] = int(value)
        elif name == "mirec_api_upstream_errors_total":
            out["upstream_errors"] += value
        elif name == "mirec_api_served_log_errors_total":
            out["served_log_errors"] += value
    out["upstream_errors"] = int(out["upstream_errors"])
    out["served_log_errors"] = int(out["served_log_errors"])
    return out


# ---- the load ----------------------------------------------------------------------------------------------------
class Outcome:
    """One client thread's record: (t_start rel. s, latency s, status or -1 timeout / -2 connection error, flag)."""

    __slots__ = ("rows", "errors", "bodies")

    def __init__(self):
        self.rows: list[tuple[float, float, int, bool]] = []
        self.errors: dict[str, int] = {}
        self.bodies: dict[int, bytes] = {}  # first body per non-200/429 status (what the API said)


TIMEOUT, CONN_ERROR = -1, -2


def overload(url: str, payloads: list[bytes], concurrency: int, seconds: float, client_timeout_s: float
             ) -> tuple[list[Outcome], float]:
    """Open overload: `concurrency` threads, each sends its next POST /recommend as soon as the previous returned,
    until `seconds` have passed since the start (a request started before then is finished and counted)."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    headers = {"Content-Type": "application/json"}
    outs = [Outcome() for _ in range(concurrency)]
    start = threading.Barrier(concurrency + 1)
    t_zero = [0.0]

    def worker(i: int):
        out = outs[i]
        conn = None
        k = i * 7919
        start.wait()
        t0 = t_zero[0]
        end = t0 + seconds
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            body = payloads[k % len(payloads)]
            k += 1
            if conn is None:
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=client_timeout_s)
            ts = time.perf_counter()
            try:
                conn.request("POST", u.path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                dt = time.perf_counter() - ts
                status = r.status
                out.rows.append((ts - t0, dt, status, r.getheader("Retry-After") is not None))
                if status not in (200, 429) and status not in out.bodies:
                    out.bodies[status] = data[:300]
                if r.will_close:
                    conn.close()
                    conn = None
            except (TimeoutError, socket.timeout):
                out.rows.append((ts - t0, time.perf_counter() - ts, TIMEOUT, False))
                conn.close()
                conn = None
            except (OSError, http.client.HTTPException) as exc:
                out.rows.append((ts - t0, time.perf_counter() - ts, CONN_ERROR, False))
                key = type(exc).__name__
                out.errors[key] = out.errors.get(key, 0) + 1
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True, name=f"load-{i}") for i in range(concurrency)]
    for t in threads:
        t.start()
    t_zero[0] = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    return outs, time.perf_counter() - t_zero[0]


def _pct(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    ms = np.asarray(values) * 1000
    return {"n": len(values), "p50": round(float(np.percentile(ms, 50)), 2),
            "p99": round(float(np.percentile(ms, 99)), 2), "max": round(float(ms.max()), 2)}


def tally(outs: list[Outcome], wall: float, seconds: float | None = None) -> tuple[dict, dict, list[dict], dict]:
    """-> (counts, latency_ms, timeline, samples of non-200/429 bodies)."""
    rows = [r for o in outs for r in o.rows]
    by_status: dict[str, int] = {}
    for _, _, s, _ in rows:
        if s > 0:
            by_status[str(s)] = by_status.get(str(s), 0) + 1
    errors: dict[str, int] = {}
    for o in outs:
        for k, v in o.errors.items():
            errors[k] = errors.get(k, 0) + v
    n = lambda s: by_status.get(str(s), 0)  # noqa: E731
    other_4xx = sum(v for k, v in by_status.items() if 400 <= int(k) < 500 and int(k) != 429)
    other_5xx = sum(v for k, v in by_status.items() if 500 <= int(k) < 600 and int(k) not in (503, 504))
    other = sum(v for k, v in by_status.items() if not 200 <= int(k) < 600 or 200 < int(k) < 400)
    counts = {"requests": len(rows), "answers_200": n(200), "shed_429": n(429),
              "shed_429_with_retry_after": sum(1 for _, _, s, ra in rows if s == 429 and ra),
              "upstream_timeout_504": n(504), "upstream_unavailable_503": n(503), "other_4xx": other_4xx,
              "api_5xx_other": other_5xx, "other_status": other,
              "client_timeouts": sum(1 for r in rows if r[2] == TIMEOUT),
              "connection_errors": sum(1 for r in rows if r[2] == CONN_ERROR), "connection_errors_by_type": errors,
              "by_status": dict(sorted(by_status.items())), "wall_s": round(wall, 2),
              "rps_200": round(n(200) / wall, 1) if wall else None, "rps_all": round(len(rows) / wall, 1) if wall else None}
    latency = {"200": _pct([dt for _, dt, s, _ in rows if s == 200]),
               "429": _pct([dt for _, dt, s, _ in rows if s == 429]),
               "504": _pct([dt for _, dt, s, _ in rows if s == 504]),
               "client_timeout": _pct([dt for _, dt, s, _ in rows if s == TIMEOUT])}
    timeline: list[dict] = []
    for b in range(int(np.ceil((seconds or wall) / TIMELINE_S))):  # requests start only before `seconds`
        sel = [s for t, _, s, _ in rows if b * TIMELINE_S <= t < (b + 1) * TIMELINE_S]
        timeline.append({"t_s": b * TIMELINE_S, "200": sel.count(200), "429": sel.count(429), "504": sel.count(504),
                         "client_timeout": sel.count(TIMEOUT),
                         "other": sum(1 for s in sel if s not in (200, 429, 504, TIMEOUT))})
    samples: dict[str, str] = {}
    for o in outs:
        for s, body in o.bodies.items():
            samples.setdefault(str(s), body.decode("utf-8", "replace"))
    return counts, latency, timeline, samples


def probe(api_url: str, ts: TorchServeProcess, api: subprocess.Popen, payload: bytes) -> dict:
    """After the overload: both processes running, /healthz, /readyz, /ping, one good /recommend."""
    out: dict = {"api_running": api.poll() is None, "torchserve_running": ts.alive()}

    def get(url: str) -> int | str:
        try:
            return requests.get(url, timeout=10).status_code
        except requests.RequestException as exc:
            return f"{type(exc).__name__}"

    out["api_healthz"] = get(f"{api_url}/healthz")
    out["api_readyz"] = get(f"{api_url}/readyz")
    out["torchserve_ping"] = get(f"{ts.inference_url}/ping")
    try:
        r = requests.post(f"{api_url}/recommend", data=payload, headers={"Content-Type": "application/json"},
                          timeout=10)
        out["recommend_status"] = r.status_code
        out["recommend_items"] = len(r.json().get("items", [])) if r.status_code == 200 else 0
        if r.status_code != 200:
            out["recommend_body"] = r.text[:300]
    except (requests.RequestException, ValueError) as exc:
        out["recommend_status"] = type(exc).__name__
        out["recommend_items"] = 0
    return out


# ---- the run -----------------------------------------------------------------------------------------------------
def run(a) -> dict:
    timeout_ms = a.timeout_ms if a.timeout_ms is not None else DEFAULTS.timeout_ms
    max_in_flight = a.max_in_flight if a.max_in_flight is not None else DEFAULTS.limits.max_in_flight
    case = sb.Case(a.items, a.embeddings, a.cache_dir)
    index = IndexSpec(kind=a.index, target_recall=(0.95 if a.index != "flat" else None), recall_metric="answer",
                      answer_n=sb.N, recall_queries=128, use_gpu=False)
    t0 = time.perf_counter()
    stage, meta = sb.stage_case(case, a.index, index, a.cache_dir)
    name = f"bench_{a.index}_{a.items}"
    workdir = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="mirec-overload-"))
    workdir.mkdir(parents=True, exist_ok=True)
    store = workdir / "model-store"
    shutil.rmtree(store / name, ignore_errors=True)
    response_timeout_s = 30  # the product's default (CandidateSpec / ModelServing): the worker's watchdog
    build_mar(stage, name, "bench", store, archive_format="no-archive",
              model_config=torchserve_model_config(response_timeout_s, timeout_ms))
    print(f"[overload] {name} ({a.embeddings}, index {meta['index']['kind']}) staged + MAR in "
          f"{time.perf_counter() - t0:.1f}s; workdir {workdir}", flush=True)
    payloads = case.payloads(4096, 42)
    ts = api = None
    try:
        ts = TorchServeProcess(store, [ModelServing(name=name, version="bench", mar=name, workers=1,
                                                    batch_size=a.batch_size, max_batch_delay_ms=a.max_batch_delay_ms,
                                                    response_timeout_s=response_timeout_s,
                                                    client_timeout_ms=timeout_ms)],
                               workdir / "ts", vmargs="-Xmx1g -XX:+UseSerialGC")
        t1 = time.perf_counter()
        ts.start(timeout_s=600)
        api, api_url, api_settings = start_api(ts, name, workdir, a.timeout_ms, a.max_in_flight)
        print(f"[overload] TorchServe + API up in {time.perf_counter() - t1:.1f}s (API {api_url}, timeout_ms "
              f"{timeout_ms}, max_in_flight {max_in_flight})", flush=True)
        s = requests.Session()
        warm_fail = 0
        for p in case.payloads(a.warmup, 7):
            r = s.post(f"{api_url}/recommend", data=p, headers={"Content-Type": "application/json"}, timeout=30)
            warm_fail += r.status_code != 200
        s.close()
        log_path = workdir / "served.jsonl"
        time.sleep(0.5)
        lines_before = served_log_lines(log_path)
        metrics_before = api_metrics(api_url)
        pids_before = worker_pids(ts, name)
        procs = sb.stack_processes(ts, api)
        cpu0 = sb.cpu_seconds(procs)
        load_before = [round(x, 2) for x in os.getloadavg()]
        print(f"[overload] warm-up {a.warmup} requests ({warm_fail} not 200); overload c={a.concurrency} for "
              f"{a.seconds:g}s (load {load_before[0]})", flush=True)
        outs, wall = overload(f"{api_url}/recommend", payloads, a.concurrency, a.seconds, a.client_timeout_s)
        load_after = [round(x, 2) for x in os.getloadavg()]
        time.sleep(a.quiesce_s)  # what the API still had in flight is answered / timed out and logged
        cpu1 = sb.cpu_seconds(procs)
        lines_after = served_log_lines(log_path)
        metrics_after = api_metrics(api_url)
        counts, latency, timeline, samples = tally(outs, wall, a.seconds)
        alive = probe(api_url, ts, api, payloads[0])
        time.sleep(0.2)
        lines_probe = served_log_lines(log_path)
        pids_after = worker_pids(ts, name)
        delta_status = {k: v - metrics_before.get("requests_by_status", {}).get(k, 0)
                        for k, v in metrics_after.get("requests_by_status", {}).items()}
        served = {"lines_during_run": lines_after - lines_before, "lines_before_run": lines_before,
                  "files": [p.name for p in served_log_files(log_path)],
                  "probe_added_one_line": lines_probe - lines_after == 1}
        api_log = (workdir / "api.log").read_text(errors="replace") if (workdir / "api.log").exists() else ""
    finally:
        if api is not None:
            api.terminate()
            try:
                api.wait(15)
            except subprocess.TimeoutExpired:
                api.kill()
        if ts is not None:
            ts.stop()
    n_run = counts["requests"]
    non_ok_allowed = counts["shed_429"] + counts["upstream_timeout_504"] + counts["client_timeouts"]
    checks = {
        "no_api_5xx_other": counts["api_5xx_other"] == 0,
        "only_429_and_timeouts": n_run - counts["answers_200"] == non_ok_allowed,
        "retry_after_on_429": counts["shed_429_with_retry_after"] == counts["shed_429"],
        "served_log_matches": served["lines_during_run"] == counts["answers_200"],
        "alive_after": bool(alive["api_running"] and alive["torchserve_running"] and alive["api_healthz"] == 200
                            and alive["torchserve_ping"] == 200 and alive["recommend_status"] == 200
                            and alive["recommend_items"] == sb.N and served["probe_added_one_line"]),
        "worker_not_restarted": pids_before is not None and pids_before == pids_after,
    }
    target = (checks["no_api_5xx_other"] and checks["only_429_and_timeouts"] and checks["served_log_matches"]
              and checks["alive_after"])
    result = {
        "benchmark": "overload",
        "settings": {"items": a.items, "embeddings": a.embeddings, "index": meta["index"]["kind"],
                     "concurrency": a.concurrency, "seconds": a.seconds, "client_timeout_s": a.client_timeout_s,
                     "timeout_ms": timeout_ms, "max_in_flight": max_in_flight,
                     "retry_after_s": DEFAULTS.limits.retry_after_s,
                     "product_defaults": {"timeout_ms": a.timeout_ms is None, "max_in_flight": a.max_in_flight is None},
                     "api_settings_file": api_settings,
                     "torchserve": {"workers": 1, "batch_size": a.batch_size, "max_batch_delay_ms": a.max_batch_delay_ms,
                                    "response_timeout_s": response_timeout_s, "client_timeout_ms": timeout_ms},
                     "warmup": a.warmup, "warmup_not_200": warm_fail, "quiesce_s": a.quiesce_s, "quick": a.quick,
                     "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                 "python": platform.python_version(), "nice": os.nice(0)},
                     "loadavg_before": load_before, "loadavg_after": load_after},
        "counts": counts,
        "latency_ms": latency,
        "timeline": timeline,
        "non_200_429_bodies": samples,
        "served_log": served,
        "api_metrics": {"during_run_by_status": dict(sorted(delta_status.items())), "after": metrics_after},
        "api_log": {"tracebacks": api_log.count("Traceback"), "failed_requests": api_log.count(" failed (request id "),
                    "tail": api_log.splitlines()[-15:] if "Traceback" in api_log else []},
        "cpu_s": {k: round(cpu1.get(k, 0) - cpu0.get(k, 0), 2) for k in cpu1},
        "torchserve_worker_pids": {"before": pids_before, "after": pids_after},
        "after": alive,
        "checks": checks,
        "shed": counts["shed_429"] > 0,
        "target_met": bool(target),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if not a.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def table(res: dict) -> str:
    s, c, lat, ch = res["settings"], res["counts"], res["latency_ms"], res["checks"]
    rows = [
        ("items / index", f"{s['items']:,} {s['embeddings']} / {s['index']}"),
        ("concurrency x seconds", f"{s['concurrency']} x {s['seconds']:g}s (wall {c['wall_s']}s)"),
        ("timeout_ms / max_in_flight", f"{s['timeout_ms']} / {s['max_in_flight']}"
                                       + (" (product defaults)" if all(s["product_defaults"].values()) else "")),
        ("machine cpus / loadavg", f"{s['machine']['cpus']} / {s['loadavg_before']} -> {s['loadavg_after']}"),
        ("requests", f"{c['requests']} ({c['rps_all']} req/s)"),
        ("200", f"{c['answers_200']} ({c['rps_200']}/s)"),
        ("429 (with Retry-After)", f"{c['shed_429']} ({c['shed_429_with_retry_after']})"),
        ("504 upstream timeout", c["upstream_timeout_504"]),
        ("503 upstream unavailable", c["upstream_unavailable_503"]),
        ("other 4xx", c["other_4xx"]),
        ("other 5xx (api_5xx_other)", c["api_5xx_other"]),
        ("client timeouts", c["client_timeouts"]),
        ("connection errors", f"{c['connection_errors']} {c['connection_errors_by_type'] or ''}".strip()),
        ("latency 200 p50 / p99 ms", f"{lat['200']['p50']} / {lat['200']['p99']}"),
        ("latency 429 p50 / p99 ms", f"{lat['429']['p50']} / {lat['429']['p99']}"),
        ("served-log lines (run)", f"{res['served_log']['lines_during_run']} (200s: {c['answers_200']})"),
        ("API /metrics by status", res["api_metrics"]["during_run_by_status"]),
        ("API log tracebacks", res["api_log"]["tracebacks"]),
        ("TorchServe worker pids", f"{res['torchserve_worker_pids']['before']} -> {res['torchserve_worker_pids']['after']}"),
        ("CPU s client/api/java/worker", " / ".join(str(res["cpu_s"].get(k, "?"))
                                                    for k in ("client", "api", "ts_java", "ts_worker"))),
        *[(f"check {k}", v) for k, v in ch.items()],
        ("shed at all", res["shed"]),
        ("TARGET MET", res["target_met"]),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"| {k:<{w}} | {v} |" for k, v in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--embeddings", default="iid", choices=["iid", "trained", "planted"],
                    help="as benchmarks/serving.py (iid: random init, fastest to stage)")
    ap.add_argument("--index", default="flat", choices=sb.INDEX_CHOICES)
    ap.add_argument("--concurrency", type=int, default=256, help="client threads")
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the overload lasts")
    ap.add_argument("--client-timeout-s", type=float, default=5.0, help="each request's client (socket) timeout")
    ap.add_argument("--timeout-ms", type=int, default=None,
                    help=f"the API's deadline to TorchServe (default: the product's, {DEFAULTS.timeout_ms}); also "
                         "TorchServe's clientTimeoutInMills in the MAR")
    ap.add_argument("--max-in-flight", type=int, default=None,
                    help=f"the API's concurrency limit (default: the product's, {DEFAULTS.limits.max_in_flight})")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-batch-delay-ms", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="MIREC_THREADS of the TorchServe worker")
    ap.add_argument("--warmup", type=int, default=100, help="sequential requests before the overload (not counted)")
    ap.add_argument("--quiesce-s", type=float, default=2.0, help="quiet before counting the served log")
    ap.add_argument("--quick", action="store_true", help="10^4 items, c=32, 10 s (smoke)")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "artifacts" / "bench-cache",
                    help="staged packages, reused on the next run")
    ap.add_argument("--workdir", default=None, help="keep the served log, api.log and TorchServe logs here")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "overload.json"))
    a = ap.parse_args()
    if a.quick:
        a.items, a.concurrency, a.seconds = 10_000, 32, 10.0
    os.environ["MIREC_THREADS"] = str(a.threads)  # inherited by TorchServe's worker
    try:
        res = run(a)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(table(res))
    if res["non_200_429_bodies"]:
        print("non-200/429 answers (first body per status):")
        for k, v in res["non_200_429_bodies"].items():
            print(f"  {k}: {v[:200]}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
