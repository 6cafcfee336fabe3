"""Serving benchmark: p50/p99 latency and throughput through the real stack vs the in-process call, with the answer
recall next to every latency.

    .venv/bin/python benchmarks/serving.py --items 1000000 --index flat hnsw hnsw_sq8 ivfpq_fs auto --paths inproc
    .venv/bin/python benchmarks/serving.py --items 1000000 --index auto --embeddings trained --concurrency 1 8
    .venv/bin/python benchmarks/serving.py --quick          # 10^4 items, a smoke run

Models (--embeddings), ComiRec-SA of the model registry, K=4, d=64, max_len=50:
  trained  trained on mirec's synthetic generator (mirec.data.synth: planted categories, Zipf popularity, drift) at
           --items items, so the item vectors have the structure trained embeddings have. Budget (TRAIN_BUDGET,
           TRAIN_USERS; the 2-core reference machine): 30,000 users x 10^6 items / 100 categories (~1.5 M events;
           every catalogue item the generator left without an event gets one padding event, so the index covers the
           whole catalogue), prepared with min_item_count 1, then `mirec.train.train` with TrainConfig(max_time_s=600
           wall, samples_per_epoch=100,000, batch 256, 1,024 uniform+in-batch negatives, eval on 300 valid users,
           2 threads; at 10^6 items the item table trains sparse, TrainConfig.sparse_item_embeddings "auto": ~7,800
           steps in the 600 s, against a few hundred with a dense-Adam table). Head and mid items move into their
           category clusters; the ~600k catalogue-padding items (one event each) stay near their initialisation
           (the metrics of the run are stored in
           <cache>/trained_.../bench_train.json and in each row's package meta). The checkpoint, its item vectors
           (item_vectors.npy) and held-out histories are cached under --cache-dir (artifacts/bench-cache), so
           re-runs skip data generation and training; --train-budget-s / --train-samples change the budget (and
           the cache key). Requests: histories of held-out (test) users, n=50; the index is tuned on other
           held-out users than those the requests come from.
  iid      random init: i.i.d. Gaussian item vectors, the worst case for any ANN index (the previous round's
           model); requests: 20..50 random items, n=50.
  --model M (iid only) serves registry model M, random init, instead of ComiRec-SA: one model's serving latency
           against another's on the same catalogue and index (`--model gemirec`: GemiRec in its joint stage, the
           dictionary k-means-initialised, with its per-history code cache; `--model-options '{"cache_size": 0}'`
           without it). Rows carry "model" (absent = comirec_sa).
Index kinds (--index; built as `mirec package` builds them, effort tuned to --target-recall of --recall-metric,
default answer recall@50 >= 0.95 on the tuning histories): flat (exact), hnsw (M 32, efConstruction 200), hnsw_sq8
(same graph over 8-bit scalar-quantised vectors), ivfpq_fs (IVF 4·sqrt(N) lists, PQ d/2 x 4-bit fast-scan,
exact re-ranking of k_factor·M candidates), auto (`mirec package --index auto`: the cheapest of ivfpq_fs,
hnsw_sq8, hnsw, flat by measured search latency that reaches the target; rows say which kind it chose).
Paths (--paths; `--paths inproc` measures without TorchServe):
  inproc      RecommendService.handle_batch([body]) in this process: JSON parse + id mapping +
              Recommender.recommend (interests -> one batched FAISS search of the K interests -> merge) = the lower
              bound; also its CPU time per request (cpu_p50_ms / cpu_p99_ms), which background load on a shared
              machine does not inflate
  torchserve  HTTP POST to TorchServe /predictions/<model> (Java frontend -> Python worker -> handler)
  stack       HTTP POST to the recommendation API (A/B, served log) -> TorchServe (the whole stack)
Concurrency c = c client threads, each sending its next request when the previous one returns. The paths run in
interleaved rounds (--rounds) with everything loaded, so background load hits them alike.
`recall` (= answer_recall) = mean |served top-n ∩ exact top-n| / n, the served answers (in-process = the handler's
code) against the same model with an exact Flat index, on the first 200 measured requests.
Rows in benchmarks/results/serving.json: {"items", "index", "recall", "concurrency", "path", "p50_ms", "p99_ms",
"rps", ...details}; a run replaces only the rows of the configurations it measured (--no-merge: all).
Thread settings: MIREC_THREADS=--threads (torch + FAISS intra-op threads, default 1) in the worker and in-process.
Per path, the CPU time each process spent per request is recorded too (`cpu_ms_per_req`: client, API, TorchServe's
Java frontend, its Python worker): the decomposition of where the stack's overhead goes.
"""

from __future__ import annotations

import argparse
import hashlib
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
PATHS = ("inproc", "torchserve", "stack")
INDEX_CHOICES = ["flat", "ivf", "hnsw", "hnsw_sq8", "ivfpq_fs", "auto"]


