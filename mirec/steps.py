"""The training pipeline's steps as plain functions: one per kfp component (components/), testable without kfp.

Each step reads its inputs from paths, writes its outputs under the output path(s) it is given (mirec.stepio:
a fresh directory, a `_step.json` record) and returns a small JSON-able dict. The business logic lives in the
other mirec modules; a step only wires them together:

    data_ingest               mirec.data.prepare
    features_materialize      mirec.features.apply + materialize (Feast)
    build_training_data       mirec.features.training_frame (point-in-time join) -> the trainer's examples
    train_candidate           mirec.train.train (in-process, or a Kubeflow TrainJob / PyTorchJob: mirec.launch)
    evaluate_candidate        mirec.evaluate.evaluate
    evaluate_baselines        mirec.models' baselines (+ a trained single-interest model), evaluated likewise
    gate                      mirec.gate (thresholds + champion/challenger vs baselines and the deployed
                              release -> decision + reasons; report: mirec.reports)
    package_candidates        the serving packager (MARs), only for candidates that passed the gate
    build_monitoring_reference mirec.monitoring.reference (served from each packaged MAR with its own settings)
    deploy                    mirec.release (publish the release, Helm values, TorchServe registration)

This module keeps the names the components call (`steps.gate`, `steps.deploy`, ...): the steps that moved to
their own modules are re-exported here. A library piece that is missing makes its step fail with a MirecError
naming it; optional steps (Feast, the monitoring reference) instead write status "skipped" with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from mirec.errors import ConfigError, MirecError
from mirec.gate import DEFAULT_THRESHOLDS, gate, gate_passed, parse_thresholds  # noqa: F401  (re-exported)
from mirec.launch import render_pytorchjob, render_trainjob, submit_job, submit_pytorchjob  # noqa: F401
from mirec.release.deploy import deploy  # noqa: F401
from mirec.reports import (TABLE_METRICS, collect_run, comparison_table, render_html, render_markdown,  # noqa: F401
                           summarize_run, ui_metrics)
from mirec.stepio import (CANDIDATES, DECISION_FILE, STEP_FILE, StepUnavailable, artifact_metadata,  # noqa: F401
                          read_step)
from mirec.stepio import deep_intify as _deep_intify
from mirec.stepio import fresh_dir as _fresh_dir
from mirec.stepio import model_cfg_ints as _model_cfg_ints
from mirec.stepio import num as _num
from mirec.stepio import require as _require
from mirec.stepio import write_step as _write_step

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
    if not raw.get("store_dir") and not os.environ.get("MIREC_FEAST_DIR"):
        # this run's own folder (kfp gives producer and consumer tasks the same artifact path): mirec's metadata,
        # and locally also Feast's registry + SQLite online store; production's stores come from the profile
        raw["store_dir"] = str(out / "store")
        if profile == "local":
            raw.setdefault("source_dir", str(out / "store" / "sources"))
    cfg = FeaturesConfig.model_validate(raw).resolved()
    if "://" not in cfg.store_dir:
        Path(cfg.store_dir).mkdir(parents=True, exist_ok=True)
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
    """The training data: the prepared dataset (catalogue, splits, evaluation users) plus the trainer's examples
    from the Feast offline store: every training example (user, event at position >= 1) is a label row of a
    point-in-time join (mirec.features.training_frame), written as training_examples.parquet, which
    train_candidate trains on (mirec.examples.FrameExamples). A sample of max_labels rows is checked against the
    dataset's own sequences (the Feast history must be exactly the events strictly before the label's second:
    no leakage, nothing lost). Feast skipped: the trainer cuts the dataset's sequences itself."""
    import numpy as np

    from mirec.data import Dataset
    from mirec.examples import EXAMPLES_FILE, LABEL_COLUMNS, ties_within_users, training_labels

    out = _fresh_dir(out_dir)
    src = Path(dataset_dir)
    for f in src.iterdir():  # the dataset travels on as this step's output (catalogue, splits, evaluation users)
        if f.name == STEP_FILE:
            continue
        (shutil.copytree if f.is_dir() else shutil.copy2)(f, out / f.name)
    feat = read_step(features_dir)
    if feat.get("status") != "ok":
        info = {"status": "ok", "feast": "skipped", "examples": "dataset", "reason": f"features step: "
                f"{feat.get('status', 'missing')} ({feat.get('reason', '')})", "labels": 0}
        return _write_step(out, "build_training_data", info)
    from mirec.features import FeaturesConfig, training_frame

    cfg = FeaturesConfig.model_validate_json((Path(features_dir) / "features_config.json").read_text())
    ds = Dataset(src)
    labels = training_labels(ds)
    t0 = time.perf_counter()
    frame = training_frame(labels[LABEL_COLUMNS], cfg)
    # consistency on a sample: the Feast history must be exactly the events strictly before the label's second
    check = frame if len(frame) <= max_labels else frame.sample(n=max_labels, random_state=seed)
    bad = 0
    for row in check.itertuples(index=False):
        seq, ts = ds.sequences[row.user_idx], ds._timestamps[row.user_idx]
        before = seq[ts < row.timestamp][-cfg.seq_len:]
        if not np.array_equal(np.asarray(row.recent_item_idx, np.int64), before):
            bad += 1
    keep = [c for c in (*LABEL_COLUMNS, "recent_item_idx") if c in frame.columns]
    frame[keep].to_parquet(out / EXAMPLES_FILE, index=False)
    info = {"status": "ok", "feast": "ok", "examples": "feast", "labels": int(len(frame)),
            "checked": int(len(check)), "mismatched_histories": bad, "same_second_events": ties_within_users(labels, ds),
            "seq_len": cfg.seq_len, "seconds": round(time.perf_counter() - t0, 2)}
    if bad:
        raise MirecError(f"build_training_data: {bad}/{len(check)} Feast point-in-time histories differ from "
                         f"the dataset's own sequences (leakage or lost events); see {EXAMPLES_FILE}")
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
                    distributed: dict | None = None, train_mode: str = "cpu", job_image: str = "",
                    shared_pvc: str = "") -> dict:
    """Train one candidate; the checkpoint (model.pt + configs + items.parquet) lands in out_dir.
    distributed: {"enabled": true, "kind": "trainjob"|"pytorchjob", "workers": N, ...} (mirec.launch.LaunchConfig)
    runs a Kubeflow TrainJob (or the legacy PyTorchJob) instead of training in this process."""
    mcfg, tcfg = model_and_train_configs(model_config, train_config, k_interests, epochs)
    out = _fresh_dir(out_dir)
    t0 = time.perf_counter()
    if train_mode not in ("cpu", "gpu", "distributed"):
        raise ConfigError(f"train_mode must be cpu, gpu or distributed, not {train_mode!r}")
    dist = _deep_intify(dict(distributed or {}))
    if train_mode == "distributed":  # the pipeline's branch: the job runs the task's image on the run's PVC
        dist = {**dist, "enabled": True, "image": dist.get("image") or job_image,
                "pvc_name": dist.get("pvc_name") or shared_pvc}
    if dist.get("enabled"):
        from mirec.launch import train_distributed

        metrics = train_distributed(dataset_dir, out, name, mcfg, tcfg, dist)
        mode = f"{dist.get('kind', 'trainjob')}({dist.get('workers', 2)} workers)"
    else:
        train = _require("mirec.train", "train", "train_candidate")
        examples = None
        feast_examples = Path(dataset_dir) / "training_examples.parquet"  # build_training_data's Feast frame
        if feast_examples.is_file():
            from mirec.examples import FrameExamples

            examples = FrameExamples.read(feast_examples, mcfg.max_len, seq_len=read_step(dataset_dir).get("seq_len"))
        res = train(dataset_dir, mcfg, tcfg, out, progress=False, examples=examples)
        metrics = dict(res.metrics)
        mode = "in-process" + (", examples from Feast" if examples is not None else "")
    items = Path(dataset_dir) / "items.parquet"
    if items.is_file() and not (out / "items.parquet").exists():
        shutil.copy2(items, out / "items.parquet")
    saved = out / "model_config.json"  # the trained model's config (n_items filled in from the dataset)
    model_cfg = json.loads(saved.read_text()) if saved.is_file() else mcfg.model_dump(mode="json")
    info = {"status": "ok", "candidate": name, "model": mcfg.name, "K": mcfg.K, "dim": mcfg.dim, "mode": mode,
            "epochs": tcfg.epochs, "seconds": round(time.perf_counter() - t0, 2),
            "model_config": model_cfg, "train_metrics": metrics}
    return _write_step(out, "train_candidate", info)



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
            "split": res.get("split"), "split_id": res.get("split_id"), "n_users": res.get("n_users"),
            "metrics": metrics, "tradeoff": tradeoff,
            "seconds": round(time.perf_counter() - t0, 2)}
    return _write_step(out, "evaluate_candidate", info)


