"""`mirec package`: one TorchServe MAR per trained candidate + the config TorchServe/KServe read.

Output layout (accepted by TorchServe and by KServe's TorchServe runtime):

    <out_dir>/model-store/<name>.mar      one per candidate
    <out_dir>/config/config.properties    addresses, metrics_mode=prometheus, model_snapshot (workers,
                                          batch size, max batch delay per model)
    <out_dir>/package.json                what was packaged (names, versions, metrics, index kinds, the sha256
                                          of every MAR: verified before TorchServe starts)

Inside each MAR (torch-model-archiver, custom handler `serving/handler.py`):
    weights.pt           model state_dict (loaded with torch.load(weights_only=True))
    model_config.json    mirec.models.ModelConfig
    index.faiss/.json    FAISS inner-product index over the item embeddings, built at package time
                         (flat | ivf | hnsw | hnsw_sq8 | ivfpq_fs, or `auto`: the cheapest kind by measured search
                         latency that reaches the target recall on held-out histories; flat/ivf built on the GPU
                         when one is present, stored as a CPU index); index.json keeps kind, params, the measured
                         recall and (auto) the selection
    items.parquet        item_idx, item_id (external id mapping), category, category_idx, popularity
    meta.json            name, version, metrics (the candidate's evaluation), aggregator, index, hashes
    mirec/               the `mirec` code the handler imports
The item embeddings travel as the model's `item_emb` in weights.pt (and as the vectors inside the index).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

import mirec
from mirec.config import StrictModel, load_yaml_config
from mirec.errors import ConfigError, MirecError
from mirec.serving.service import INDEX_FILE, ITEMS_FILE, META_FILE, MODEL_CONFIG_FILE, WEIGHTS_FILE
from mirec.serving.torchserve import mar_sha256
from mirec.serving.tsconfig import ModelServing, ServerSettings, render_config_properties, render_log4j2

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
HANDLER = REPO_ROOT / "serving" / "handler.py"
MIREC_PKG = Path(mirec.__file__).resolve().parent
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


class IndexSpec(StrictModel):
    #: flat | ivf | hnsw | hnsw_sq8 | ivfpq_fs (mirec.retrieval.index) | auto: build each of `auto_kinds`, tune it to
    #: `target_recall`, time its batched K-interest search and keep the cheapest that reaches the target
    kind: Literal["flat", "ivf", "hnsw", "hnsw_sq8", "ivfpq_fs", "auto"] = "flat"
    nlist: int | None = None
    nprobe: int = Field(16, ge=1)
    hnsw_m: int = Field(32, ge=4)
    ef_search: int = Field(128, ge=1)
    ef_construction: int = Field(200, ge=1)
    #: ivfpq_fs: 4-bit PQ sub-quantizers (None: d/2, 2 dims each) and the exact re-ranking of k_factor·k candidates
    pq_m: int | None = Field(None, ge=1)
    k_factor: int = Field(4, ge=1)
    use_gpu: bool | None = None  # None: use a GPU when FAISS sees one
    #: ANN kinds: at package time the search effort (nprobe / efSearch) is set to the cheapest value whose recall
    #: reaches this (`recall_metric`), measured on `recall_queries` held-out or sampled histories; the measured curve
    #: goes into meta.json. null: use nprobe / ef_search as given (recall still measured).
    #: Why: an ANN latency without its recall says nothing (at 10^6 random 64-d items, HNSW with efSearch 128
    #: and efConstruction 40 returned 56% of the exact answer).
    target_recall: float | None = Field(0.9, gt=0, le=1)
    recall_k: int = Field(100, ge=1)
    recall_queries: int = Field(256, ge=1)
    #: what target_recall is measured on. "interest": each interest vector's top-recall_k against exact search;
    #: "answer": the served answer, top-answer_n after the aggregator with seen items excluded, against the same
    #: model's answer over an exact Flat index (what a user gets). None: "answer" for kind auto, else "interest".
    recall_metric: Literal["interest", "answer"] | None = None
    answer_n: int = Field(50, ge=1)
    #: kind auto: the kinds tried, cheapest first; the cheapest by measured median latency of the batched K-interest
    #: search (one thread) among those that reach the target wins; flat (exact) is the fallback
    auto_kinds: list[Literal["flat", "ivf", "hnsw", "hnsw_sq8", "ivfpq_fs"]] = Field(
        default_factory=lambda: ["ivfpq_fs", "hnsw_sq8", "hnsw", "flat"], min_length=1)
    #: kind auto: stop trying further kinds once one reaches the target with a median search at most this (ms)
    auto_stop_ms: float | None = Field(None, gt=0)
    #: held-out histories the recall (and auto's latency) is measured on: a prepared dataset dir (its test users'
    #: input histories, then valid users'). None: histories sampled by popularity (`sample_interest_queries`)
    recall_histories: str | None = None


class CandidateSpec(StrictModel):
    """One trained candidate -> one MAR / one TorchServe model name."""

    name: str
    checkpoint: str | None = None  # a `mirec train` checkpoint dir (mirec.train.load_model)
    items: str | None = None  # items.parquet or a prepared dataset dir; default: <checkpoint>/items.parquet
    metrics: str | None = None  # JSON with the candidate's evaluation; default: <checkpoint>/metrics.json if any
    version: str = "1.0"
    #: auto = the request contract: `diversity` null -> personalised (calibrated d_u), a number -> controllable λ
    aggregator: str = "auto"
    aggregator_params: dict = Field(default_factory=dict)
    index: IndexSpec = Field(default_factory=IndexSpec)
    workers: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1)
    max_batch_delay_ms: int = Field(1, ge=0)
    response_timeout_s: int = Field(30, ge=1)
    #: TorchServe drops a request still queued after this long (clientTimeoutInMills in the MAR's model-config.yaml)
    #: instead of working for a client that gave up: keep it equal to the API's `timeout_ms` (default 1000).
    #: null: never dropped.
    client_timeout_ms: int | None = Field(1000, ge=1)

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if not _NAME.match(v):
            raise ValueError(f"model name {v!r} must match {_NAME.pattern} (it becomes a URL path segment)")
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v):
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", v):
            raise ValueError(f"version {v!r} may hold letters, digits, '.', '_' and '-'")
        return v


class PackageSpec(StrictModel):
    candidates: list[CandidateSpec] = Field(min_length=1)
    out_dir: str = "artifacts/serving"
    server: ServerSettings = Field(default_factory=ServerSettings)
    archive_format: Literal["default", "no-archive"] = "default"


def load_package_spec(path: str | Path | None, **overrides) -> PackageSpec:
    return load_yaml_config(PackageSpec, path, **overrides)


# ---- staging one candidate ----------------------------------------------------------------------
def _items_frame(items) -> pd.DataFrame:
    if isinstance(items, pd.DataFrame):
        df = items
    else:
        p = Path(items)
        if p.is_dir():
            p = p / "items.parquet"
        if not p.is_file():
            raise MirecError(f"item table not found: {p}")
        df = pd.read_parquet(p)
    need = {"item_idx", "item_id"}
    if need - set(df.columns):
        raise MirecError(f"item table lacks columns {sorted(need - set(df.columns))}")
    df = df.sort_values("item_idx").reset_index(drop=True)
    if not np.array_equal(df["item_idx"].to_numpy(), np.arange(len(df))):
        raise MirecError("item table item_idx must be 0..N-1")
    out = pd.DataFrame({"item_idx": df["item_idx"].astype(np.int64), "item_id": df["item_id"].astype(str)})
    out["category"] = df["category"].astype(str) if "category" in df else "(unknown)"
    out["category_idx"] = df["category_idx"].astype(np.int64) if "category_idx" in df else 0
    out["popularity"] = df["popularity"].astype(np.int64) if "popularity" in df else 0
    return out


def copy_mirec_code(stage_dir: str | Path) -> None:
    """(Re)place the `mirec` code the handler imports inside a staged package with this checkout's."""
    dst = Path(stage_dir) / "mirec"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(MIREC_PKG, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "cli"))


