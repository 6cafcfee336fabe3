"""The feedback history push against the production profile with a REAL redis-server (the server helper of
tests/test_features_redis.py; skipped without redis-server): HistoryPusher appends to a user's online history
in Redis (read-modify-write: a second push keeps the first item), and appends the snapshots to the offline
source."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from test_features_redis import REDIS_SERVER, RedisServer, _free_port  # noqa: F401 (skips without redis-server)

pytestmark = pytest.mark.filterwarnings("ignore:fetch_arrow_table:DeprecationWarning")

REPO = Path(__file__).resolve().parents[1] / "feature_repo"


def test_push_appends_to_the_redis_history(tmp_path, monkeypatch):
    from datetime import datetime, timezone

    from mirec.config import DataConfig
    from mirec.data import prepare
    from mirec.features import store as S
    from mirec.features.config import FeaturesConfig
    from mirec.features.push import HistoryPusher

    srv = RedisServer(tmp_path / "redis", _free_port())
    (tmp_path / "redis").mkdir()
    srv.start()
    try:
        monkeypatch.setenv("MIREC_FEAST_REDIS", f"127.0.0.1:{srv.port}")
        monkeypatch.setenv("MIREC_FEAST_REGISTRY_URL", f"sqlite:///{tmp_path}/registry.db")
        monkeypatch.delenv("MIREC_FEAST_SOURCE_DIR", raising=False)
        monkeypatch.delenv("MIREC_FEAST_PROFILE", raising=False)
        data = tmp_path / "synth"
        prepare(DataConfig(out_dir=str(data), synth={"n_users": 40, "n_items": 120, "n_categories": 4, "seed": 2}),
                progress=False)
        cfg = FeaturesConfig(repo_path=str(REPO), profile="production", store_dir=str(tmp_path / "store"),
                             seq_len=20).resolved()
        S.apply(data, cfg, log=lambda s: None)  # not materialized (saves time): Redis starts empty
        user = sorted(pd.read_parquet(data / "users.parquet")["user_id"].astype(str))[1]
        assert list(S.lookup([user], cfg)["recent_item_ids"][0]) == []
        pusher = HistoryPusher(cfg, offline_batch=1)  # every snapshot goes offline at once
        assert pusher.push([(user, "i3", datetime.now(timezone.utc))]) == 1
        assert pusher.push([(user, "i7", datetime.now(timezone.utc))]) == 1  # read-modify-write through Redis
        assert list(S.lookup([user], cfg)["recent_item_ids"][0]) == ["i3", "i7"]
        assert pusher.offline_written == 2 and pusher.pending_offline() == 0
        hist = pd.read_parquet(Path(cfg.source_dir) / "user_history.parquet")
        assert list(hist[hist["user_id"] == user].sort_values("event_ts")["recent_item_ids"].iloc[-1]) == ["i3", "i7"]
    finally:
        srv.stop()