# ---- 5b. baselines -----------------------------------------------------------------------------------------
#: the gate's default baselines: popularity and item-kNN (fitted here) and a single-interest model (trained here)
DEFAULT_BASELINES: list = ["popularity", "itemknn", {"name": "single"}]
_SAME_EVAL = ("split", "n_values", "exclude_seen", "max_users", "index_kind")  # what makes two evaluations comparable


def evaluate_baselines(dataset_dir: str | Path, out_dir: str | Path, baselines: list | None = None,
                       eval_config: dict | None = None, train_config: dict | None = None,
                       epochs: int | None = None) -> dict:
    """The gate's baselines, evaluated like the candidates (same dataset, same split and settings of
    eval_config: the champion/challenger rule compares on the same offline split). Each entry is a non-neural
    baseline ("popularity", "itemknn" or {"name": "itemknn", "neighbors": 200, "history_len": 20}: fitted on the
    training users) or a model to train ("single" or {"name": "single", "dim": 32}: a ModelConfig, trained with
    train_config / epochs). out_dir/<name>/ gets each one's evaluation record (as evaluate_candidate writes it);
    out_dir's record lists them with their metrics. An empty list writes status "skipped" (the gate's
    champion/challenger rule then fails: no baseline to beat)."""
    from mirec.models import BASELINES, fit_baseline

    out = _fresh_dir(out_dir)
    entries = DEFAULT_BASELINES if baselines is None else list(baselines)
    if not entries:
        return _write_step(out, "evaluate_baselines", {"status": "skipped", "baselines": {},
                                                       "reason": "no baselines configured"})
    ec = _deep_intify(dict(eval_config or {}))
    same = {k: ec[k] for k in _SAME_EVAL if k in ec}
    if "n_values" in same:
        same["n_values"] = [int(n) for n in same["n_values"]]
    done: dict[str, dict] = {}
    t0 = time.perf_counter()
    for entry in entries:
        spec = {"name": entry} if isinstance(entry, str) else _deep_intify(dict(entry))
        if not spec.get("name"):
            raise ConfigError(f"baseline entry {entry!r}: give a name (popularity, itemknn, or a model such as single)")
        kind = str(spec.pop("name"))
        label = str(spec.pop("label", kind))
        if label in done or label in ("", ".", "..") or "/" in label:
            raise ConfigError(f"baseline label {label!r} repeated or not a folder name (set 'label')")
        if kind in BASELINES:
            from mirec.data import Dataset

            evaluate = _require("mirec.evaluate", "evaluate", "evaluate_baselines")
            ds = Dataset(dataset_dir)
            fitted = fit_baseline(kind, ds.train_sequences(), ds.n_items, **spec)
            ev = {**same, "n_values": tuple(same.get("n_values", (20, 50)))}
            res = evaluate(fitted, ds, out_dir=out / label, name=label, **ev)
            info = {"status": "ok", "candidate": label, "model": kind, "split": res.get("split"),
                    "split_id": res.get("split_id"), "n_users": res.get("n_users"),
                    "metrics": {k: v for k, v in res["metrics"].items() if _num(v) is not None}, "params": spec}
            _write_step(out / label, "evaluate_candidate", info)
        else:  # a model trained on the same training data (single-interest: K = 1 by construction)
            model_dir = out / "_models" / label
            train_candidate(dataset_dir, model_dir, label, {"name": kind, **spec}, train_config, epochs=epochs)
            info = evaluate_candidate(dataset_dir, model_dir, out / label, label, same)
        done[label] = {"dir": label, "model": kind, "split_id": info.get("split_id"),
                       "metrics": info["metrics"]}
    return _write_step(out, "evaluate_baselines", {"status": "ok", "baselines": done,
                                                   "eval": same, "seconds": round(time.perf_counter() - t0, 2)})


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