def sample_histories(max_len: int, item_popularity: np.ndarray, n_users: int, seed: int = 0) -> list[np.ndarray]:
    """Histories drawn like traffic: lengths uniform in 5..max_len, items in proportion to popularity + 1 (so the
    head dominates and every item can appear)."""
    rng = np.random.default_rng(seed)
    p = np.asarray(item_popularity, np.float64) + 1.0
    p /= p.sum()
    lo = min(5, max_len)
    lengths = rng.integers(lo, max_len + 1, size=n_users)
    return np.split(rng.choice(len(p), size=int(lengths.sum()), p=p), np.cumsum(lengths)[:-1])


def history_interests(model, max_len: int, histories: list[np.ndarray]) -> np.ndarray:
    """The model's serving interests of `histories` -> [len(histories), K, d]."""
    import torch

    from mirec.models.base import pad_histories

    out = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for s in range(0, len(histories), 64):
            seq, mask = pad_histories(histories[s: s + 64], max_len)
            out.append(model.serving_interests(seq, mask).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out)


def sample_interest_queries(model, max_len: int, item_popularity: np.ndarray, n_users: int,
                            seed: int = 0) -> np.ndarray:
    """Interest vectors [n_users * K, d] of `sample_histories`: the queries an index is tuned and measured on when
    no held-out histories are given."""
    v = history_interests(model, max_len, sample_histories(max_len, item_popularity, n_users, seed))
    return v.reshape(-1, v.shape[-1])


