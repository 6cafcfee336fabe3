"""Feature store (Feast) tests: materialize vs Parquet, point-in-time correctness, bad config, timeouts.

One applied repo is shared by the module (feast apply + imports cost ~6 s once).
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("feast")

from mirec.config import DataConfig  # noqa: E402
from mirec.errors import ConfigError, DataError  # noqa: E402
from mirec.features import store as S  # noqa: E402
from mirec.features.config import FeaturesConfig  # noqa: E402
from mirec.features.online import FeatureStoreUnavailable, OnlineHistoryClient, resolve_history  # noqa: E402
from mirec.features.tables import last_items_direct, user_history_table  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:fetch_arrow_table:DeprecationWarning")  # ibis inside feast

REPO = Path(__file__).resolve().parents[1] / "feature_repo"
L = 30


def _last_before(df: pd.DataFrame, user: str, t: int | None, n: int = L) -> list[str]:
    """Reference: last n external items of `user` with timestamp < t (t None: all), (timestamp, item_idx) order."""
    s = df[df["user_id"] == user]
    if t is not None:
        s = s[s["timestamp"] < t]
    return list(s.sort_values(["timestamp", "item_idx"])["item_id"].iloc[-n:]) if n else []


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from mirec.data import prepare

    out = tmp_path_factory.mktemp("synth")
    prepare(DataConfig(out_dir=str(out), synth={"n_users": 300, "n_items": 800, "n_categories": 8, "seed": 3}),
            progress=False)
    return out


@pytest.fixture(scope="module")
def applied(synth, tmp_path_factory) -> FeaturesConfig:
    cfg = FeaturesConfig(repo_path=str(REPO), store_dir=str(tmp_path_factory.mktemp("feast")), seq_len=L)
    S.apply(synth, cfg, log=lambda s: None)
    return cfg.resolved()


@pytest.fixture(scope="module")
def materialized(applied, synth):
    """Materialize a window up to mid-time T, read online, then incremental to now, read again."""
    inter = pd.read_parquet(synth / "interactions.parquet")
    t_mid = int(np.quantile(inter["timestamp"], 0.5))
    users = sorted(inter["user_id"].unique())
    rng = np.random.default_rng(0)
    sample = list(rng.choice(users, 40, replace=False)) + ["no-such-user"]
    r1 = S.materialize(applied, end=pd.Timestamp(t_mid, unit="s", tz="UTC"), log=lambda s: None)
    client = OnlineHistoryClient(applied.repo_path, timeout_ms=5000, store_dir=applied.store_dir)
    at_mid = client.recent_items(sample)
    r2 = S.materialize(applied, incremental=True, log=lambda s: None)
    at_end = client.recent_items(sample)
    return dict(inter=inter, t_mid=t_mid, sample=sample, r1=r1, r2=r2, at_mid=at_mid, at_end=at_end, client=client)


def test_online_equals_last_L_from_parquet(materialized, synth):
    m = materialized
    inter = m["inter"]
    counts = inter.groupby("user_id").size()
    real = [u for u in m["sample"] if u in counts.index]
    assert any(counts[u] < L for u in real) and any(counts[u] >= L for u in real)  # both kinds sampled
    direct = last_items_direct(synth, m["sample"], L)
    assert m["at_end"] == direct
    assert m["at_end"]["no-such-user"] == []
    for u in m["sample"]:  # window materialization: the state as of t_mid (events at <= t_mid)
        assert m["at_mid"][u] == _last_before(inter, u, m["t_mid"] + 1), u
    assert any(m["at_mid"][u] != m["at_end"][u] for u in real)  # the incremental step did change things


def test_materialize_reports_row_counts(materialized):
    m = materialized
    r1 = {r.view: r for r in m["r1"]}
    r2 = {r.view: r for r in m["r2"]}
    n_mid = int((m["inter"]["timestamp"] <= m["t_mid"]).sum())
    uh = r1["user_recent_items"]
    # one snapshot per (user, distinct second); synthetic data has no same-second events per user
    assert uh.rows == n_mid and uh.entities == m["inter"].loc[m["inter"]["timestamp"] <= m["t_mid"], "user_id"].nunique()
    assert r2["user_recent_items"].rows + uh.rows >= len(m["inter"])  # the incremental window covers the rest
    assert r2["user_recent_items"].start == uh.end
    assert all(r.seconds > 0 and r.rows_per_s > 0 for r in m["r1"])


def test_lookup_frame(materialized, applied):
    df = S.lookup(["no-such-user", materialized["sample"][0]], applied)
    assert list(df["user_id"]) == ["no-such-user", materialized["sample"][0]]
    assert df["recent_item_ids"].iloc[0] == [] and df["seq_len"].iloc[0] == 0
    assert df["seq_len"].iloc[1] == len(df["recent_item_ids"].iloc[1]) == len(df["recent_ts"].iloc[1])


def test_point_in_time_on_synthetic_labels(applied, synth):
    inter = pd.read_parquet(synth / "interactions.parquet")
    labels = inter.sample(150, random_state=1)[["user_id", "item_id", "event_ts", "timestamp"]]
    labels.index = np.arange(1000, 1150)[::-1]  # arbitrary index: must be kept
    out = S.training_frame(labels, applied)
    assert len(out) == len(labels) and list(out.index) == list(labels.index)
    assert (out["item_id"] == labels["item_id"]).all()
    for _, row in out.iterrows():
        assert all(t < row["timestamp"] for t in row["recent_ts"])  # nothing from the label time or after
        ref = inter[(inter.user_id == row.user_id) & (inter.timestamp < row.timestamp)].sort_values(
            ["timestamp", "item_idx"]).iloc[-L:]
        assert row["recent_item_idx"] == list(ref["item_idx"])
        assert row["seq_len"] == len(ref)


@pytest.fixture(scope="module")
def crafted(tmp_path_factory) -> Path:
    """A hand-made dataset: user a has events at 100, 200, 200 (same second), 300; b at 500."""
    d = tmp_path_factory.mktemp("crafted")
    rows = [("a", "i1", 1, 100), ("a", "i2", 2, 200), ("a", "i3", 3, 200), ("a", "i4", 4, 300), ("b", "i1", 1, 500)]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "item_idx", "timestamp"])
    df["user_idx"] = df["user_id"].map({"a": 0, "b": 1}).astype("int64")
    df["weight"] = np.float32(1)
    df["event_ts"] = pd.to_datetime(df["timestamp"], unit="s", utc=True)
    df.to_parquet(d / "interactions.parquet", index=False)
    pd.DataFrame({"item_idx": [1, 2, 3, 4], "item_id": ["i1", "i2", "i3", "i4"], "category": ["x", "x", "y", "y"],
                  "categories": ["x", "x", "y", "y"], "category_idx": [0, 0, 1, 1], "popularity": [2, 1, 1, 1]}
                 ).to_parquet(d / "items.parquet", index=False)
    return d


def test_point_in_time_crafted(crafted, tmp_path):
    cfg = FeaturesConfig(repo_path=str(REPO), store_dir=str(tmp_path / "feast"), seq_len=2)
    S.apply(crafted, cfg, log=lambda s: None)
    labels = pd.DataFrame({"user_id": ["a", "a", "a", "a", "a", "b", "b", "ghost", "a"],
                           "timestamp": [50, 100, 200, 300, 300, 500, 501, 400, 10_000]})
    out = S.training_frame(labels, cfg)
    assert len(out) == len(labels)  # no row lost, duplicates kept, order kept
    assert out["recent_item_idx"].tolist() == [[], [], [1], [2, 3], [2, 3], [], [1], [], [3, 4]]
    assert out["n_events"].tolist() == [0, 0, 1, 3, 3, 0, 1, 0, 4]
    assert out["seq_len"].tolist() == [0, 0, 1, 2, 2, 0, 1, 0, 2]
    for ts, label_t in zip(out["recent_ts"], labels["timestamp"]):
        assert all(t < label_t for t in ts)


def test_user_history_table_same_second_events_share_one_snapshot(crafted):
    from mirec.features.tables import read_interactions

    t = user_history_table(read_interactions(crafted), 3).to_pandas()
    assert len(t) == 4  # (a,100) (a,200) (a,300) (b,500)
    assert t["recent_item_ids"].map(list).tolist() == [["i1"], ["i1", "i2", "i3"], ["i2", "i3", "i4"], ["i1"]]


def test_item_stats_window_counts(crafted):
    from mirec.features.tables import item_stats_table, read_interactions

    items = pd.read_parquet(crafted / "items.parquet")
    t = item_stats_table(read_interactions(crafted), items, window_days=2)
    i1 = t[t["item_id"] == "i1"]
    # both i1 events are on day 0: they count from the next midnight for 2 days, then drop out
    assert i1["event_ts"].dt.strftime("%Y-%m-%d").tolist() == ["1970-01-02", "1970-01-03", "1970-01-04"]
    assert i1["pop_window"].tolist() == [2, 2, 0] and i1["pop_total"].tolist() == [2, 2, 2]
    assert set(t["category"]) == {"x", "y"}


# ---- bad configuration -------------------------------------------------------------------------------

def test_missing_repo_path(tmp_path):
    with pytest.raises(ConfigError, match="feature repo not found: .*nope"):
        S.open_store(FeaturesConfig(repo_path=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="feature repo not found"):
        OnlineHistoryClient(str(tmp_path / "nope"))


def test_wrong_store_type(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO / "definitions.py", repo)
    (repo / "feature_store.yaml").write_text((REPO / "feature_store.yaml").read_text().replace(
        "type: sqlite", "type: nosuchstore"))
    with pytest.raises(ConfigError, match="nosuchstore"):
        S.open_store(FeaturesConfig(repo_path=str(repo), store_dir=str(tmp_path / "d")))
    with pytest.raises(ConfigError, match="nosuchstore"):
        OnlineHistoryClient(str(repo), store_dir=str(tmp_path / "d"))


def test_unknown_profile_and_missing_production_env(monkeypatch):
    with pytest.raises(ConfigError, match="unknown feature store profile 'staging'"):
        FeaturesConfig(repo_path=str(REPO), profile="staging").resolved()
    monkeypatch.setenv("MIREC_FEAST_PROFILE", "prod")
    with pytest.raises(ConfigError, match="unknown feature store profile 'prod'"):
        S.open_store(FeaturesConfig(repo_path=str(REPO)))
    monkeypatch.delenv("MIREC_FEAST_PROFILE")
    monkeypatch.delenv("MIREC_FEAST_REDIS", raising=False)
    monkeypatch.delenv("MIREC_FEAST_REGISTRY_URL", raising=False)
    with pytest.raises(ConfigError, match="MIREC_FEAST_REDIS"):
        S.open_store(FeaturesConfig(repo_path=str(REPO), profile="production"))


def test_production_registry_block_works(monkeypatch, tmp_path, crafted):
    """The production YAML as shipped, with only the Redis block swapped for SQLite (no Redis here):
    the SQL registry (SQLAlchemy URL from the environment) and DuckDB offline store work end to end."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO / "definitions.py", repo)
    text = (REPO / "feature_store.production.yaml").read_text()
    text = text.replace("  type: redis\n  connection_string: ${MIREC_FEAST_REDIS}\n",
                        "  type: sqlite\n  path: ${MIREC_FEAST_DIR}/online.db\n")
    assert "type: sqlite" in text
    (repo / "feature_store.production.yaml").write_text(text)
    monkeypatch.setenv("MIREC_FEAST_REGISTRY_URL", f"sqlite:///{tmp_path}/registry.db")
    cfg = FeaturesConfig(repo_path=str(repo), profile="production", store_dir=str(tmp_path / "d"), seq_len=3)
    S.apply(crafted, cfg, log=lambda s: None)
    S.materialize(cfg, log=lambda s: None)
    assert (tmp_path / "registry.db").is_file()
    client = OnlineHistoryClient(str(repo), timeout_ms=5000, profile="production", store_dir=str(tmp_path / "d"))
    assert client.recent_items(["a", "b", "z"]) == {"a": ["i2", "i3", "i4"], "b": ["i1"], "z": []}
    out = S.training_frame(pd.DataFrame({"user_id": ["a"], "timestamp": [300]}), cfg)
    assert out["recent_item_idx"].tolist() == [[1, 2, 3]]


