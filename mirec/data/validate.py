"""Validation: every rejected row goes to quarantine with its reason; nothing is dropped silently.

Rules, applied in this order (a row is quarantined for the first rule it breaks):
  malformed_line              - a line the loader could not split into the expected fields
                                (too many/too few fields); the raw line is kept in `raw_line`
  null_user_id, null_item_id  - missing/blank id ('', 'nan', 'none', 'null' count as blank)
  bad_timestamp               - not a unix time (s, ms, us or ns: chosen by magnitude) nor a
                                parsable date (ISO-8601 or `timestamp_format`; naive = UTC)
  bad_weight                  - weight present but not a finite number
  duplicate                   - exact duplicate of an earlier row (same user, item, timestamp, weight)
  user_min_count, item_min_count
                              - users/items with fewer than the configured minimum of events,
                                filtered alternately until a fixed point (dropping items can push
                                users under the minimum and vice versa)

Ids are compared as stripped strings (integer-valued float columns are read as integers first,
so a Parquet id column 1.0 and a CSV id "1" are the same id). Missing columns raise `DataError`,
and so does a table where no row survives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mirec.errors import DataError

#: numeric timestamps above these are taken as ms / us / ns (1e11 s is the year 5138)
MS_THRESHOLD = 1e11
US_THRESHOLD = 1e14
NS_THRESHOLD = 1e17
REASONS = ["malformed_line", "null_user_id", "null_item_id", "bad_timestamp", "bad_weight", "duplicate",
           "user_min_count", "item_min_count"]
_NULL_WORDS = ["nan", "none", "null", "<na>", "nat"]


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
    if s.dtype != object and not pd.api.types.is_string_dtype(s):
        return s.isna()
    st = s.astype(str).str.strip()
    return s.isna() | (st == "") | st.str.lower().isin(_NULL_WORDS)


def _encode_ids(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """-> (codes: int64, -1 = null/blank; labels: object array of stripped string ids).

    Factorises first and cleans only the distinct values, so millions of rows stay fast."""
    if pd.api.types.is_float_dtype(s):
        f = s.to_numpy(dtype="float64", na_value=np.nan)
        fin = np.isfinite(f)
        if np.all(f[fin] == np.round(f[fin])):
            s = s.astype("Int64")
    codes, uniq = pd.factorize(s, use_na_sentinel=True)
    names = pd.Series(np.asarray(uniq, dtype=object)).astype(str).str.strip()
    blank = (names == "") | names.str.lower().isin(_NULL_WORDS)
    c2, labels = pd.factorize(names.where(~blank), use_na_sentinel=True)
    lookup = np.append(c2, -1).astype(np.int64)  # code -1 (null) -> -1
    return lookup[codes], np.asarray(labels, dtype=object)


def _n_distinct(codes: np.ndarray, mask: np.ndarray, n: int) -> int:
    return int((np.bincount(codes[mask], minlength=n) > 0).sum()) if n else 0


def _categorical(codes: np.ndarray, labels: np.ndarray) -> pd.Categorical:
    """Kept ids as a Categorical holding only the ids that occur (cheap to map to indices later)."""
    used = np.flatnonzero(np.bincount(codes, minlength=len(labels)) > 0)
    remap = np.full(len(labels), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return pd.Categorical.from_codes(remap[codes], categories=pd.Index(labels[used], dtype=object))


def _scale_numeric(x: np.ndarray) -> np.ndarray:
    out = x.astype("float64")
    a = np.abs(out)
    if not (a > MS_THRESHOLD).any():  # the common case: plain unix seconds
        return out
    out = np.where(a > NS_THRESHOLD, out / 1e9,
                   np.where(a > US_THRESHOLD, out / 1e6, np.where(a > MS_THRESHOLD, out / 1e3, out)))
    return out


def parse_timestamps(s: pd.Series, fmt: str | None = None) -> pd.Series:
    """-> float64 unix seconds, NaN where unparsable.

    datetime columns: converted (naive = UTC). Numbers (or numeric strings): unix time in s, or
    ms/us/ns by magnitude. Other strings: dates, `fmt` if given, else ISO-8601, else any format
    pandas understands (naive = UTC)."""
    idx = s.index
    if pd.api.types.is_datetime64_any_dtype(s):
        t = s if getattr(s.dt, "tz", None) is not None else s.dt.tz_localize("UTC")
        out = (t - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds()
        return pd.Series(out.to_numpy(dtype="float64", na_value=np.nan), index=idx)
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        out = _scale_numeric(s.to_numpy(dtype="float64", na_value=np.nan))
        out[~np.isfinite(out)] = np.nan
        return pd.Series(out, index=idx)
    num = pd.to_numeric(s, errors="coerce")
    out = pd.Series(_scale_numeric(num.to_numpy(dtype="float64", na_value=np.nan)), index=idx)
    need_parse = num.isna() & ~_blank(s)
    if need_parse.any():
        txt = s[need_parse].astype(str).str.strip()
        if fmt is not None:
            parsed = pd.to_datetime(txt, format=fmt, utc=True, errors="coerce")
        else:
            parsed = pd.to_datetime(txt, format="ISO8601", utc=True, errors="coerce")
            rest = parsed.isna()
            if rest.any():
                parsed[rest] = pd.to_datetime(txt[rest], format="mixed", utc=True, errors="coerce")
        secs = (parsed - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds()
        out[need_parse] = secs.to_numpy(dtype="float64", na_value=np.nan)
    out[~np.isfinite(out.to_numpy())] = np.nan
    return out


def validate(raw: pd.DataFrame, *, min_user_count: int = 5, min_item_count: int = 5,
             timestamp_format: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame, ValidationReport]:
    """-> (clean interactions [user_id, item_id, timestamp:int64, weight:float32], quarantine, report).

    user_id/item_id of the clean frame are Categoricals of the stripped string ids (only ids
    that occur), so that mapping millions of rows to indices needs no string hashing.

    The quarantine frame holds every rejected row: the raw canonical columns as strings (nulls
    stay null), `raw_line` for malformed lines, `source_row` (0-based row of the raw frame) and
    `reason`. rows_in == rows_kept + sum(quarantined) always holds."""
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in raw.columns]
    if missing:
        raise DataError(f"missing required column(s) {missing} (have {list(raw.columns)})")
    rep = ValidationReport(rows_in=len(raw))
    df = raw.reset_index(drop=True)
    n = len(df)
    weight_col = df["weight"] if "weight" in df.columns else pd.Series([None] * n, dtype=object)

    reason = np.full(n, -1, dtype=np.int8)  # index into REASONS, -1 = kept

    def mark(mask: np.ndarray, why: str) -> None:
        reason[np.asarray(mask, dtype=bool) & (reason < 0)] = REASONS.index(why)

    if "raw_line" in df.columns:
        mark(df["raw_line"].notna().to_numpy(), "malformed_line")
    ucode, ulabels = _encode_ids(df["user_id"])
    icode, ilabels = _encode_ids(df["item_id"])
    rep.users_in = _n_distinct(ucode, ucode >= 0, len(ulabels))
    rep.items_in = _n_distinct(icode, icode >= 0, len(ilabels))
    mark(ucode < 0, "null_user_id")
    mark(icode < 0, "null_item_id")
    ts = parse_timestamps(df["timestamp"], timestamp_format).to_numpy()
    mark(np.isnan(ts), "bad_timestamp")
    if pd.api.types.is_numeric_dtype(weight_col) and not pd.api.types.is_bool_dtype(weight_col):
        w = weight_col.to_numpy(dtype="float64", na_value=np.nan)
        w_blank = np.isnan(w)
    else:
        w_blank = _blank(weight_col).to_numpy()
        w = pd.to_numeric(weight_col, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    mark(~w_blank & ~np.isfinite(w), "bad_weight")
    w = np.where(w_blank, 1.0, w)

    ok = reason < 0
    # Exact duplicates: only rows whose (user, item) pair repeats can be duplicates, so hash that
    # pair as one int64 first and compare all four fields on the (usually few) candidates.
    pair = ucode.astype(np.int64) * max(1, len(ilabels)) + icode
    cand = np.flatnonzero(ok)
    sp = np.sort(pair[cand])
    repeated = np.unique(sp[1:][sp[1:] == sp[:-1]])
    cand = cand[np.isin(pair[cand], repeated)] if len(repeated) else cand[:0]
    dup = np.zeros(n, dtype=bool)
    if len(cand):
        key = pd.DataFrame({"p": pair[cand], "t": ts[cand], "w": w[cand]})
        dup[cand] = key.duplicated(keep="first").to_numpy()
    mark(dup, "duplicate")

    # Minimum counts, iterated to a fixed point.
    it = 0
    nu, ni = max(1, len(ulabels)), max(1, len(ilabels))
    while True:
        ok = reason < 0
        uc = np.bincount(ucode[ok], minlength=nu)
        ic = np.bincount(icode[ok], minlength=ni)
        bad_u = ok & (uc[np.maximum(ucode, 0)] < min_user_count)
        bad_i = ok & ~bad_u & (ic[np.maximum(icode, 0)] < min_item_count)
        if not bad_u.any() and not bad_i.any():
            break
        it += 1
        mark(bad_u, "user_min_count")
        mark(bad_i, "item_min_count")
    rep.filter_iterations = it

    ok = reason < 0
    kept = pd.DataFrame({
        "user_id": _categorical(ucode[ok], ulabels),
        "item_id": _categorical(icode[ok], ilabels),
        "timestamp": np.floor(ts[ok]).astype(np.int64),
        "weight": w[ok].astype(np.float32),
    })
    bad = np.flatnonzero(~ok)
    cols = ["user_id", "item_id", "timestamp"] + (["weight"] if "weight" in df.columns else [])
    cols += [c for c in df.columns if c not in cols]  # any extra raw columns (raw_line, ...)
    quarantine = df.iloc[bad][cols].reset_index(drop=True).astype("string")
    quarantine["source_row"] = bad.astype(np.int64)
    quarantine["reason"] = pd.Series(np.asarray(REASONS, dtype=object)[reason[bad]], dtype="string")
    counts = np.bincount(reason[bad], minlength=len(REASONS))
    rep.quarantined = {r: int(counts[j]) for j, r in enumerate(REASONS)}
    rep.rows_kept = len(kept)
    rep.users_kept = kept["user_id"].cat.categories.size
    rep.items_kept = kept["item_id"].cat.categories.size
    if rep.rows_kept + sum(rep.quarantined.values()) != rep.rows_in:  # pragma: no cover - invariant
        raise AssertionError("row accounting broken")
    if rep.rows_kept == 0:
        top = max(rep.quarantined, key=lambda r: rep.quarantined[r])
        raise DataError(
            f"no usable rows: all {rep.rows_in:,} rows were rejected (most: {rep.quarantined[top]:,} "
            f"'{top}'). Check the format/column mapping or lower min_user_count/min_item_count."
        )
    return kept, quarantine, rep
