"""Feature store operations behind `mirec features`: apply, materialize, point-in-time training data, lookup.

Everything takes a `FeaturesConfig` (see mirec.features.config); the Feast objects are declared in
`<repo>/definitions.py` and the tables behind them are written by `mirec.features.tables`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from mirec.errors import ConfigError, DataError, MirecError
from mirec.features.config import FeaturesConfig, render_store_yaml
from mirec.features.tables import build_tables

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
META_FILE = "mirec_features.json"
ONE_US = pd.Timedelta(microseconds=1)


def repo_config(cfg: FeaturesConfig):
    """The Feast RepoConfig of the profile, validated (store types resolved); ConfigError otherwise."""
    from feast.repo_config import RepoConfig

    c = cfg.resolved()
    raw = render_store_yaml(c)
    where = f"{c.yaml_path} (profile {c.profile!r})"
    try:
        rc = RepoConfig(**raw)
        rc.repo_path = Path(c.repo_path)
        # these resolve the store classes: a wrong `type:` fails here, not in the middle of a request
        _ = rc.online_store, rc.offline_store, rc.registry
    except Exception as exc:  # pydantic ValidationError, FeastConfigError, import errors of a store class
        msg = " ".join(str(exc).split())[:400]
        if "Could not import module" in msg:
            msg += " (is the store's extra installed? e.g. pip install 'feast[redis]' for the production profile)"
        raise ConfigError(f"invalid feature store config {where}: {msg}") from None
    return rc


def open_store(cfg: FeaturesConfig | None = None):
    """A feast.FeatureStore for the configured repo and profile (ConfigError on a bad configuration)."""
    from feast import FeatureStore

    cfg = (cfg or FeaturesConfig()).resolved()
    rc = repo_config(cfg)
    if cfg.profile == "local" and "://" not in cfg.store_dir:
        Path(cfg.store_dir).mkdir(parents=True, exist_ok=True)
    try:
        return FeatureStore(repo_path=cfg.repo_path, config=rc)
    except MirecError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot open feature store {cfg.yaml_path}: {exc}") from None


def _definitions(repo_path: str):
    path = Path(repo_path) / "definitions.py"
    if not path.is_file():
        raise ConfigError(f"feature repo {repo_path} has no definitions.py")
    spec = importlib.util.spec_from_file_location("_mirec_feature_definitions", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def read_meta(cfg: FeaturesConfig) -> dict:
    c = cfg.resolved()
    p = Path(c.store_dir) / META_FILE
    return json.loads(p.read_text()) if p.is_file() else {}


def _write_tables(data_dir: str | Path, c: FeaturesConfig) -> dict[str, int]:
    if "://" not in c.source_dir:
        return build_tables(data_dir, c.source_dir, c.seq_len, c.pop_window_days)
    # object store: build locally, then copy with pyarrow's filesystem layer (s3://, gs://, ...)
    import tempfile

    import pyarrow.fs as pafs

    with tempfile.TemporaryDirectory() as tmp:
        counts = build_tables(data_dir, tmp, c.seq_len, c.pop_window_days)
        pafs.copy_files(tmp, c.source_dir)
    return counts


def apply(data_dir: str | Path, cfg: FeaturesConfig | None = None, log: Callable[[str], None] = print) -> dict:
    """Build the derived sources from a prepared dataset, then register the definitions in the registry."""
    c = (cfg or FeaturesConfig()).resolved()
    store = open_store(c)  # config problems surface before any work
    t0 = time.perf_counter()
    counts = _write_tables(data_dir, c)
    log(f"sources written to {c.source_dir}: {counts['user_history']:,} user snapshots "
        f"({counts['users']:,} users, L={c.seq_len}), {counts['item_stats']:,} item rows "
        f"(W={c.pop_window_days}d) from {counts['interactions']:,} interactions in {time.perf_counter() - t0:.1f}s")
    objs = _definitions(c.repo_path).build(c.source_dir)
    t1 = time.perf_counter()
    try:
        store.apply(objs)
    except Exception as exc:
        raise ConfigError(f"feast apply failed for {c.yaml_path}: {exc}") from None
    log(f"applied {len(objs)} objects to the registry of profile {c.profile!r} in {time.perf_counter() - t1:.1f}s")
    meta = {"data_dir": str(Path(data_dir).resolve()), "source_dir": c.source_dir, "seq_len": c.seq_len,
            "pop_window_days": c.pop_window_days, "profile": c.profile, "counts": counts,
            "applied_at": datetime.now(timezone.utc).isoformat()}
    if "://" not in c.store_dir:
        (Path(c.store_dir) / META_FILE).write_text(json.dumps(meta, indent=2))
    return meta


@dataclass
class MaterializeReport:
    view: str
    start: str
    end: str
    rows: int  # source rows inside [start, end]
    entities: int  # rows written to the online store (latest row per entity)
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")

    def as_dict(self) -> dict:
        return {**asdict(self), "rows_per_s": round(self.rows_per_s, 1)}


def _window_counts(path: str, key: str, start: datetime, end: datetime) -> tuple[int, int]:
    import duckdb

    con = duckdb.connect()
    try:
        con.execute("SET TimeZone='UTC'")
        q = (f"SELECT count(*), count(DISTINCT {key}) FROM read_parquet(?) "
             "WHERE event_ts >= ?::TIMESTAMPTZ AND event_ts <= ?::TIMESTAMPTZ")
        n, k = con.execute(q, [path, start.isoformat(), end.isoformat()]).fetchone()
        return int(n), int(k)
    except Exception as exc:
        raise DataError(f"feature source {path} is not readable: {' '.join(str(exc).split())[:300]}") from None
    finally:
        con.close()


def materialize(cfg: FeaturesConfig | None = None, start: datetime | None = None, end: datetime | None = None,
                incremental: bool = False, views: list[str] | None = None,
                log: Callable[[str], None] = print, quiet_feast: bool = True) -> list[MaterializeReport]:
    """Load feature rows into the online store.

    By window: rows with start <= event_ts <= end (start default: 1970, end default: now).
    Incremental: from each view's last materialized end (or from 1970 the first time -- Feast would start
    at now - 1 year for ttl-0 views) to `end`. Returns one report per view (rows read, entities written).
    """
    c = (cfg or FeaturesConfig()).resolved()
    fs = open_store(c)
    end = _utc(end) or datetime.now(timezone.utc)
    try:
        all_views = {v.name: v for v in fs.list_feature_views()}
    except Exception as exc:
        raise ConfigError(f"cannot read the registry of {c.yaml_path}: {exc}") from None
    if not all_views:
        raise ConfigError(f"no feature views in the registry of {c.yaml_path} (store dir {c.store_dir}): "
                          "run `mirec features apply` first")
    names = views or sorted(all_views)
    unknown = [v for v in names if v not in all_views]
    if unknown:
        raise ConfigError(f"unknown feature view(s) {unknown}; registered: {sorted(all_views)}")
    reports = []
    for i, name in enumerate(names, 1):
        fv = all_views[name]
        if incremental:
            s = _utc(fv.most_recent_end_time) or EPOCH
        else:
            s = _utc(start) or EPOCH
        if s > end:
            raise ConfigError(f"materialize window is empty: start {s} is after end {end}")
        src = getattr(fv.batch_source, "path", None) or fv.batch_source.name
        key = fv.entity_columns[0].name if fv.entity_columns else fv.join_keys[0]
        # row counts come from the Parquet source (a warehouse source reports -1: unknown)
        n_rows, n_ent = _window_counts(src, key, s, end) if getattr(fv.batch_source, "path", None) else (-1, -1)
        log(f"[{i}/{len(names)}] {name}: {s:%Y-%m-%d %H:%M:%S} -> {end:%Y-%m-%d %H:%M:%S} UTC, "
            f"{n_rows:,} source rows, {n_ent:,} entities ...")
        t0 = time.perf_counter()
        try:
            with _quiet(quiet_feast):
                fs.materialize(start_date=s, end_date=end, feature_views=[name])
        except MirecError:
            raise
        except Exception as exc:
            raise DataError(f"materializing {name} from {src} failed: {' '.join(str(exc).split())[:300]}") from None
        rep = MaterializeReport(name, s.isoformat(), end.isoformat(), n_rows, n_ent, time.perf_counter() - t0)
        log(f"[{i}/{len(names)}] {name}: wrote {n_ent:,} entities in {rep.seconds:.1f}s "
            f"({rep.rows_per_s:,.0f} source rows/s)")
        reports.append(rep)
    return reports


class _quiet:
    """Silence Feast's tqdm bars and colour prints (stdout/stderr) during a call."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        if self.on:
            import io

            self._saved = sys.stdout, sys.stderr
            sys.stdout = sys.stderr = io.StringIO()
        return self

    def __exit__(self, *exc):
        if self.on:
            sys.stdout, sys.stderr = self._saved
        return False


