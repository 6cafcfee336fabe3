"""Serving benchmark: p50/p99 latency and throughput through the real stack vs the in-process call.

    .venv/bin/python benchmarks/serving.py --items 100000 1000000 --index flat hnsw --concurrency 1 8
    .venv/bin/python benchmarks/serving.py --quick          # 10^4 items, a smoke run

For every (items, index): a random-init ComiRec-SA of the model registry (K=4, d=64, max_len=50; no
trained model is needed for latency) over synthetic items is packaged with `mirec package`'s library
code (no-archive format, so the 10^6 index is not zipped), then measured three ways, n=50, histories of
20..50 random items, exclude_seen=true:
  inproc      RecommendService.handle_batch([body]) in this process: JSON parse + id mapping +
              Recommender.recommend (interests -> FAISS top-M -> merge) = the lower bound
  torchserve  HTTP POST to TorchServe /predictions/<model> (Java frontend -> Python worker -> handler)
  stack       HTTP POST to the recommendation API (A/B, served log) -> TorchServe (the whole stack)
Concurrency c = c client threads, each sending its next request when the previous one returns. The three
paths run in interleaved rounds (--rounds) with everything loaded, so background load hits them alike.
Answer quality is measured next to latency: `answer_recall` = mean |served top-n ∩ exact top-n| / n, the served
answers (in-process = the handler's code) against the same model with an exact Flat index. The HNSW/IVF index
is built as `mirec package` builds it (M 32, efConstruction 200, efSearch/nprobe tuned to --target-recall of the
per-interest top-100 on sampled histories); a latency is only quoted with its recall.
Thread settings: MIREC_THREADS=--threads (torch + FAISS intra-op threads, default 1) in the worker and in-process.
Per path, the CPU time each process spent per request is recorded too (`cpu_ms_per_req`: client, API, TorchServe's
Java frontend, its Python worker): the decomposition of where the stack's overhead goes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import requests
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mirec.retrieval import ItemIndex  # noqa: E402
from mirec.retrieval.index import EFFORT_PARAM  # noqa: E402
from mirec.serving.packaging import IndexSpec, build_mar, copy_mirec_code, stage_candidate  # noqa: E402
from mirec.serving.service import RecommendService, configure_threads, freeze_loaded_objects  # noqa: E402
from mirec.serving.torchserve import TorchServeProcess, free_port  # noqa: E402
from mirec.serving.tsconfig import ModelServing, with_hugepage_malloc  # noqa: E402

K, DIM, N, MAX_LEN = 4, 64, 50, 50


def synth(n_items: int, seed: int = 0):
    import torch

    from mirec.models import ModelConfig, build

    torch.manual_seed(seed)
    cfg = ModelConfig(name="comirec_sa", n_items=n_items, dim=DIM, K=K, max_len=MAX_LEN)
    model = build(cfg).eval()
    rng = np.random.default_rng(seed)
    items = pd.DataFrame({"item_idx": np.arange(n_items), "item_id": [f"i{i}" for i in range(n_items)],
                          "category": [f"c{i % 50}" for i in range(n_items)], "category_idx": np.arange(n_items) % 50,
                          "popularity": rng.zipf(1.5, n_items).clip(max=10**6)})
    return model, cfg, items


def bodies(count: int, n_items: int, seed: int = 42) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for u in range(count):
        h = [f"i{i}" for i in rng.integers(0, n_items, rng.integers(20, 51))]
        out.append(json.dumps({"user_id": f"user-{u}", "history": h, "n": N}).encode())
    return out


def measure_raw(call, payloads: list[bytes], concurrency: int) -> tuple[list[float], float, list[str]]:
    """Closed loop: `concurrency` threads send the payloads -> (latencies s, wall s, errors)."""
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    it = iter(payloads)

    def worker():
        while True:
            with lock:
                p = next(it, None)
            if p is None:
                return
            t0 = time.perf_counter()
            try:
                call(p)
            except Exception as exc:  # counted, not fatal: the run goes on
                with lock:
                    errors.append(str(exc)[:200])
                continue
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as ex:
        for f in [ex.submit(worker) for _ in range(concurrency)]:
            f.result()
    return lat, time.perf_counter() - t0, errors


def summarize(lat: list[float], wall: float, errors: list[str]) -> dict:
    ms = np.array(lat) * 1000
    return {"requests": len(lat), "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "mean_ms": round(float(ms.mean()), 3),
            "throughput_rps": round(len(lat) / wall, 1), "errors": len(errors),
            **({"first_error": errors[0]} if errors else {})}


def http_caller(url: str):
    """POST callable over one keep-alive `http.client` connection per client thread. The stdlib client costs
    ~0.1 ms per call here (`requests` ~0.5 ms), so the client's own overhead stays out of the comparison with
    the in-process call; the body is read in full but not parsed."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    local = threading.local()
    headers = {"Content-Type": "application/json"}

    def call(p: bytes):
        for attempt in (0, 1):  # one reconnect: the server may close an idle keep-alive connection
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
            try:
                conn.request("POST", u.path, body=p, headers=headers)
                r = conn.getresponse()
                body = r.read()
                break
            except (ConnectionError, http.client.HTTPException):
                conn.close()
                local.conn = None
                if attempt:
                    raise
        if r.status != 200:
            raise RuntimeError(f"{url}: HTTP {r.status} {body[:200]!r}")
    return call


