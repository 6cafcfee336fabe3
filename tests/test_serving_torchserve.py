"""The real stack: `mirec package` MARs served by TorchServe (Java) on free loopback ports + the A/B API.

One TorchServe (two candidates: ComiRec-SA + Flat index, MIND + HNSW index) is started for the module.
"""

from __future__ import annotations

import json
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests

from mirec.serving.ab import assign
from mirec.serving.logwriter import read_served_log
from mirec.serving.testing import assert_same_answer, items_frame, random_histories, tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from mirec.retrieval import ItemIndex
    from mirec.retrieval.recommender import Recommender
    from mirec.serving.packaging import PackageSpec, package
    from mirec.serving.stack import LocalStack
    from mirec.serving.torchserve import free_port

    root = tmp_path_factory.mktemp("serving")
    items = items_frame()
    pop = items["popularity"].to_numpy()
    model_a, cfg_a = tiny_model("comirec_sa", seed=0)
    model_b, cfg_b = tiny_model("mind", seed=1)
    spec = PackageSpec.model_validate({"out_dir": str(root / "pkg"), "candidates": [
        {"name": "mirec_a", "version": "1.0", "batch_size": 8, "max_batch_delay_ms": 40},
        {"name": "mirec_b", "version": "2.0", "index": {"kind": "hnsw"}, "batch_size": 4, "max_batch_delay_ms": 2}]})
    res = package(spec, candidates={"mirec_a": (model_a, cfg_a, items, {"recall@50": 0.5}),
                                    "mirec_b": (model_b, cfg_b, items, {"recall@50": 0.4})}, log=lambda *_: None)
    unpacked = root / "b_unpacked"
    with zipfile.ZipFile(root / "pkg" / "model-store" / "mirec_b.mar") as z:
        z.extractall(unpacked)
    meta = {}
    for name in ("mirec_a", "mirec_b"):  # the aggregator (default `auto`) and its params travel in the MAR
        with zipfile.ZipFile(root / "pkg" / "model-store" / f"{name}.mar") as z:
            m = json.loads(z.read("meta.json"))
        meta[name] = {"aggregator": m["aggregator"], "aggregator_params": m["aggregator_params"]}
    offline = {
        "mirec_a": Recommender(model_a, items=items, item_popularity=pop, **meta["mirec_a"]),  # own flat index
        "mirec_b": Recommender(model_b, index=ItemIndex.load(unpacked / "index.faiss"), items=items,
                               item_popularity=pop, **meta["mirec_b"]),
    }
    st = LocalStack(root / "pkg", workdir=root / "run", api_port=free_port(), log_path=str(root / "served.jsonl"))
    st.start()
    st.offline, st.package, st.root = offline, res, root
    yield st
    st.stop()


def _offline(stack, model, history, n, exclude_seen=True):
    from mirec.data.schema import IdMap

    ids = IdMap(items_frame()["item_id"].to_numpy())
    recs = stack.offline[model].recommend([ids.to_index(history)], n=n, exclude_seen=exclude_seen)[0]
    return [(f"item-{r.item_idx}", r.score, r.interest) for r in recs]


def test_package_layout(stack):
    pkg = stack.root / "pkg"
    assert sorted(p.name for p in (pkg / "model-store").iterdir()) == ["mirec_a.mar", "mirec_b.mar"]
    props = (pkg / "config" / "config.properties").read_text()
    assert "metrics_mode=prometheus" in props and "model_snapshot=" in props
    with zipfile.ZipFile(pkg / "model-store" / "mirec_b.mar") as z:
        names = set(z.namelist())
        meta = json.loads(z.read("meta.json"))
    assert {"weights.pt", "model_config.json", "index.faiss", "items.parquet", "handler.py",
            "mirec/serving/service.py", "MAR-INF/MANIFEST.json"} <= names
    assert meta["version"] == "2.0" and meta["metrics"] == {"recall@50": 0.4} and meta["index"]["kind"] == "hnsw"


@pytest.mark.parametrize("model", ["mirec_a", "mirec_b"])
def test_torchserve_answers_equal_offline_retrieval(stack, model):
    for i, h in enumerate(random_histories(12, seed=7)):
        r = requests.post(f"{stack.ts.inference_url}/predictions/{model}", json={"user_id": f"u{i}", "history": h,
                                                                                 "n": 50})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == model and body["version"] == {"mirec_a": "1.0", "mirec_b": "2.0"}[model]
        assert_same_answer(body["items"], _offline(stack, model, h, 50))