def heldout_histories(dataset_dir: str | Path, n_items: int, max_len: int, n_users: int) -> list[np.ndarray]:
    """Input histories (the last max_len items) of a prepared dataset's test users, then valid users: histories of
    users the model was not trained on (IndexSpec.recall_histories)."""
    from mirec.data.schema import Dataset

    ds = Dataset(dataset_dir)
    if ds.n_items != n_items:
        raise MirecError(f"recall_histories {dataset_dir}: {ds.n_items} items, the model {n_items}")
    out: list[np.ndarray] = []
    for split in ("test", "valid"):
        for e in ds.eval_examples(split):
            if len(e.history):
                out.append(np.asarray(e.history[-max_len:], np.int64))
            if len(out) >= n_users:
                return out
    if not out:
        raise MirecError(f"recall_histories {dataset_dir}: no test or valid user has a history")
    return out


def search_latency_ms(idx, interests: np.ndarray, top_m: int, repeats: int = 1, warmup: int = 20) -> dict:
    """Latency (ms) of the served search: one batched `idx.search` of a user's K interests [1, K, d] for top_m
    items, one FAISS thread, over the users of `interests` [U, K, d]. p50_ms / p99_ms are the calling thread's CPU
    time per search (FAISS runs on it with one thread), which background load on a shared machine does not
    inflate; wall_p50_ms / wall_p99_ms are the wall times (the same on an idle machine)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        for u in range(min(warmup, len(interests))):
            idx.search(interests[u: u + 1], top_m)
        wall, cpu = [], []
        for _ in range(repeats):
            for u in range(len(interests)):
                t0, c0 = time.perf_counter(), time.thread_time()
                idx.search(interests[u: u + 1], top_m)
                cpu.append(time.thread_time() - c0)
                wall.append(time.perf_counter() - t0)
    finally:
        faiss.omp_set_num_threads(threads)
    w, c = np.asarray(wall) * 1000, np.asarray(cpu) * 1000
    return {"p50_ms": round(float(np.median(c)), 4), "p99_ms": round(float(np.percentile(c, 99)), 4),
            "wall_p50_ms": round(float(np.median(w)), 4), "wall_p99_ms": round(float(np.percentile(w, 99)), 4),
            "clock": "thread CPU time", "threads": 1, "top_m": int(top_m), "searches": int(len(c))}


def _build_index(vecs: np.ndarray, kind: str, spec: IndexSpec):
    from mirec.retrieval import ItemIndex

    t0 = time.perf_counter()
    idx = ItemIndex.build(vecs, kind, nlist=spec.nlist, nprobe=spec.nprobe, hnsw_m=spec.hnsw_m,
                          ef_search=spec.ef_search, ef_construction=spec.ef_construction, pq_m=spec.pq_m,
                          k_factor=spec.k_factor, use_gpu=spec.use_gpu)
    return idx, time.perf_counter() - t0


class _RecallProbe:
    """Measures an index on fixed held-out histories: per-interest recall@k against exact search, or the answer
    recall@n of the served top-n (interests -> index -> aggregator, seen items excluded) against the same model's
    answer over an exact Flat index."""

    def __init__(self, model, model_cfg, vecs: np.ndarray, df: pd.DataFrame, histories: list[np.ndarray],
                 spec: IndexSpec, metric: str, aggregator: str, aggregator_params: dict | None,
                 source: str = "sampled by popularity"):
        self.vecs, self.histories, self.spec, self.metric = vecs, histories, spec, metric
        self.source = source
        self.interests = history_interests(model, model_cfg.max_len, histories)  # [U, K, d]
        self.queries = self.interests.reshape(-1, self.interests.shape[-1])
        self.top_m = min(spec.answer_n + model_cfg.max_len, len(df))
        self.rec = self.exact = None
        if metric == "answer":
            from mirec.retrieval import ItemIndex
            from mirec.retrieval.recommender import Recommender

            self.rec = Recommender(model, index=ItemIndex.build(vecs, "flat", use_gpu=False), items=df,
                                   item_popularity=df["popularity"].to_numpy(), aggregator=aggregator,
                                   aggregator_params=aggregator_params or {})
            self.exact = self._answers()

    def _answers(self) -> list[set]:
        lists = self.rec.recommend(self.histories, n=self.spec.answer_n, exclude_seen=True)
        return [{r.item_idx for r in one} for one in lists]

    def answer_recall(self, idx) -> float:
        saved, self.rec.index = self.rec.index, idx
        try:
            got = self._answers()
        finally:
            self.rec.index = saved
        return float(np.mean([len(g & e) / max(1, len(e)) for g, e in zip(got, self.exact)]))

    def measure(self, idx, target: float | None) -> dict:
        """Tune idx's effort to `target` (None: measure as it is) -> the recall dict stored in meta.json."""
        k = self.spec.answer_n if self.metric == "answer" else self.spec.recall_k
        fn = self.answer_recall if self.metric == "answer" else None
        if idx.kind == "flat":
            return {"recall": 1.0, "exact": True, "met": True, "metric": self.metric}
        if target is not None:
            return {**idx.tune(self.vecs, self.queries, k, target, recall_fn=fn), "metric": self.metric,
                    "histories": len(self.histories)}
        k = min(k, len(self.vecs))
        r = fn(idx) if fn else idx.recall(self.vecs, self.queries, k)
        return {"recall_k": k, "target_recall": None, "queries": int(len(self.queries)), "recall": round(r, 4),
                "metric": self.metric, "histories": len(self.histories)}