def stack_processes(ts: TorchServeProcess, api: subprocess.Popen) -> dict[str, list]:
    """The processes whose CPU time is accounted: this one (client + in-process), the API, Java, the workers."""
    import psutil

    out = {"client": [psutil.Process()], "api": [psutil.Process(api.pid)], "ts_java": [], "ts_worker": []}
    for p in [psutil.Process(ts.proc.pid), *psutil.Process(ts.proc.pid).children(recursive=True)]:
        cmd = " ".join(p.cmdline())
        if "model_service_worker" in cmd:
            out["ts_worker"].append(p)
        elif "java" in p.name() or "org.pytorch.serve.ModelServer" in cmd:
            out["ts_java"].append(p)
    return out


def cpu_seconds(procs: dict[str, list]) -> dict[str, float]:
    out = {}
    for k, ps in procs.items():
        out[k] = 0.0
        for p in ps:
            try:
                t = p.cpu_times()
                out[k] += t.user + t.system
            except Exception:  # noqa: BLE001 - a process that ended is not accounted
                pass
    return out


def start_api(ts_url: str, model: str, workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    settings = workdir / "api.yaml"
    settings.write_text(json.dumps({"torchserve_url": ts_url, "log_path": str(workdir / "served.jsonl"),
                                    "timeout_ms": 60000,
                                    "experiment": {"salt": "bench", "arms": [{"name": "A", "model": model}]}}))
    code = "import sys; from mirec.cli import run; sys.argv[0] = 'mirec'; run()"
    proc = subprocess.Popen([sys.executable, "-c", code, "api", "--settings", str(settings), "--port", str(port)],
                            cwd=ROOT, stdout=open(workdir / "api.log", "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except requests.ConnectionError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"API did not start: {(workdir / 'api.log').read_text()[-2000:]}")


def exact_answers(stage: Path, payloads: list[bytes]) -> list[set[str]]:
    """The item ids the same model answers with over an exact Flat index (the reference for answer recall)."""
    exact = RecommendService.load(stage, device="cpu")
    exact.recommender.index = ItemIndex.build(exact.recommender.item_vectors, "flat", use_gpu=False)
    return [{x["item_id"] for x in exact.handle_batch([p])[0][1]["items"]} for p in payloads]


def answer_recall(svc: RecommendService, payloads: list[bytes], exact: list[set[str]]) -> float:
    """Mean |served top-n ∩ exact top-n| / n over `payloads`."""
    hits = [len(want & {x["item_id"] for x in svc.handle_batch([p])[0][1]["items"]}) / max(1, len(want))
            for p, want in zip(payloads, exact)]
    return round(float(np.mean(hits)), 4)


def effort_curve(svc: RecommendService, payloads: list[bytes], exact: list[set[str]], efforts: list[int],
                 passes: int = 2) -> list[dict]:
    """In-process latency and answer recall per search effort (efSearch / nprobe): the trade-off to pick from.
    The efforts are timed in `passes` sweeps, up then down, pooled: a burst of background load then lands on
    several efforts instead of bending the curve at one."""
    idx = svc.recommender.index
    chosen = idx.params[idx.effort_name]
    lat: dict[int, list[float]] = {e: [] for e in efforts}
    sweeps = [efforts if i % 2 == 0 else efforts[::-1] for i in range(passes)]
    for e in tqdm([e for sw in sweeps for e in sw], desc="effort curve", leave=False):
        idx.set_effort(e)
        for p in payloads[:20]:
            svc.handle_batch([p])
        for p in payloads:
            t0 = time.perf_counter()
            svc.handle_batch([p])
            lat[e].append(time.perf_counter() - t0)
    out = []
    for e in efforts:
        idx.set_effort(e)
        ms = np.array(lat[e]) * 1000
        out.append({idx.effort_name: int(idx.params[idx.effort_name]), "answer_recall": answer_recall(svc, payloads, exact),
                    "p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)})
        print(f"[curve] {out[-1]}", flush=True)
    idx.set_effort(chosen)
    return out


def stage_case(n_items: int, kind: str, index: IndexSpec, root: Path) -> tuple[Path, dict]:
    """Stage (or, under --cache-dir, reuse) the benchmark model + index for one case -> (stage dir, meta)."""
    name = f"bench_{kind}_{n_items}"
    key = "" if kind == "flat" else (f"_m{index.hnsw_m}_efc{index.ef_construction}" if kind == "hnsw" else "_ivf")
    stage = root / f"{name}{key}_r{index.target_recall}"
    if (stage / "meta.json").exists():  # --cache-dir: reuse a staged model + index (skip the 10^6 HNSW build)
        copy_mirec_code(stage)  # the cached index and weights are reused; the handler's code is this checkout's
        print(f"[{name}] reusing staged package {stage}", flush=True)
        return stage, json.loads((stage / "meta.json").read_text())
    model, cfg, items = synth(n_items)
    meta = stage_candidate(stage, model, cfg, items, name=name, version="bench", index=index,
                           metrics={"note": "random-init model, latency benchmark only"})
    print(f"[{name}] staged: index {json.dumps(meta['index'])}", flush=True)
    return stage, meta


def run_case(n_items: int, kind: str, concurrency: list[int], n_requests: int, workdir: Path, index: IndexSpec,
             batch_delay_ms: int, cache_dir: Path | None = None, batch_size: int = 8,
             rounds: int = 4, warmup: int = 200, threads: int = 1, effort: int | None = None,
             curve: list[int] | None = None, workers: int = 1) -> tuple[list[dict], list[dict]]:
    """-> (rows, effort curve). `effort` overrides the packaged efSearch / nprobe in the MAR and in-process."""
    name = f"bench_{kind}_{n_items}"
    t0 = time.perf_counter()
    stage, meta = stage_case(n_items, kind, index, cache_dir or workdir / "stage")
    store = workdir / "model-store"
    shutil.rmtree(store / name, ignore_errors=True)
    build_mar(stage, name, "bench", store, archive_format="no-archive")
    meta_index = dict(meta["index"])
    if effort is not None and kind != "flat":  # serve the same index at another operating point
        key = EFFORT_PARAM[kind]
        spec = json.loads((store / name / "index.json").read_text())
        spec["params"][key] = meta_index[key] = effort
        (store / name / "index.json").write_text(json.dumps(spec))
    package_s = time.perf_counter() - t0
    print(f"[{name}] packaged in {package_s:.1f}s (index build {meta['index']['build_s']}s)", flush=True)

    payloads = bodies(n_requests, n_items)
    warm = bodies(warmup, n_items, seed=7)
    configure_threads(threads)
    svc = RecommendService.load(stage, device="cpu")
    if effort is not None and kind != "flat":
        svc.recommender.index.set_effort(effort)
    exact = exact_answers(stage, payloads[:200]) if kind != "flat" else None
    recall = answer_recall(svc, payloads[:200], exact) if exact else 1.0
    print(f"[{name}] answer recall@{N} vs exact: {recall}", flush=True)
    curve_rows = effort_curve(svc, payloads[:200], exact, curve) if (curve and exact) else []
    freeze_loaded_objects()  # as the handler does after loading: the lower bound gets the same treatment
    ts = TorchServeProcess(store, [ModelServing(name=name, version="bench", mar=name, workers=workers, batch_size=batch_size,
                                                max_batch_delay_ms=batch_delay_ms, response_timeout_s=120)],
                           workdir / f"ts-{name}", vmargs="-Xmx1g -XX:+UseSerialGC")
    api = None
    acc: dict[tuple[str, int], list] = {}
    try:
        ts.start(timeout_s=600)
        api, api_url = start_api(ts.inference_url, name, workdir)
        paths = {"inproc": lambda p: svc.handle_batch([p]),
                 "torchserve": http_caller(f"{ts.inference_url}/predictions/{name}"),
                 "stack": http_caller(f"{api_url}/recommend")}
        procs = stack_processes(ts, api)
        for call in paths.values():
            for p in warm:
                call(p)
        # interleaved rounds: every path sees the same share of whatever else runs on the machine
        chunks = np.array_split(np.arange(len(payloads)), rounds)
        for r_i, chunk in enumerate(chunks):
            part = [payloads[i] for i in chunk]
            for path, call in paths.items():
                for c in concurrency:
                    cpu0 = cpu_seconds(procs)
                    lat, wall, errs = measure_raw(call, part, c)
                    cpu1 = cpu_seconds(procs)
                    a = acc.setdefault((path, c), [[], 0.0, [], {}])
                    a[0] += lat
                    a[1] += wall
                    a[2] += errs
                    for k in cpu1:
                        a[3][k] = a[3].get(k, 0.0) + cpu1[k] - cpu0[k]
            print(f"[{name}] round {r_i + 1}/{rounds} done (load {os.getloadavg()[0]:.2f})", flush=True)
    finally:
        if api is not None:
            api.terminate()
            api.wait(10)
        ts.stop()
    del svc
    rows = []
    for (path, c), (lat, wall, errs, cpu) in acc.items():
        rows.append({"path": path, "concurrency": c, **summarize(lat, wall, errs),
                     "cpu_ms_per_req": {k: round(v * 1000 / max(len(lat), 1), 3) for k, v in cpu.items()}})
        print(f"[{name}] {path} c={c}: {rows[-1]}", flush=True)
    for r in rows:
        r.update({"loadavg_1m_end": round(os.getloadavg()[0], 2), "ts_batch_size": batch_size,
                  "items": n_items, "index": kind, "K": K, "n": N, "package_s": round(package_s, 1),
                  "index_build_s": meta["index"]["build_s"], "answer_recall": recall,
                  "index_params": {k: v for k, v in meta_index.items() if k not in ("kind", "build_s")}})
    return rows, [{"items": n_items, "index": kind, **c} for c in curve_rows]


def _effort(r: dict) -> int | None:
    return r.get("index_params", {}).get(EFFORT_PARAM.get(r["index"]))


def ratios(rows: list[dict]) -> list[dict]:
    out = []
    key = {(r["items"], r["index"], _effort(r), r["concurrency"], r["path"]): r for r in rows}
    for (items, kind, effort, c, path), r in key.items():
        if path == "inproc":
            continue
        base = key.get((items, kind, effort, c, "inproc"))
        if base:
            out.append({"items": items, "index": kind, "effort": effort, "concurrency": c, "path": path,
                        "p50_ratio": round(r["p50_ms"] / base["p50_ms"], 2),
                        "p99_ratio": round(r["p99_ms"] / base["p99_ms"], 2),
                        "throughput_ratio": round(r["throughput_rps"] / base["throughput_rps"], 2)})
    return out


def markdown(rows: list[dict], rat: list[dict]) -> str:
    lines = ["| items | index | recall | c | path | p50 ms | p99 ms | req/s | p50 × | p99 × | CPU ms/req client · API · Java · worker |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    rk = {(x["items"], x["index"], x["effort"], x["concurrency"], x["path"]): x for x in rat}
    for r in rows:
        x = rk.get((r["items"], r["index"], _effort(r), r["concurrency"], r["path"]), {})
        c = r.get("cpu_ms_per_req", {})
        cpu = " · ".join(f"{c.get(k, 0):.2f}" for k in ("client", "api", "ts_java", "ts_worker"))
        effort = "" if _effort(r) is None else f" ({'ef' if r['index'] == 'hnsw' else 'nprobe'} {_effort(r)})"
        lines.append(f"| {r['items']:,} | {r['index']}{effort} | {r.get('answer_recall', '')} | {r['concurrency']} | "
                     f"{r['path']} | {r['p50_ms']} | {r['p99_ms']} | {r['throughput_rps']} | {x.get('p50_ratio', '')} | "
                     f"{x.get('p99_ratio', '')} | {cpu} |")
    return "\n".join(lines)


def main() -> None:
    if "glibc.malloc.hugetlb" not in os.environ.get("GLIBC_TUNABLES", ""):
        # TorchServeProcess gives the worker huge-page malloc (tsconfig.HUGEPAGE_TUNABLE); the in-process lower
        # bound gets the same, and glibc reads it only at start: re-exec. GLIBC_TUNABLES=glibc.malloc.hugetlb=0
        # measures both without.
        os.execve(sys.executable, [sys.executable, *sys.argv], with_hugepage_malloc(dict(os.environ)))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--index", nargs="+", default=["flat", "hnsw"], choices=["flat", "ivf", "hnsw"])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--requests", type=int, default=400, help="measured requests per (path, concurrency)")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--hnsw-ef-construction", type=int, default=200)
    ap.add_argument("--target-recall", type=float, default=0.9,
                    help="index recall@100 efSearch/nprobe is tuned to at package time (as `mirec package`); 0 = no tuning")
    ap.add_argument("--ef-search", type=int, default=128, help="efSearch when --target-recall 0")
    ap.add_argument("--stage-only", action="store_true", help="build (and cache) the packages, measure nothing")
    ap.add_argument("--efforts", type=int, nargs="+", default=None,
                    help="also serve HNSW/IVF at these efSearch/nprobe values (default: only the tuned one)")
    ap.add_argument("--curve", type=int, nargs="*", default=[32, 64, 128, 192, 256, 384, 512, 768, 1024],
                    help="in-process latency vs answer recall at these efSearch/nprobe values (none: --curve)")
    ap.add_argument("--max-batch-delay-ms", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1, help="TorchServe workers per model (each holds the index)")
    ap.add_argument("--batch-size", type=int, default=8, help="TorchServe batch size (1 = no batching wait)")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds over the three paths")
    ap.add_argument("--threads", type=int, default=1, help="MIREC_THREADS for the worker and the in-process call")
    ap.add_argument("--warmup", type=int, default=200,
                    help="requests per path before measuring (the JVM compiles TorchServe's hot path meanwhile)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serving.json"))
    ap.add_argument("--quick", action="store_true", help="10^4 items, 100 requests (smoke)")
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="keep staged packages here and reuse them on the next run (the 10^6 HNSW build is slow)")
    a = ap.parse_args()
    os.environ["MIREC_THREADS"] = str(a.threads)  # inherited by TorchServe's worker
    if a.quick:
        a.items, a.requests = [10_000], 100
    rows: list[dict] = []
    curves: list[dict] = []
    index = {kind: IndexSpec(kind=kind, hnsw_m=a.hnsw_m, ef_construction=a.hnsw_ef_construction,
                             ef_search=a.ef_search, target_recall=a.target_recall or None, use_gpu=False)
             for kind in a.index}
    with tempfile.TemporaryDirectory(prefix="mirec-bench-") as tmp:
        for n in a.items:
            for kind in a.index:
                if a.stage_only:
                    stage_case(n, kind, index[kind], a.cache_dir or Path(tmp))
                    continue
                for i, effort in enumerate([None] + (list(a.efforts or []) if kind != "flat" else [])):
                    r, c = run_case(n, kind, a.concurrency, a.requests, Path(tmp), index[kind], a.max_batch_delay_ms,
                                    a.cache_dir, a.batch_size, a.rounds, a.warmup, a.threads, effort,
                                    a.curve if i == 0 else None, a.workers)
                    rows += r
                    curves += c
                    write(a, rows, curves)  # partial results survive a later failure
    if a.stage_only:
        return
    print(markdown(rows, ratios(rows)))
    if curves:
        print(curve_markdown(curves))
        plot_curves(curves, Path(a.out).with_suffix(".png"))
    print(f"wrote {a.out}")


def curve_markdown(curves: list[dict]) -> str:
    lines = ["| items | index | effort | answer recall@50 | in-process p50 ms | p99 ms |", "|---|---|---|---|---|---|"]
    for c in curves:
        e = f"{EFFORT_PARAM[c['index']]} {c[EFFORT_PARAM[c['index']]]}"
        lines.append(f"| {c['items']:,} | {c['index']} | {e} | {c['answer_recall']} | {c['p50_ms']} | {c['p99_ms']} |")
    return "\n".join(lines)


def plot_curves(curves: list[dict], path: Path) -> None:
    """Answer recall against in-process p50/p99 latency, one line per (items, index): where to operate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key in sorted({(c["items"], c["index"]) for c in curves}):
        pts = [c for c in curves if (c["items"], c["index"]) == key]
        for q, style in (("p50_ms", "-o"), ("p99_ms", ":x")):
            ax.plot([c[q] for c in pts], [c["answer_recall"] for c in pts], style,
                    label=f"{key[1]} {key[0]:,} items, {q[:3]}")
        for c in pts:
            e = c[EFFORT_PARAM[c["index"]]]
            ax.annotate(str(e), (c["p50_ms"], c["answer_recall"]), fontsize=7, xytext=(3, -8), textcoords="offset points")
    ax.axvline(10, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("in-process latency per request, ms (1 thread)")
    ax.set_ylabel(f"answer recall@{N} vs exact")
    ax.set_title("Search effort: latency vs answer recall (labels: efSearch / nprobe)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def write(a, rows: list[dict], curves: list[dict] | None = None) -> None:
    if a.stage_only:
        return
    rat = ratios(rows)
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
              "settings": {"K": K, "dim": DIM, "n": N, "max_len": MAX_LEN, "history_len": "20..50",
                           "requests": a.requests, "hnsw": {"M": a.hnsw_m, "ef_construction": a.hnsw_ef_construction,
                                                            "target_recall": a.target_recall or None,
                                                            "ef_search": None if a.target_recall else a.ef_search},
                           "torchserve": {"workers": a.workers, "batch_size": a.batch_size, "max_batch_delay_ms": a.max_batch_delay_ms},
                           "threads": a.threads, "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
                           "model": "random-init comirec_sa (registry), synthetic items"},
              "rows": rows, "ratios": rat, "effort_curve": curves or [], "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
