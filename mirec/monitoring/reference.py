"""The monitoring reference (REF_DIR), produced at evaluation time.

```
REF_DIR/
  served.jsonl     ServedLog records of the test users' served lists (same schema as the live log)
  items.parquet    item_id, category of the catalogue (coverage denominator, category lookup)
  summary.json     counts, models, catalogue size and the window measures of the reference
```
`build_reference(records, out_dir, item_meta)` writes it; `records_from_evaluation(...)` turns the
evaluation's per-user served lists into ServedLog records; `load_reference(dir)` reads it back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
from pydantic import ValidationError

from mirec.errors import DataError
from mirec.monitoring import measures as M
from mirec.serving.schema import ServedLog


def _item_table(item_meta: Any) -> pd.DataFrame | None:
    """item_meta: DataFrame (item_id[, item_idx], category), list of dicts, or {item_id: category}."""
    if item_meta is None:
        return None
    if isinstance(item_meta, Mapping):
        df = pd.DataFrame({"item_id": list(item_meta.keys()), "category": list(item_meta.values())})
    elif isinstance(item_meta, pd.DataFrame):
        df = item_meta.copy()
    else:
        df = pd.DataFrame(list(item_meta))
    if "item_id" not in df.columns:
        raise DataError("item_meta needs an item_id column")
    if "category" not in df.columns:
        df["category"] = None
    df["item_id"] = df["item_id"].astype(str)
    df["category"] = df["category"].astype(object).where(df["category"].notna(), None)
    keep = ["item_idx", "item_id", "category"] if "item_idx" in df.columns else ["item_id", "category"]
    return df[keep].drop_duplicates("item_id").reset_index(drop=True)


def _get(obj: Any, *names: str, default=None):
    for n in names:
        if isinstance(obj, Mapping) and n in obj:
            return obj[n]
        if hasattr(obj, n):
            return getattr(obj, n)
    return default


def records_from_evaluation(served: Iterable[Any], item_meta: Any = None, *, model: str = "reference",
                            version: str = "eval", arm: str | None = None, n: int | None = None,
                            ts: datetime | None = None) -> list[dict]:
    """Per-user served lists from offline evaluation -> ServedLog dicts.

    Each element (dict or object) may hold: `user`/`user_id`/`user_idx`; `items` (item ids, or
    item_idx ints resolved through item_meta's item_idx column, or dicts/Recommendation-like with
    item_idx|item_id, score, interest); `scores`, `interests` (parallel lists, optional);
    `interest_stats` dict or `mean_pairwise_cos`, `interest_norms`, `k`; `history` (item ids/idx) or
    `history_categories` ({category: count}); `history_len`.
    """
    table = _item_table(item_meta)
    by_idx: dict[int, tuple[str, str | None]] = {}
    by_id: dict[str, str | None] = {}
    if table is not None:
        by_id = dict(zip(table["item_id"], table["category"]))
        if "item_idx" in table.columns:
            by_idx = {int(i): (iid, c) for i, iid, c in zip(table["item_idx"], table["item_id"], table["category"])}
    ts = ts or datetime.now(timezone.utc)

    def resolve(x) -> tuple[str, str | None]:
        if isinstance(x, (int, np.integer)) and by_idx:
            if int(x) not in by_idx:
                raise DataError(f"item_idx {x} not in item_meta")
            return by_idx[int(x)]
        return str(x), by_id.get(str(x))

    out = []
    for j, u in enumerate(served):
        user = _get(u, "user_id", "user", "user_idx")
        raw = list(_get(u, "items", default=[]) or [])
        scores = list(_get(u, "scores", default=[]) or [])
        interests = list(_get(u, "interests_per_item", "item_interests", "interests", default=[]) or [])
        items = []
        for i, it in enumerate(raw):
            if isinstance(it, (int, np.integer, str)):
                iid, cat = resolve(it)
                sc = scores[i] if i < len(scores) else 0.0
                k = interests[i] if i < len(interests) and np.ndim(interests[i]) == 0 else 0
            else:
                key = _get(it, "item_idx")
                iid, cat = resolve(int(key)) if key is not None and by_idx else resolve(_get(it, "item_id", "item_idx"))
                sc, k = _get(it, "score", default=0.0), _get(it, "interest", default=0)
                cat = _get(it, "category") or cat
            items.append({"item_id": iid, "score": float(sc), "interest": int(k), "category": cat})
        stats = _get(u, "interest_stats")
        vecs = _get(u, "interest_vectors")
        if stats is None and vecs is not None and np.ndim(vecs) == 2:  # [K, d] interest vectors given
            v = np.asarray(vecs, dtype=float)
            norms = np.linalg.norm(v, axis=1)
            unit = v / np.maximum(norms[:, None], 1e-12)
            iu = np.triu_indices(len(v), 1)
            stats = {"k": int(len(v)), "mean_pairwise_cos": float((unit @ unit.T)[iu].mean()) if len(v) > 1 else None,
                     "interest_norms": [float(x) for x in norms]}
        if stats is None:
            norms = _get(u, "interest_norms", default=[]) or []
            stats = {"k": int(_get(u, "k", default=len(norms)) or 0),
                     "mean_pairwise_cos": _get(u, "mean_pairwise_cos"),
                     "interest_norms": [float(x) for x in norms]}
        hist_cats = _get(u, "history_categories")
        history = _get(u, "history")
        if hist_cats is None and history is not None:
            hist_cats = {}
            for h in list(history):
                c = resolve(h)[1]
                if c is not None:
                    hist_cats[c] = hist_cats.get(c, 0) + 1
        hlen = _get(u, "history_len", default=None)
        if hlen is None:
            hlen = len(history) if history is not None else sum((hist_cats or {}).values())
        rec = {"ts": ts.isoformat(), "request_id": f"ref-{j}", "user_id": None if user is None else str(user),
               "arm": arm, "model": model, "version": version, "n": int(n or len(items) or 1),
               "history_len": int(hlen), "history_source": "request", "items": items,
               "interest_stats": dict(stats), "history_categories": dict(hist_cats or {})}
        try:
            out.append(ServedLog.model_validate(rec).model_dump(mode="json"))
        except ValidationError as exc:
            raise DataError(f"evaluation record {j} does not make a ServedLog: {exc.errors()[0]['msg']}") from None
    return out


def build_reference(served_records: Iterable[Any], out_dir: str | Path, item_meta: Any = None) -> Path:
    """Write REF_DIR from ServedLog-like records (dicts or ServedLog) and the item table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    recs = []
    for i, r in enumerate(served_records):
        try:
            recs.append(ServedLog.model_validate(r.model_dump() if hasattr(r, "model_dump") else r).model_dump(mode="json"))
        except ValidationError as exc:
            raise DataError(f"reference record {i} is not a ServedLog: {exc.errors()[0]['msg']}") from None
    if not recs:
        raise DataError("no reference records: the reference needs the served lists of the test users")
    with (out / "served.jsonl").open("w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    table = _item_table(item_meta)
    if table is None:  # catalogue unknown: the items seen in the reference stand in (coverage is then an upper bound)
        seen = {}
        for r in recs:
            for it in r["items"]:
                seen.setdefault(it["item_id"], it.get("category"))
        table = pd.DataFrame({"item_id": list(seen), "category": list(seen.values())})
    table.to_parquet(out / "items.parquet", index=False)
    item_cat = {k: v for k, v in zip(table["item_id"], table["category"]) if v is not None}
    frame = M.build_frame(recs, item_cat)
    summary = {"created": datetime.now(timezone.utc).isoformat(), "n_records": len(recs),
               "catalogue_size": int(len(table)), "catalogue_from_item_meta": item_meta is not None,
               "models": sorted({r["model"] for r in recs}),
               "measures": _jsonable(M.summarise(frame, len(table))),
               "per_model": {m: _jsonable(M.summarise(frame[frame["model"] == m], len(table)))
                             for m in sorted({r["model"] for r in recs})}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return out


def _jsonable(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in d.items()}


@dataclass
class Reference:
    path: Path
    records: list[dict]
    items: pd.DataFrame
    summary: dict

    @property
    def catalogue_size(self) -> int:
        return int(len(self.items))

    @property
    def item_category(self) -> dict[str, str]:
        return {k: v for k, v in zip(self.items["item_id"], self.items["category"]) if v is not None}

    def frame(self, strong_share: float = 0.2, min_delivery_ratio: float = 0.25) -> pd.DataFrame:
        key = (strong_share, min_delivery_ratio)
        cache = self.__dict__.setdefault("_frames", {})
        if key not in cache:
            cache[key] = M.build_frame(self.records, self.item_category, strong_share=strong_share,
                                       min_delivery_ratio=min_delivery_ratio)
        return cache[key]


    def model_frame(self, model: str, strong_share: float = 0.2, min_delivery_ratio: float = 0.25) -> tuple[pd.DataFrame, bool]:
        """-> (the reference rows of `model`, True) when the reference holds that model, else (all rows, False)."""
        full = self.frame(strong_share, min_delivery_ratio)
        cache = self.__dict__.setdefault("_model_frames", {})
        key = (model, strong_share, min_delivery_ratio)
        if key not in cache:
            mask = full["model"] == model
            cache[key] = (full[mask], True) if mask.any() else (full, False)
        return cache[key]


def load_reference(ref_dir: str | Path) -> Reference:
    p = Path(ref_dir)
    for name in ("served.jsonl", "items.parquet"):
        if not (p / name).is_file():
            raise DataError(f"not a monitoring reference: {p / name} missing (make one with mirec.monitoring.build_reference)")
    recs = []
    with (p / "served.jsonl").open() as f:
        for i, line in enumerate(f):
            if line.strip():
                try:
                    recs.append(ServedLog.model_validate_json(line).model_dump(mode="json"))
                except (ValidationError, ValueError):
                    raise DataError(f"{p / 'served.jsonl'} line {i + 1} is not a ServedLog record") from None
    if not recs:
        raise DataError(f"{p / 'served.jsonl'} holds no records")
    summary = json.loads((p / "summary.json").read_text()) if (p / "summary.json").is_file() else {}
    items = pd.read_parquet(p / "items.parquet")
    items["item_id"] = items["item_id"].astype(str)
    return Reference(p, recs, items, summary)
