"""One Feast registry that the pipeline and serving share (issue 16, item 2): the production profile as shipped
(feature_repo/feature_store.production.yaml: SQL registry, Redis online store, DuckDB offline store) against a REAL
PostgreSQL and a REAL redis-server, both started by this module on free loopback ports.

- the pipeline's Feast step (steps.features_materialize, production profile from the environment the pipeline's
  `mirec-feast` Secret gives it) writes the registry into PostgreSQL and materialises Redis;
- another process (what the API pod is) opens the same registry URL and reads the online store through the API's
  client (OnlineHistoryClient): the histories equal the dataset's own.
Swapped, because it cannot exist here: MIREC_FEAST_SOURCE_DIR is a local folder instead of s3:// (DuckDB's httpfs
extension would be downloaded at run time). Install the servers with `bash scripts/get-test-services.sh`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from servers import PostgresServer

pytest.importorskip("feast")
if PostgresServer.available():
    pytest.skip(PostgresServer.available(), allow_module_level=True)
from test_features_redis import RedisServer, _free_port  # noqa: E402  (skips the module without redis-server)

from mirec import steps  # noqa: E402
from mirec.features.tables import last_items_direct  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:fetch_arrow_table:DeprecationWarning")
REPO = Path(__file__).resolve().parents[1] / "feature_repo"


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    pg = PostgresServer().start()
    redis = RedisServer(tmp_path_factory.mktemp("redis"), _free_port())
    redis.start()
    yield pg, redis
    redis.stop()
    pg.stop()
    assert pg.proc.poll() is not None and redis.proc.poll() is not None


@pytest.fixture(scope="module")
def production_env(services, tmp_path_factory):
    """What the pipeline's Feast tasks get from the mirec-feast Secret (and the API pod from the chart)."""
    pg, redis = services
    tmp = tmp_path_factory.mktemp("feast-sources")
    env = {"MIREC_FEAST_PROFILE": "production", "MIREC_FEAST_REGISTRY_URL": pg.url(),
           "MIREC_FEAST_REDIS": f"127.0.0.1:{redis.port}", "MIREC_FEAST_SOURCE_DIR": str(tmp / "sources"),
           "MIREC_FEAST_REPO": str(REPO)}
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    yield env
    mp.undo()


@pytest.fixture(scope="module")
def materialized(production_env, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    steps.data_ingest(root / "ds", data_config={"synth": {"n_users": 60, "n_items": 90, "n_categories": 4}})
    info = steps.features_materialize(root / "ds", root / "feast")
    return root / "ds", info


def test_pipeline_feast_step_writes_the_registry_into_postgresql(materialized, services):
    import psycopg

    ds, info = materialized
    assert info["status"] == "ok" and info["profile"] == "production"
    assert {m["view"] for m in info["materialized"]} == {"user_recent_items", "item_stats"}
    pg, redis = services
    with psycopg.connect(pg.url(driver=False)) as c:
        tables = {r[0] for r in c.execute("select tablename from pg_tables where schemaname = 'public'")}
        assert {"feature_views", "entities", "feature_services", "projects"} <= tables, tables
        names = {r[0] for r in c.execute("select feature_view_name from feature_views where project_id = 'mirec'")}
    assert names == {"user_recent_items", "item_stats"}
    assert redis.client().dbsize() > 0  # the online store was materialised


SERVING_SIDE = r"""
import json, sys
from mirec.features.online import OnlineHistoryClient
users = json.loads(sys.argv[1])
client = OnlineHistoryClient(sys.argv[2], profile="production", timeout_ms=5000)
print(json.dumps({"got": client.recent_items(users), "metrics": client.metrics()}))
"""


def test_serving_process_reads_what_the_pipeline_wrote(materialized, production_env):
    """A separate process with only the registry URL and the Redis address (the API pod's situation)."""
    ds, _ = materialized
    inter = pd.read_parquet(ds / "interactions.parquet", columns=["user_id"])
    users = sorted(map(str, inter["user_id"].unique()))[:15] + ["no-such-user"]
    env = {**os.environ, **production_env}
    env["MIREC_FEAST_DIR"] = str(ds.parent / "serving-empty")  # no pipeline folder: registry + Redis are all it has
    out = subprocess.run([sys.executable, "-c", SERVING_SIDE, json.dumps(users), str(REPO)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    cfg_seq_len = 50
    assert res["got"] == last_items_direct(ds, users, cfg_seq_len)
    assert res["metrics"]["fallbacks"] == 0


def test_pipeline_feast_tasks_carry_the_networkpolicy_label_and_settings():
    """The compiled pipeline's Feast tasks: the chart's NetworkPolicy label + the production settings Secret."""
    import yaml

    docs = list(yaml.safe_load_all((Path(__file__).resolve().parents[1] / "pipelines" / "compiled" /
                                    "training_pipeline.yaml").read_text()))
    execs = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in ("exec-features-materialize-op", "exec-build-training-data-op"):
        e = execs[name]
        assert e["podMetadata"]["labels"]["mirec.io/feast-client"] == "true", name
        envs = {k["envVar"] for s in e["secretAsEnv"] if s["secretName"] == "mirec-feast" for k in s["keyToEnv"]}
        assert {"MIREC_FEAST_PROFILE", "MIREC_FEAST_REGISTRY_URL", "MIREC_FEAST_REDIS"} <= envs, name