def choose_index(probe: _RecallProbe, spec: IndexSpec, log=logger.info):
    """`kind: auto`: each of spec.auto_kinds (cheapest first) is built, tuned to spec.target_recall on the probe's
    held-out histories and timed (median of the batched K-interest search, one thread); the cheapest that reaches
    the target wins (ties: the earlier kind), else the one with the best recall. -> (index, recall, selection)."""
    target = spec.target_recall if spec.target_recall is not None else 0.95
    tried, best = [], None
    for kind in spec.auto_kinds:
        idx, build_s = _build_index(probe.vecs, kind, spec)
        recall = probe.measure(idx, target)
        lat = search_latency_ms(idx, probe.interests, probe.top_m)
        row = {"kind": kind, "met": bool(recall.get("met", True)), "recall": recall["recall"],
               "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "wall_p50_ms": lat["wall_p50_ms"],
               "build_s": round(build_s, 3),
               "params": {k: v for k, v in idx.params.items() if k != "gpu"}}
        tried.append(row)
        log(f"index auto: {kind} recall {row['recall']:.3f} ({'met' if row['met'] else 'below'} {target}), "
            f"search p50 {row['p50_ms']:.3f} ms, built in {build_s:.1f}s")
        better = best is None or (row["met"], -row["p50_ms"] if row["met"] else row["recall"]) > (
            best[1]["met"], -best[1]["p50_ms"] if best[1]["met"] else best[1]["recall"])
        if better:
            best = (idx, row, recall, build_s)
        else:
            del idx
        if row["met"] and spec.auto_stop_ms is not None and row["p50_ms"] <= spec.auto_stop_ms:
            break
    idx, row, recall, build_s = best
    selection = {"mode": "auto", "chosen": row["kind"], "target_recall": target, "metric": probe.metric,
                 "met": row["met"], "recall": row["recall"], "p50_ms": row["p50_ms"],
                 "latency": "median thread-CPU ms of one batched search of a user's K interests, 1 FAISS thread, "
                            f"top {probe.top_m}, over {len(probe.interests)} held-out histories",
                 "histories": probe.source,
                 "tried": tried}
    if not row["met"]:
        logger.warning("index auto: no kind of %s reaches %s recall %g; using %s (recall %.3f)", spec.auto_kinds,
                       probe.metric, target, row["kind"], row["recall"])
    return idx, recall, selection, build_s


