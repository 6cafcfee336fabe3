"""Feedback -> the user's recent-items history in Feast, through the push source (`feature_repo/definitions.py`).

    pusher = HistoryPusher(FeaturesConfig(repo_path="feature_repo"))
    pusher.push([("u1", "i9", ts), ...])     # online now (the next /recommend sees it); offline buffered
    pusher.flush_offline()                    # also on close(): the snapshots reach the offline source

Why read-modify-write: the `user_recent_items` view holds one *snapshot* row per user (the last L items, see
`mirec.features.tables`). A push replaces the whole row, so the pusher reads the current snapshot from the online
store, appends the new items (oldest -> newest, last L kept) and pushes the new snapshot. A lock serialises
pushes inside one process; two API replicas pushing for the same user within the same few milliseconds can still
lose one of the two items (the feedback log keeps both; the next materialization from the offline source is
correct). Offline writes are batched: appending rewrites the whole Parquet source file (as Feast's DuckDB offline
store does too), which is fine every `offline_batch` snapshots but not once per click.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from mirec.features.config import FeaturesConfig

log = logging.getLogger(__name__)

PUSH_SOURCE = "user_history_push"  # feature_repo/definitions.py
HISTORY_VIEW = "user_recent_items"
SNAPSHOT_FEATURES = ("recent_item_idx", "recent_item_ids", "recent_ts", "seq_len", "n_events")


def _unix_s(ts: datetime) -> int:
    return int(ts.astimezone(timezone.utc).timestamp())


class HistoryPusher:
    """Appends engaged items to users' histories in the Feast online store (and, batched, the offline one)."""

    def __init__(self, cfg: FeaturesConfig, offline_batch: int = 1000, seq_len: int | None = None):
        from mirec.features.store import open_store, read_meta

        self.cfg = cfg.resolved()
        self.store = open_store(self.cfg)
        meta = read_meta(self.cfg)
        # L as applied (mirec features apply records it); the prepared items give item_idx for the training column
        self.seq_len = int(seq_len or meta.get("seq_len") or self.cfg.seq_len)
        self._item_idx = self._load_item_index(meta.get("data_dir"))
        self.offline_batch = offline_batch
        self._offline: list[dict] = []
        self._lock = threading.Lock()
        self.pushed = 0
        self.offline_written = 0

    @staticmethod
    def _load_item_index(data_dir: str | None) -> dict[str, int]:
        if not data_dir or not (Path(data_dir) / "items.parquet").is_file():
            return {}
        items = pd.read_parquet(Path(data_dir) / "items.parquet", columns=["item_id", "item_idx"])
        return dict(zip(items["item_id"].astype(str), items["item_idx"].astype(np.int64)))

    def current(self, user_ids: list[str]) -> dict[str, dict]:
        """The users' snapshots in the online store ({} for a user it does not know)."""
        refs = [f"{HISTORY_VIEW}:{f}" for f in SNAPSHOT_FEATURES]
        resp = self.store.get_online_features(features=refs, entity_rows=[{"user_id": u} for u in user_ids]).to_dict()
        out = {}
        for i, u in enumerate(resp["user_id"]):
            ids = resp["recent_item_ids"][i]
            if ids is None:
                out[u] = {}
                continue
            out[u] = {f: resp[f][i] for f in SNAPSHOT_FEATURES}
        return out

    def _next_snapshot(self, user_id: str, prev: dict, items: list[tuple[str, datetime]]) -> dict:
        ids = list(prev.get("recent_item_ids") or [])
        idx = list(prev.get("recent_item_idx") or [])
        tss = list(prev.get("recent_ts") or [])
        for item_id, ts in items:
            ids.append(item_id)
            idx.append(int(self._item_idx.get(item_id, -1)))  # -1: an item the prepared data does not know
            tss.append(_unix_s(ts))
        L = self.seq_len
        ids, idx, tss = ids[-L:], idx[-L:], tss[-L:]
        last = max(ts for _, ts in items)
        return {"user_id": user_id, "event_ts": pd.Timestamp(last).tz_convert("UTC"), "recent_item_idx": idx,
                "recent_item_ids": ids, "recent_ts": tss, "seq_len": len(ids),
                "n_events": int(prev.get("n_events") or 0) + len(items)}

    def push(self, events: Iterable[tuple[str, str, datetime]]) -> int:
        """Append (user_id, item_id, event time) to each user's history, in event-time order; returns the number of
        users whose online snapshot was replaced. Raises whatever the store raises (the caller decides)."""
        by_user: dict[str, list[tuple[str, datetime]]] = {}
        for user_id, item_id, ts in events:
            by_user.setdefault(str(user_id), []).append((str(item_id), ts))
        if not by_user:
            return 0
        from feast.data_source import PushMode

        with self._lock:
            prev = self.current(list(by_user))
            rows = [self._next_snapshot(u, prev.get(u, {}), sorted(ev, key=lambda x: x[1]))
                    for u, ev in by_user.items()]
            df = pd.DataFrame(rows)
            self.store.push(PUSH_SOURCE, df, to=PushMode.ONLINE)
            self.pushed += len(rows)
            self._offline.extend(rows)
            if len(self._offline) >= self.offline_batch:
                self._flush_offline_locked()
        return len(rows)

    def _flush_offline_locked(self) -> int:
        if not self._offline:
            return 0
        rows, self._offline = self._offline, []
        t0 = time.perf_counter()
        df = pd.DataFrame(rows)[["user_id", "event_ts", *SNAPSHOT_FEATURES]]
        try:
            self._append_offline(df)
        except Exception:
            self._offline = rows + self._offline  # keep them for the next flush; the caller hears about it
            raise
        self.offline_written += len(rows)
        log.info("pushed %d history snapshots to the offline store in %.2f s", len(rows), time.perf_counter() - t0)
        return len(rows)

    def _append_offline(self, df: pd.DataFrame) -> None:
        """Append snapshots to the view's batch source (the Parquet file materialization and training read).

        Not `store.push(..., to=PushMode.OFFLINE)`: Feast 0.67 maps the source's Parquet list columns by their type
        string, and "list<element: string>" (how Parquet names list elements) is missing from its table
        (feast.type_map.pa_to_feast_value_type: KeyError), so every offline push of this view fails. Its DuckDB
        offline store would append the same way: read the file, concatenate, write it back (here atomically: a
        temporary file renamed over the old one, so a concurrent reader sees the old or the new file, whole)."""
        import pyarrow as pa
        import pyarrow.fs as pafs
        import pyarrow.parquet as pq

        source = self.store.get_feature_view(HISTORY_VIEW).batch_source
        fs, path = pafs.FileSystem.from_uri(source.path if "://" in source.path else str(Path(source.path).resolve()))
        old = pq.read_table(path, filesystem=fs)
        new = pa.Table.from_pandas(df, preserve_index=False).select(old.schema.names).cast(old.schema)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        pq.write_table(pa.concat_tables([old, new]), tmp, filesystem=fs)
        fs.move(tmp, path)

    def flush_offline(self) -> int:
        """Write the buffered snapshots to the offline source (the next training run reads them)."""
        with self._lock:
            return self._flush_offline_locked()

    def pending_offline(self) -> int:
        return len(self._offline)

    def close(self) -> None:
        try:
            self.flush_offline()
        except Exception as exc:  # noqa: BLE001 - the feedback log still holds every event
            log.error("offline push of %d history snapshots failed at close: %s", len(self._offline), exc)