def _utc(ts) -> datetime | None:
    if ts is None:
        return None
    ts = pd.Timestamp(ts)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.to_pydatetime()


def training_frame(labels: pd.DataFrame, cfg: FeaturesConfig | None = None, store=None,
                   service: str = "mirec_training") -> pd.DataFrame:
    """Point-in-time-correct training rows: each label (user_id, event_ts) gets the user's sequence as of
    just before event_ts (the snapshot <= event_ts - 1 us), so the label's own event is never a feature.

    `labels` needs `user_id` and a time column: `event_ts` (datetime) or `timestamp` (unix s). Extra columns
    are kept. The result has the labels' order and index; a lost or duplicated row raises DataError.
    Users with no history before the label get empty lists and seq_len 0.
    """
    if "user_id" not in labels.columns:
        raise DataError(f"training labels need a user_id column; have {list(labels.columns)}")
    if "event_ts" in labels.columns:
        ts = pd.to_datetime(labels["event_ts"], utc=True)
    elif "timestamp" in labels.columns:
        ts = pd.to_datetime(labels["timestamp"], unit="s", utc=True)
    else:
        raise DataError("training labels need an event_ts (datetime) or timestamp (unix s) column")
    if ts.isna().any():
        raise DataError(f"{int(ts.isna().sum())} training label(s) have no timestamp")
    fs = store or open_store(cfg)
    entity_df = pd.DataFrame({
        "user_id": labels["user_id"].astype(str).to_numpy(),
        "event_timestamp": (ts - ONE_US).astype("datetime64[us, UTC]").to_numpy(),
        "_row_id": np.arange(len(labels), dtype=np.int64),
    })
    try:
        feature_service = fs.get_feature_service(service)
        with _quiet(True):
            out = fs.get_historical_features(entity_df=entity_df, features=feature_service).to_df()
    except MirecError:
        raise
    except Exception as exc:
        raise DataError(f"get_historical_features failed: {' '.join(str(exc).split())[:300]}") from None
    got = out["_row_id"].to_numpy()
    if len(out) != len(labels) or len(np.unique(got)) != len(labels):
        lost = len(labels) - len(np.unique(got))
        raise DataError(f"point-in-time join returned {len(out)} rows for {len(labels)} labels "
                        f"({lost} lost, {len(out) - len(np.unique(got))} duplicated)")
    out = out.sort_values("_row_id").reset_index(drop=True)
    feats = [c for c in out.columns if c not in ("user_id", "event_timestamp", "_row_id")]
    result = labels.copy()
    for col in feats:
        vals = out[col].to_numpy()
        if col.startswith("recent_"):
            vals = [list(v) if v is not None and not (isinstance(v, float) and np.isnan(v)) else [] for v in vals]
        elif col in ("seq_len", "n_events"):
            vals = pd.Series(vals).fillna(0).astype(np.int64).to_numpy()
        result[col] = vals
    return result


def lookup(user_ids: list[str], cfg: FeaturesConfig | None = None, store=None,
           service: str = "mirec_serving") -> pd.DataFrame:
    """Online features of a batch of users (one row per requested id, in order; unknown users: empty)."""
    fs = store or open_store(cfg)
    try:
        resp = fs.get_online_features(features=fs.get_feature_service(service),
                                      entity_rows=[{"user_id": str(u)} for u in user_ids]).to_dict()
    except Exception as exc:
        raise DataError(f"online lookup failed: {' '.join(str(exc).split())[:300]}") from None
    df = pd.DataFrame(resp)
    for col in df.columns:
        if col.startswith("recent_"):
            df[col] = [list(v) if v is not None else [] for v in df[col]]
    if "seq_len" in df:
        df["seq_len"] = df["seq_len"].fillna(0).astype(np.int64)
    return df


logging.getLogger("feast").setLevel(logging.WARNING)
