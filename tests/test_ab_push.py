"""Feedback reaches the features: a REAL Feast repo (a copy of feature_repo/, SQLite online, DuckDB offline) is
applied and materialized; clicks sent to POST /feedback of the real API update the user's history through the push
source, the user's next /recommend (user_id only) is served from it, and after the API shuts down the offline
source holds the new snapshot for training (point-in-time read through Feast). TorchServe is the in-process
stand-in (the one mock)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")  # before feast (see tests/test_serving_feast.py)

pytestmark = pytest.mark.filterwarnings("ignore:fetch_arrow_table:DeprecationWarning")

REPO = Path(__file__).resolve().parents[1] / "feature_repo"
L = 30


@pytest.fixture(scope="module")
def feast_repo(tmp_path_factory):
    pytest.importorskip("feast")
    from mirec.config import DataConfig
    from mirec.data import prepare
    from mirec.features import store as S
    from mirec.features.config import FeaturesConfig

    with pytest.MonkeyPatch.context() as mp:
        for var in ("MIREC_FEAST_DIR", "MIREC_FEAST_SOURCE_DIR", "MIREC_FEAST_PROFILE", "MIREC_FEAST_REPO"):
            mp.delenv(var, raising=False)
        data = tmp_path_factory.mktemp("synth")
        prepare(DataConfig(out_dir=str(data), synth={"n_users": 60, "n_items": 150, "n_categories": 6, "seed": 9}),
                progress=False)
        repo = tmp_path_factory.mktemp("feast") / "repo"
        repo.mkdir()
        for f in ("definitions.py", "feature_store.yaml"):
            shutil.copy(REPO / f, repo / f)
        cfg = FeaturesConfig(repo_path=str(repo), seq_len=L)
        S.apply(data, cfg, log=lambda s: None)
        S.materialize(cfg, log=lambda s: None)
        yield data, repo, cfg


def test_clicks_update_the_online_history_the_next_request_and_the_offline_store(feast_repo, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from mirec.data.schema import IdMap
    from mirec.features import store as S
    from mirec.retrieval.recommender import Recommender
    from mirec.serving.ab import Arm, Experiment
    from mirec.serving.api import create_app
    from mirec.serving.service import RecommendService
    from mirec.serving.settings import ApiSettings
    from mirec.serving.testing import InProcessTorchServe, tiny_model

    data, repo, cfg = feast_repo
    for var in ("MIREC_FEAST_DIR", "MIREC_FEAST_SOURCE_DIR", "MIREC_FEAST_PROFILE", "MIREC_FEAST_REPO"):
        monkeypatch.delenv(var, raising=False)
    items = pd.read_parquet(data / "items.parquet").sort_values("item_idx").reset_index(drop=True)
    model, _ = tiny_model(n=len(items))
    rec = Recommender(model, items=items, item_popularity=items["popularity"].to_numpy())
    svc = RecommendService(rec, IdMap(items["item_id"].to_numpy()), items["category"].to_numpy(), "m", "1.0")
    settings = ApiSettings(torchserve_url="http://ts", log_path=str(tmp_path / "served.jsonl"),
                           experiment=Experiment(salt="p", arms=[Arm(name="A", model="m")]),
                           feast={"repo_path": str(repo), "timeout_ms": 2000})
    user = sorted(pd.read_parquet(data / "users.parquet")["user_id"].astype(str))[0]
    old = list(S.lookup([user], cfg)["recent_item_ids"][0])
    assert old, "the user should have a materialized history"
    clicked = [i for i in items["item_id"].astype(str) if i not in old][:2]
    with TestClient(create_app(settings, upstream=InProcessTorchServe({"m": svc}))) as c:
        r = c.post("/recommend", json={"user_id": user, "n": 10})
        assert r.status_code == 200
        first = json.loads((tmp_path / "served.jsonl").read_text().splitlines()[-1])
        assert first["history_source"] == "feast" and first["history_len"] == len(old)
        r = c.post("/feedback", json={"events": [
            {"request_id": r.json()["request_id"], "user_id": user, "item_id": clicked[0], "type": "click"},
            {"user_id": user, "item_id": clicked[1], "type": "purchase", "value": 3.0},
            {"user_id": user, "item_id": "never-seen-item", "type": "impression"}]})  # impressions: log only
        assert r.status_code == 200 and r.json()["history"] == {"users_updated": 1}, r.text
        r = c.post("/recommend", json={"user_id": user, "n": 10})
        nxt = json.loads((tmp_path / "served.jsonl").read_text().splitlines()[-1])
        assert nxt["history_len"] == min(len(old) + 2, L)
        assert not {x["item_id"] for x in r.json()["items"]} & set(clicked)  # exclude_seen: now history
        assert "mirec_api_feedback_history_push_total{result=\"ok\"} 1.0" in c.get("/metrics").text
        pusher = c.app.state.feedback._pusher
        assert pusher.pending_offline() == 1
    # the API is shut down: the buffered snapshot went to the offline source (the next training run reads it)
    assert pusher.pending_offline() == 0 and pusher.offline_written == 1
    ids = list(S.lookup([user], cfg)["recent_item_ids"][0])
    assert ids[-2:] == clicked and ids[:-2] == old[-(L - 2):]
    store = S.open_store(cfg)
    hist = store.get_historical_features(
        entity_df=pd.DataFrame({"user_id": [user], "event_timestamp": [pd.Timestamp.now(tz="UTC")]}),
        features=["user_recent_items:recent_item_ids", "user_recent_items:recent_item_idx"]).to_df()
    assert list(hist["recent_item_ids"][0])[-2:] == clicked
    idx = dict(zip(items["item_id"].astype(str), items["item_idx"]))
    assert list(hist["recent_item_idx"][0])[-2:] == [idx[i] for i in clicked]