def stage_candidate(stage_dir: str | Path, model, model_cfg, items, *, name: str, version: str = "1.0",
                    index: IndexSpec | None = None, aggregator: str = "merge", aggregator_params: dict | None = None,
                    metrics: dict | None = None, copy_code: bool = True,
                    histories: list[np.ndarray] | None = None) -> dict:
    """Write the files of one MAR into `stage_dir`; -> meta (also written as meta.json). `histories`: held-out
    histories (item_idx arrays) to measure the index on (else index.recall_histories, else sampled)."""
    import torch

    from mirec.retrieval import get_aggregator

    get_aggregator(aggregator)  # fail at package time, not in the worker
    index = index or IndexSpec()
    stage = Path(stage_dir)
    stage.mkdir(parents=True, exist_ok=True)
    df = _items_frame(items)
    if len(df) != model_cfg.n_items:
        raise MirecError(f"item table has {len(df)} items, the model {model_cfg.n_items}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, stage / WEIGHTS_FILE)
    (stage / MODEL_CONFIG_FILE).write_text(model_cfg.model_dump_json(indent=2))
    vecs = model.item_vectors()
    neural = getattr(model, "is_neural", True)
    metric = index.recall_metric or ("answer" if index.kind == "auto" else "interest")
    probe = None
    if neural and index.kind != "flat":
        source = "held-out (given)"
        if histories is None and index.recall_histories:
            source = f"held-out: test/valid users of {index.recall_histories}"
            histories = heldout_histories(index.recall_histories, len(df), model_cfg.max_len, index.recall_queries)
        elif histories is None:
            source = "sampled by popularity"
            histories = sample_histories(model_cfg.max_len, df["popularity"].to_numpy(), index.recall_queries)
        probe = _RecallProbe(model, model_cfg, vecs, df, list(histories)[: index.recall_queries], index, metric,
                             aggregator, aggregator_params, source)
    selection = None
    if index.kind == "auto" and probe is not None:
        idx, recall, selection, build_s = choose_index(probe, index)
    else:
        kind = "flat" if index.kind == "auto" else index.kind  # a baseline's scores are not searched
        idx, build_s = _build_index(vecs, kind, index)
        recall = None
        if idx.kind == "flat":
            recall = {"recall": 1.0, "exact": True}
        elif probe is not None:
            recall = probe.measure(idx, index.target_recall)
        if index.kind == "auto":
            selection = {"mode": "auto", "chosen": "flat", "note": "not a neural model: no index search to tune"}
    if recall is not None and recall.get("met") is False:
        logger.warning("%s: the %s index does not reach %srecall@%d %g (best %.3f; %s set to %s, the cheapest "
                       "within 0.01 of the best); raise ef_construction / hnsw_m (HNSW) or nlist (IVF), or use "
                       "flat", name, idx.kind, "answer " if recall.get("metric") == "answer" else "", recall["recall_k"], recall["target_recall"],
                       max(r for _, r in recall["curve"]), idx.effort_name, idx.params[idx.effort_name])
    idx.save(stage / INDEX_FILE, info={"recall": recall, **({"selection": selection} if selection else {})})
    df.to_parquet(stage / ITEMS_FILE, index=False)
    h = hashlib.sha256((stage / WEIGHTS_FILE).read_bytes()).hexdigest()
    meta = {
        "name": name, "version": version, "model": model_cfg.name, "K": model_cfg.K, "dim": model_cfg.dim,
        "n_items": int(len(df)), "aggregator": aggregator, "aggregator_params": aggregator_params or {},
        "index": {"kind": idx.kind, **{k: v for k, v in idx.params.items()}, "build_s": round(build_s, 3),
                  "recall": recall, **({"selection": selection} if selection else {})},
        "metrics": metrics or {}, "weights_sha256": h, "mirec_version": mirec.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (stage / META_FILE).write_text(json.dumps(meta, indent=2))
    if copy_code:
        copy_mirec_code(stage)
    return meta


MODEL_CONFIG_YAML = "model-config.yaml"


def torchserve_model_config(response_timeout_s: int = 30, client_timeout_ms: int | None = None) -> dict:
    """The MAR's model-config.yaml (TorchServe 0.12 reads it at registration). Only timeouts: workers, batch size
    and batch delay come from config.properties' model_snapshot. TorchServe takes `responseTimeout` from this file
    whenever the MAR has one (over the snapshot's), so it is written here too, equal to the snapshot's."""
    cfg: dict = {"responseTimeout": int(response_timeout_s), "startupTimeout": 120}
    if client_timeout_ms:
        cfg["clientTimeoutInMills"] = int(client_timeout_ms)
    return cfg


def build_mar(stage_dir: str | Path, name: str, version: str, model_store: str | Path,
              archive_format: str = "default", handler: str | Path = HANDLER,
              model_config: dict | None = None) -> Path:
    """torch-model-archiver over a staged directory -> <model_store>/<name>.mar (or folder). `model_config`
    (`torchserve_model_config`) becomes the MAR's model-config.yaml."""
    import yaml

    model_store = Path(model_store)
    model_store.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "model_archiver.model_packaging", "--model-name", name, "--version", version,
           "--handler", str(handler), "--extra-files", str(stage_dir), "--export-path", str(model_store),
           "--archive-format", archive_format, "--force"]
    with tempfile.TemporaryDirectory(prefix="mirec-mar-cfg-") as cfg_dir:
        if model_config is not None:
            cfg_file = Path(cfg_dir) / MODEL_CONFIG_YAML
            cfg_file.write_text(yaml.safe_dump(model_config, sort_keys=True))
            cmd += ["--config-file", str(cfg_file)]
        # torch-model-archiver stages files in $TMPDIR/<model name> and deletes that folder before and after:
        # a private TMPDIR keeps it from wiping an unrelated /tmp/<name> of the user's
        scratch = Path(cfg_dir) / "scratch"
        scratch.mkdir()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TMPDIR": str(scratch)})
    if proc.returncode != 0:
        raise MirecError(f"torch-model-archiver failed for {name}: {(proc.stderr or proc.stdout).strip()[-800:]}")
    out = model_store / (f"{name}.mar" if archive_format == "default" else name)
    if not out.exists():
        raise MirecError(f"torch-model-archiver did not write {out}")
    return out


def _load_candidate(c: CandidateSpec):
    if not c.checkpoint:
        raise ConfigError(f"candidate {c.name}: 'checkpoint' is required")
    ckpt = Path(c.checkpoint)
    if not ckpt.is_dir():
        raise MirecError(f"candidate {c.name}: checkpoint dir not found: {ckpt}")
    try:
        from mirec.train import load_model
    except ImportError as exc:
        raise MirecError(f"mirec.train is not available ({exc}); cannot read checkpoints") from None
    model, cfg = load_model(ckpt)
    items = c.items or (ckpt / "items.parquet")
    calibration = ckpt / "d_u_calibration.json"  # written by mirec.train; the personalised aggregator reads it
    if "d_u_calibration" not in c.aggregator_params and calibration.is_file():
        c.aggregator_params["d_u_calibration"] = json.loads(calibration.read_text())
    metrics: dict = {}
    if c.metrics:  # `mirec evaluate --out` writes metrics.json
        mpath = Path(c.metrics)
        if mpath.is_dir():
            mpath = mpath / "metrics.json"
        if not mpath.is_file():
            raise MirecError(f"candidate {c.name}: metrics file not found: {mpath}")
        metrics = json.loads(mpath.read_text())
    else:
        for fname in ("metrics.json", "train_metrics.json"):
            if (ckpt / fname).is_file():
                metrics = {"source": fname, **json.loads((ckpt / fname).read_text())}
                break
    return model, cfg, items, metrics


def write_server_config(out_dir: str | Path, models: list[ModelServing], server: ServerSettings) -> Path:
    """config/config.properties + config/log4j2.xml (start TorchServe with `--log-config config/log4j2.xml`;
    the kserve profile points the JVM at /mnt/models/config/log4j2.xml through `vmargs`)."""
    out = Path(out_dir) / "config" / "config.properties"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_config_properties(models, server))
    (out.parent / "log4j2.xml").write_text(render_log4j2())
    return out


