"""Derived feature tables, computed from a prepared dataset (docs/CONTRACTS.md) with pyarrow/numpy.

Two tables feed the Feast sources (feature_repo/definitions.py):

``user_history.parquet`` -- one *snapshot* row per (user, distinct event time):
    user_id (str), event_ts (timestamp[us, UTC]),
    recent_item_idx (list<int64>: prepared item_idx), recent_item_ids (list<str>: external ids),
    recent_ts (list<int64>: unix s), seq_len (int64: length of those lists, <= L),
    n_events (int64: all events of the user up to and including event_ts).
  The row stamped ``t`` is the state *after* every event at time ``t`` (oldest -> newest, last L).
  Point-in-time training asks for the state "just before" a label at ``t`` by querying ``t - 1 us``,
  so the label's own event (and any other event at the same second) is never in its features.
  Online serving reads the newest snapshot = the user's last L items.

``item_stats.parquet`` -- one row per (item, day boundary) where a count changes:
    item_id (str), event_ts (day boundary, UTC midnight), category (str),
    pop_window (int64: events in [event_ts - W days, event_ts)), pop_total (int64: events before event_ts).
  Counts only use events strictly before event_ts, so they are point-in-time correct too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mirec.errors import DataError

USER_HISTORY = "user_history.parquet"
ITEM_STATS = "item_stats.parquet"
DAY_S = 86_400

_INTERACTION_COLS = ["user_idx", "item_idx", "timestamp", "user_id", "item_id"]
_ITEM_COLS = ["item_idx", "item_id", "category"]


def _read(path: Path, columns: list[str]) -> pa.Table:
    if not path.is_file():
        raise DataError(f"feature source not found: {path} (expected a prepared dataset, see `mirec data prepare`)")
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # corrupt / not parquet / permission denied
        raise DataError(f"feature source {path} is not readable as Parquet: {exc}") from None
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise DataError(f"feature source {path} lacks column(s) {missing}; has {schema.names}")
    try:
        return pq.read_table(path, columns=columns)
    except Exception as exc:
        raise DataError(f"feature source {path} could not be read: {exc}") from None


def read_interactions(data_dir: str | Path) -> pa.Table:
    """The prepared interactions, sorted by (user_idx, timestamp, item_idx) -- the documented tie-break."""
    t = _read(Path(data_dir) / "interactions.parquet", _INTERACTION_COLS)
    return t.sort_by([("user_idx", "ascending"), ("timestamp", "ascending"), ("item_idx", "ascending")])


def _windows(group_start: np.ndarray, ends: np.ndarray, L: int) -> tuple[np.ndarray, np.ndarray]:
    """For rows ending at `ends` (inclusive) with group start `group_start`: list offsets and flat indices
    of the last L rows of the group up to `ends`."""
    starts = np.maximum(group_start, ends - L + 1)
    lens = (ends - starts + 1).astype(np.int64)
    offsets = np.zeros(len(ends) + 1, dtype=np.int32 if lens.sum() < 2**31 else np.int64)
    np.cumsum(lens, out=offsets[1:])
    total = int(offsets[-1])
    # flat[j] = starts[row(j)] + (j - offsets[row(j)])
    row_of = np.repeat(np.arange(len(ends)), lens)
    flat = starts[row_of] + (np.arange(total) - offsets[:-1][row_of])
    return offsets, flat


def user_history_table(interactions: pa.Table, seq_len: int) -> pa.Table:
    """One snapshot row per (user, distinct timestamp): the last `seq_len` items up to and including it."""
    if seq_len < 1:
        raise DataError(f"seq_len must be >= 1, got {seq_len}")
    n = interactions.num_rows
    user = interactions["user_idx"].to_numpy()
    ts = interactions["timestamp"].to_numpy()
    if n == 0:
        return pa.table({"user_id": pa.array([], pa.string()), "event_ts": pa.array([], pa.timestamp("us", "UTC")),
                         "recent_item_idx": pa.array([], pa.list_(pa.int64())),
                         "recent_item_ids": pa.array([], pa.list_(pa.string())),
                         "recent_ts": pa.array([], pa.list_(pa.int64())),
                         "seq_len": pa.array([], pa.int64()), "n_events": pa.array([], pa.int64())})
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = user[1:] != user[:-1]
    group_start = np.maximum.accumulate(np.where(new_user, np.arange(n), 0))
    # last row of each (user, timestamp) run: the snapshot holds every event at that second
    last_of_run = np.ones(n, dtype=bool)
    last_of_run[:-1] = (user[1:] != user[:-1]) | (ts[1:] != ts[:-1])
    ends = np.flatnonzero(last_of_run)
    offsets, flat = _windows(group_start[ends], ends, seq_len)
    take = pa.array(flat)
    offs = pa.array(offsets)
    lens = np.diff(offsets).astype(np.int64)
    return pa.table({
        "user_id": interactions["user_id"].take(pa.array(ends)).cast(pa.string()),
        "event_ts": pa.array(ts[ends] * 1_000_000, pa.int64()).cast(pa.timestamp("us", "UTC")),
        "recent_item_idx": pa.ListArray.from_arrays(offs, interactions["item_idx"].combine_chunks().take(take)),
        "recent_item_ids": pa.ListArray.from_arrays(
            offs, interactions["item_id"].combine_chunks().cast(pa.string()).take(take)),
        "recent_ts": pa.ListArray.from_arrays(offs, interactions["timestamp"].combine_chunks().take(take)),
        "seq_len": pa.array(lens),
        "n_events": pa.array((ends - group_start[ends] + 1).astype(np.int64)),
    })


def item_stats_table(interactions: pa.Table, items: pd.DataFrame, window_days: int) -> pd.DataFrame:
    """Per item and UTC day boundary: events in the previous `window_days` days, and events to date."""
    if window_days < 1:
        raise DataError(f"popularity window must be >= 1 day, got {window_days}")
    ev = pd.DataFrame({"item_idx": interactions["item_idx"].to_numpy(),
                       "day": interactions["timestamp"].to_numpy() // DAY_S})
    daily = ev.groupby(["item_idx", "day"], sort=True).size().rename("n").reset_index()
    # a day's events count at the boundary after it (day + 1) and stop counting at day + 1 + W
    parts = [daily.assign(b=daily["day"] + 1 + k, w=daily["n"]) for k in range(window_days)]
    parts.append(daily.assign(b=daily["day"] + 1 + window_days, w=0))
    grid = pd.concat(parts, ignore_index=True)
    grid = grid.groupby(["item_idx", "b"], sort=True)["w"].sum().rename("pop_window").reset_index()
    # events to date at boundary b = cumulative daily counts for days < b
    daily["cum"] = daily.groupby("item_idx")["n"].cumsum()
    daily["b"] = daily["day"] + 1
    grid = pd.merge_asof(grid.sort_values("b"), daily[["item_idx", "b", "cum"]].sort_values("b"),
                         on="b", by="item_idx", direction="backward")
    grid["pop_total"] = grid["cum"].fillna(0).astype(np.int64)
    meta = items.set_index("item_idx")[["item_id", "category"]]
    grid = grid.join(meta, on="item_idx")
    grid["event_ts"] = pd.to_datetime(grid["b"] * DAY_S, unit="s", utc=True).astype("datetime64[us, UTC]")
    grid = grid.sort_values(["item_idx", "b"], ignore_index=True)
    return grid[["item_id", "event_ts", "category", "pop_window", "pop_total"]].astype(
        {"pop_window": np.int64, "item_id": str, "category": str})


def build_tables(data_dir: str | Path, out_dir: str | Path, seq_len: int, window_days: int) -> dict[str, int]:
    """Write user_history.parquet and item_stats.parquet under `out_dir`; return row counts."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"dataset folder not found: {data_dir}")
    inter = read_interactions(data_dir)
    items = _read(data_dir / "items.parquet", _ITEM_COLS).to_pandas()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    uh = user_history_table(inter, seq_len)
    pq.write_table(uh, out_dir / USER_HISTORY)
    ist = item_stats_table(inter, items, window_days)
    pq.write_table(pa.Table.from_pandas(ist, preserve_index=False), out_dir / ITEM_STATS)
    return {"interactions": inter.num_rows, "user_history": uh.num_rows, "item_stats": len(ist),
            "users": int(pc_unique(uh["user_id"]))}


def pc_unique(col) -> int:
    import pyarrow.compute as pc

    return len(pc.unique(col))


def last_items_direct(data_dir: str | Path, user_ids: list[str], seq_len: int) -> dict[str, list[str]]:
    """The last `seq_len` external item ids per user, straight from interactions.parquet (reference for tests)."""
    df = read_interactions(data_dir).to_pandas()
    g = df[df["user_id"].isin(user_ids)].groupby("user_id", sort=False)["item_id"]
    got = {u: list(s.iloc[-seq_len:]) for u, s in g}
    return {u: got.get(u, []) for u in user_ids}
