"""The recommendation API with a REAL Feast store behind it (no fake history client).

A small synthetic dataset is prepared, a copy of `feature_repo/` is applied and materialized (DuckDB offline,
SQLite online, as in tests/test_features.py), and the API (`mirec.serving.api.create_app`, settings with
`feast.repo_path` = that copy) is driven with FastAPI's TestClient. TorchServe's HTTP hop is replaced by an
in-process stand-in for TorchServe (`InProcessTorchServe`) in front of `RecommendService` (the handler's code), as in
tests/test_monitoring_serving.py. Checked: user_id-only request -> history from Feast, answer == offline
Recommender on the user's last-L items from Parquet; unknown user -> popularity; locked online store ->
still answered fast, flagged, counted in /metrics.

Also here: the API re-reads TorchServe's key file when TorchServe rejects a stale token (after a restart).
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import time
from pathlib import Path

import pandas as pd
import pytest
from mirec.serving.testing import InProcessTorchServe

pytest.importorskip("fastapi")
# Before anything imports Feast: `import feast` sets PROMETHEUS_MULTIPROC_DIR, and a prometheus_client first
# imported after that puts the whole process in multiprocess mode (every app's counters then share values,
# which breaks the per-app counts asserted here and in tests/test_serving_unit.py).
pytest.importorskip("prometheus_client")

pytestmark = pytest.mark.filterwarnings("ignore:fetch_arrow_table:DeprecationWarning")  # ibis inside feast

REPO = Path(__file__).resolve().parents[1] / "feature_repo"
L = 30
TIMEOUT_MS = 300  # generous for a loaded 2-core CI box; the broken-store request must still answer < ~1 s


@pytest.fixture(scope="module")
def feast_repo(tmp_path_factory):
    """(dataset dir, applied+materialized repo copy whose store lives in <repo>/data, items frame)."""
    pytest.importorskip("feast")
    from mirec.config import DataConfig
    from mirec.data import prepare
    from mirec.features import store as S
    from mirec.features.config import FeaturesConfig

    with pytest.MonkeyPatch.context() as mp:
        for var in ("MIREC_FEAST_DIR", "MIREC_FEAST_SOURCE_DIR", "MIREC_FEAST_PROFILE", "MIREC_FEAST_REPO"):
            mp.delenv(var, raising=False)
        data = tmp_path_factory.mktemp("synth")
        prepare(DataConfig(out_dir=str(data), synth={"n_users": 80, "n_items": 200, "n_categories": 8, "seed": 5}),
                progress=False)
        repo = tmp_path_factory.mktemp("feast") / "repo"
        repo.mkdir()
        for f in ("definitions.py", "feature_store.yaml"):
            shutil.copy(REPO / f, repo / f)
        cfg = FeaturesConfig(repo_path=str(repo), seq_len=L)  # store_dir: the default <repo>/data
        S.apply(data, cfg, log=lambda s: None)
        S.materialize(cfg, log=lambda s: None)
        assert (repo / "data" / "online_store.db").is_file()
        yield data, repo, pd.read_parquet(data / "items.parquet")


def _feast_fallbacks(client) -> float:
    m = re.search(r"^mirec_api_feast_fallback_total (\S+)$", client.get("/metrics").text, re.M)
    assert m, "mirec_api_feast_fallback_total missing from /metrics"
    return float(m.group(1))


def test_api_history_from_real_feast_and_fallback(feast_repo, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from mirec.data.schema import IdMap
    from mirec.features.tables import last_items_direct
    from mirec.retrieval.recommender import Recommender
    from mirec.serving.api import create_app
    from mirec.serving.service import RecommendService
    from mirec.serving.settings import ApiSettings, Arm, Experiment
    from mirec.serving.testing import assert_same_answer, tiny_model

    for var in ("MIREC_FEAST_DIR", "MIREC_FEAST_SOURCE_DIR", "MIREC_FEAST_PROFILE", "MIREC_FEAST_REPO"):
        monkeypatch.delenv(var, raising=False)
    data, repo, items = feast_repo
    items = items.sort_values("item_idx").reset_index(drop=True)
    model, _ = tiny_model(n=len(items))
    rec = Recommender(model, items=items, item_popularity=items["popularity"].to_numpy())
    id_map = IdMap(items["item_id"].to_numpy())
    services = {m: RecommendService(rec, id_map, items["category"].to_numpy(), m, "1.0") for m in ("mirec_a", "mirec_b")}
    settings = ApiSettings(torchserve_url="http://ts", log_path=str(tmp_path / "served.jsonl"),
                           experiment=Experiment(salt="feast", arms=[Arm(name="A", model="mirec_a"),
                                                                     Arm(name="B", model="mirec_b")]),
                           feast={"repo_path": str(repo), "timeout_ms": TIMEOUT_MS})
    inter = pd.read_parquet(data / "interactions.parquet")
    users = list(inter.groupby("user_id").size().sort_values().index[[0, -1]])  # shortest + longest history
    expected = last_items_direct(data, users, L)

    with TestClient(create_app(settings, upstream=InProcessTorchServe(services))) as c:  # no history_client: real Feast
        for user in users:
            r = c.post("/recommend", json={"user_id": user, "n": 10})
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["history_source"] == "feast" and out["fallback"] is None, out
            hist = id_map.to_index(expected[user])
            assert (hist >= 0).all() and len(hist) == min(L, int((inter["user_id"] == user).sum()))
            offline = rec.recommend([hist], n=10)[0]
            assert_same_answer(out["items"], [(items["item_id"][x.item_idx], x.score, x.interest) for x in offline])

        cold = c.post("/recommend", json={"user_id": "no-such-user", "n": 5}).json()
        assert cold["fallback"] == "popularity" and cold["history_source"] == "none"
        assert all(x["interest"] == -1 for x in cold["items"])
        before = _feast_fallbacks(c)
        assert before == 0

        con = sqlite3.connect(repo / "data" / "online_store.db", timeout=0.1)
        try:
            con.execute("BEGIN EXCLUSIVE")  # a writer holding the online store: Feast's reads hang
            t0 = time.perf_counter()
            r = c.post("/recommend", json={"user_id": users[-1], "n": 5})
            elapsed = time.perf_counter() - t0
        finally:
            con.rollback()
            con.close()
        assert r.status_code == 200, r.text
        down = r.json()
        assert elapsed < 1.0, elapsed
        assert down["history_source"] != "feast" and down["fallback"] == "popularity", down
        assert _feast_fallbacks(c) == before + 1

    from mirec.monitoring.logs import read_jsonl

    recs = read_jsonl(tmp_path / "served.jsonl")
    assert [r["feast_fallback"] for r in recs] == [False, False, False, True]
    assert [r["history_source"] for r in recs][:2] == ["feast", "feast"]


# ---- stale TorchServe token ----------------------------------------------------------------------------

# TorchServe 0.12's answer to a wrong/expired key (see tests/test_serving_torchserve.py, production profile)
TS_REJECT = {"code": 400, "type": "InvalidKeyException",
             "message": "Token Authorization failed. Token either incorrect, expired, or not provided correctly"}


@pytest.fixture
def token_stub():
    """A tiny HTTP server on a free loopback port that stands in for TorchServe's token check: it accepts
    only `Bearer <state["key"]>` and answers anything else as TorchServe 0.12 does (400, Token Authorization
    failed). It records the Authorization header of every prediction call."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    state = {"key": "old-key", "seen": []}

    class H(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            auth = self.headers.get("Authorization")
            state["seen"].append(auth)
            if auth == f"Bearer {state['key']}":
                code, body = 200, {"items": [{"item_id": "i1", "score": 1.0, "interest": 0, "category": "c0"}],
                                   "model": "mirec_a", "version": "1", "fallback": None, "history_len": 1,
                                   "history_source": "request", "unknown_items": 0}
            else:
                code, body = 400, TS_REJECT
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    state["url"] = f"http://127.0.0.1:{srv.server_address[1]}"
    yield state
    srv.shutdown()
    srv.server_close()


def _key_file(path: Path, key: str) -> None:
    import json

    path.write_text(json.dumps({"management": {"key": "m"}, "inference": {"key": key, "expiration time": "x"},
                                "API": {"key": "a"}}))


def test_api_rereads_torchserve_key_after_restart(token_stub, tmp_path):
    from fastapi.testclient import TestClient

    from mirec.serving.api import create_app, is_token_rejection
    from mirec.serving.settings import ApiSettings, Arm, Experiment

    assert is_token_rejection(400, TS_REJECT["message"]) and is_token_rejection(401, "Invalid token")
    assert not is_token_rejection(400, "history has 9999 items") and not is_token_rejection(500, "token")
    key_file = tmp_path / "key_file.json"
    _key_file(key_file, "old-key")
    settings = ApiSettings(torchserve_url=token_stub["url"], torchserve_token_file=str(key_file),
                           log_path=str(tmp_path / "served.jsonl"),
                           experiment=Experiment(salt="t", arms=[Arm(name="A", model="mirec_a", weight=1.0)]))
    body = {"user_id": "u1", "history": ["i1"], "n": 1}
    with TestClient(create_app(settings)) as c:
        assert c.post("/recommend", json=body).status_code == 200
        assert token_stub["seen"] == ["Bearer old-key"]

        # TorchServe restarted: a new key in key_file.json; the API still holds the old one
        token_stub["key"] = "new-key"
        _key_file(key_file, "new-key")
        r = c.post("/recommend", json=body)
        assert r.status_code == 200, r.text
        assert token_stub["seen"][1:] == ["Bearer old-key", "Bearer new-key"]  # rejected once, retried once
        assert c.post("/recommend", json=body).status_code == 200
        assert token_stub["seen"][3:] == ["Bearer new-key"]  # the new key is kept

        # key rotated on the server but the file not (yet) updated: TorchServe's 400 is passed on, no loop
        token_stub["key"] = "newer-key"
        r = c.post("/recommend", json=body)
        assert r.status_code == 400 and "Token Authorization failed" in r.json()["error"], r.text
        assert token_stub["seen"][4:] == ["Bearer new-key"]
