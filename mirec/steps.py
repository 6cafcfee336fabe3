"""The training pipeline's steps as plain functions: one per kfp component (components/), testable without kfp.

Each step reads its inputs from paths, writes its outputs under the output path(s) it is given (a directory,
wiped first, so a re-run overwrites cleanly), returns a small JSON-able dict (what the component puts in the
artifact metadata) and writes the same dict as `_step.json` beside its outputs. The business logic lives in the
other mirec modules; a step only wires them together:

    data_ingest               mirec.data.prepare
    features_materialize      mirec.features.apply + materialize (Feast)
    build_training_data       mirec.features.training_frame (point-in-time join) + a leak/consistency check
    train_candidate           mirec.train.train (in-process, or as a Kubeflow PyTorchJob: k8s/pytorchjob.yaml)
    evaluate_candidate        mirec.evaluate.evaluate
    gate                      thresholds -> decision + reasons, comparison report (Markdown/HTML + plot)
    package_candidates        the serving packager (MARs), only for candidates that passed the gate
    build_monitoring_reference mirec.monitoring.reference (served from each packaged MAR with its own settings)
    deploy                    Helm values for the new versions and/or TorchServe management API registration

A library piece that is missing makes its step fail with a MirecError naming it; optional steps (Feast, the
monitoring reference) instead write status "skipped" with the reason, and the run summary shows it.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mirec.errors import ConfigError, MirecError

STEP_FILE = "_step.json"
DECISION_FILE = "decision.json"
CANDIDATES = ("A", "B")

#: metrics shown in the comparison table and logged into the kfp Metrics artifacts (when present)
TABLE_METRICS = ["recall@20", "recall@50", "ndcg@20", "ndcg@50", "hitrate@50", "diversity@50", "ild@50",
                 "coverage@50", "gini@50", "interest_cos", "effective_interests", "single_interest_share",
                 "routing_entropy_norm"]

#: default gate: quality floors and collapse ceilings (flat keys: min_<metric> / max_<metric>)
DEFAULT_THRESHOLDS: dict[str, Any] = {
    "primary": "recall@50",        # the winner = the passing candidate with the highest primary metric
    "min_recall@50": 0.02,
    "min_ndcg@50": 0.005,
    "max_interest_cos": 0.95,      # mean pairwise cosine between one user's K interests (1 = collapsed)
    "max_single_interest_share": 0.9,  # share of users whose whole list came from one interest
}


class StepUnavailable(MirecError):
    """A library piece a step needs is not part of this build."""


# ---- helpers --------------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _fresh_dir(path: str | Path) -> Path:
    """Empty directory at `path` (re-runs overwrite cleanly)."""
    p = Path(path)
    if p.is_file() or p.is_symlink():
        p.unlink()
    elif p.exists():
        shutil.rmtree(p)
    p.mkdir(parents=True)
    return p


def _write_step(out_dir: Path, step: str, info: dict) -> dict:
    info = {"step": step, "finished": _now(), **info}
    (out_dir / STEP_FILE).write_text(json.dumps(info, indent=2, default=str))
    return info


def read_step(path: str | Path) -> dict:
    f = Path(path) / STEP_FILE
    return json.loads(f.read_text()) if f.is_file() else {}


def _require(module: str, attr: str, step: str):
    try:
        mod = importlib.import_module(module)
        return getattr(mod, attr)
    except (ImportError, AttributeError) as exc:
        raise StepUnavailable(f"step '{step}' needs {module}.{attr}, which is not available in this build "
                              f"({type(exc).__name__}: {exc})") from None


def _num(v) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) or math.isinf(f) else f


def _deep_intify(obj):
    if isinstance(obj, dict):
        return {k: _deep_intify(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deep_intify(v) for v in obj]
    if isinstance(obj, float) and obj.is_integer() and abs(obj) < 2**53:
        return int(obj)
    return obj


def _model_cfg_ints(cfg: dict, cls) -> dict:
    """Whole floats back to int only for the fields the pydantic model declares as int."""
    import typing

    out = dict(cfg)
    for name, field in cls.model_fields.items():
        v = out.get(name)
        ann = field.annotation
        args = typing.get_args(ann)
        is_int = ann is int or (int in args and float not in args)
        if is_int and isinstance(v, float) and v.is_integer():
            out[name] = int(v)
        elif isinstance(v, list) and (typing.get_origin(ann) is tuple or tuple in (typing.get_origin(a) for a in args)):
            out[name] = [int(x) if isinstance(x, float) and x.is_integer() else x for x in v]
    return out


# ---- 1. data ---------------------------------------------------------------------------------------------
def _fetch_uri(uri: str, tmp: Path) -> str:
    """Local path for a data URI: local paths / file:// as is; s3://, gs://, ... copied with pyarrow.fs."""
    if uri.startswith("file://"):
        return uri[len("file://"):]
    if "://" not in uri:
        return uri
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(path)
        dest = tmp / Path(path).name
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(path)
        pafs.copy_files(path, str(dest), source_filesystem=fs)  # a file or a whole folder
    except Exception as exc:
        raise ConfigError(f"cannot read data URI {uri}: {exc}") from None
    return str(dest)


