"""`prepare`: raw source -> validated, id-mapped, split, Parquet dataset directory (+ quarantine + summary)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from mirec.config import DataConfig
from mirec.data import schema as S
from mirec.data.loaders import load_raw
from mirec.data.split import assign_temporal_splits, assign_user_splits, temporal_cutoff
from mirec.data.synth import generate
from mirec.data.validate import ValidationReport, validate


def _build_items(kept: pd.DataFrame, raw_items: pd.DataFrame | None) -> tuple[pd.DataFrame, int]:
    """Item table for the kept items, contiguous item_idx in sorted external-id order."""
    ids = np.sort(kept["item_id"].unique())
    items = pd.DataFrame({"item_idx": np.arange(len(ids), dtype=np.int64), "item_id": ids})
    missing = 0
    if raw_items is not None:
        meta = raw_items.dropna(subset=["item_id"]).astype({"item_id": str}).drop_duplicates("item_id")
        items = items.merge(meta[["item_id", "category", "categories"]], on="item_id", how="left")
        missing = int(items["category"].isna().sum())
    else:
        items["category"] = None
        items["categories"] = None
    items["category"] = items["category"].fillna(S.UNKNOWN_CATEGORY).astype(str)
    items["categories"] = items["categories"].fillna(items["category"]).astype(str)
    cats = sorted(items["category"].unique())
    items["category_idx"] = items["category"].map({c: i for i, c in enumerate(cats)}).astype(np.int64)
    return items, (missing if raw_items is not None else 0)


def prepare(cfg: DataConfig, progress: bool = True) -> tuple[Path, ValidationReport]:
    """Run the data layer end to end; -> (output dir, validation report)."""
    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    truth = None
    if cfg.source.format == "synthetic":
        raw, raw_items, truth, _ = generate(cfg.synth, progress=progress)
        source = f"synthetic(seed={cfg.synth.seed}, users={cfg.synth.n_users}, items={cfg.synth.n_items})"
    else:
        raw, raw_items = load_raw(cfg.source)
        source = f"{cfg.source.format}:{cfg.source.path}"

    kept, quarantine, rep = validate(raw, min_user_count=cfg.min_user_count, min_item_count=cfg.min_item_count,
                                     timestamp_format=cfg.source.timestamp_format)
    items, rep.items_without_metadata = _build_items(kept, raw_items)
    user_ids = np.sort(kept["user_id"].unique())
    users = pd.DataFrame({"user_idx": np.arange(len(user_ids), dtype=np.int64), "user_id": user_ids})

    inter = kept.merge(users, on="user_id").merge(items[["item_id", "item_idx"]], on="item_id")
    # Stable tie-break: events in the same second are ordered by item_idx (documented in CONTRACTS.md).
    inter = inter.sort_values(["user_idx", "timestamp", "item_idx"], kind="mergesort").reset_index(drop=True)
    inter["event_ts"] = pd.to_datetime(inter["timestamp"], unit="s", utc=True)
    inter = inter[["user_idx", "item_idx", "timestamp", "weight", "user_id", "item_id", "event_ts"]]

    cutoff = None
    if cfg.split.kind == "comirec":
        users["split"] = assign_user_splits(len(users), cfg.split)
        train_mask = inter["user_idx"].map(users.set_index("user_idx")["split"]).eq("train").to_numpy()
    else:
        cutoff = temporal_cutoff(inter, cfg.split)
        users["split"] = assign_temporal_splits(inter, len(users), cutoff, cfg.split)
        train_mask = (inter["timestamp"] < cutoff).to_numpy()
    pop = np.bincount(inter["item_idx"].to_numpy()[train_mask], minlength=len(items))
    items["popularity"] = pop.astype(np.int64)

    inter.to_parquet(out / S.INTERACTIONS, index=False)
    items.to_parquet(out / S.ITEMS, index=False)
    users.to_parquet(out / S.USERS, index=False)
    quarantine.to_parquet(out / S.QUARANTINE, index=False)
    if truth is not None:
        (out / S.TRUTH).mkdir(exist_ok=True)
        truth = truth[truth["user_id"].isin(set(user_ids))]
        truth = truth.merge(users[["user_id", "user_idx"]], on="user_id")
        cat_map = dict(zip(items["category"], items["category_idx"]))
        truth["category_idx"] = truth["category"].map(cat_map).fillna(-1).astype(np.int64)
        truth.to_parquet(out / S.TRUTH / "user_interests.parquet", index=False)
    split_counts = users["split"].value_counts().to_dict()
    summary = {**rep.as_dict(), "n_users": len(users), "n_items": len(items),
               "n_categories": int(items["category_idx"].max()) + 1, "splits": split_counts,
               "quarantine_file": S.QUARANTINE, "seconds": round(time.perf_counter() - t0, 2)}
    (out / S.SUMMARY).write_text(json.dumps(summary, indent=2, default=int))
    meta = {"name": cfg.name, "source": source, "n_users": len(users), "n_items": len(items),
            "n_categories": summary["n_categories"], "split": cfg.split.kind, "split_seed": cfg.split.seed,
            "input_frac": cfg.split.input_frac, "temporal_cutoff": cutoff,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": cfg.model_dump(mode="json")}
    (out / S.META).write_text(json.dumps(meta, indent=2))
    return out, rep
