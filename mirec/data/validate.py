"""Validation: every rejected row goes to quarantine with its reason; nothing is dropped silently.

Rules, applied in this order (a row is quarantined for the first rule it breaks):
  null_user_id, null_item_id  - missing/blank id
  bad_timestamp               - not a unix time (s or ms) nor a parsable date
  bad_weight                  - weight present but not a finite number
  duplicate                   - exact duplicate of an earlier row (same user, item, timestamp, weight)
  user_min_count, item_min_count
                              - users/items with fewer than the configured minimum of events,
                                filtered alternately until a fixed point (dropping items can push
                                users under the minimum and vice versa)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mirec.errors import DataError

#: numeric timestamps above this are taken as milliseconds (1e11 s is the year 5138)
MS_THRESHOLD = 1e11


@dataclass
class ValidationReport:
    rows_in: int = 0
    rows_kept: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    filter_iterations: int = 0
    users_in: int = 0
    items_in: int = 0
    users_kept: int = 0
    items_kept: int = 0
    items_without_metadata: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def lines(self) -> list[str]:
        out = [f"rows in          {self.rows_in:>10,}",
               f"rows kept        {self.rows_kept:>10,}",
               f"users in / kept  {self.users_in:>10,} / {self.users_kept:,}",
               f"items in / kept  {self.items_in:>10,} / {self.items_kept:,}"]
        total_q = sum(self.quarantined.values())
        out.append(f"quarantined      {total_q:>10,}")
        for reason, n in self.quarantined.items():
            out.append(f"  {reason:<15}{n:>10,}")
        if self.items_without_metadata:
            out.append(f"items without metadata (category '(unknown)'): {self.items_without_metadata:,}")
        return out


def _blank(s: pd.Series) -> pd.Series:
    return s.isna() | (s.astype(str).str.strip() == "") | (s.astype(str).str.lower().isin(["nan", "none", "null"]))


def parse_timestamps(s: pd.Series, fmt: str | None = None) -> pd.Series:
    """-> int64 unix seconds, NaN where unparsable. Numbers: seconds (ms above 1e11); strings: dates."""
    num = pd.to_numeric(s, errors="coerce")
    out = num.astype("float64")
    ms = out > MS_THRESHOLD
    out[ms] = out[ms] / 1000.0
    need_parse = num.isna() & ~_blank(s)
    if need_parse.any():
        parsed = pd.to_datetime(s[need_parse].astype(str), format=fmt, utc=True, errors="coerce")
        out[need_parse] = (parsed - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds()
    out[~np.isfinite(out)] = np.nan
    return out


def validate(raw: pd.DataFrame, *, min_user_count: int = 5, min_item_count: int = 5,
             timestamp_format: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame, ValidationReport]:
    """-> (clean interactions [user_id, item_id, timestamp:int64, weight:float32], quarantine, report)."""
    for col in ("user_id", "item_id", "timestamp"):
        if col not in raw.columns:
            raise DataError(f"missing required column '{col}' (have {list(raw.columns)})")
    rep = ValidationReport(rows_in=len(raw))
    df = raw.reset_index(drop=True).copy()
    df["source_row"] = np.arange(len(df), dtype=np.int64)
    if "weight" not in df.columns:
        df["weight"] = None
    rep.users_in = int(df["user_id"].dropna().nunique())
    rep.items_in = int(df["item_id"].dropna().nunique())

    reason = pd.Series(pd.NA, index=df.index, dtype="object")

    def mark(mask: pd.Series, why: str) -> None:
        mask = mask & reason.isna()
        reason[mask] = why

    mark(_blank(df["user_id"]), "null_user_id")
    mark(_blank(df["item_id"]), "null_item_id")
    ts = parse_timestamps(df["timestamp"], timestamp_format)
    mark(ts.isna(), "bad_timestamp")
    w_blank = _blank(df["weight"])
    w = pd.to_numeric(df["weight"], errors="coerce").astype("float64")
    mark(~w_blank & ~np.isfinite(w.fillna(np.inf)) , "bad_weight")
    w = w.where(~w_blank, 1.0)

    clean = pd.DataFrame({
        "user_id": df["user_id"].astype(str).str.strip(),
        "item_id": df["item_id"].astype(str).str.strip(),
        "timestamp": ts, "weight": w,
    })
    ok = reason.isna()
    dup = clean[ok].duplicated(keep="first")
    mark(dup.reindex(df.index, fill_value=False), "duplicate")

    # Minimum counts, iterated to a fixed point.
    it = 0
    while True:
        ok = reason.isna()
        cur = clean[ok]
        ucount = cur.groupby("user_id")["item_id"].transform("size")
        icount = cur.groupby("item_id")["user_id"].transform("size")
        bad_u = ucount < min_user_count
        bad_i = (icount < min_item_count) & ~bad_u
        if not bad_u.any() and not bad_i.any():
            break
        it += 1
        mark(bad_u.reindex(df.index, fill_value=False), "user_min_count")
        mark(bad_i.reindex(df.index, fill_value=False), "item_min_count")
    rep.filter_iterations = it

    ok = reason.isna()
    kept = clean[ok].copy()
    kept["timestamp"] = kept["timestamp"].astype("int64")
    kept["weight"] = kept["weight"].astype("float32")
    quarantine = df[~ok].drop(columns=[]).astype({c: str for c in ("user_id", "item_id", "timestamp", "weight")})
    quarantine["reason"] = reason[~ok].astype(str)
    order = ["null_user_id", "null_item_id", "bad_timestamp", "bad_weight", "duplicate",
             "user_min_count", "item_min_count"]
    counts = quarantine["reason"].value_counts()
    rep.quarantined = {r: int(counts.get(r, 0)) for r in order}
    rep.rows_kept = len(kept)
    rep.users_kept = int(kept["user_id"].nunique())
    rep.items_kept = int(kept["item_id"].nunique())
    assert rep.rows_kept + sum(rep.quarantined.values()) == rep.rows_in, "row accounting broken"
    if rep.rows_kept == 0:
        top = max(rep.quarantined, key=rep.quarantined.get)
        raise DataError(
            f"no usable rows: all {rep.rows_in:,} rows were rejected (most: {rep.quarantined[top]:,} "
            f"'{top}'). Check the format/column mapping or lower min_user_count/min_item_count."
        )
    return kept.reset_index(drop=True), quarantine.reset_index(drop=True), rep
