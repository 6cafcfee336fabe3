"""`prepare`: raw source -> validated, id-mapped, split, Parquet dataset directory (+ quarantine + summary)."""

from __future__ import annotations

import json
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from mirec.config import DataConfig
from mirec.data import schema as S
from mirec.data.loaders import load_raw
from mirec.data.split import assign_temporal_splits, assign_user_splits, temporal_cutoff
from mirec.data.synth import generate
from mirec.data.validate import ValidationReport, validate


def _build_items(kept: pd.DataFrame, raw_items: pd.DataFrame | None) -> tuple[pd.DataFrame, int]:
    """Item table for the kept items, contiguous item_idx in `ordered_ids` order."""
    ids = S.ordered_ids(kept["item_id"].cat.categories)
    items = pd.DataFrame({"item_idx": np.arange(len(ids), dtype=np.int64), "item_id": ids})
    missing = 0
    if raw_items is not None:
        meta = raw_items.dropna(subset=["item_id"]).copy()
        meta["item_id"] = meta["item_id"].astype(str).str.strip()
        meta = meta.drop_duplicates("item_id")
        items = items.merge(meta[["item_id", "category", "categories"]], on="item_id", how="left")
        missing = int(items["category"].isna().sum())
    else:
        items["category"] = None
        items["categories"] = None
    items["category"] = items["category"].fillna(S.UNKNOWN_CATEGORY).astype(str)
    items["categories"] = items["categories"].fillna(items["category"]).astype(str)
    cats = sorted(items["category"].unique())
    items["category_idx"] = items["category"].map({c: i for i, c in enumerate(cats)}).astype(np.int64)
    return items, missing