def data_ingest(out_dir: str | Path, data_uri: str = "", data_format: str = "synthetic",
                data_config: dict | None = None, split: str = "comirec") -> dict:
    """Validate + quarantine + split raw interactions into a prepared dataset directory (docs/CONTRACTS.md).

    data_uri "" = the embedded synthetic generator; otherwise a path or URI of the raw data in `data_format`.
    data_config: DataConfig overrides (e.g. {"synth": {"n_users": 300}, "min_user_count": 3})."""
    from mirec.config import DataConfig
    from mirec.data import prepare

    out = _fresh_dir(out_dir)
    raw = _deep_intify(dict(data_config or {}))
    raw.setdefault("split", {})
    raw["split"] = {**raw["split"], "kind": split or raw["split"].get("kind", "comirec")}
    if data_uri:
        if (data_format or "synthetic") == "synthetic":
            raise ConfigError(f"data_uri {data_uri!r} given with data_format 'synthetic': set data_format to the "
                              "raw data's format (table, movielens-csv, movielens-dat, whitespace)")
        raw["source"] = {**raw.get("source", {}), "format": data_format}
    raw["out_dir"] = str(out)
    tmp = out.parent / (out.name + ".download")
    try:
        if data_uri and "://" in data_uri and not data_uri.startswith("file://"):
            tmp.mkdir(parents=True, exist_ok=True)
        if data_uri:
            raw["source"]["path"] = _fetch_uri(data_uri, tmp)
        try:
            cfg = DataConfig.model_validate(raw)
        except Exception as exc:
            raise ConfigError(f"invalid data config: {exc}") from None
        t0 = time.perf_counter()
        ds_dir, rep = prepare(cfg, progress=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = json.loads((Path(ds_dir) / "summary.json").read_text())
    info = {"status": "ok", "source": data_uri or "synthetic", "format": cfg.source.format, "split": cfg.split.kind,
            "seconds": round(time.perf_counter() - t0, 2),
            **{k: summary.get(k) for k in ("rows_in", "rows_kept", "n_users", "n_items", "n_categories")
               if k in summary},
            "quarantined": sum((summary.get("quarantined") or {}).values())}
    return _write_step(out, "data_ingest", info)


# ---- 2. Feast ----------------------------------------------------------------------------------------------
def _feature_repo() -> str:
    """The Feast repo: $MIREC_FEAST_REPO, else feature_repo/ next to the mirec package (source checkout/image)."""
    env = os.environ.get("MIREC_FEAST_REPO")
    if env:
        return env
    here = Path(__file__).resolve().parents[1] / "feature_repo"
    return str(here) if here.is_dir() else "feature_repo"


def features_materialize(dataset_dir: str | Path, out_dir: str | Path, features_config: dict | None = None,
                         enabled: bool = True) -> dict:
    """Feast apply (derived sources + registry) and materialize into the online store.

    Local profile: Feast's files (registry, SQLite online store, sources) go under out_dir/store, so each run
    is self-contained. Production profile (MIREC_FEAST_PROFILE=production): the profile's own stores."""
    out = _fresh_dir(out_dir)
    if not enabled:
        return _write_step(out, "features_materialize", {"status": "skipped", "reason": "disabled (use_feast=false)"})
    try:
        from mirec.features import FeaturesConfig, apply, materialize
    except ImportError as exc:
        return _write_step(out, "features_materialize",
                           {"status": "skipped", "reason": f"mirec.features not available: {exc}"})
    raw = _deep_intify(dict(features_config or {}))
    raw.setdefault("repo_path", _feature_repo())
    profile = raw.get("profile") or os.environ.get("MIREC_FEAST_PROFILE") or "local"
    if profile == "local" and not raw.get("store_dir") and not os.environ.get("MIREC_FEAST_DIR"):
        raw["store_dir"] = str(out / "store")
        raw.setdefault("source_dir", str(out / "store" / "sources"))
    cfg = FeaturesConfig.model_validate(raw).resolved()
    t0 = time.perf_counter()
    logs: list[str] = []
    meta = apply(dataset_dir, cfg, log=logs.append)
    reports = materialize(cfg, log=logs.append)
    (out / "features_config.json").write_text(cfg.model_dump_json(indent=2))
    (out / "feast.log").write_text("\n".join(logs) + "\n")
    info = {"status": "ok", "profile": cfg.profile, "store_dir": cfg.store_dir, "repo_path": cfg.repo_path,
            "counts": meta.get("counts"), "materialized": [r.as_dict() for r in reports],
            "seconds": round(time.perf_counter() - t0, 2)}
    return _write_step(out, "features_materialize", info)


# ---- 3. training data --------------------------------------------------------------------------------------
def build_training_data(dataset_dir: str | Path, features_dir: str | Path, out_dir: str | Path,
                        max_labels: int = 2000, seed: int = 0) -> dict:
    """The training dataset: the prepared dataset (what mirec.train reads) plus a point-in-time-correct
    training frame from Feast for a sample of training labels, checked against the dataset's own sequences
    (every Feast history must equal the events strictly before the label: no leakage, nothing lost)."""
    import numpy as np
    import pandas as pd

    out = _fresh_dir(out_dir)
    src = Path(dataset_dir)
    for f in src.iterdir():  # the dataset travels on as this step's output (the trainer reads it)
        if f.name == STEP_FILE:
            continue
        (shutil.copytree if f.is_dir() else shutil.copy2)(f, out / f.name)
    feat = read_step(features_dir)
    if feat.get("status") != "ok":
        info = {"status": "ok", "feast": "skipped", "reason": f"features step: {feat.get('status', 'missing')} "
                f"({feat.get('reason', '')})", "labels": 0}
        return _write_step(out, "build_training_data", info)
    from mirec.features import FeaturesConfig, training_frame

    cfg = FeaturesConfig.model_validate_json((Path(features_dir) / "features_config.json").read_text())
    inter = pd.read_parquet(src / "interactions.parquet", columns=["user_idx", "item_idx", "timestamp", "user_id"])
    users = pd.read_parquet(src / "users.parquet", columns=["user_idx", "split"])
    train_users = users.loc[users["split"] == "train", "user_idx"]
    inter = inter[inter["user_idx"].isin(train_users)].reset_index(drop=True)
    inter["pos"] = inter.groupby("user_idx").cumcount()
    labels = inter[inter["pos"] > 0]
    if len(labels) > max_labels:
        labels = labels.sample(n=max_labels, random_state=seed)
    labels = labels.sort_values(["user_idx", "timestamp", "item_idx"]).reset_index(drop=True)
    t0 = time.perf_counter()
    frame = training_frame(labels[["user_id", "timestamp", "user_idx", "item_idx", "pos"]], cfg)
    # consistency: the Feast history must be exactly the events strictly before the label's second
    seqs = {u: g for u, g in inter.groupby("user_idx")}
    bad = 0
    for row in frame.itertuples(index=False):
        g = seqs[row.user_idx]
        before = g.loc[g["timestamp"] < row.timestamp, "item_idx"].to_numpy()[-cfg.seq_len:]
        if not np.array_equal(np.asarray(row.recent_item_idx, np.int64), before):
            bad += 1
    frame.to_parquet(out / "training_frame.parquet", index=False)
    info = {"status": "ok", "feast": "ok", "labels": int(len(frame)), "mismatched_histories": bad,
            "seq_len": cfg.seq_len, "seconds": round(time.perf_counter() - t0, 2)}
    if bad:
        raise MirecError(f"build_training_data: {bad}/{len(frame)} Feast point-in-time histories differ from "
                         "the dataset's own sequences (leakage or lost events); see training_frame.parquet")
    return _write_step(out, "build_training_data", info)


# ---- 4. train ----------------------------------------------------------------------------------------------
def model_and_train_configs(model_config: dict, train_config: dict | None, k_interests: int | None = None,
                            epochs: int | None = None):
    from mirec.models import ModelConfig
    TrainConfig = _require("mirec.train", "TrainConfig", "train_candidate")
    m = dict(model_config or {})
    if k_interests:
        m.setdefault("K", int(k_interests))
    t = dict(train_config or {})
    if epochs:
        t["epochs"] = int(epochs)
    try:
        mcfg = ModelConfig.model_validate(_model_cfg_ints(m, ModelConfig))
        tcfg = TrainConfig.model_validate(_model_cfg_ints(t, TrainConfig))
    except Exception as exc:
        raise ConfigError(f"invalid candidate config: {' '.join(str(exc).split())[:400]}") from None
    from mirec.models import available_models

    if mcfg.name not in available_models():
        raise ConfigError(f"unknown model {mcfg.name!r} in the candidate config; known: {available_models()}")
    return mcfg, tcfg


def train_candidate(dataset_dir: str | Path, out_dir: str | Path, name: str, model_config: dict,
                    train_config: dict | None = None, k_interests: int | None = None, epochs: int | None = None,
                    distributed: dict | None = None) -> dict:
    """Train one candidate; the checkpoint (model.pt + configs + items.parquet) lands in out_dir.
    distributed: {"enabled": true, "workers": N, "shared_dir": "/mnt/mirec", ...} submits a PyTorchJob
    (k8s/pytorchjob.yaml) instead of training in this process; see `submit_pytorchjob`."""
    mcfg, tcfg = model_and_train_configs(model_config, train_config, k_interests, epochs)
    out = _fresh_dir(out_dir)
    t0 = time.perf_counter()
    dist = _deep_intify(dict(distributed or {}))
    if dist.get("enabled"):
        metrics = _train_distributed(dataset_dir, out, name, mcfg, tcfg, dist)
        mode = f"pytorchjob({dist.get('workers', 1)} workers)"
    else:
        train = _require("mirec.train", "train", "train_candidate")
        res = train(dataset_dir, mcfg, tcfg, out, progress=False)
        metrics = dict(res.metrics)
        mode = "in-process"
    items = Path(dataset_dir) / "items.parquet"
    if items.is_file() and not (out / "items.parquet").exists():
        shutil.copy2(items, out / "items.parquet")
    saved = out / "model_config.json"  # the trained model's config (n_items filled in from the dataset)
    model_cfg = json.loads(saved.read_text()) if saved.is_file() else mcfg.model_dump(mode="json")
    info = {"status": "ok", "candidate": name, "model": mcfg.name, "K": mcfg.K, "dim": mcfg.dim, "mode": mode,
            "epochs": tcfg.epochs, "seconds": round(time.perf_counter() - t0, 2),
            "model_config": model_cfg, "train_metrics": metrics}
    return _write_step(out, "train_candidate", info)


# ---- distributed training: Kubeflow Training Operator PyTorchJob ------------------------------------------
PYTORCHJOB_TEMPLATE = Path(__file__).resolve().parents[1] / "k8s" / "pytorchjob.yaml"


def render_pytorchjob(job_name: str, image: str, command: list[str], workers: int = 1, namespace: str = "kubeflow",
                      gpus_per_worker: int = 0, cpu: str = "2", memory: str = "8Gi", pvc_name: str = "mirec-artifacts",
                      mount_path: str = "/mnt/mirec", node_selector: dict | None = None,
                      tolerations: list | None = None, template: str | Path | None = None) -> dict:
    """The PyTorchJob manifest (dict) from the repo's template: 1 Master + (workers - 1) Workers, each running
    `command` (mirec.train is DDP-ready: the operator sets MASTER_ADDR/PORT, WORLD_SIZE, RANK)."""
    import copy

    import yaml

    path = Path(template) if template else PYTORCHJOB_TEMPLATE
    if not path.is_file():
        raise ConfigError(f"PyTorchJob template not found: {path}")
    text = path.read_text()
    for key, val in {"JOB_NAME": job_name, "NAMESPACE": namespace, "IMAGE": image, "PVC_NAME": pvc_name,
                     "MOUNT_PATH": mount_path, "CPU": cpu, "MEMORY": memory}.items():
        text = text.replace("${" + key + "}", str(val))
    job = yaml.safe_load(text)
    specs = job["spec"]["pytorchReplicaSpecs"]
    workers = max(1, int(workers))
    for role, spec in specs.items():
        c = spec["template"]["spec"]["containers"][0]
        c["command"] = list(command)
        if gpus_per_worker:
            for part in ("requests", "limits"):
                c.setdefault("resources", {}).setdefault(part, {})["nvidia.com/gpu"] = int(gpus_per_worker)
        pod = spec["template"]["spec"]
        if node_selector:
            pod["nodeSelector"] = dict(node_selector)
        if tolerations:
            pod["tolerations"] = copy.deepcopy(tolerations)
    if workers == 1:
        specs.pop("Worker", None)
    else:
        specs["Worker"]["replicas"] = workers - 1
    return job


def submit_pytorchjob(job: dict, api=None, poll_s: float = 10.0, timeout_s: float = 24 * 3600) -> dict:
    """Create the PyTorchJob through the Kubernetes API (in-cluster config, else kubeconfig) and wait until
    it Succeeded (-> final status) or Failed (-> MirecError)."""
    if api is None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except Exception:
            config.load_kube_config()
        api = client.CustomObjectsApi()
    ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
    group, version, plural = "kubeflow.org", "v1", "pytorchjobs"
    api.create_namespaced_custom_object(group, version, ns, plural, job)
    t0 = time.monotonic()
    while True:
        obj = api.get_namespaced_custom_object(group, version, ns, plural, name)
        conds = {c.get("type"): c.get("status") for c in (obj.get("status") or {}).get("conditions") or []}
        if conds.get("Succeeded") == "True":
            return obj.get("status") or {}
        if conds.get("Failed") == "True":
            raise MirecError(f"PyTorchJob {ns}/{name} failed: {obj.get('status')}")
        if time.monotonic() - t0 > timeout_s:
            raise MirecError(f"PyTorchJob {ns}/{name} did not finish in {timeout_s:.0f}s")
        time.sleep(poll_s)


def _train_distributed(dataset_dir, out: Path, name: str, mcfg, tcfg, dist: dict) -> dict:
    """Copy the dataset to the shared volume, run the PyTorchJob, copy the checkpoint back into `out`."""
    shared = Path(dist.get("shared_dir") or "/mnt/mirec")
    if not shared.is_dir():
        raise ConfigError(f"distributed training needs the shared volume mounted at {shared} (distributed.shared_dir)")
    run_id = f"{name.lower()}-{datetime.now(timezone.utc):%Y%m%d%H%M%S}"
    work = shared / "pytorchjobs" / run_id
    data, ckpt = work / "dataset", work / "checkpoint"
    shutil.copytree(dataset_dir, data)
    (work / "model_config.json").write_text(mcfg.model_dump_json())
    (work / "train_config.json").write_text(tcfg.model_dump_json())
    command = ["mirec", "pipeline", "train-worker", "--dataset-dir", str(data), "--model-config",
               str(work / "model_config.json"), "--train-config", str(work / "train_config.json"),
               "--out-dir", str(ckpt)]
    job = render_pytorchjob(f"mirec-train-{run_id}", dist.get("image") or os.environ.get("MIREC_IMAGE", ""),
                            command, workers=int(dist.get("workers", 2)), namespace=dist.get("namespace", "kubeflow"),
                            gpus_per_worker=int(dist.get("gpus_per_worker", 0)), pvc_name=dist.get("pvc_name",
                            "mirec-artifacts"), mount_path=str(shared), node_selector=dist.get("node_selector"),
                            tolerations=dist.get("tolerations"))
    if not job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["image"]:
        raise ConfigError("distributed training needs an image (distributed.image or $MIREC_IMAGE)")
    (out / "pytorchjob.yaml").write_text(__import__("yaml").safe_dump(job, sort_keys=False))
    submit_pytorchjob(job, poll_s=float(dist.get("poll_s", 10)))
    for f in ckpt.iterdir():
        (shutil.copytree if f.is_dir() else shutil.copy2)(f, out / f.name)
    tm = ckpt / "train_metrics.json"
    return json.loads(tm.read_text()) if tm.is_file() else {}


# ---- 5. evaluate -------------------------------------------------------------------------------------------
def evaluate_candidate(dataset_dir: str | Path, model_dir: str | Path, out_dir: str | Path, name: str,
                       eval_config: dict | None = None) -> dict:
    """Offline evaluation on the test users through the serving Recommender: accuracy, diversity, collapse.
    out_dir gets metrics.json, metrics.md and served.jsonl (the monitoring reference's input)."""
    evaluate = _require("mirec.evaluate", "evaluate", "evaluate_candidate")
    ec = _deep_intify(dict(eval_config or {}))
    lambdas = [float(x) for x in ec.pop("tradeoff_lambdas", []) or []]
    allowed = {"split", "aggregator", "n_values", "exclude_seen", "diversity", "aggregator_params", "index_kind",
               "max_users"}
    unknown = set(ec) - allowed
    if unknown:
        raise ConfigError(f"unknown eval_config key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    if "n_values" in ec:
        ec["n_values"] = tuple(int(n) for n in ec["n_values"])
    out = _fresh_dir(out_dir)
    t0 = time.perf_counter()
    res = evaluate(str(model_dir), str(dataset_dir), out_dir=out, name=name, **ec)
    metrics = {k: v for k, v in res["metrics"].items() if _num(v) is not None}
    # accuracy-diversity trade-off: ComiRec controllable aggregation over a few lambdas (for the report's plot)
    tradeoff = []
    if lambdas:
        n = max(ec.get("n_values", (20, 50)))
        sweep = {k: v for k, v in ec.items() if k in ("split", "exclude_seen", "index_kind", "max_users")}
        for lam in lambdas:
            r = evaluate(str(model_dir), str(dataset_dir), aggregator="controllable", diversity=lam, n_values=(n,),
                         name=name, **sweep)["metrics"]
            tradeoff.append({"lambda": lam, f"recall@{n}": _num(r.get(f"recall@{n}")),
                             f"ndcg@{n}": _num(r.get(f"ndcg@{n}")), f"diversity@{n}": _num(r.get(f"diversity@{n}")),
                             f"ild@{n}": _num(r.get(f"ild@{n}"))})
        (out / "tradeoff.json").write_text(json.dumps(tradeoff, indent=2))
    info = {"status": "ok", "candidate": name, "model": read_step(model_dir).get("model"),
            "split": res.get("split"), "n_users": res.get("n_users"), "metrics": metrics, "tradeoff": tradeoff,
            "seconds": round(time.perf_counter() - t0, 2)}
    return _write_step(out, "evaluate_candidate", info)


# ---- 6. gate -----------------------------------------------------------------------------------------------
def parse_thresholds(thresholds: dict | None) -> tuple[str, list[tuple[str, str, float]]]:
    th = {**DEFAULT_THRESHOLDS, **(thresholds or {})}  # a key set to None disables that default rule
    primary = str(th.pop("primary", DEFAULT_THRESHOLDS["primary"]))
    rules = []
    for key, val in th.items():
        if val is None:
            continue
        if key.startswith("min_"):
            rules.append((key[4:], ">=", float(val)))
        elif key.startswith("max_"):
            rules.append((key[4:], "<=", float(val)))
        else:
            raise ConfigError(f"threshold key {key!r} must start with min_ or max_ (or be 'primary')")
    return primary, rules


def gate(eval_dirs: dict[str, str | Path], thresholds: dict | None, out_dir: str | Path,
         report_md: str | Path | None = None, report_html: str | Path | None = None) -> dict:
    """Compare the candidates and decide which may ship: every min_/max_ threshold must hold (a metric that
    is missing fails its rule). Winner = the passing candidate with the best primary metric ("none" if none).
    Writes decision.json (+ reasons), the comparison table (Markdown) and an HTML report with the
    accuracy-diversity plot."""
    primary, rules = parse_thresholds(thresholds)
    out = _fresh_dir(out_dir)
    cands: dict[str, dict] = {}
    for name, d in eval_dirs.items():
        st = read_step(d)
        if st.get("status") != "ok":
            raise MirecError(f"gate: no evaluation for candidate {name} in {d}")
        cands[name] = st
    decisions = {}
    for name, st in cands.items():
        m = st["metrics"]
        reasons, passed = [], True
        for metric, op, bound in rules:
            v = _num(m.get(metric))
            ok = v is not None and (v >= bound if op == ">=" else v <= bound)
            passed &= ok
            shown = "missing" if v is None else f"{v:.4f}"
            reasons.append(f"{'PASS' if ok else 'FAIL'} {metric} = {shown} (needs {op} {bound:g})")
        decisions[name] = {"passed": bool(passed), "model": st.get("model"), "reasons": reasons,
                           "primary": _num(m.get(primary))}
    passing = [n for n, d in decisions.items() if d["passed"]]
    winner = max(passing, key=lambda n: decisions[n]["primary"] or -1.0) if passing else "none"
    decision = {"winner": winner, "primary": primary, "passed": passing,
                "rejected": [n for n in decisions if n not in passing],
                "thresholds": [{"metric": m, "op": op, "bound": b} for m, op, b in rules],
                "candidates": decisions, "metrics": {n: st["metrics"] for n, st in cands.items()},
                "tradeoff": {n: st.get("tradeoff") or [] for n, st in cands.items()},
                "decided": _now()}
    (out / DECISION_FILE).write_text(json.dumps(decision, indent=2))
    table = comparison_table(decision)
    md = render_markdown(decision, table)
    (out / "report.md").write_text(md)
    plot_png = out / "accuracy_diversity.png"
    plot_ok = _plot_accuracy_diversity(decision, plot_png)
    html = render_html(decision, table, plot_png if plot_ok else None)
    (out / "report.html").write_text(html)
    if report_md:
        Path(report_md).parent.mkdir(parents=True, exist_ok=True)
        Path(report_md).write_text(md)
    if report_html:
        Path(report_html).parent.mkdir(parents=True, exist_ok=True)
        Path(report_html).write_text(html)
    info = {"status": "ok", "winner": winner, "passed": passing, "rejected": decision["rejected"],
            "primary": primary}
    _write_step(out, "gate", info)
    return decision


def gate_passed(decision_dir: str | Path, name: str) -> bool:
    d = json.loads((Path(decision_dir) / DECISION_FILE).read_text())
    return bool(d["candidates"].get(name, {}).get("passed", False))


def comparison_table(decision: dict) -> str:
    names = list(decision["metrics"])
    present = [m for m in TABLE_METRICS if any(_num(decision["metrics"][n].get(m)) is not None for n in names)]
    head = "| metric | " + " | ".join(f"{n} ({decision['candidates'][n].get('model')})" for n in names) + " |"
    lines = [head, "|---|" + "---:|" * len(names)]
    for m in present:
        vals = []
        for n in names:
            v = _num(decision["metrics"][n].get(m))
            vals.append("–" if v is None else f"{v:.4f}")
        lines.append(f"| {m} | " + " | ".join(vals) + " |")
    lines.append("| **gate** | " + " | ".join("PASS" if decision["candidates"][n]["passed"] else "REJECTED"
                                              for n in names) + " |")
    return "\n".join(lines)


def render_markdown(decision: dict, table: str) -> str:
    parts = [f"# Candidate comparison\n\nWinner: **{decision['winner']}** (by {decision['primary']}); "
             f"passed: {', '.join(decision['passed']) or 'none'}; rejected: {', '.join(decision['rejected']) or 'none'}.",
             "", table, "", "## Gate reasons"]
    for n, d in decision["candidates"].items():
        parts.append(f"\n**{n}** ({d.get('model')}): {'PASS' if d['passed'] else 'REJECTED'}")
        parts += [f"- {r}" for r in d["reasons"]]
    return "\n".join(parts) + "\n"


def _plot_accuracy_diversity(decision: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return False
    x_key = decision["primary"]
    y_key = next((k for k in ("diversity@50", "ild@50", "diversity@20") if any(
        _num(m.get(k)) is not None for m in decision["metrics"].values())), None)
    if y_key is None:
        return False
    fig, ax = plt.subplots(figsize=(6, 4.5))
    colors = dict(zip(decision["metrics"], ("tab:blue", "tab:orange", "tab:purple", "tab:brown")))
    for n, pts in (decision.get("tradeoff") or {}).items():  # the controllable-aggregation curve per candidate
        pts = [p for p in pts if _num(p.get(x_key)) is not None and _num(p.get(y_key)) is not None]
        if pts:
            ax.plot([p[x_key] for p in pts], [p[y_key] for p in pts], "-", marker=".", color=colors.get(n),
                    alpha=0.6, label=f"{n}: lambda {pts[0]['lambda']:g}..{pts[-1]['lambda']:g}")
    for i, (n, m) in enumerate(decision["metrics"].items()):
        x, y = _num(m.get(x_key)), _num(m.get(y_key))
        if x is None or y is None:
            continue
        ok = decision["candidates"][n]["passed"]
        ax.scatter([x], [y], s=80, marker="o" if ok else "x", color="tab:green" if ok else "tab:red")
        ax.annotate(f"{n} ({decision['candidates'][n].get('model')})", (x, y), textcoords="offset points",
                    xytext=(-20, 10) if i % 2 == 0 else (-20, -16))
    for t in decision["thresholds"]:
        if t["metric"] == x_key:
            ax.axvline(t["bound"], ls="--", color="grey", lw=1)
        if t["metric"] == y_key:
            ax.axhline(t["bound"], ls="--", color="grey", lw=1)
    ax.set_xlabel(x_key + " (accuracy)")
    ax.set_ylabel(y_key + " (diversity)")
    ax.set_title("Accuracy vs diversity (o passed, x rejected)")
    if decision.get("tradeoff") and any(decision["tradeoff"].values()):
        ax.legend(fontsize=8, loc="best")
    ax.margins(0.25)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def render_html(decision: dict, table_md: str, plot: Path | None) -> str:
    import base64
    import html as H

    rows = [r for r in table_md.splitlines() if r.startswith("|") and not r.startswith("|---")]
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
    thead = "".join(f"<th>{H.escape(c)}</th>" for c in cells[0])
    tbody = "".join("<tr>" + "".join(f"<td>{H.escape(c.replace('**', ''))}</td>" for c in r) + "</tr>"
                    for r in cells[1:])
    img = ""
    if plot is not None and plot.is_file():
        img = ('<img alt="accuracy-diversity plot" src="data:image/png;base64,'
               + base64.b64encode(plot.read_bytes()).decode() + '"/>')
    reasons = "".join(
        f"<h3>{H.escape(n)} ({H.escape(str(d.get('model')))}): {'PASS' if d['passed'] else 'REJECTED'}</h3><ul>"
        + "".join(f"<li>{H.escape(r)}</li>" for r in d["reasons"]) + "</ul>"
        for n, d in decision["candidates"].items())
    return ("<!doctype html><html><head><meta charset='utf-8'><title>mirec candidate comparison</title>"
            "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px 8px;text-align:right}</style></head><body>"
            f"<h1>Candidate comparison</h1><p>Winner: <b>{H.escape(decision['winner'])}</b> "
            f"(by {H.escape(decision['primary'])})</p><table><thead><tr>{thead}</tr></thead><tbody>{tbody}"
            f"</tbody></table>{img}<h2>Gate reasons</h2>{reasons}</body></html>")


# ---- 7. package ---------------------------------------------------------------------------------------------
def model_name_for(candidate: str) -> str:
    return f"mirec_{candidate.lower()}"


def package_candidates(model_dirs: dict[str, str | Path], eval_dirs: dict[str, str | Path], decision_dir: str | Path,
                       out_dir: str | Path, mar_dirs: dict[str, str | Path] | None = None, version: str = "",
                       package_config: dict | None = None) -> dict:
    """Package the candidates that passed the gate as TorchServe MARs (mirec.serving.packaging.package):
    out_dir gets model-store/<mirec_x>.mar + config/config.properties + package.json. A rejected candidate
    gets no MAR. mar_dirs (optional, per candidate): a copy of that candidate's MAR alone (the per-candidate
    kfp Model artifact), or REJECTED.json with the gate's reasons."""
    out = _fresh_dir(out_dir)
    d = json.loads((Path(decision_dir) / DECISION_FILE).read_text())
    mar_dirs = {n: _fresh_dir(p) for n, p in (mar_dirs or {}).items()}
    passed = [n for n in model_dirs if d["candidates"].get(n, {}).get("passed")]
    for n in model_dirs:
        if n not in passed and n in mar_dirs:
            rej = {"candidate": n, "reasons": d["candidates"].get(n, {}).get("reasons", ["not in the gate decision"])}
            (mar_dirs[n] / "REJECTED.json").write_text(json.dumps(rej, indent=2))
            _write_step(mar_dirs[n], "candidate_mar", {"status": "rejected", "candidate": n, "packaged": False,
                                                            "reasons": rej["reasons"]})
    if not passed:
        return _write_step(out, "package_candidates", {"status": "skipped", "packaged": [],
                                                       "reason": "no candidate passed the gate"})
    try:
        from mirec.serving.packaging import PackageSpec, package
    except ImportError as exc:
        raise StepUnavailable(f"step 'package_candidates' needs mirec.serving.packaging.package ({exc})") from None
    version = version or datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    pc = _deep_intify(dict(package_config or {}))
    per_cand = pc.pop("candidate", {})  # shared CandidateSpec fields (index, aggregator, workers, ...)
    cands = [{**per_cand, "name": model_name_for(n), "checkpoint": str(model_dirs[n]), "version": version,
              "metrics": str(Path(eval_dirs[n]) / "metrics.json") if n in eval_dirs else None} for n in passed]
    try:
        spec = PackageSpec.model_validate({**pc, "candidates": cands, "out_dir": str(out)})
    except Exception as exc:
        raise ConfigError(f"invalid package config: {' '.join(str(exc).split())[:400]}") from None
    logs: list[str] = []
    t0 = time.perf_counter()
    res = package(spec, log=logs.append)
    mars = {}
    for n in passed:
        mar = out / "model-store" / f"{model_name_for(n)}.mar"
        if not mar.is_file():
            raise MirecError(f"package: expected {mar} after packaging")
        mars[n] = {"candidate": n, "model_name": model_name_for(n), "version": version, "mar": mar.name,
                   "mar_bytes": mar.stat().st_size}
        if n in mar_dirs:
            shutil.copy2(mar, mar_dirs[n] / mar.name)
            _write_step(mar_dirs[n], "candidate_mar", {"status": "ok", "packaged": True, **mars[n]})
    (out / "package.log").write_text("\n".join(logs) + "\n")
    info = {"status": "ok", "packaged": passed, "version": version, "mars": mars, "config": res.get("config"),
            "seconds": round(time.perf_counter() - t0, 2)}
    return _write_step(out, "package_candidates", info)


# ---- 8. monitoring reference --------------------------------------------------------------------------------
def build_monitoring_reference(eval_dirs: dict[str, str | Path], dataset_dir: str | Path, package_dir: str | Path,
                               out_dir: str | Path, splits: tuple[str, ...] = ("valid", "test"),
                               max_users: int | None = None) -> dict:
    """The monitoring reference of every packaged candidate (out_dir/<model_name>/), made with exactly what is
    served: the candidate's MAR is loaded with the handler's own code (RecommendService.load: the MAR's
    aggregator, its parameters incl. the d_u calibration, its index) and every user of `splits` (default all
    valid + test users; their evaluation input histories) is answered with the API's request defaults (n,
    exclude_seen, diversity null), each answer written as the API writes its ServedLog line
    (mirec.monitoring.reference.build_reference_from_mar). The serving settings are recorded in summary.json
    and checked against the MAR's meta.json (a difference fails the step). `eval_dirs` is kept for the
    component's interface (the evaluation's own served lists use evaluate()'s protocol, not the served
    settings). Skipped when nothing was packaged."""
    out = _fresh_dir(out_dir)
    pkg = read_step(package_dir)
    if pkg.get("status") != "ok":
        return _write_step(out, "build_monitoring_reference", {"status": "skipped",
                                                               "reason": "no candidate packaged (gate)"})
    try:
        from mirec.monitoring.reference import build_reference_from_mar, check_serving, read_served_meta
    except ImportError as exc:
        raise StepUnavailable("step 'build_monitoring_reference' needs mirec.monitoring.reference "
                              f"(build_reference_from_mar), not available in this build ({exc})") from None
    t0 = time.perf_counter()
    refs = {}
    for n, m in pkg["mars"].items():
        mar = Path(package_dir) / "model-store" / m["mar"]
        if not mar.exists():
            raise MirecError(f"build_monitoring_reference: {mar} missing (package_candidates' MAR of candidate {n})")
        ref_dir = build_reference_from_mar(mar, dataset_dir, out / m["model_name"], splits=tuple(splits), arm=n,
                                           max_users=max_users)
        summary = json.loads((Path(ref_dir) / "summary.json").read_text())
        diffs = check_serving(summary.get("serving"), read_served_meta(mar), m["model_name"])
        if diffs:
            raise MirecError(f"build_monitoring_reference: the reference of {m['model_name']} does not match its MAR: "
                             + "; ".join(diffs))
        serving = summary.get("serving") or {}
        refs[n] = {"dir": m["model_name"], "model_name": m["model_name"], "version": m["version"],
                   "n_records": summary.get("n_records"), "catalogue_size": summary.get("catalogue_size"),
                   "aggregator": serving.get("aggregator"), "n": serving.get("n"),
                   "exclude_seen": serving.get("exclude_seen"), "splits": list(splits)}
    info = {"status": "ok", "references": refs, "seconds": round(time.perf_counter() - t0, 2)}
    return _write_step(out, "build_monitoring_reference", info)


# ---- 9. deploy ---------------------------------------------------------------------------------------------
def deploy(package_dir: str | Path, out_dir: str | Path, experiment_split: float = 0.5, mode: str = "helm-values",
           torchserve_management_url: str = "", mar_base_url: str = "",
           token_env: str = "TORCHSERVE_MANAGEMENT_TOKEN") -> dict:
    """Ship the packaged candidates. mode:
      helm-values  write values-release.yaml for charts/mirec: torchserve.models (new MAR files/versions) and
                   api.settings.experiment.arms (A gets experiment_split of the traffic, B the rest; a single
                   passing candidate gets all of it);
      torchserve   also register every MAR with a running TorchServe through its management API
                   (POST /models?url=...; token from $TORCHSERVE_MANAGEMENT_TOKEN) and make it the default version.
    """
    if mode not in ("helm-values", "torchserve"):
        raise ConfigError(f"deploy mode must be 'helm-values' or 'torchserve', not {mode!r}")
    if not 0.0 <= float(experiment_split) <= 1.0:
        raise ConfigError(f"experiment_split must be in [0, 1], got {experiment_split}")
    out = _fresh_dir(out_dir)
    pkg = read_step(package_dir)
    if pkg.get("status") != "ok":
        return _write_step(out, "deploy", {"status": "skipped", "reason": "no candidate passed the gate"})
    shipped = {n: {**m, "dir": str(Path(package_dir) / "model-store")} for n, m in pkg["mars"].items()}
    weights = {"A": float(experiment_split), "B": 1.0 - float(experiment_split)}
    total = sum(weights.get(n, 0.0) for n in shipped) or 1.0
    arms = [{"name": n, "model": p["model_name"], "weight": round(weights.get(n, 0.0) / total, 6)}
            for n, p in sorted(shipped.items())]
    if all(a["weight"] == 0 for a in arms):
        for a in arms:
            a["weight"] = round(1.0 / len(arms), 6)
    models = [{"name": p["model_name"], "marFile": p["mar"], "version": p["version"], "minWorkers": 1,
               "maxWorkers": 1, "batchSize": 8, "maxBatchDelayMs": 1, "responseTimeoutS": 30}
              for _, p in sorted(shipped.items())]
    values: dict = {"torchserve": {"models": models}, "api": {"settings": {"experiment": {"arms": arms}}}}
    if mar_base_url:
        values["torchserve"]["modelStore"] = {"type": "url", "url": {"baseUrl": mar_base_url}}
    import yaml

    (out / "values-release.yaml").write_text(
        "# Written by the mirec training pipeline (deploy step): the new model versions and the A/B split.\n"
        "# helm upgrade --install mirec charts/mirec -f values.yaml -f values-release.yaml\n"
        + yaml.safe_dump(values, sort_keys=False))
    mars_dir = out / "model-store"
    mars_dir.mkdir()
    for _, p in shipped.items():
        shutil.copy2(Path(p["dir"]) / p["mar"], mars_dir / p["mar"])
    registered = []
    if mode == "torchserve":
        registered = _register_torchserve(shipped, torchserve_management_url, mar_base_url, mars_dir,
                                          os.environ.get(token_env, ""))
    info = {"status": "ok", "mode": mode, "arms": arms, "models": models, "registered": registered,
            "values_file": "values-release.yaml"}
    return _write_step(out, "deploy", info)


def _register_torchserve(shipped: dict, url: str, mar_base_url: str, mars_dir: Path, token: str) -> list[dict]:
    import requests

    if not url:
        raise ConfigError("deploy mode 'torchserve' needs torchserve_management_url (e.g. http://torchserve:8081)")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    done = []
    for _, p in sorted(shipped.items()):
        mar_url = (f"{mar_base_url.rstrip('/')}/{p['mar']}" if mar_base_url
                   else (mars_dir / p["mar"]).resolve().as_uri())  # file:// (a server on this machine/volume)
        try:
            r = requests.post(f"{url.rstrip('/')}/models", params={"url": mar_url, "model_name": p["model_name"],
                              "initial_workers": 1, "synchronous": "true"}, headers=headers, timeout=300)
            if r.status_code >= 300:
                raise MirecError(f"TorchServe refused {p['model_name']} ({r.status_code}): {r.text[:300]}")
            r2 = requests.put(f"{url.rstrip('/')}/models/{p['model_name']}/{p['version']}/set-default",
                              headers=headers, timeout=60)
            if r2.status_code >= 300:
                raise MirecError(f"TorchServe set-default {p['model_name']}/{p['version']} failed "
                                 f"({r2.status_code}): {r2.text[:300]}")
        except requests.RequestException as exc:
            raise MirecError(f"TorchServe management API at {url} unreachable: {exc}") from None
        done.append({"model": p["model_name"], "version": p["version"], "url": mar_url})
    return done


# ---- kfp glue helpers (used by the component bodies) ---------------------------------------------------------
def artifact_metadata(info: dict) -> dict:
    """Flat scalar metadata for a kfp artifact (nested values as compact JSON strings)."""
    md = {}
    for k, v in info.items():
        if isinstance(v, (str, bool, int, float)) or v is None:
            md[k] = v if v is not None else ""
        else:
            md[k] = json.dumps(v, default=str, separators=(",", ":"))[:2000]
    return md


def ui_metrics(info: dict) -> dict[str, float]:
    """The evaluation's scalar metrics for a kfp Metrics artifact (the table's metrics first)."""
    m = info.get("metrics") or {}
    keys = [k for k in TABLE_METRICS if k in m] + sorted(k for k in m if k not in TABLE_METRICS)
    return {k: float(m[k]) for k in keys if _num(m[k]) is not None}


# ---- run summary --------------------------------------------------------------------------------------------
def collect_run(run_dir: str | Path) -> dict:
    """Every step record of one pipeline run directory (<pipeline_root>/<pipeline>-<ts>/<task>/<artifact>/)."""
    run = Path(run_dir)
    steps: dict[str, list[dict]] = {}
    for f in sorted(run.glob(f"*/*/{STEP_FILE}")):
        rec = json.loads(f.read_text())
        rec["path"] = str(f.parent)
        steps.setdefault(rec["step"], []).append(rec)
    decision = next(iter(sorted(run.glob(f"*/*/{DECISION_FILE}"))), None)
    return {"run_dir": str(run), "steps": steps,
            "decision": json.loads(decision.read_text()) if decision else None,
            "decision_dir": str(decision.parent) if decision else None}


def _one(steps: dict, step: str, candidate: str | None = None) -> dict:
    recs = steps.get(step, [])
    if candidate is not None:
        recs = [r for r in recs if r.get("candidate") == candidate]
    return recs[0] if recs else {}


def summarize_run(run_dir: str | Path, wall_s: float | None = None) -> str:
    """The human summary printed at the end of a run: where the artifacts are, gate decisions, the winner,
    the comparison table, and every step that was skipped (with why)."""
    c = collect_run(run_dir)
    s, d = c["steps"], c["decision"]
    lines = [f"== mirec training pipeline: run {Path(run_dir).name}" + (f" ({wall_s:.0f}s)" if wall_s else ""),
             f"artifacts: {run_dir}/  (paths below are relative to it)"]
    di = _one(s, "data_ingest")
    if di:
        lines.append(f"data      : {di.get('source')} -> {di.get('n_users')} users, {di.get('n_items')} items, "
                     f"{di.get('rows_kept')} interactions kept, {di.get('quarantined')} quarantined  [{di['path']}]")
    fe = _one(s, "features_materialize")
    if fe:
        lines.append(f"feast     : {fe.get('status').upper()}" + (f" ({fe.get('reason')})" if fe.get("reason") else
                     f" profile={fe.get('profile')} store={fe.get('store_dir')}"))
    td = _one(s, "build_training_data")
    if td:
        lines.append(f"train data: Feast point-in-time frame {td.get('feast')}, {td.get('labels')} labels, "
                     f"{td.get('mismatched_histories', 0)} mismatches  [{td['path']}]")
    for n in CANDIDATES:
        tr = _one(s, "train_candidate", n)
        if tr:
            tm = tr.get("train_metrics") or {}
            budget = (f"{tm.get('epochs')} of at most {tr.get('epochs')} epochs, best at {tm.get('best_epoch')}, "
                      f"stopped by {tm.get('stopped_by')}") if tm.get("stopped_by") else f"{tr.get('epochs')} epochs"
            lines.append(f"train {n}   : {tr.get('model')} K={tr.get('K')} {budget}, "
                         f"{tr.get('seconds')}s, {tr.get('mode')}  [{tr['path']}]")
            if tm.get("stopped_by") in ("epochs", "max_time_s", "max_steps"):
                lines.append(f"            (a reduced budget: the {tm['stopped_by']} cap ended training before early "
                             "stopping did; raise the pipeline's `epochs` / train_config for a full run)")
    if d:
        lines += ["", comparison_table(d), "", f"winner: {d['winner']} (by {d['primary']})"]
        for n, cd in d["candidates"].items():
            verdict = "PASSED" if cd["passed"] else "REJECTED"
            failed = [r for r in cd["reasons"] if r.startswith("FAIL")]
            lines.append(f"gate {n}: {verdict}" + (f" -- {'; '.join(failed)}" if failed else ""))
        lines.append(f"report: {c['decision_dir']}/report.html (+ report.md, accuracy_diversity.png)")
    pk = _one(s, "package_candidates")
    if pk:
        if pk.get("status") == "ok":
            for n, m in pk["mars"].items():
                lines.append(f"MAR {n}: {pk['path']}/model-store/{m['mar']} (version {m['version']}, "
                             f"{m['mar_bytes'] / 1e6:.1f} MB)")
            lines.append(f"TorchServe config: {pk.get('config')}")
        else:
            lines.append(f"package: {pk.get('status').upper()} ({pk.get('reason')})")
    ref = _one(s, "build_monitoring_reference")
    if ref:
        lines.append(f"monitoring reference: {ref.get('status').upper()}" +
                     (f" [{ref['path']}]" if ref.get("status") == "ok" else f" ({ref.get('reason')})"))
    dep = _one(s, "deploy")
    if dep:
        if dep.get("status") == "ok":
            arms = ", ".join(f"{a['name']}={a['model']}@{a['weight']:g}" for a in dep["arms"])
            lines.append(f"deploy ({dep['mode']}): {dep['path']}/values-release.yaml  arms: {arms}")
        else:
            lines.append(f"deploy: {dep.get('status').upper()} ({dep.get('reason')})")
    prefix = f"{run_dir}/"  # paths below the run directory are shown relative to it
    lines = lines[:2] + [ln.replace(prefix, "") for ln in lines[2:]]
    missing = [st for st in ("data_ingest", "features_materialize", "build_training_data", "train_candidate",
                             "evaluate_candidate", "gate", "package_candidates", "build_monitoring_reference",
                             "deploy") if st not in s]
    if missing:
        lines.append(f"steps with no record (failed or not run): {', '.join(missing)}")
    return "\n".join(lines)


class _RedirectFds:
    """Send this process's (and its children's) stdout/stderr to a file at the fd level (kfp's local runner
    streams every task's full executor input/output; --quiet keeps that in a log file instead)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        self.f = open(self.path, "ab")
        self.saved = os.dup(1), os.dup(2)
        os.dup2(self.f.fileno(), 1)
        os.dup2(self.f.fileno(), 2)
        return self

    def __exit__(self, *exc):
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        os.close(self.saved[0])
        os.close(self.saved[1])
        self.f.close()
        return False


def run_main(params: dict | None = None, pipeline_root: str | Path = "artifacts/pipeline_root",
             compiled: str | Path | None = None, echo=print, quiet: bool = False) -> dict:
    """The README's main job: run the training pipeline with kfp's local runner, then print the summary.
    quiet: kfp's per-task output goes to <pipeline_root>/last-run.log instead of the terminal.
    -> {"run_dir", "summary", "decision", "wall_s"}."""
    import contextlib
    import sys

    try:
        from pipelines.local import run_local
    except ImportError:  # not installed as a package: use this checkout
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from pipelines.local import run_local
    t0 = time.perf_counter()
    log = Path(pipeline_root) / "last-run.log"
    if quiet:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        echo(f"running the training pipeline with kfp's local runner (task output: {log}) ...")
    with _RedirectFds(log) if quiet else contextlib.nullcontext():
        run_dir = run_local(params, pipeline_root=pipeline_root, compiled=compiled)
    wall = time.perf_counter() - t0
    text = summarize_run(run_dir, wall)
    (Path(run_dir) / "summary.txt").write_text(text + "\n")
    echo(text)
    return {"run_dir": str(run_dir), "summary": text, "decision": collect_run(run_dir)["decision"], "wall_s": wall}
