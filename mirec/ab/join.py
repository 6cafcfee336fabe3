"""Feedback joined to the answers it is about: each event gets the arm, model, version, position and interest.

Rule (docs/ab.md):
  1. by `request_id`: the event's request_id is a served answer's request_id (the client echoed it; when one id
     was served twice, the first answer);
  2. else by user + time: the user's latest answer served at or before the event, at most `window_s` earlier
     (clients that lose the id: app restarts, server-side events);
  3. else unmatched: kept in the table with `join = "unmatched"`, counted in the report, not attributed to an arm.
An event matched to an answer whose list does not hold its item (e.g. a click on a search result) keeps the arm
(the user was in it) with `in_list = False` and no position.

Vectorised (hash lookups and sorted integer keys, no per-event Python): 10^6 events join in seconds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mirec.ab.events import explode_items

JOINED_COLUMNS = ("ts", "user_id", "item_id", "type", "value", "request_id", "served_request_id", "join", "arm",
                  "model", "version", "served_ts", "position", "interest", "category", "in_list", "served_row",
                  "item_share")


def _rows_by_request_id(served: pd.DataFrame, request_ids: pd.Series) -> np.ndarray:
    """Row of the first served answer with each request id, -1 when none (Arrow's hash lookup)."""
    found = pc.index_in(pa.array(request_ids.to_numpy(dtype=object), pa.string()),
                        value_set=pa.array(served["request_id"].to_numpy(dtype=object), pa.string()))
    return found.fill_null(-1).to_numpy().astype(np.int64)


def _rows_by_user_time(served: pd.DataFrame, fb: pd.DataFrame, todo: np.ndarray, window_s: int) -> np.ndarray:
    """For the events `todo` (positions in fb): the row of the user's latest answer within the window, or -1."""
    out = np.full(len(todo), -1, dtype=np.int64)
    if not len(todo) or window_s <= 0:
        return out
    left = pd.DataFrame({"ts": fb["ts"].values[todo], "uid": fb["user_id"].astype(str).to_numpy()[todo],
                         "i": np.arange(len(todo))}).sort_values("ts")
    has_user = served["user_id"].notna().to_numpy()
    right = pd.DataFrame({"served_ts": served["ts"].values[has_user],
                          "uid": served["user_id"].to_numpy()[has_user].astype(str),
                          "row": np.flatnonzero(has_user)}).sort_values("served_ts")
    m = pd.merge_asof(left, right, left_on="ts", right_on="served_ts", by="uid",
                      tolerance=pd.Timedelta(seconds=window_s), direction="backward")
    ok = m["row"].notna().to_numpy()
    out[m["i"].to_numpy()[ok]] = m["row"].to_numpy()[ok].astype(np.int64)
    return out


def join_feedback(served: pd.DataFrame, items: pa.ListArray, feedback: pd.DataFrame, window_s: int = 1800,
                  exploded: dict | None = None) -> pd.DataFrame:
    """feedback rows (same order) + JOINED_COLUMNS. `served`/`items`: a LogRead's table and items (row-aligned);
    `served_row` is the attributed answer's row in `served` (-1 when unmatched)."""
    fb = feedback.reset_index(drop=True)
    n = len(fb)
    row = _rows_by_request_id(served, fb["request_id"]) if n else np.empty(0, dtype=np.int64)
    how = np.where(row >= 0, "request_id", "unmatched").astype(object)
    todo = np.flatnonzero(row < 0)
    by_time = _rows_by_user_time(served, fb, todo, window_s)
    row[todo] = by_time
    how[todo[by_time >= 0]] = "user_time"
    out = fb.copy(deep=False)  # new columns only: the caller's table is left as it was
    matched = row >= 0
    safe = np.maximum(row, 0)
    out["served_row"] = row
    out["join"] = how
    for src, dst in (("request_id", "served_request_id"), ("arm", "arm"), ("model", "model"), ("version", "version")):
        vals = served[src].to_numpy(dtype=object)[safe] if len(served) else np.full(n, None, dtype=object)
        out[dst] = np.where(matched, vals, None)
    out["served_ts"] = served["ts"].reindex(row).reset_index(drop=True)  # row -1 -> NaT
    # the item's place in its answer: the answers as a dense (answer, position) matrix of item codes, compared
    # with each event's item code in blocks of events (O(events x n), no hashing of composite keys)
    ex = exploded if exploded is not None else explode_items(items)
    catalogue = pc.unique(ex["item_id"])
    ex_code = pc.index_in(ex["item_id"], value_set=catalogue).fill_null(-1).to_numpy().astype(np.int64)
    ev_code = pc.index_in(pa.array(fb["item_id"].to_numpy(dtype=object), pa.string()),
                          value_set=catalogue).fill_null(-1).to_numpy().astype(np.int64)
    width = int(ex["position"].max()) + 1 if len(ex_code) else 1
    # int32 codes: answers x n x 4 bytes (2 x 10^5 answers of 20 items: 16 MB)
    dense = np.full((max(len(served), 1), width), -2, dtype=np.int32)  # -2: no item (never equals an event's code)
    dense[ex["row"], ex["position"]] = ex_code
    row_start = np.zeros(max(len(served), 1), dtype=np.int64)  # where each answer's items start in `ex`
    row_start[:] = np.searchsorted(ex["row"], np.arange(len(row_start)), side="left")
    ev_code32 = ev_code.astype(np.int32)
    found = np.zeros(n, dtype=bool)
    at = np.zeros(n, dtype=np.int64)
    block = max(1, 4_000_000 // width)
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        hit = dense[safe[lo:hi]] == ev_code32[lo:hi, None]
        hit &= (matched[lo:hi] & (ev_code[lo:hi] >= 0))[:, None]
        any_hit = hit.any(axis=1)
        first_pos = hit.argmax(axis=1)  # the first position holding the item
        found[lo:hi] = any_hit
        at[lo:hi] = row_start[safe[lo:hi]] + first_pos
    at = np.maximum(at, 0)
    position = pd.Series(np.where(found, ex["position"][at], 0) if len(ex_code) else np.zeros(n), dtype="Int64")
    position[~found] = pd.NA
    out["position"] = position
    for c in ("interest", "category"):
        vals = ex[c].take(pa.array(at)).to_numpy(zero_copy_only=False) if len(ex_code) else np.full(n, None)
        out[c] = np.where(found, vals, None)
    out["in_list"] = found
    # the item's share of all served impressions (novelty); NaN for an item never served
    counts = np.bincount(ex_code[ex_code >= 0], minlength=len(catalogue)).astype(float)
    share = counts / max(counts.sum(), 1.0)
    out["item_share"] = np.where(ev_code >= 0, share[np.maximum(ev_code, 0)] if len(share) else np.nan, np.nan)
    return out[list(JOINED_COLUMNS) + [c for c in out.columns if c not in JOINED_COLUMNS]]