def test_api_answers_equal_offline_and_ab_sticky(stack):
    exp = stack.settings.experiment
    seen = {}
    for i, h in enumerate(random_histories(30, seed=11)):
        user = f"user-{i}"
        body = requests.post(f"{stack.api_url}/recommend", json={"user_id": user, "history": h, "n": 20}).json()
        arm = assign(user, exp)
        assert body["arm"] == arm.name and body["model"] == arm.model
        assert_same_answer(body["items"], _offline(stack, arm.model, h, 20))
        seen[user] = body["arm"]
    assert set(seen.values()) == {"A", "B"}
    for user, arm in list(seen.items())[:10]:  # the same user always gets the same arm
        assert requests.post(f"{stack.api_url}/recommend", json={"user_id": user, "n": 5}).json()["arm"] == arm


@pytest.mark.parametrize("payload, status", [
    (b"{not json", 400), (b'{"n": 0, "history": ["item-1"]}', 422), (b'{"n": "x"}', 422),
    (b'{"history": "item-1"}', 422), (json.dumps({"history": ["item-1"] * 1001}).encode(), 413)])
def test_bad_requests_4xx_and_worker_keeps_serving(stack, payload, status):
    for url in (f"{stack.ts.inference_url}/predictions/mirec_a", f"{stack.api_url}/recommend"):
        r = requests.post(url, data=payload, headers={"Content-Type": "application/json"})
        assert r.status_code == status, (url, r.status_code, r.text)
        assert r.json()["error"]  # a clear message
    ok = requests.post(f"{stack.ts.inference_url}/predictions/mirec_a", json={"history": ["item-1"], "n": 3})
    assert ok.status_code == 200 and len(ok.json()["items"]) == 3


@pytest.mark.parametrize("payload", [{"user_id": "never-seen"}, {"user_id": "x", "history": []},
                                     {"user_id": "x", "history": ["zz-1", "zz-2"]}])
def test_cold_start_popularity(stack, payload):
    body = requests.post(f"{stack.api_url}/recommend", json={**payload, "n": 10}).json()
    assert body["fallback"] == "popularity"
    top = items_frame().sort_values("popularity", ascending=False, kind="stable")["item_id"].tolist()[:10]
    assert [x["item_id"] for x in body["items"]] == top and all(x["interest"] == -1 for x in body["items"])


def test_batching_one_response_per_request(stack):
    hists = random_histories(16, seed=3)
    payloads = [json.dumps({"history": h, "n": 10}).encode() for h in hists]
    payloads[5] = b"{broken"
    payloads[9] = b'{"history": ["item-1"], "n": 9999}'
    url = f"{stack.ts.inference_url}/predictions/mirec_a"

    def call(p):
        return requests.post(url, data=p, headers={"Content-Type": "application/json"})
    with ThreadPoolExecutor(16) as ex:
        res = list(ex.map(call, payloads))
    for i, (r, h) in enumerate(zip(res, hists)):
        if i in (5, 9):
            assert r.status_code == {5: 400, 9: 422}[i], r.text
        else:
            assert r.status_code == 200, r.text
            assert_same_answer(r.json()["items"], _offline(stack, "mirec_a", h, 10))
    log = (stack.ts.log_dir / "model_log.log").read_text()
    assert "mirec batch of" in log  # TorchServe did hand the handler more than one request at once
    # mirec's logging is in force: no per-request lines from the frontend or the worker
    assert "Backend received inference" not in log
    ts_log = (stack.ts.log_dir / "ts_log.log").read_text()
    assert "Backend response time" not in ts_log and "Sending response for jobId" not in ts_log
    assert "Model server started" in (stack.ts.log_dir / "torchserve.stdout").read_text()


def test_workers_run_with_hugepage_malloc(stack):
    """The workers (which hold the FAISS index) inherit GLIBC_TUNABLES=glibc.malloc.hugetlb=1 from
    TorchServeProcess; with THP available they then really hold anonymous huge pages."""
    from mirec.serving.tsconfig import HUGEPAGE_TUNABLE

    workers = [p for p in map(psutil.Process, stack.ts.pids()) if "model_service_worker" in " ".join(p.cmdline())]
    assert len(workers) == 2  # mirec_a, mirec_b
    for w in workers:
        assert HUGEPAGE_TUNABLE in w.environ().get("GLIBC_TUNABLES", "")
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp.exists() and "[never]" not in thp.read_text():
        huge = [int(line.split()[1]) for w in workers
                for line in Path(f"/proc/{w.pid}/smaps_rollup").read_text().splitlines() if line.startswith("AnonHugePages:")]
        assert sum(huge) > 0, huge