def test_unreadable_sources(tmp_path, crafted, applied):
    with pytest.raises(DataError, match="dataset folder not found"):
        S.apply(tmp_path / "missing", applied, log=lambda s: None)
    bad = tmp_path / "bad"
    shutil.copytree(crafted, bad)
    (bad / "interactions.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match=r"interactions.parquet is not readable as Parquet"):
        S.apply(bad, applied, log=lambda s: None)
    (bad / "interactions.parquet").unlink()
    with pytest.raises(DataError, match=r"feature source not found: .*interactions.parquet"):
        S.apply(bad, applied, log=lambda s: None)


def test_materialize_unreadable_source(crafted, tmp_path):
    cfg = FeaturesConfig(repo_path=str(REPO), store_dir=str(tmp_path / "feast"), seq_len=2)
    S.apply(crafted, cfg, log=lambda s: None)
    src = Path(cfg.resolved().source_dir) / "user_history.parquet"
    src.write_bytes(b"garbage")
    with pytest.raises(DataError, match="user_history.parquet"):
        S.materialize(cfg, views=["user_recent_items"], log=lambda s: None)


def test_materialize_before_apply(tmp_path):
    with pytest.raises(ConfigError, match="run `mirec features apply` first"):
        S.materialize(FeaturesConfig(repo_path=str(REPO), store_dir=str(tmp_path / "empty")), log=lambda s: None)


# ---- serving client: real slow / broken stores ---------------------------------------------------------

def test_locked_sqlite_times_out_then_recovers(applied, materialized):
    user = materialized["sample"][0]
    client = OnlineHistoryClient(applied.repo_path, timeout_ms=50, store_dir=applied.store_dir, max_inflight=1)
    assert client.recent_items([user])[user] == materialized["at_end"][user]
    con = sqlite3.connect(Path(applied.store_dir) / "online_store.db", timeout=0.1)
    try:
        con.execute("BEGIN EXCLUSIVE")  # a writer holding the file: readers wait on SQLite's busy timeout
        t0 = time.perf_counter()
        with pytest.raises(FeatureStoreUnavailable, match="within 50 ms") as e:
            client.recent_items([user])
        assert e.value.reason == "timeout" and time.perf_counter() - t0 < 0.5
        t0 = time.perf_counter()
        with pytest.raises(FeatureStoreUnavailable, match="busy"):  # the hung lookup is still pending
            client.recent_items([user])
        assert time.perf_counter() - t0 < 0.5  # "busy" (not "timeout") is the proof it did not wait; time is a sanity bound
        # the serving rule while the store hangs: request history if given, else popularity; never waits
        res = resolve_history(user, ["i1", "i2"], client)
        assert (res.source, res.items, res.feast_fallback) == ("request", ["i1", "i2"], False)
        res = resolve_history(user, None, client)
        assert (res.source, res.items, res.feast_fallback, res.fallback) == ("none", [], True, "popularity")
    finally:
        con.rollback()
        con.close()
    deadline = time.time() + 10
    while client.metrics()["inflight"] and time.time() < deadline:
        time.sleep(0.05)
    assert client.recent_items([user])[user] == materialized["at_end"][user]
    res = resolve_history(user, None, client)
    assert (res.source, res.items, res.feast_fallback, res.fallback) == ("feast", materialized["at_end"][user],
                                                                         False, None)
    m = client.metrics()
    assert m["fallbacks"] == 3 and m["reasons"] == {"timeout": 1, "busy": 2}


def test_missing_online_db_is_unavailable(applied, materialized, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(applied.store_dir, store, ignore=shutil.ignore_patterns("online_store.db"))
    client = OnlineHistoryClient(applied.repo_path, timeout_ms=5000, store_dir=str(store), warmup=False)
    with pytest.raises(FeatureStoreUnavailable, match="no such table") as e:
        client.recent_items(["u1"])
    assert e.value.reason == "error" and client.fallbacks == 1


def test_missing_registry_is_unavailable(applied, tmp_path):
    client = OnlineHistoryClient(applied.repo_path, timeout_ms=3000, store_dir=str(tmp_path / "nothing"))
    with pytest.raises(FeatureStoreUnavailable, match="mirec_serving does not exist"):
        client.recent_items(["u1"])


def test_cli_lookup(materialized, applied):
    import json

    from typer.testing import CliRunner

    from mirec.cli import app

    user = materialized["sample"][1]
    res = CliRunner().invoke(app, ["features", "lookup", "--repo", applied.repo_path, "--store-dir",
                                   applied.store_dir, user, "nobody"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[res.output.index("{"):]) == {user: materialized["at_end"][user], "nobody": []}
