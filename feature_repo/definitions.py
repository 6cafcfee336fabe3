"""Feast definitions for mirec: entities, sources, feature views, feature services.

Thin: the tables behind the sources are computed by `mirec.features.tables` (see its docstring for the
exact meaning of every column); this file only declares them to Feast.

`build(source_dir)` returns the objects (what `mirec features apply` applies). The module-level objects let
plain `feast apply` find the same definitions; they read MIREC_FEAST_SOURCE_DIR (default: ./data/sources).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Int64, String

USER_HISTORY_VIEW = "user_recent_items"
ITEM_STATS_VIEW = "item_stats"
SERVING_SERVICE = "mirec_serving"
TRAINING_SERVICE = "mirec_training"
ITEM_SERVICE = "mirec_items"


def build(source_dir: str) -> list:
    source_dir = source_dir.rstrip("/")
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING,
                  description="A user, keyed by the external user id (what serving receives).")
    item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING,
                  description="An item, keyed by the external item id.")

    user_history_src = FileSource(
        name="user_history_source", path=f"{source_dir}/user_history.parquet", timestamp_field="event_ts",
        description="One snapshot per (user, event time): the last L items after that time.")
    # Feedback (POST /feedback clicks/purchases) arrives here: mirec.features.push.HistoryPusher pushes the new
    # snapshot online at once and appends it (batched) to the batch source above, which materialization and
    # point-in-time training read as before.
    user_history_push = PushSource(name="user_history_push", batch_source=user_history_src,
                                   description="New history snapshots from feedback events (mirec.features.push).")
    item_stats_src = FileSource(
        name="item_stats_source", path=f"{source_dir}/item_stats.parquet", timestamp_field="event_ts",
        description="Per item and day boundary: category and popularity counts over events before it.")

    # ttl 0 = no expiry: a user's history is valid however old (point-in-time join takes the latest <= t).
    user_recent = FeatureView(
        name=USER_HISTORY_VIEW, entities=[user], ttl=timedelta(0), online=True, source=user_history_push,
        schema=[
            Field(name="recent_item_idx", dtype=Array(Int64), description="last L prepared item_idx, oldest first"),
            Field(name="recent_item_ids", dtype=Array(String), description="the same items, external ids"),
            Field(name="recent_ts", dtype=Array(Int64), description="their unix timestamps (s)"),
            Field(name="seq_len", dtype=Int64, description="length of the lists (<= L)"),
            Field(name="n_events", dtype=Int64, description="all events of the user so far"),
        ],
        tags={"owner": "mirec", "kind": "sequence"})
    item_stats = FeatureView(
        name=ITEM_STATS_VIEW, entities=[item], ttl=timedelta(0), online=True, source=item_stats_src,
        schema=[
            Field(name="category", dtype=String),
            Field(name="pop_window", dtype=Int64, description="events in the W days before event_ts"),
            Field(name="pop_total", dtype=Int64, description="events before event_ts"),
        ],
        tags={"owner": "mirec", "kind": "item"})

    serving = FeatureService(name=SERVING_SERVICE, description="What the recommendation API reads per request.",
                             features=[user_recent[["recent_item_ids", "recent_ts", "seq_len"]]])
    training = FeatureService(name=TRAINING_SERVICE, description="Point-in-time training sequences.",
                              features=[user_recent[["recent_item_idx", "recent_ts", "seq_len", "n_events"]]])
    items = FeatureService(name=ITEM_SERVICE, description="Item features.", features=[item_stats])
    return [user, item, user_history_src, item_stats_src, user_recent, item_stats, serving, training, items,
            user_history_push]


_default = os.environ.get("MIREC_FEAST_SOURCE_DIR") or str(Path(__file__).resolve().parent / "data" / "sources")
(user, item, user_history_source, item_stats_source, user_recent_items, item_stats,
 mirec_serving, mirec_training, mirec_items, user_history_push) = build(_default)