def package(spec: PackageSpec, candidates: dict | None = None, log=print) -> dict:
    """Build every candidate's MAR and the config. `candidates` may map a name to an in-memory
    (model, model_cfg, items, metrics) tuple instead of reading `checkpoint` (tests, benchmarks)."""
    from mirec.retrieval.index import EFFORT_PARAM

    out = Path(spec.out_dir)
    store = out / "model-store"
    names = [c.name for c in spec.candidates]
    if len(set(names)) != len(names):
        raise ConfigError(f"candidate names must be unique, got {names}")
    served, report = [], []
    for c in spec.candidates:
        t0 = time.perf_counter()
        model, cfg, items, metrics = (candidates or {}).get(c.name) or _load_candidate(c)
        with tempfile.TemporaryDirectory(prefix=f"mirec-stage-{c.name}-") as tmp:
            meta = stage_candidate(tmp, model, cfg, items, name=c.name, version=c.version, index=c.index,
                                   aggregator=c.aggregator, aggregator_params=c.aggregator_params, metrics=metrics)
            mar = build_mar(tmp, c.name, c.version, store, spec.archive_format,
                            model_config=torchserve_model_config(c.response_timeout_s, c.client_timeout_ms))
        digest = mar_sha256(mar)
        served.append(ModelServing(name=c.name, version=c.version, mar=mar.name, workers=c.workers,
                                   batch_size=c.batch_size, max_batch_delay_ms=c.max_batch_delay_ms,
                                   response_timeout_s=c.response_timeout_s, client_timeout_ms=c.client_timeout_ms,
                                   sha256=digest))
        report.append({"name": c.name, "version": c.version, "mar": str(mar), "sha256": digest, "index": meta["index"],
                       "serving": served[-1].model_dump(),
                       "metrics": meta["metrics"], "seconds": round(time.perf_counter() - t0, 2)})
        ix = meta["index"]
        rec = ix.get("recall") or {}
        knob = EFFORT_PARAM.get(ix["kind"])
        effort = f", {knob}={ix[knob]}" if knob else ""
        quality = "" if not rec or rec.get("exact") else (
            f", recall@{rec['recall_k']} {rec['recall']:.3f} vs exact{effort}"
            + ("" if rec.get("met", True) else f" (BELOW target {rec['target_recall']})"))
        sel = ix.get("selection") or {}
        chosen = "" if sel.get("mode") != "auto" or "tried" not in sel else (
            " chosen by --index auto from " + ", ".join(f"{t['kind']} {t['recall']:.3f}/{t['p50_ms']:.2f} ms"
                                                       for t in sel["tried"]))
        log(f"packaged {c.name} v{c.version}: {mar} ({ix['kind']}{chosen}, {meta['n_items']} items{quality})")
    server = spec.server
    if server.profile != "kserve":
        server = server.model_copy(update={"model_store": str(store.resolve())})
    cfg_path = write_server_config(out, served, server)
    result = {"out_dir": str(out), "model_store": str(store), "config": str(cfg_path), "candidates": report}
    (out / "package.json").write_text(json.dumps(result, indent=2))
    log(f"config: {cfg_path}")
    return result
