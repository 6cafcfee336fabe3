"""End to end with kfp's local runner on a tiny configuration (small synthetic data, 1 epoch), ~2-3 minutes:

1. a run with a broken candidate config fails at the training step, loudly, naming the task;
2. re-running with the fixed inputs -- from the *compiled YAML* (pipelines/compiled/training_pipeline.yaml,
   kept equal to the Python pipeline by test_pipeline.py) -- completes into a fresh run directory;
3. every artifact exists, and the gate rejects the deliberately bad candidate B (a MIND whose routing starts
   from zero logits: its K interests are identical = collapsed) while A ships: MAR, reference, Helm values;
4. a step re-run over its previous output overwrites it cleanly (idempotent).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mirec import steps  # noqa: E402
from mirec.cli.pipeline import TINY_PARAMS  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

GOOD = {**TINY_PARAMS, "candidate_a": {"name": "mind", "dim": 16},
        # deliberately bad: zero initial routing logits -> identical capsules (DESIGN.md) -> collapse
        "candidate_b": {"name": "mind", "dim": 16, "routing_sigma": 0.0}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from pipelines.local import run_local

    root = tmp_path_factory.mktemp("pipeline_root")
    bad = {**GOOD, "use_feast": False, "candidate_a": {"name": "no_such_model"}}
    with pytest.raises(RuntimeError) as failed:
        run_local(bad, pipeline_root=root)
    failed_dirs = [p for p in root.iterdir() if p.is_dir()]
    res = steps.run_main(GOOD, pipeline_root=root, compiled=REPO / "pipelines" / "compiled" / "training_pipeline.yaml",
                         echo=lambda s: None)
    return {"root": root, "error": str(failed.value), "failed_dirs": failed_dirs, "res": res}


def test_failed_step_fails_loudly(runs):
    assert "train-candidate-op" in runs["error"] and "FAILURE" in runs["error"]
    assert len(runs["failed_dirs"]) == 1
    failed = runs["failed_dirs"][0]
    assert (failed / "data-ingest-op" / "dataset" / "interactions.parquet").is_file()
    assert not (failed / "gate-op").exists()  # nothing downstream of the failure ran


def test_rerun_completes_in_a_fresh_run_dir(runs):
    run_dir = Path(runs["res"]["run_dir"])
    assert run_dir not in runs["failed_dirs"] and run_dir.parent == runs["root"]
    assert (run_dir / "summary.txt").is_file()


def test_every_artifact_exists_and_gate_rejects_bad_candidate(runs):
    run = Path(runs["res"]["run_dir"])
    c = steps.collect_run(run)
    s, d = c["steps"], c["decision"]
    assert (run / "data-ingest-op" / "dataset" / "interactions.parquet").is_file()
    assert s["features_materialize"][0]["status"] == "ok"
    assert s["build_training_data"][0]["feast"] == "ok" and s["build_training_data"][0]["mismatched_histories"] == 0
    assert {r["candidate"] for r in s["train_candidate"]} == {"A", "B"}
    for r in s["train_candidate"]:
        assert (Path(r["path"]) / "model.pt").is_file()
    for r in s["evaluate_candidate"]:
        for f in ("metrics.json", "served.jsonl"):
            assert (Path(r["path"]) / f).is_file()
    # the kfp Metrics artifacts carry the numbers the UI shows
    ex = json.loads((run / "evaluate-candidate-op" / "executor_output.json").read_text())
    md = ex["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert {"recall@50", "ndcg@50", "diversity@50", "interest_cos"} <= set(md)
    # gate: B (collapsed) rejected for its collapse, A passes and wins
    assert d["winner"] == "A" and d["passed"] == ["A"] and d["rejected"] == ["B"]
    assert any(r.startswith("FAIL interest_cos") for r in d["candidates"]["B"]["reasons"])
    gate_dir = Path(c["decision_dir"])
    assert "accuracy-diversity" in (gate_dir / "report.html").read_text()
    assert (run / "gate-op" / "report_html").is_file() and (run / "gate-op" / "report_md").is_file()
    # MARs: A packaged (as its own Model artifact too), B not
    pkg = s["package_candidates"]
    main = next(r for r in pkg if "mars" in r)
    assert list(main["mars"]) == ["A"]
    assert (Path(main["path"]) / "model-store" / "mirec_a.mar").is_file()
    assert (Path(main["path"]) / "config" / "config.properties").is_file()
    assert (run / "package-candidates-op" / "mar_a" / "mirec_a.mar").is_file()
    assert not list((run / "package-candidates-op" / "mar_b").glob("*.mar"))
    assert (run / "package-candidates-op" / "mar_b" / "REJECTED.json").is_file()
    # monitoring reference for the shipped candidate, in the serving-log format
    ref = s["build_monitoring_reference"][0]
    assert ref["status"] == "ok" and list(ref["references"]) == ["A"]
    assert (Path(ref["path"]) / "mirec_a" / "served.jsonl").is_file()
    from mirec.monitoring.reference import load_reference

    assert load_reference(Path(ref["path"]) / "mirec_a").models == ["mirec_a"]
    # deploy: Helm values with only the passing arm
    dep = s["deploy"][0]
    values = yaml.safe_load((Path(dep["path"]) / "values-release.yaml").read_text())
    assert [a["model"] for a in values["api"]["settings"]["experiment"]["arms"]] == ["mirec_a"]
    summary = runs["res"]["summary"]
    for text in ("winner: A", "gate B: REJECTED", "mirec_a.mar", "values-release.yaml", "| recall@50 |"):
        assert text in summary


def test_steps_rerun_idempotently(runs, tmp_path):
    """Re-running a step over its previous output (a retried task) overwrites it cleanly."""
    run = Path(runs["res"]["run_dir"])
    c = steps.collect_run(run)
    ev = {r["candidate"]: r["path"] for r in c["steps"]["evaluate_candidate"]}
    pkg = next(r for r in c["steps"]["package_candidates"] if "mars" in r)["path"]
    out = tmp_path / "gate"
    first = steps.gate(ev, GOOD.get("thresholds"), out)
    (out / "stale.txt").write_text("left over from a failed attempt")
    second = steps.gate(ev, GOOD.get("thresholds"), out)
    assert not (out / "stale.txt").exists()
    assert {k: v for k, v in first.items() if k != "decided"} == {k: v for k, v in second.items() if k != "decided"}
    dep1 = steps.deploy(pkg, tmp_path / "dep")
    dep2 = steps.deploy(pkg, tmp_path / "dep")
    assert dep1["arms"] == dep2["arms"]
    assert sorted(p.name for p in (tmp_path / "dep").iterdir()) == ["_step.json", "model-store", "values-release.yaml"]


def test_deploy_registers_mar_with_a_real_torchserve(runs, tmp_path):
    """deploy mode 'torchserve' against a real TorchServe 0.12 (token auth on, model API enabled for this
    test server only -- the chart keeps it off and deploys through the Helm values instead)."""
    import shutil as sh

    import requests

    from mirec.serving.torchserve import TorchServeProcess

    if sh.which("java") is None:
        pytest.skip("Java is not installed (TorchServe needs it)")

    class Server(TorchServeProcess):
        def config_text(self) -> str:  # later keys win in a .properties file
            return super().config_text() + "enable_model_api=true\n"

    run = Path(runs["res"]["run_dir"])
    pkg = next(r for r in steps.collect_run(run)["steps"]["package_candidates"] if "mars" in r)["path"]
    store = tmp_path / "store"
    store.mkdir()
    with Server(store, [], tmp_path / "ts", profile="production") as ts:
        import os
        import time

        token, deadline = None, time.monotonic() + 120
        while time.monotonic() < deadline:  # no models to wait for: wait for the key file + management API
            token = ts.token("management")
            try:
                if token and requests.get(f"{ts.management_url}/models", timeout=2,
                                          headers={"Authorization": f"Bearer {token}"}).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.3)
        assert token, "token authorization should be on"

        os.environ["TORCHSERVE_MANAGEMENT_TOKEN"] = token
        try:
            info = steps.deploy(pkg, tmp_path / "dep", mode="torchserve", torchserve_management_url=ts.management_url)
        finally:
            os.environ.pop("TORCHSERVE_MANAGEMENT_TOKEN", None)
        assert [r["model"] for r in info["registered"]] == ["mirec_a"]
        r = requests.get(f"{ts.management_url}/models/mirec_a", headers={"Authorization": f"Bearer {token}"},
                         timeout=10)
        assert r.status_code == 200
        desc = r.json()[0]
        assert desc["modelVersion"] == info["models"][0]["version"]
        assert any(w["status"] == "READY" for w in desc["workers"])