def synth(n_items: int, seed: int = 0, model_name: str = "comirec_sa", options: dict | None = None):
    import torch

    from mirec.models import ModelConfig, build

    torch.manual_seed(seed)
    cfg = ModelConfig(name=model_name, n_items=n_items, dim=DIM, K=K, max_len=MAX_LEN, options=options or {})
    model = build(cfg)
    # a staged model (GemiRec) is served in the stage its training ends in (GemiRec: joint, the dictionary
    # k-means-initialised on the random item vectors), so the latency includes all of its serving work
    model.begin_epoch(10**9)
    model = model.eval()
    cfg = model.cfg  # the model may fill in settings it derived (GemiRec's "auto" dictionary sizes)
    rng = np.random.default_rng(seed)
    items = pd.DataFrame({"item_idx": np.arange(n_items), "item_id": [f"i{i}" for i in range(n_items)],
                          "category": [f"c{i % 50}" for i in range(n_items)], "category_idx": np.arange(n_items) % 50,
                          "popularity": rng.zipf(1.5, n_items).clip(max=10**6)})
    return model, cfg, items


# ---- trained embeddings (planted structure) ------------------------------------------------------------------------
#: the training budget of the 10^6-item model (documented in the module docstring; part of the cache key)
TRAIN_USERS, TRAIN_CATEGORIES = 30_000, 100
TRAIN_BUDGET = {"max_time_s": 600.0, "samples_per_epoch": 100_000, "batch_size": 256, "num_negatives": 1024,
                "eval_max_users": 300, "num_threads": 2}


def _synth_dataset(n_items: int, root: Path, users: int = TRAIN_USERS, categories: int = TRAIN_CATEGORIES) -> Path:
    """mirec's synthetic generator at `n_items` (planted categories, Zipf popularity, drift) -> a prepared dataset
    with every catalogue item kept: the generator leaves most tail items without an event at 10^5 users, so each such
    item gets one event appended to a random event's user at that event's time (min_item_count 1). The index then
    covers the whole catalogue, as a served model's does, with the tail barely trained (as in production)."""
    from mirec.config import DataConfig, SourceConfig, SynthConfig
    from mirec.data import generate, prepare

    out = root / f"synth_{n_items}_u{users}"
    if (out / "dataset.json").exists():  # a prepared dataset (mirec.data.schema.META)
        return out
    raw, item_df, _, _ = generate(SynthConfig(n_users=users, n_items=n_items, n_categories=categories, seed=0),
                                  progress=False)
    seen = np.zeros(n_items, bool)
    seen[pd.Index(pd.unique(raw["item_id"])).astype(str).str.slice(1).astype(np.int64).to_numpy()] = True
    missing = np.flatnonzero(~seen)
    rng = np.random.default_rng(1)
    host = raw.iloc[rng.integers(0, len(raw), len(missing))]
    pad = pd.DataFrame({"user_id": host["user_id"].to_numpy(), "item_id": [f"i{j}" for j in missing],
                        "timestamp": host["timestamp"].to_numpy(), "weight": np.ones(len(missing), np.float32)})
    raw = pd.concat([raw[["user_id", "item_id", "timestamp", "weight"]], pad], ignore_index=True)
    tmp = root / f"synth_{n_items}_raw"
    tmp.mkdir(parents=True, exist_ok=True)
    raw.to_parquet(tmp / "raw.parquet", index=False)
    item_df.to_parquet(tmp / "items.parquet", index=False)
    print(f"[train] synthetic data: {len(raw):,} events ({len(missing):,} catalogue-padding), {n_items:,} items", flush=True)
    del raw
    prepare(DataConfig(name=f"synth_{n_items}", out_dir=str(out), min_user_count=5, min_item_count=1,
                       source=SourceConfig(format="table", path=str(tmp / "raw.parquet"),
                                           items_path=str(tmp / "items.parquet"), columns={"weight": "weight"})),
            progress=False)
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def trained_model(n_items: int, cache_dir: Path, budget: dict | None = None):
    """A ComiRec-SA (K=4, d=64) trained on the synthetic data at `n_items` under `budget` (TRAIN_BUDGET), cached
    under `cache_dir` (checkpoint + item_vectors.npy + held-out histories): re-runs skip data and training.
    -> (model, cfg, items DataFrame, held-out test histories as item-id lists, train metrics)."""
    from mirec.checkpoint import load_model
    from mirec.data.schema import Dataset
    from mirec.models import ModelConfig
    from mirec.train import TrainConfig, train, use_sparse_item_embeddings

    budget = {**TRAIN_BUDGET, **(budget or {})}
    sparse = use_sparse_item_embeddings(TrainConfig(**budget), n_items, 1)  # a dense-Adam table trains ~17x slower
    tag = (f"trained_{n_items}_t{int(budget['max_time_s'])}_s{budget['samples_per_epoch']}"
           + ("_sparse" if sparse else ""))
    ckpt = cache_dir / tag
    ds_dir = _synth_dataset(n_items, cache_dir)
    if not (ckpt / "item_vectors.npy").exists():
        t0 = time.perf_counter()
        res = train(ds_dir, ModelConfig(name="comirec_sa", n_items=n_items, dim=DIM, K=K, max_len=MAX_LEN),
                    TrainConfig(**budget, epochs=1000, patience=1000), out_dir=ckpt, progress=False)
        model, cfg = load_model(ckpt)
        np.save(ckpt / "item_vectors.npy", model.item_vectors())
        ds = Dataset(ds_dir)
        ids = ds.items["item_id"].to_numpy()
        held = [[str(x) for x in ids[e.history[-MAX_LEN:]]] for e in ds.eval_examples("test")[:5000] if len(e.history)]
        (ckpt / "heldout_histories.json").write_text(json.dumps(held))
        (ckpt / "bench_train.json").write_text(json.dumps({"budget": budget, "wall_s": round(time.perf_counter() - t0, 1),
                                                          "metrics": res.metrics}, default=str))
        print(f"[train] trained in {time.perf_counter() - t0:.0f}s: {res.metrics}", flush=True)
    model, cfg = load_model(ckpt)
    items = pd.read_parquet(ds_dir / "items.parquet")
    held = json.loads((ckpt / "heldout_histories.json").read_text())
    info = json.loads((ckpt / "bench_train.json").read_text())
    return model, cfg, items, held, info


