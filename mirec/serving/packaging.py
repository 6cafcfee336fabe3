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
                         (flat | ivf | hnsw; built on the GPU when one is present, stored as a CPU index)
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
    kind: Literal["flat", "ivf", "hnsw"] = "flat"
    nlist: int | None = None
    nprobe: int = Field(16, ge=1)
    hnsw_m: int = Field(32, ge=4)
    ef_search: int = Field(128, ge=1)
    ef_construction: int = Field(200, ge=1)
    use_gpu: bool | None = None  # None: use a GPU when FAISS sees one
    #: IVF/HNSW: at package time nprobe / efSearch are set to the cheapest value whose recall@recall_k against
    #: brute force reaches this, measured on the interest vectors of `recall_queries` sampled histories; the
    #: measured curve goes into meta.json. null: use nprobe / ef_search as given (recall still measured).
    #: Why: an ANN latency without its recall says nothing (at 10^6 random 64-d items, HNSW with efSearch 128
    #: and efConstruction 40 returned 56% of the exact answer).
    target_recall: float | None = Field(0.9, gt=0, le=1)
    recall_k: int = Field(100, ge=1)
    recall_queries: int = Field(256, ge=1)


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


def sample_interest_queries(model, max_len: int, item_popularity: np.ndarray, n_users: int,
                            seed: int = 0) -> np.ndarray:
    """Interest vectors [n_users * K, d] of histories drawn like traffic: lengths uniform in 5..max_len, items
    in proportion to popularity + 1 (so the head dominates and every item can appear). The queries an index is
    tuned and measured on."""
    import torch

    from mirec.models.base import pad_histories

    rng = np.random.default_rng(seed)
    p = np.asarray(item_popularity, np.float64) + 1.0
    p /= p.sum()
    lo = min(5, max_len)
    lengths = rng.integers(lo, max_len + 1, size=n_users)
    histories = np.split(rng.choice(len(p), size=int(lengths.sum()), p=p), np.cumsum(lengths)[:-1])
    out = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for s in range(0, n_users, 64):
            seq, mask = pad_histories(histories[s: s + 64], max_len)
            out.append(model.serving_interests(seq, mask).float().cpu().numpy())
    model.train(was_training)
    v = np.concatenate(out)
    return v.reshape(-1, v.shape[-1])


def stage_candidate(stage_dir: str | Path, model, model_cfg, items, *, name: str, version: str = "1.0",
                    index: IndexSpec | None = None, aggregator: str = "merge", aggregator_params: dict | None = None,
                    metrics: dict | None = None, copy_code: bool = True) -> dict:
    """Write the files of one MAR into `stage_dir`; -> meta (also written as meta.json)."""
    import torch

    from mirec.retrieval import ItemIndex, get_aggregator

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
    t0 = time.perf_counter()
    vecs = model.item_vectors()
    idx = ItemIndex.build(vecs, index.kind, nlist=index.nlist, nprobe=index.nprobe, hnsw_m=index.hnsw_m,
                          ef_search=index.ef_search, ef_construction=index.ef_construction, use_gpu=index.use_gpu)
    build_s = time.perf_counter() - t0
    recall = None
    if idx.kind == "flat":
        recall = {"recall": 1.0, "exact": True}
    elif getattr(model, "is_neural", True):
        queries = sample_interest_queries(model, model_cfg.max_len, df["popularity"].to_numpy(), index.recall_queries)
        if index.target_recall is not None:
            recall = idx.tune(vecs, queries, index.recall_k, index.target_recall)
        else:
            k = min(index.recall_k, len(df))
            recall = {"recall_k": k, "target_recall": None, "queries": int(len(queries)),
                      "recall": round(idx.recall(vecs, queries, k), 4)}
        if recall.get("met") is False:
            logger.warning("%s: the %s index does not reach recall@%d %g (best %.3f; %s set to %s, the cheapest "
                           "within 0.01 of the best); raise ef_construction / hnsw_m (HNSW) or nlist (IVF), or use "
                           "flat", name, idx.kind, recall["recall_k"], index.target_recall,
                           max(r for _, r in recall["curve"]), idx.effort_name, idx.params[idx.effort_name])
    idx.save(stage / INDEX_FILE)
    df.to_parquet(stage / ITEMS_FILE, index=False)
    h = hashlib.sha256((stage / WEIGHTS_FILE).read_bytes()).hexdigest()
    meta = {
        "name": name, "version": version, "model": model_cfg.name, "K": model_cfg.K, "dim": model_cfg.dim,
        "n_items": int(len(df)), "aggregator": aggregator, "aggregator_params": aggregator_params or {},
        "index": {"kind": idx.kind, **{k: v for k, v in idx.params.items()}, "build_s": round(build_s, 3),
                  "recall": recall},
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
        log(f"packaged {c.name} v{c.version}: {mar} ({ix['kind']}, {meta['n_items']} items{quality})")
    server = spec.server
    if server.profile != "kserve":
        server = server.model_copy(update={"model_store": str(store.resolve())})
    cfg_path = write_server_config(out, served, server)
    result = {"out_dir": str(out), "model_store": str(store), "config": str(cfg_path), "candidates": report}
    (out / "package.json").write_text(json.dumps(result, indent=2))
    log(f"config: {cfg_path}")
    return result