def test_served_log_and_metrics(stack):
    recs = read_served_log(stack.settings.log_path)
    assert len(recs) >= 40
    for r in recs:
        assert r.arm in ("A", "B") and r.model in ("mirec_a", "mirec_b") and r.latency_ms > 0
        assert r.arm == assign(r.user_id, stack.settings.experiment).name
    warm = [r for r in recs if r.fallback is None]
    assert warm and all(x.category and x.interest >= 0 for r in warm for x in r.items)
    assert all(r.interest_stats.k == 4 and len(r.interest_stats.interest_norms) == 4 for r in warm)
    m = requests.get(f"{stack.api_url}/metrics").text
    assert "mirec_api_latency_seconds_bucket" in m
    ts_metrics = requests.get(f"{stack.ts.metrics_url}/metrics").text
    assert "ts_inference_requests_total" in ts_metrics
    assert requests.get(f"{stack.api_url}/healthz").status_code == 200


def test_production_profile_keeps_token_auth(stack, tmp_path):
    """Outside local/test runs TorchServe's token authorization stays on; the API reads key_file.json."""
    from fastapi.testclient import TestClient

    from mirec.serving.ab import Arm, Experiment
    from mirec.serving.api import create_app
    from mirec.serving.settings import ApiSettings
    from mirec.serving.torchserve import TorchServeProcess
    from mirec.serving.tsconfig import ModelServing

    ms = [ModelServing(name="mirec_a", mar="mirec_a.mar")]
    with TorchServeProcess(stack.root / "pkg" / "model-store", ms, tmp_path / "prod", profile="production") as ts:
        assert "disable_token_authorization" not in (tmp_path / "prod" / "config.properties").read_text()
        url = f"{ts.inference_url}/predictions/mirec_a"
        denied = requests.post(url, json={"history": ["item-1"], "n": 3})  # TorchServe 0.12 answers 400 here
        assert denied.status_code in (400, 401) and "Token Authorization failed" in denied.text
        ok = requests.post(url, json={"history": ["item-1"], "n": 3},
                           headers={"Authorization": f"Bearer {ts.token('inference')}"})
        assert ok.status_code == 200
        settings = ApiSettings(torchserve_url=ts.inference_url, torchserve_token_file=str(ts.workdir / "key_file.json"),
                               log_path=None, timeout_ms=30000,
                               experiment=Experiment(salt="s", arms=[Arm(name="A", model="mirec_a")]))
        with TestClient(create_app(settings)) as c:
            assert c.post("/recommend", json={"history": ["item-1"], "n": 3}).status_code == 200


def test_mirec_serve_cli_starts_and_stops_the_stack(stack, tmp_path):
    """`mirec serve` = one command for TorchServe + API on loopback; SIGINT stops everything."""
    import signal
    import subprocess
    import sys
    import time

    from mirec.serving.torchserve import free_port, free_port_block

    api, ts = free_port(), free_port_block(5)
    code = "import sys; from mirec.cli import run; sys.argv[0] = 'mirec'; run()"
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", "--package", str(stack.root / "pkg"), "--port", str(api),
                             "--ts-port", str(ts), "--workdir", str(tmp_path / "run"), "--log", str(tmp_path / "s.jsonl"),
                             "--warmup", "25"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if requests.get(f"http://127.0.0.1:{api}/healthz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
        while time.monotonic() < deadline and requests.get(f"http://127.0.0.1:{api}/readyz", timeout=2).status_code != 200:
            time.sleep(0.3)  # ready = every arm has a worker and has been warmed up through the real TorchServe
        warm = requests.get(f"http://127.0.0.1:{api}/readyz", timeout=2).json()["warmup"]
        assert {w["state"] for w in warm.values()} == {"done"} and all(w["calls"] == 25 for w in warm.values()), warm
        assert all(w["errors"] == 0 for w in warm.values()), warm
        r = requests.post(f"http://127.0.0.1:{api}/recommend", json={"user_id": "cli", "history": ["item-2"], "n": 4})
        assert r.status_code == 200 and r.json()["arm"] in ("A", "B")
        java = [p.pid for p in psutil.Process(proc.pid).children(recursive=True) if "java" in p.name()]
        assert java
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out.decode()[-2000:]
        assert not [p for p in java if psutil.pid_exists(p)]
        assert len(read_served_log(tmp_path / "s.jsonl")) == 1  # the warm-up calls are not client traffic
    finally:
        if proc.poll() is None:
            proc.kill()


def test_clean_shutdown(stack):
    pids = stack.ts.pids()
    assert len(pids) >= 3  # launcher, Java, two Python workers
    stack.stop()
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == []
    java = [p for p in psutil.process_iter(["pid", "cmdline"])
            if p.info["cmdline"] and "org.pytorch.serve.ModelServer" in " ".join(p.info["cmdline"])
            and str(stack.root) in " ".join(p.info["cmdline"])]
    assert java == []
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{stack.ts.inference_url}/ping", timeout=2)