def bodies(count: int, n_items: int, seed: int = 42) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for u in range(count):
        h = [f"i{i}" for i in rng.integers(0, n_items, rng.integers(20, 51))]
        out.append(json.dumps({"user_id": f"user-{u}", "history": h, "n": N}).encode())
    return out


def measure_raw(call, payloads: list[bytes], concurrency: int, cpu_lat: list[float] | None = None
                ) -> tuple[list[float], float, list[str]]:
    """Closed loop: `concurrency` threads send the payloads -> (latencies s, wall s, errors). `cpu_lat` collects
    each call's CPU time on its client thread (for the in-process path: the handler's own cost, which background
    load on a shared machine does not inflate)."""
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
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                call(p)
            except Exception as exc:  # counted, not fatal: the run goes on
                with lock:
                    errors.append(str(exc)[:200])
                continue
            dt, dc = time.perf_counter() - t0, time.thread_time() - c0
            with lock:
                lat.append(dt)
                if cpu_lat is not None:
                    cpu_lat.append(dc)
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


def start_api(ts_url: str, model: str, workdir: Path, warmup: int = 0) -> tuple[subprocess.Popen, str]:
    """The API in front of `model`; `warmup` > 0: its own warm-up (ApiSettings.warmup), returned once /readyz says
    ready, i.e. what a client meets first on a freshly started stack."""
    settings = {"torchserve_url": ts_url, "log_path": str(workdir / "served.jsonl"), "timeout_ms": 60000,
                "experiment": {"salt": "bench", "arms": [{"name": "A", "model": model}]}}
    if warmup:
        settings["warmup"] = {"requests": warmup}
    proc, url = launch_api(settings, workdir)
    deadline = time.monotonic() + 600
    while warmup and requests.get(f"{url}/readyz", timeout=5).status_code != 200:
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.terminate()
            raise RuntimeError(f"API not ready after its warm-up: {(workdir / 'api.log').read_text()[-2000:]}")
        time.sleep(0.2)
    return proc, url