def _write_interactions(inter: pd.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray, path: Path) -> None:
    """interactions.parquet with the external ids as plain string columns (CONTRACTS.md), built in
    Arrow from the indices (dictionary decode in C++, no per-row Python strings)."""
    def ids(idx: np.ndarray, labels: np.ndarray) -> pa.Array:
        d = pa.DictionaryArray.from_arrays(pa.array(idx, pa.int64()), pa.array(labels.astype(str), pa.string()))
        return d.cast(pa.string())

    ts = inter["timestamp"].to_numpy(np.int64)
    table = pa.table({
        "user_idx": pa.array(inter["user_idx"].to_numpy(np.int64)),
        "item_idx": pa.array(inter["item_idx"].to_numpy(np.int64)),
        "timestamp": pa.array(ts),
        "weight": pa.array(inter["weight"].to_numpy(np.float32)),
        "user_id": ids(inter["user_idx"].to_numpy(np.int64), user_ids),
        "item_id": ids(inter["item_idx"].to_numpy(np.int64), item_ids),
        "event_ts": pa.array(ts * 1_000_000, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
    })
    pq.write_table(table, path)


STAGES = ["load", "validate", "map ids", "split", "write"]


def prepare(cfg: DataConfig, progress: bool = True) -> tuple[Path, ValidationReport]:
    """Run the data layer end to end; -> (output dir, validation report).

    Writes the directory described in docs/CONTRACTS.md. Sequence order: (user_idx, timestamp,
    item_idx) -- events of one user in the same second are ordered by item_idx, i.e. by the
    external item id (numerically when all ids are integers), a stable and documented tie-break."""
    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    bar = tqdm(total=len(STAGES), desc="prepare", unit="step", disable=None if progress else True, leave=False)

    def stage(i: int) -> None:
        bar.set_postfix_str(STAGES[i])
        if i:
            bar.update()

    stage(0)
    truth = item_vec = None
    if cfg.source.format == "synthetic":
        raw, raw_items, truth, item_vec = generate(cfg.synth, progress=progress)
        source = f"synthetic(seed={cfg.synth.seed}, users={cfg.synth.n_users}, items={cfg.synth.n_items})"
    else:
        raw, raw_items = load_raw(cfg.source)
        source = f"{cfg.source.format}:{cfg.source.path}"

    stage(1)
    kept, quarantine, rep = validate(raw, min_user_count=cfg.min_user_count, min_item_count=cfg.min_item_count,
                                     timestamp_format=cfg.source.timestamp_format)
    del raw
    stage(2)
    items, rep.items_without_metadata = _build_items(kept, raw_items)
    ucat, icat = kept["user_id"].cat, kept["item_id"].cat
    user_ids = S.ordered_ids(ucat.categories)
    users = pd.DataFrame({"user_idx": np.arange(len(user_ids), dtype=np.int64), "user_id": user_ids})
    # category code -> index, computed on the distinct ids only
    uidx = pd.Index(user_ids).get_indexer(ucat.categories).astype(np.int64)[ucat.codes.to_numpy()]
    iidx = pd.Index(items["item_id"]).get_indexer(icat.categories).astype(np.int64)[icat.codes.to_numpy()]
    ts = kept["timestamp"].to_numpy(np.int64)
    # Stable tie-break: events in the same second are ordered by item_idx (documented in CONTRACTS.md).
    order = np.lexsort((iidx, ts, uidx))
    uidx, iidx, ts = uidx[order], iidx[order], ts[order]
    inter = pd.DataFrame({
        "user_idx": uidx, "item_idx": iidx, "timestamp": ts,
        "weight": kept["weight"].to_numpy(np.float32)[order],
    })
    del kept

    stage(3)
    cutoff = None
    if cfg.split.kind == "comirec":
        users["split"] = assign_user_splits(len(users), cfg.split)
        train_mask = (users["split"].to_numpy() == "train")[inter["user_idx"].to_numpy()]
    else:
        cutoff = temporal_cutoff(inter, cfg.split)
        users["split"] = assign_temporal_splits(inter, len(users), cutoff, cfg.split)
        train_mask = (inter["timestamp"] < cutoff).to_numpy()
    pop = np.bincount(inter["item_idx"].to_numpy()[train_mask], minlength=len(items))
    items["popularity"] = pop.astype(np.int64)

    stage(4)
    out.mkdir(parents=True, exist_ok=True)
    _write_interactions(inter, users["user_id"].to_numpy(), items["item_id"].to_numpy(), out / S.INTERACTIONS)
    items.to_parquet(out / S.ITEMS, index=False)
    users.to_parquet(out / S.USERS, index=False)
    quarantine.to_parquet(out / S.QUARANTINE, index=False)
    if (out / S.TRUTH).exists():  # never leave another dataset's ground truth behind
        shutil.rmtree(out / S.TRUTH)
    if truth is not None and item_vec is not None and raw_items is not None:
        (out / S.TRUTH).mkdir()
        truth = truth[truth["user_id"].isin(set(user_ids))]
        truth = truth.merge(users[["user_id", "user_idx"]], on="user_id")
        cat_map = dict(zip(items["category"], items["category_idx"]))
        truth["category_idx"] = truth["category"].map(cat_map).fillna(-1).astype(np.int64)
        truth["interest_id"] = truth["category_idx"]
        truth.to_parquet(out / S.TRUTH / "user_interests.parquet", index=False)
        # Planted item geometry, row = item_idx of this dataset (kept items only).
        pos = pd.Index(raw_items["item_id"]).get_indexer(items["item_id"])
        np.save(out / S.TRUTH / "item_vectors.npy", item_vec[pos])
    split_counts = {k: int(v) for k, v in users["split"].value_counts().items()}
    summary = {**rep.as_dict(), "n_users": len(users), "n_items": len(items), "n_interactions": len(inter),
               "n_categories": int(items["category_idx"].max()) + 1, "splits": split_counts,
               "source": source, "quarantine_file": S.QUARANTINE, "seconds": round(time.perf_counter() - t0, 2)}
    (out / S.SUMMARY).write_text(json.dumps(summary, indent=2, default=int))
    meta = {"name": cfg.name, "source": source, "n_users": len(users), "n_items": len(items),
            "n_categories": summary["n_categories"], "split": cfg.split.kind, "split_seed": cfg.split.seed,
            "input_frac": cfg.split.input_frac, "temporal_cutoff": cutoff,
            "tie_break": "timestamp, then item_idx (external item id order)",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": cfg.model_dump(mode="json")}
    (out / S.META).write_text(json.dumps(meta, indent=2))
    bar.update()
    bar.close()
    return out, rep