def launch_api(settings: dict, workdir: Path, start_timeout_s: float = 60) -> tuple[subprocess.Popen, str]:
    """`mirec api --settings <settings>` as a subprocess on a free port, once /healthz answers -> (process, url)."""
    port = free_port()
    path = workdir / "api.yaml"
    path.write_text(json.dumps(settings))
    code = "import sys; from mirec.cli import run; sys.argv[0] = 'mirec'; run()"
    proc = subprocess.Popen([sys.executable, "-c", code, "api", "--settings", str(path), "--port", str(port)],
                            cwd=ROOT, stdout=open(workdir / "api.log", "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + start_timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except requests.RequestException:
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


def heldout_bodies(histories: list[list[str]], count: int, seed: int = 42) -> list[bytes]:
    """Requests from held-out users' real histories (trained case): n=50, exclude_seen (the default)."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(histories), size=count, replace=count > len(histories))
    return [json.dumps({"user_id": f"user-{u}", "history": histories[j], "n": N}).encode()
            for u, j in enumerate(pick)]


def plant_item_vectors(model, n_items: int, cache_dir: Path, noise: float = 0.3, seed: int = 0) -> str:
    """`planted` embeddings: the trained model with its item table replaced by the generator's planted item geometry
    (truth/item_vectors.npy of the synthetic dataset, d=16, category centre + noise) lifted into d=64 by a random
    orthonormal map plus isotropic noise of `noise` x the planted vectors' RMS. What a converged model's item table
    looks like (items clustered by category, queries near the clusters of the history), for when the training budget
    leaves the `trained` table near its random init."""
    import torch

    from mirec.config import SynthConfig
    from mirec.data import generate

    # the generator draws the item geometry before any user: 10 users give the same item vectors
    _, _, _, geometry = generate(SynthConfig(n_users=10, n_items=n_items, n_categories=TRAIN_CATEGORIES, seed=0),
                                 progress=False)
    items = pd.read_parquet(cache_dir / f"synth_{n_items}_u{TRAIN_USERS}" / "items.parquet").sort_values("item_idx")
    planted = geometry[items["item_id"].str.slice(1).astype(np.int64).to_numpy()]  # row = item_idx ("i<j>" -> j)
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(DIM, planted.shape[1])))  # [64, 16], orthonormal columns
    lifted = planted @ basis.T
    rms = float(np.sqrt((lifted ** 2).sum(1).mean()))
    lifted += noise * rms / np.sqrt(DIM) * rng.normal(size=lifted.shape)
    with torch.no_grad():
        w = model.item_emb.weight
        scale = float(w[1:].norm(dim=1).mean()) / rms  # keep the table's norm scale
        w[1:] = torch.as_tensor(lifted * scale, dtype=w.dtype)
    return f"item table = planted geometry (d={planted.shape[1]}) lifted to d={DIM} + {noise} x RMS noise"


class Case:
    """One benchmark model: `trained` (ComiRec-SA trained on the synthetic generator at n_items, `trained_model`)
    or `iid` (random init: i.i.d. Gaussian item vectors, the ANN worst case)."""

    def __init__(self, n_items: int, embeddings: str, cache_dir: Path, budget: dict | None = None,
                 model_name: str = "comirec_sa", options: dict | None = None):
        if model_name != "comirec_sa" and embeddings != "iid":
            raise SystemExit(f"error: --model {model_name} is measured with --embeddings iid only (the trained "
                             "and planted cases are a ComiRec-SA trained at 10^6 items)")
        self.n_items, self.embeddings = n_items, embeddings
        self.model_name, self.options = model_name, options or {}
        self.cache_dir, self.budget = cache_dir, budget
        self._loaded = None

    def load(self):
        if self._loaded is None:
            if self.embeddings in ("trained", "planted"):
                model, cfg, items, held, info = trained_model(self.n_items, self.cache_dir, self.budget)
                if self.embeddings == "planted":
                    info = {**info, "planted": plant_item_vectors(model, self.n_items, self.cache_dir)}
                # the index is tuned on the first half of the held-out users, requests come from the second half
                half = len(held) // 2
                self._loaded = (model, cfg, items, held[:half], held[half:], info)
            else:
                model, cfg, items = synth(self.n_items, model_name=self.model_name, options=self.options)
                self._loaded = (model, cfg, items, None, None, {"note": "random-init model (i.i.d. item vectors)"})
        return self._loaded

    def tuning_histories(self, items: pd.DataFrame, tune_ids: list[list[str]] | None) -> list[np.ndarray] | None:
        if tune_ids is None:
            return None  # packaging's default: histories sampled by popularity
        pos = pd.Series(items["item_idx"].to_numpy(), index=items["item_id"].astype(str).to_numpy())
        return [pos.loc[h].to_numpy(np.int64) for h in tune_ids]

    @property
    def tag(self) -> str:
        """'' for ComiRec-SA (the names every earlier result carries), else '_<model>[_<options hash>]'."""
        if self.model_name == "comirec_sa" and not self.options:
            return ""
        opts = json.dumps(self.options, sort_keys=True)
        return f"_{self.model_name}" + (f"_{hashlib.sha1(opts.encode()).hexdigest()[:8]}" if self.options else "")

    def payloads(self, count: int, seed: int) -> list[bytes]:
        _, _, _, _, req_ids, _ = self.load()
        return heldout_bodies(req_ids, count, seed) if req_ids is not None else bodies(count, self.n_items, seed)


def stage_case(case: Case, kind: str, index: IndexSpec, root: Path) -> tuple[Path, dict]:
    """Stage (or, under --cache-dir, reuse) the benchmark model + index for one case -> (stage dir, meta)."""
    n_items = case.n_items
    name = f"bench_{kind}_{n_items}{case.tag}"
    key = "" if kind == "flat" else (f"_m{index.hnsw_m}_efc{index.ef_construction}" if kind.startswith("hnsw")
                                     else (f"_kf{index.k_factor}" if kind == "ivfpq_fs" else "_ivf"))
    if kind == "auto":
        key = f"_{'-'.join(index.auto_kinds)}_m{index.hnsw_m}_efc{index.ef_construction}_kf{index.k_factor}"
    metric = index.recall_metric or "interest"
    stage = root / f"{name}{key}_{case.embeddings}_r{index.target_recall}{metric[0]}q{index.recall_queries}"
    if (stage / "meta.json").exists():  # --cache-dir: reuse a staged model + index (skip the 10^6 HNSW build)
        copy_mirec_code(stage)  # the cached index and weights are reused; the handler's code is this checkout's
        print(f"[{name}] reusing staged package {stage}", flush=True)
        return stage, json.loads((stage / "meta.json").read_text())
    model, cfg, items, tune_ids, _, info = case.load()
    meta = stage_candidate(stage, model, cfg, items, name=name, version="bench", index=index,
                           histories=case.tuning_histories(items, tune_ids),
                           metrics={"note": f"{case.embeddings} embeddings, latency benchmark only", "train": info})
    print(f"[{name}] staged ({case.embeddings}): index {json.dumps(meta['index'])[:1500]}", flush=True)
    return stage, meta


def run_case(case: Case, kind: str, concurrency: list[int], n_requests: int, workdir: Path, index: IndexSpec,
             batch_delay_ms: int, cache_dir: Path | None = None, batch_size: int = 8,
             rounds: int = 4, warmup: int = 200, threads: int = 1, effort: int | None = None,
             curve: list[int] | None = None, workers: int = 1,
             paths: tuple[str, ...] = PATHS, api_warmup: int = 0) -> tuple[list[dict], list[dict]]:
    """-> (rows, effort curve). `effort` overrides the packaged efSearch / nprobe in the MAR and in-process.
    `paths`: which of inproc / torchserve / stack to measure (inproc alone starts no TorchServe)."""
    n_items = case.n_items
    name = f"bench_{kind}_{n_items}{case.tag}"
    t0 = time.perf_counter()
    stage, meta = stage_case(case, kind, index, cache_dir or workdir / "stage")
    served_kind = meta["index"]["kind"]  # auto: the kind it chose
    meta_index = dict(meta["index"])
    remote = [p for p in paths if p != "inproc"]
    store = workdir / "model-store"
    if remote:
        shutil.rmtree(store / name, ignore_errors=True)
        build_mar(stage, name, "bench", store, archive_format="no-archive")
    if effort is not None and served_kind != "flat":  # serve the same index at another operating point
        key = EFFORT_PARAM[served_kind]
        meta_index[key] = effort
        if remote:
            spec = json.loads((store / name / "index.json").read_text())
            spec["params"][key] = effort
            (store / name / "index.json").write_text(json.dumps(spec))
    package_s = time.perf_counter() - t0
    print(f"[{name}] packaged in {package_s:.1f}s (index {served_kind}, build {meta['index']['build_s']}s)", flush=True)

    payloads = case.payloads(n_requests, 42)
    warm = case.payloads(warmup, 7)
    configure_threads(threads)
    svc = RecommendService.load(stage, device="cpu")
    if effort is not None and served_kind != "flat":
        svc.recommender.index.set_effort(effort)
    exact = exact_answers(stage, payloads[:200]) if served_kind != "flat" else None
    recall = answer_recall(svc, payloads[:200], exact) if exact else 1.0
    print(f"[{name}] answer recall@{N} vs exact ({case.embeddings}): {recall}", flush=True)
    curve_rows = effort_curve(svc, payloads[:200], exact, curve) if (curve and exact) else []
    freeze_loaded_objects()  # as the handler does after loading: the lower bound gets the same treatment
    ts = api = None
    acc: dict[tuple[str, int], list] = {}
    try:
        calls = {"inproc": lambda p: svc.handle_batch([p])}
        procs: dict[str, list] = {"client": []}
        if remote:
            ts = TorchServeProcess(store, [ModelServing(name=name, version="bench", mar=name, workers=workers,
                                                        batch_size=batch_size, max_batch_delay_ms=batch_delay_ms,
                                                        response_timeout_s=120)],
                                   workdir / f"ts-{name}", vmargs="-Xmx1g -XX:+UseSerialGC")
            ts.start(timeout_s=600)
            calls["torchserve"] = http_caller(f"{ts.inference_url}/predictions/{name}")
            if "stack" in paths:
                api, api_url = start_api(ts.inference_url, name, workdir, api_warmup)
                calls["stack"] = http_caller(f"{api_url}/recommend")
                procs = stack_processes(ts, api)
            else:
                import psutil

                procs = {"client": [psutil.Process()]}
        else:
            import psutil

            procs = {"client": [psutil.Process()]}
        calls = {p: calls[p] for p in paths}
        for call in calls.values():
            for p in warm:
                call(p)
        # interleaved rounds: every path sees the same share of whatever else runs on the machine
        chunks = np.array_split(np.arange(len(payloads)), rounds)
        for r_i, chunk in enumerate(chunks):
            part = [payloads[i] for i in chunk]
            for path, call in calls.items():
                for c in concurrency:
                    cpu0 = cpu_seconds(procs)
                    a = acc.setdefault((path, c), [[], 0.0, [], {}, []])
                    lat, wall, errs = measure_raw(call, part, c, a[4] if path == "inproc" else None)
                    cpu1 = cpu_seconds(procs)
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
        if ts is not None:
            ts.stop()
    del svc
    rows = []
    for (path, c), (lat, wall, errs, cpu, cpu_lat) in acc.items():
        rows.append({"path": path, "concurrency": c, **summarize(lat, wall, errs),
                     "cpu_ms_per_req": {k: round(v * 1000 / max(len(lat), 1), 3) for k, v in cpu.items()}})
        if cpu_lat:  # inproc: the handler's CPU time per request (robust to background load)
            ms = np.asarray(cpu_lat) * 1000
            rows[-1].update({"cpu_p50_ms": round(float(np.percentile(ms, 50)), 3),
                             "cpu_p99_ms": round(float(np.percentile(ms, 99)), 3)})
    for r in rows:
        r.update({"items": n_items, "index": kind, "recall": recall, "rps": r["throughput_rps"],
                  "embeddings": case.embeddings, "served_index": served_kind, "model": case.model_name,
                  "model_options": case.options,
                  "loadavg_1m_end": round(os.getloadavg()[0], 2), "ts_batch_size": batch_size,
                  "K": K, "n": N, "package_s": round(package_s, 1), "warmup": warmup, "api_warmup": api_warmup,
                  "index_build_s": meta["index"]["build_s"], "answer_recall": recall,
                  "index_params": {k: v for k, v in meta_index.items() if k not in ("kind", "build_s")}})
        print(f"[{name}] {case.embeddings} {r['path']} c={r['concurrency']}: recall {recall} p50 {r['p50_ms']} "
              f"p99 {r['p99_ms']} rps {r['rps']}" + (f" (CPU p50 {r['cpu_p50_ms']} p99 {r['cpu_p99_ms']})"
                                                     if "cpu_p50_ms" in r else ""), flush=True)
    return rows, [{"items": n_items, "index": served_kind, "embeddings": case.embeddings, **c} for c in curve_rows]


def _kind(r: dict) -> str:
    return r.get("served_index", r["index"])


def _effort(r: dict) -> int | None:
    return r.get("index_params", {}).get(EFFORT_PARAM.get(_kind(r)))


def _key(r: dict) -> tuple:
    """What one configuration is: rows with the same key replace each other when results are merged."""
    return (r["items"], r["index"], r.get("embeddings", "iid"), _effort(r), r["concurrency"], r["path"],
            _model(r))


def _model(r: dict) -> str:
    """The served model of a row ('comirec_sa' for rows written before --model existed), with its options."""
    opts = r.get("model_options") or {}
    return r.get("model", "comirec_sa") + (f" {json.dumps(opts, sort_keys=True)}" if opts else "")


def ratios(rows: list[dict]) -> list[dict]:
    out = []
    key = {_key(r): r for r in rows}
    for (items, kind, emb, effort, c, path, model), r in key.items():
        if path == "inproc":
            continue
        base = key.get((items, kind, emb, effort, c, "inproc", model))
        if base:
            out.append({"items": items, "index": kind, "embeddings": emb, "effort": effort, "concurrency": c,
                        "path": path, "model": model, "p50_ratio": round(r["p50_ms"] / base["p50_ms"], 2),
                        "p99_ratio": round(r["p99_ms"] / base["p99_ms"], 2),
                        "throughput_ratio": round(r["throughput_rps"] / base["throughput_rps"], 2)})
    return out


def markdown(rows: list[dict], rat: list[dict]) -> str:
    lines = ["| model | items | embeddings | index | recall | c | path | p50 ms | p99 ms | req/s | p50 × | p99 × | CPU ms/req client · API · Java · worker |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rk = {(x["items"], x["index"], x.get("embeddings", "iid"), x["effort"], x["concurrency"], x["path"],
           x.get("model", "comirec_sa")): x for x in rat}
    for r in rows:
        x = rk.get(_key(r), {})
        c = r.get("cpu_ms_per_req", {})
        cpu = " · ".join(f"{c.get(k, 0):.2f}" for k in ("client", "api", "ts_java", "ts_worker"))
        kind = _kind(r)
        label = r["index"] if kind == r["index"] else f"{r['index']} → {kind}"
        effort = "" if _effort(r) is None else f" ({EFFORT_PARAM[kind]} {_effort(r)})"
        lines.append(f"| {_model(r)} | {r['items']:,} | {r.get('embeddings', 'iid')} | {label}{effort} | {r['recall']} | "
                     f"{r['concurrency']} | {r['path']} | {r['p50_ms']} | {r['p99_ms']} | {r['rps']} | "
                     f"{x.get('p50_ratio', '')} | {x.get('p99_ratio', '')} | {cpu} |")
    return "\n".join(lines)


def main() -> None:
    if "glibc.malloc.hugetlb" not in os.environ.get("GLIBC_TUNABLES", ""):
        # TorchServeProcess gives the worker huge-page malloc (tsconfig.HUGEPAGE_TUNABLE); the in-process lower
        # bound gets the same, and glibc reads it only at start: re-exec. GLIBC_TUNABLES=glibc.malloc.hugetlb=0
        # measures both without.
        os.execve(sys.executable, [sys.executable, *sys.argv], with_hugepage_malloc(dict(os.environ)))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--index", nargs="+", default=["flat", "hnsw", "hnsw_sq8", "ivfpq_fs"], choices=INDEX_CHOICES)
    ap.add_argument("--embeddings", nargs="+", default=["trained", "iid"], choices=["trained", "planted", "iid"],
                    help="trained: ComiRec-SA trained on the synthetic generator at --items (cached); planted: the same "
                         "model with the generator's planted item geometry as its item table; iid: random init")
    ap.add_argument("--model", default="comirec_sa",
                    help="registry model served with --embeddings iid (random init; a staged model in its last stage), "
                         "e.g. gemirec against the default comirec_sa: latency of one model against another")
    ap.add_argument("--model-options", default="{}", help="JSON ModelConfig.options of --model, e.g. "
                    "'{\"cache_size\": 0}' (GemiRec without its per-history code cache)")
    ap.add_argument("--recall-queries", type=int, default=128, help="histories the effort is tuned on")
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS),
                    help="what to measure; `--paths inproc` starts no TorchServe and no API")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--requests", type=int, default=400, help="measured requests per (path, concurrency)")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--hnsw-ef-construction", type=int, default=200)
    ap.add_argument("--k-factor", type=int, default=4, help="ivfpq_fs: exact re-ranking of k_factor x top-M")
    ap.add_argument("--nlist", type=int, default=None, help="ivf / ivfpq_fs lists (default 4·sqrt(N), at most 4096)")
    ap.add_argument("--target-recall", type=float, default=0.95,
                    help="recall the search effort is tuned to at package time (as `mirec package`); 0 = no tuning")
    ap.add_argument("--recall-metric", choices=["answer", "interest"], default="answer",
                    help="answer: the served top-50 vs exact (the target's measure); interest: per-interest top-100")
    ap.add_argument("--ef-search", type=int, default=128, help="efSearch when --target-recall 0")
    ap.add_argument("--train-budget-s", type=float, default=TRAIN_BUDGET["max_time_s"],
                    help="trained case: TrainConfig.max_time_s (wall) of the cached model")
    ap.add_argument("--train-samples", type=int, default=TRAIN_BUDGET["samples_per_epoch"],
                    help="trained case: TrainConfig.samples_per_epoch")
    ap.add_argument("--stage-only", action="store_true", help="build (and cache) the packages, measure nothing")
    ap.add_argument("--efforts", type=int, nargs="+", default=None,
                    help="also serve the ANN index at these efSearch/nprobe values (default: only the tuned one)")
    ap.add_argument("--curve", type=int, nargs="*", default=[],
                    help="in-process latency vs answer recall at these efSearch/nprobe values")
    ap.add_argument("--max-batch-delay-ms", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1, help="TorchServe workers per model (each holds the index)")
    ap.add_argument("--batch-size", type=int, default=8, help="TorchServe batch size (1 = no batching wait)")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds over the paths")
    ap.add_argument("--threads", type=int, default=1, help="MIREC_THREADS for the worker and the in-process call")
    ap.add_argument("--warmup", type=int, default=200,
                    help="requests per path before measuring (the JVM compiles TorchServe's hot path meanwhile)")
    ap.add_argument("--api-warmup", type=int, default=0,
                    help="the API's own warm-up calls (ApiSettings.warmup, as `mirec serve` and the chart do), "
                         "measured after its /readyz says ready")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serving.json"))
    ap.add_argument("--no-merge", action="store_true",
                    help="overwrite --out instead of replacing only the rows of the configurations measured now")
    ap.add_argument("--quick", action="store_true", help="10^4 items, 100 requests (smoke)")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "artifacts" / "bench-cache",
                    help="trained models, their item vectors (.npy) and staged packages, reused on the next run")
    a = ap.parse_args()
    os.environ["MIREC_THREADS"] = str(a.threads)  # inherited by TorchServe's worker
    if a.quick:
        a.items, a.requests = [10_000], 100
    budget = {"max_time_s": a.train_budget_s, "samples_per_epoch": a.train_samples}
    rows: list[dict] = []
    curves: list[dict] = []
    index = {kind: IndexSpec(kind=kind, hnsw_m=a.hnsw_m, ef_construction=a.hnsw_ef_construction, nlist=a.nlist,
                             k_factor=a.k_factor, ef_search=a.ef_search, target_recall=a.target_recall or None,
                             recall_metric=a.recall_metric, answer_n=N, recall_queries=a.recall_queries, use_gpu=False)
             for kind in a.index}
    with tempfile.TemporaryDirectory(prefix="mirec-bench-") as tmp:
        for n in a.items:
            for emb in a.embeddings:
                case = Case(n, emb, a.cache_dir, budget, a.model, json.loads(a.model_options))
                for kind in a.index:
                    if a.stage_only:
                        stage_case(case, kind, index[kind], a.cache_dir)
                        continue
                    for i, effort in enumerate([None] + (list(a.efforts or []) if kind != "flat" else [])):
                        r, c = run_case(case, kind, a.concurrency, a.requests, Path(tmp), index[kind],
                                        a.max_batch_delay_ms, a.cache_dir, a.batch_size, a.rounds, a.warmup,
                                        a.threads, effort, a.curve if i == 0 else None, a.workers, tuple(a.paths),
                                        a.api_warmup)
                        rows += r
                        curves += c
                        write(a, rows, curves, budget)  # partial results survive a later failure
    if a.stage_only:
        return
    print(markdown(rows, ratios(rows)))
    if curves:
        print(curve_markdown(curves))
        plot_curves(curves, Path(a.out).with_suffix(".png"))
    print(f"wrote {a.out}")


def curve_markdown(curves: list[dict]) -> str:
    lines = ["| items | embeddings | index | effort | answer recall@50 | in-process p50 ms | p99 ms |",
             "|---|---|---|---|---|---|---|"]
    for c in curves:
        e = f"{EFFORT_PARAM[c['index']]} {c[EFFORT_PARAM[c['index']]]}"
        lines.append(f"| {c['items']:,} | {c.get('embeddings', 'iid')} | {c['index']} | {e} | {c['answer_recall']} | "
                     f"{c['p50_ms']} | {c['p99_ms']} |")
    return "\n".join(lines)


def plot_curves(curves: list[dict], path: Path) -> None:
    """Answer recall against in-process p50/p99 latency, one line per (items, embeddings, index): where to operate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key in sorted({(c["items"], c.get("embeddings", "iid"), c["index"]) for c in curves}):
        pts = [c for c in curves if (c["items"], c.get("embeddings", "iid"), c["index"]) == key]
        for q, style in (("p50_ms", "-o"), ("p99_ms", ":x")):
            ax.plot([c[q] for c in pts], [c["answer_recall"] for c in pts], style,
                    label=f"{key[2]} {key[0]:,} items ({key[1]}), {q[:3]}")
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


def _upgrade(r: dict) -> dict:
    """Rows written before `recall`/`rps`/`embeddings` existed (random-init model = iid embeddings)."""
    return {"recall": r.get("answer_recall"), "rps": r.get("throughput_rps"), "embeddings": "iid", **r}


def write(a, rows: list[dict], curves: list[dict] | None = None, budget: dict | None = None) -> None:
    """Rows of the configurations measured now replace those of the same configuration in --out; the others stay
    (unless --no-merge). Every row: items, index, recall (answer recall@50 vs exact), concurrency,
    path (inproc | torchserve | stack), p50_ms, p99_ms, rps, plus details."""
    if a.stage_only:
        return
    out = Path(a.out)
    old_rows: list[dict] = []
    old_curves: list[dict] = []
    if out.exists() and not a.no_merge:
        old = json.loads(out.read_text())
        new_keys = {_key(r) for r in rows}
        old_rows = [_upgrade(r) for r in old.get("rows", []) if _key(_upgrade(r)) not in new_keys]
        new_curve_keys = {(c["items"], c.get("embeddings", "iid"), c["index"]) for c in curves or []}
        old_curves = [c for c in old.get("effort_curve", [])
                      if (c["items"], c.get("embeddings", "iid"), c["index"]) not in new_curve_keys]
    all_rows = old_rows + rows
    rat = ratios(all_rows)
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
              "settings": {"K": K, "dim": DIM, "n": N, "max_len": MAX_LEN, "history_len": "20..50 (iid) / held-out (trained)",
                           "requests": a.requests, "hnsw": {"M": a.hnsw_m, "ef_construction": a.hnsw_ef_construction},
                           "ivfpq_fs": {"pq": "d/2 x 4 bit fast-scan", "k_factor": a.k_factor, "nlist": a.nlist or "4·sqrt(N)"},
                           "target_recall": a.target_recall or None, "recall_metric": a.recall_metric,
                           "ef_search": None if a.target_recall else a.ef_search,
                           "torchserve": {"workers": a.workers, "batch_size": a.batch_size, "max_batch_delay_ms": a.max_batch_delay_ms},
                           "threads": a.threads, "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
                           "model": "comirec_sa K=4 d=64: trained (synthetic generator, budget below) | iid (random init); "
                                    "rows with a `model` key other than comirec_sa: that model, random init (--model)",
                           "train_budget": {**TRAIN_BUDGET, **(budget or {}), "users": TRAIN_USERS,
                                            "categories": TRAIN_CATEGORIES},
                           "nice": os.nice(0), "loadavg_at_write": [round(x, 2) for x in os.getloadavg()]},
              "rows": all_rows, "ratios": rat, "effort_curve": old_curves + (curves or []),
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
