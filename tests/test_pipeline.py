"""Pipeline plumbing (fast, no training): compile-sync + strict parsing of every pipeline, the kfp-kubernetes
settings in the YAML, the PyTorchJob template against the strict CRD schema, the gate, the deploy step (Helm
values + a fake TorchServe management API), idempotent steps, the CLI parameters and the Dockerfile."""

from __future__ import annotations

import http.server
import json
import re
import sys
import threading
from pathlib import Path

import pytest
import yaml

from conftest import requires_shared, shared_path
from mirec import steps
from mirec.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # components/ and pipelines/ are top-level packages of the checkout
    sys.path.insert(0, str(REPO))


def _docs(path: Path) -> list:
    return list(yaml.safe_load_all(path.read_text()))


# ---- compile: every pipeline in pipelines/ equals its committed YAML, and parses strictly -----------------
def _pipeline_modules() -> list[str]:
    from pipelines.local import available_pipelines

    return available_pipelines()


def test_training_pipeline_is_listed():
    assert "training_pipeline" in _pipeline_modules()


@pytest.mark.parametrize("module", _pipeline_modules())
def test_compiled_yaml_in_sync_and_strict(module, tmp_path):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    from pipelines.local import compile_pipeline

    committed = REPO / "pipelines" / "compiled" / f"{module}.yaml"
    fresh = compile_pipeline(module, tmp_path / f"{module}.yaml")
    assert committed.is_file(), f"{committed} missing: run `mirec pipeline compile`"
    # compare the parsed documents (the header comment prints dict defaults in a hash-dependent order)
    assert _docs(fresh) == _docs(committed), f"{committed} is stale: run `mirec pipeline compile`"
    docs = _docs(committed)
    json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())  # unknown fields raise
    if len(docs) > 1:  # kfp-kubernetes settings live in the platform spec
        json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec())


def _platform(name: str) -> tuple[dict, dict]:
    docs = _docs(REPO / "pipelines" / "compiled" / f"{name}.yaml")
    return docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_training_yaml_cluster_settings():
    """The default (CPU) variant runs as rendered on any cluster: no GPU request, no pre-existing PVC; every task
    runs the `image` parameter non-root with a timeout and the pull secret; the Feast tasks carry the
    NetworkPolicy label and the production feature-store settings."""
    spec, execs = _platform("training_pipeline")
    for name, e in execs.items():
        assert "pvcMount" not in e, name  # data moves as kfp artifacts
        assert e["securityContext"] == {"runAsUser": "10001", "runAsGroup": "10001", "runAsNonRoot": True} or \
            e["securityContext"] == {"runAsUser": 10001, "runAsGroup": 10001, "runAsNonRoot": True}, name
        assert int(e["activeDeadlineSeconds"]) > 0, name
        assert e["imagePullSecret"], name
    train = [n for n in execs if n.startswith("exec-train-candidate-op")]
    assert len(train) == 2
    for n in train:
        assert "nodeSelector" not in execs[n] and "tolerations" not in execs[n]
    assert execs["exec-features-materialize-op"]["podMetadata"]["labels"]["mirec.io/feast-client"] == "true"
    assert any("secretAsEnv" in e for e in execs.values())
    for name, ex in spec["deploymentSpec"]["executors"].items():
        c = ex["container"]
        assert "accelerator" not in c.get("resources", {}), name
        assert "pipelinechannel--image" in c["image"], name  # the `image` parameter
        assert "pip install" not in " ".join(c["command"]), name
        assert "from mirec import steps" in c["command"][-1], name
    # candidates A and B train in parallel: neither training task depends on the other
    tasks = spec["root"]["dag"]["tasks"]
    ta, tb = tasks["train-candidate-op"], tasks["train-candidate-op-2"]
    assert "train-candidate-op-2" not in ta.get("dependentTasks", [])
    assert "train-candidate-op" not in tb.get("dependentTasks", [])
    params = spec["root"]["inputDefinitions"]["parameters"]
    for p in ("data_uri", "candidate_a", "candidate_b", "k_interests", "epochs", "thresholds", "split",
              "experiment_split", "image", "image_pull_secret", "release_store", "release_name"):
        assert p in params
        assert params[p].get("description"), f"parameter {p} has no description for the UI"
    assert params["image"]["defaultValue"] == "ghcr.io/mirec-project/mirec:0.1.0"


def test_gpu_variant_requests_gpus_on_gpu_nodes():
    spec, execs = _platform("training_pipeline_gpu")
    for n in ("exec-train-candidate-op", "exec-train-candidate-op-2"):
        assert execs[n]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
        assert execs[n]["tolerations"][0]["key"] == "nvidia.com/gpu"
        res = spec["deploymentSpec"]["executors"][n]["container"]["resources"]
        assert res["accelerator"]["resourceType"] == "nvidia.com/gpu" and res["accelerator"]["resourceCount"] == "1"
    assert spec["root"]["inputDefinitions"]["parameters"]["image"]["defaultValue"].endswith("-gpu")


def test_distributed_variant_creates_and_deletes_the_runs_volume():
    spec, execs = _platform("training_pipeline_distributed")
    tasks = spec["root"]["dag"]["tasks"]
    creates = [n for n, tk in tasks.items() if tk["componentRef"]["name"].startswith("comp-createpvc")]
    deletes = [n for n, tk in tasks.items() if tk["componentRef"]["name"].startswith("comp-deletepvc")]
    assert len(creates) == 2 and len(deletes) == 2
    for n in ("exec-train-candidate-op", "exec-train-candidate-op-2"):
        e = execs[n]
        assert e["pvcMount"][0]["mountPath"] == "/mnt/mirec" and "taskOutputParameter" in json.dumps(e["pvcMount"])
        fields = {f["name"]: f["fieldPath"] for f in e["fieldPathAsEnv"]}
        assert fields == {"MIREC_POD_NAMESPACE": "metadata.namespace", "MIREC_POD_NAME": "metadata.name",
                          "MIREC_POD_UID": "metadata.uid"}
    for n in creates:  # ReadWriteMany: the TrainJob's pods mount it on several nodes
        inputs = tasks[n]["inputs"]["parameters"]
        assert inputs["access_modes"]["runtimeValue"]["constant"] == ["ReadWriteMany"]


def test_components_are_thin():
    """Each component body calls one mirec.steps function and holds no logic of its own."""
    import inspect

    import components

    for name in components.__all__:
        comp = getattr(components, name)
        src = inspect.getsource(comp.python_func)
        body = src.split('"""', 2)[-1]
        assert "from mirec import steps" in body, name
        calls = set(re.findall(r"steps\.(\w+)\(", body)) - {"artifact_metadata", "ui_metrics", "read_step"}
        assert len(calls) == 1, (name, calls)
        assert len([ln for ln in body.splitlines() if ln.strip()]) <= 12, name


# ---- PyTorchJob ---------------------------------------------------------------------------------------------
def _render(workers: int, gpus: int = 0):
    return steps.render_pytorchjob("mirec-train-a", "ghcr.io/mirec-project/mirec:0.1.0", ["mirec", "pipeline", "train-worker"],
                                   workers=workers, gpus_per_worker=gpus, namespace="kubeflow-user",
                                   node_selector={"nvidia.com/gpu.present": "true"},
                                   tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])


def test_pytorchjob_render():
    job = _render(3, gpus=1)
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == 2
    c = specs["Worker"]["template"]["spec"]["containers"][0]
    assert c["name"] == "pytorch" and c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "${" not in json.dumps(job)
    assert "Worker" not in _render(1)["spec"]["pytorchReplicaSpecs"]


@requires_shared
@pytest.mark.parametrize("workers", [1, 4])
def test_pytorchjob_valid_against_strict_crd_schema(workers):
    import jsonschema

    schema = json.loads(shared_path("k8s-schemas", "pytorchjob-kubeflow-v1-strict.json").read_text())
    jsonschema.validate(_render(workers, gpus=1), schema)
    bad = _render(workers)
    bad["spec"]["pytorchReplicaSpecs"]["Master"]["replicaz"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_submit_pytorchjob_with_fake_api():
    class FakeApi:
        def __init__(self):
            self.created, self.polls = None, 0

        def create_namespaced_custom_object(self, group, version, ns, plural, body):
            assert (group, version, plural) == ("kubeflow.org", "v1", "pytorchjobs")
            self.created = body

        def get_namespaced_custom_object(self, group, version, ns, plural, name):
            self.polls += 1
            cond = [{"type": "Running", "status": "True"}] if self.polls < 2 else [{"type": "Succeeded", "status": "True"}]
            return {"status": {"conditions": cond}}

    api = FakeApi()
    status = steps.submit_pytorchjob(_render(2), api=api, poll_s=0)
    assert api.created["kind"] == "PyTorchJob" and status["conditions"][0]["type"] == "Succeeded"


# ---- gate ---------------------------------------------------------------------------------------------------
def _fake_eval(tmp: Path, name: str, split_id: str | None = None, **metrics) -> Path:
    d = tmp / f"eval_{name}"
    d.mkdir()
    (d / steps.STEP_FILE).write_text(json.dumps({"step": "evaluate_candidate", "status": "ok", "candidate": name,
                                                 "model": "mind", "split_id": split_id, "metrics": metrics}))
    return d


def _fake_baselines(tmp: Path, split_id: str = "s1", **recall: float) -> Path:
    """The evaluate_baselines step's record: name -> recall@50 on split `split_id`."""
    d = tmp / "baselines"
    d.mkdir()
    (d / steps.STEP_FILE).write_text(json.dumps({"step": "evaluate_baselines", "status": "ok", "baselines": {
        n: {"dir": n, "model": n, "split_id": split_id, "metrics": {"recall@50": v}} for n, v in recall.items()}}))
    return d


def _publish_champion(store: Path, version: str, recall: float, split_id: str = "s1") -> str:
    """A release published as the deploy step does: package.json's candidate metrics are its metrics.json."""
    from mirec.release.store import build_manifest, publish_release, write_manifest

    local = store.parent / f"staged_{version}"
    local.mkdir()
    (local / "package.json").write_text(json.dumps({"candidates": [{"name": "mirec_a", "version": version, "metrics": {
        "model": "mind", "split": "test", "split_id": split_id, "n_users": 200, "metrics": {"recall@50": recall}}}]}))
    (local / "values-release.yaml").write_text(
        "api:\n  settings:\n    experiment:\n      arms:\n      - {name: A, model: mirec_a, weight: 1.0}\n")
    write_manifest(local, build_manifest(local, "mirec", version, f"2026-01-0{version}T00:00:00+00:00"))
    publish_release(local, f"{store.as_uri()}/mirec/{version}")
    return store.as_uri()


_OK = {"ndcg@50": 0.1, "interest_cos": 0.4, "single_interest_share": 0.0, "effective_interests": 2.5}


def test_gate_champion_challenger_refuses_what_does_not_beat_the_deployed_champion(tmp_path):
    """A beats the best baseline but not the champion: refused with the numbers; B beats both: promoted. The
    champion is the newest release in the store (v2), read from its package.json."""
    a = _fake_eval(tmp_path, "A", "s1", **{"recall@50": 0.25, **_OK})
    b = _fake_eval(tmp_path, "B", "s1", **{"recall@50": 0.28, **_OK})
    base = _fake_baselines(tmp_path, itemknn=0.20, popularity=0.10, single=0.18)
    store = tmp_path / "store"
    _publish_champion(store, "1", 0.30)
    uri = _publish_champion(store, "2", 0.26)  # the newer one is the deployed champion
    th = {"champion_challenger": {"margin": 0.02}}
    d = steps.gate({"A": a, "B": b}, th, tmp_path / "gate", baselines_dir=base, release_store=uri)
    assert d["passed"] == ["B"] and d["winner"] == "B" and d["rejected"] == ["A"]
    ra, rb = d["candidates"]["A"]["reasons"], d["candidates"]["B"]["reasons"]
    assert "PASS beats baselines: 0.2500 (needs >= 0.2000; best baseline itemknn recall@50 = 0.2000, margin 0 " \
           "(relative))" in ra  # baseline_margin 0 by default: at least equal to the best baseline
    assert "FAIL beats champion: 0.2500 (needs >= 0.2652; champion mirec_a recall@50 = 0.2600, margin 0.02 " \
           "(relative))" in ra
    assert any(r.startswith("PASS beats champion: 0.2800") for r in rb)
    assert any(r.startswith("PASS champion on the same split") for r in rb)
    cc = d["champion_challenger"]
    assert cc["enabled"] and not cc["first_release"] and cc["best_baseline"] == "itemknn"
    assert cc["champion"]["uri"].endswith("/mirec/2") and cc["champion"]["recall@50"] == 0.26
    md = (tmp_path / "gate" / "report.md").read_text()
    assert "## Champion / challenger" in md and "| baseline itemknn (best) | 0.2000 | s1 |" in md
    assert "| champion mirec_a (" in md and "FAIL beats champion" in md
    assert "Champion / challenger" in (tmp_path / "gate" / "report.html").read_text()
    assert steps.read_step(tmp_path / "gate")["champion_challenger"]["champion"] == "mirec_a"
    # an explicit champion release (e.g. the older, still deployed v1) wins over "the newest"
    d1 = steps.gate({"A": a, "B": b}, th, tmp_path / "gate1", baselines_dir=base, release_store=uri,
                    champion_release=f"{uri}/mirec/1")
    assert d1["winner"] == "none" and d1["champion_challenger"]["champion"]["recall@50"] == 0.30


def test_gate_champion_challenger_first_release_decides_on_the_baselines_alone(tmp_path):
    a = _fake_eval(tmp_path, "A", "s1", **{"recall@50": 0.25, **_OK})
    b = _fake_eval(tmp_path, "B", "s1", **{"recall@50": 0.19, **_OK})  # below itemknn: refused
    base = _fake_baselines(tmp_path, itemknn=0.20, popularity=0.10)
    empty = (tmp_path / "store").as_uri()  # nothing published yet
    d = steps.gate({"A": a, "B": b}, None, tmp_path / "gate", baselines_dir=base, release_store=empty)
    assert d["passed"] == ["A"] and d["winner"] == "A"  # on by default when the step gets baselines
    cc = d["champion_challenger"]
    assert cc["first_release"] and cc["champion"] is None and "first release" in cc["note"]
    assert any(r.startswith("PASS beats champion: 0.2500 (needs a champion; no champion deployed (first release): "
                            "decided on the baselines alone)") for r in d["candidates"]["A"]["reasons"])
    assert any(r.startswith("FAIL beats baselines: 0.1900") for r in d["candidates"]["B"]["reasons"])
    md = (tmp_path / "gate" / "report.md").read_text()
    assert "first release, decided on the baselines rule alone" in md
    # required champion: refused; switched off: the thresholds alone
    strict = {"champion_challenger": {"allow_no_champion": False}}
    assert steps.gate({"A": a}, strict, tmp_path / "g2", baselines_dir=base, release_store=empty)["winner"] == "none"
    for i, switched_off in enumerate((None, False)):  # false: what a kfp dict parameter can carry
        off = steps.gate({"A": a, "B": b}, {"champion_challenger": switched_off}, tmp_path / f"g3{i}",
                         baselines_dir=base)
        assert off["passed"] == ["A", "B"] and off["champion_challenger"] == {"enabled": False}
    # no baselines evaluated: nothing shows the candidate is any good -> refused
    (tmp_path / "nb").mkdir()
    none = _fake_baselines(tmp_path / "nb")
    assert steps.gate({"A": a}, None, tmp_path / "g4", baselines_dir=none)["winner"] == "none"


def test_gate_champion_on_another_split_is_not_compared(tmp_path):
    a = _fake_eval(tmp_path, "A", "s1", **{"recall@50": 0.30, **_OK})
    base = _fake_baselines(tmp_path, itemknn=0.20)
    uri = _publish_champion(tmp_path / "store", "1", 0.10, split_id="s0")  # a weaker champion, other split
    d = steps.gate({"A": a}, None, tmp_path / "gate", baselines_dir=base, release_store=uri)
    assert d["winner"] == "none"
    assert any(r.startswith("FAIL champion on the same split") and "re-evaluate" in r
               for r in d["candidates"]["A"]["reasons"])
    warn = {"champion_challenger": {"on_split_mismatch": "warn"}}
    assert steps.gate({"A": a}, warn, tmp_path / "g2", baselines_dir=base, release_store=uri)["winner"] == "A"
    with pytest.raises(ConfigError, match="champion_challenger"):
        steps.gate({"A": a}, {"champion_challenger": {"margn": 0.1}}, tmp_path / "g3", baselines_dir=base)


def test_evaluate_baselines_on_the_candidates_split(tmp_path):
    """The baselines step fits popularity / item-kNN on the training users and evaluates them on the split the
    candidates are evaluated on (same fingerprint)."""
    from mirec.data import Dataset
    from mirec.evaluate import split_fingerprint

    data = tmp_path / "data"
    steps.data_ingest(data, data_config={"synth": {"n_users": 120, "n_items": 120, "n_categories": 4}})
    info = steps.evaluate_baselines(data, tmp_path / "base", ["popularity", {"name": "itemknn", "neighbors": 20}],
                                    {"split": "test", "n_values": [10, 50], "tradeoff_lambdas": [0.1]})
    assert info["status"] == "ok" and list(info["baselines"]) == ["popularity", "itemknn"]
    ds = Dataset(data)
    fp = split_fingerprint(ds, "test", ds.eval_examples("test"))
    for n, b in info["baselines"].items():
        assert b["split_id"] == fp and 0 < b["metrics"]["recall@50"] <= 1, n
        assert steps.read_step(tmp_path / "base" / n)["split_id"] == fp
    from mirec.gate import read_baselines

    assert read_baselines(tmp_path / "base")["itemknn"]["split_id"] == fp
    assert steps.evaluate_baselines(data, tmp_path / "none", [])["status"] == "skipped"
    with pytest.raises(ConfigError):
        steps.evaluate_baselines(data, tmp_path / "bad", [{"neighbors": 3}])


def test_gate_rejects_collapsed_and_picks_winner(tmp_path):
    a = _fake_eval(tmp_path, "A", **{"recall@50": 0.30, "ndcg@50": 0.1, "interest_cos": 0.4,
                                      "single_interest_share": 0.0, "diversity@50": 0.7})
    b = _fake_eval(tmp_path, "B", **{"recall@50": 0.35, "ndcg@50": 0.1, "interest_cos": 1.0,
                                      "single_interest_share": 1.0, "diversity@50": 0.5})
    d = steps.gate({"A": a, "B": b}, None, tmp_path / "gate")
    assert d["winner"] == "A" and d["passed"] == ["A"] and d["rejected"] == ["B"]
    assert any(r.startswith("FAIL interest_cos") for r in d["candidates"]["B"]["reasons"])
    assert steps.gate_passed(tmp_path / "gate", "A") and not steps.gate_passed(tmp_path / "gate", "B")
    html = (tmp_path / "gate" / "report.html").read_text()
    assert "data:image/png;base64," in html and "REJECTED" in html
    assert "| recall@50 | 0.3000 | 0.3500 |" in (tmp_path / "gate" / "report.md").read_text()
    # a rule can be switched off, a missing metric fails its rule, unknown keys are refused
    d2 = steps.gate({"A": a, "B": b}, {"max_interest_cos": None, "max_single_interest_share": None},
                    tmp_path / "gate")  # same dir again: overwritten cleanly
    assert d2["winner"] == "B"
    assert sorted(p.name for p in (tmp_path / "gate").iterdir()) == sorted(
        ["_step.json", "decision.json", "report.md", "report.html", "accuracy_diversity.png"])
    d3 = steps.gate({"A": a, "B": b}, {"min_nonexistent": 0.1}, tmp_path / "gate3")
    assert d3["winner"] == "none"
    with pytest.raises(ConfigError):
        steps.gate({"A": a}, {"recall": 0.1}, tmp_path / "gate4")


def test_package_with_nothing_passing_makes_no_mar(tmp_path):
    a = _fake_eval(tmp_path, "A", **{"recall@50": 0.0})
    steps.gate({"A": a}, None, tmp_path / "gate")
    info = steps.package_candidates({"A": tmp_path / "model"}, {"A": a}, tmp_path / "gate", tmp_path / "pkg",
                                    mar_dirs={"A": tmp_path / "mar_a"})
    assert info["status"] == "skipped"
    assert not list((tmp_path / "pkg").glob("**/*.mar")) and not list((tmp_path / "mar_a").glob("*.mar"))
    assert json.loads((tmp_path / "mar_a" / "REJECTED.json").read_text())["reasons"]
    assert steps.deploy(tmp_path / "pkg", tmp_path / "dep")["status"] == "skipped"
    assert steps.build_monitoring_reference({"A": a}, tmp_path, tmp_path / "pkg", tmp_path / "ref")["status"] == "skipped"


# ---- deploy ---------------------------------------------------------------------------------------------------
def _fake_package(tmp: Path, names=("A", "B")) -> Path:
    pkg = tmp / "pkg"
    (pkg / "model-store").mkdir(parents=True)
    mars = {}
    for n in names:
        mar = pkg / "model-store" / f"mirec_{n.lower()}.mar"
        mar.write_bytes(b"PK-fake")
        mars[n] = {"candidate": n, "model_name": f"mirec_{n.lower()}", "version": "20260101", "mar": mar.name,
                   "mar_bytes": 7}
    (pkg / steps.STEP_FILE).write_text(json.dumps({"step": "package_candidates", "status": "ok", "mars": mars}))
    return pkg


def test_deploy_helm_values(tmp_path):
    info = steps.deploy(_fake_package(tmp_path), tmp_path / "dep", experiment_split=0.7)
    values = yaml.safe_load((tmp_path / "dep" / "values-release.yaml").read_text())
    assert [m["name"] for m in values["torchserve"]["models"]] == ["mirec_a", "mirec_b"]
    assert values["torchserve"]["models"][0]["version"] == "20260101"
    arms = values["api"]["settings"]["experiment"]["arms"]
    assert [(a["name"], a["weight"]) for a in arms] == [("A", 0.7), ("B", 0.3)]
    assert (tmp_path / "dep" / "release" / "model-store" / "mirec_b.mar").is_file() and info["registered"] == []
    with pytest.raises(ConfigError):
        steps.deploy(_fake_package(tmp_path / "x"), tmp_path / "dep2", experiment_split=1.5)


@requires_shared
def test_deploy_values_fit_the_chart_schema(tmp_path):
    """The release values merge into charts/mirec's values and pass its values.schema.json (when present)."""
    import jsonschema

    schema_file = REPO / "charts" / "mirec" / "values.schema.json"
    if not schema_file.is_file():
        pytest.skip("charts/mirec/values.schema.json not present")
    steps.deploy(_fake_package(tmp_path), tmp_path / "dep", experiment_split=0.5)
    base = yaml.safe_load((REPO / "charts" / "mirec" / "values.yaml").read_text())
    rel = yaml.safe_load((tmp_path / "dep" / "values-release.yaml").read_text())

    def merge(a, b):  # Helm's merge: maps deep-merge, lists replace
        if isinstance(a, dict) and isinstance(b, dict):
            return {**a, **{k: merge(a.get(k), v) for k, v in b.items()}}
        return b

    jsonschema.validate(merge(base, rel), json.loads(schema_file.read_text()))


def test_deploy_registers_with_torchserve_management_api(tmp_path, monkeypatch):
    seen = []

    class H(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            seen.append((self.command, self.path, self.headers.get("Authorization")))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"status": "ok"}')

        do_POST = do_PUT = _answer

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("TORCHSERVE_MANAGEMENT_TOKEN", "tok123")
        info = steps.deploy(_fake_package(tmp_path, ("A",)), tmp_path / "dep", mode="torchserve",
                            torchserve_management_url=f"http://127.0.0.1:{srv.server_port}",
                            mar_base_url="https://models.example.com/mirec")
    finally:
        srv.shutdown()
    assert info["registered"][0]["url"] == "https://models.example.com/mirec/mirec_a.mar"
    assert seen[0][0] == "POST" and seen[0][1].startswith("/models?") and "model_name=mirec_a" in seen[0][1]
    assert seen[1][:2] == ("PUT", "/models/mirec_a/20260101/set-default") and seen[1][2] == "Bearer tok123"


# ---- CLI, configs, image ----------------------------------------------------------------------------------------
def test_cli_params(tmp_path):
    from mirec.cli.pipeline import TINY_PARAMS, load_params

    f = tmp_path / "p.yaml"
    f.write_text("epochs: 2\ncandidate_b: {name: comirec_dr}\n")
    p = load_params(f, ["k_interests=5", "data_uri=s3://bucket/x.csv", 'thresholds={"min_recall@50": 0.1}'], tiny=True)
    assert p["epochs"] == 2 and p["k_interests"] == 5 and p["data_uri"] == "s3://bucket/x.csv"
    assert p["candidate_b"] == {"name": "comirec_dr"} and p["thresholds"] == {"min_recall@50": 0.1}
    assert p["data_config"] == TINY_PARAMS["data_config"]
    with pytest.raises(ConfigError):
        load_params(None, ["novalue"])


def test_candidate_config_errors_are_clear():
    with pytest.raises(ConfigError):
        steps.model_and_train_configs({"name": "mind", "dimm": 3}, {})
    m, t = steps.model_and_train_configs({"name": "mind", "dim": 16.0}, {"batch_size": 64.0}, k_interests=3.0, epochs=2)
    assert (m.dim, m.K, t.batch_size, t.epochs) == (16, 3, 64, 2)  # kfp hands dict ints over as floats


def test_dockerfile_references_existing_files():
    text = (REPO / "Dockerfile").read_text()
    # bookworm pinned: the `torchserve` target needs openjdk-17, which trixie (python:3.11-slim today) lacks
    assert text.splitlines()[[i for i, ln in enumerate(text.splitlines()) if ln.startswith("FROM")][0]] == \
        "FROM python:3.11-slim-bookworm AS base"
    for line in text.splitlines():
        if line.startswith("COPY"):
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), f"Dockerfile copies {src}, which does not exist"
    assert "TORCH_VARIANT" in text and "download.pytorch.org/whl/" in text
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "artifacts" in ignored
    from components.image import DEFAULT_IMAGE

    assert DEFAULT_IMAGE.startswith("ghcr.io/mirec-project/mirec:")


def test_data_ingest_from_uri_and_overwrite(tmp_path):
    import pandas as pd

    rows = [(f"u{u}", f"i{(u * 3 + k) % 7}", 1_700_000_000 + 60 * k) for u in range(6) for k in range(6)]
    src = tmp_path / "events.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(src, index=False)
    out = tmp_path / "ds"
    out.mkdir()
    (out / "stale.parquet").write_text("from an earlier attempt")
    info = steps.data_ingest(out, data_uri=f"file://{src}", data_format="table",
                             data_config={"min_user_count": 1.0, "min_item_count": 1.0})
    assert info["status"] == "ok" and info["n_users"] == 6 and info["rows_kept"] == 36
    assert (out / "interactions.parquet").is_file() and not (out / "stale.parquet").exists()
    with pytest.raises(ConfigError):
        steps.data_ingest(tmp_path / "ds2", data_uri="nosuchscheme://bucket/x.csv", data_format="table")
    with pytest.raises(ConfigError, match="data_format"):  # a URI must not silently fall back to synthetic data
        steps.data_ingest(tmp_path / "ds3", data_uri=str(src))


def test_submit_uses_kfp_client(monkeypatch, tmp_path):
    import kfp

    import pipelines.local as pl

    calls = {}

    class FakeClient:
        def __init__(self, **kw):
            calls["init"] = kw

        def create_run_from_pipeline_package(self, pipeline_file, **kw):
            calls["run"] = (pipeline_file, kw)
            return type("R", (), {"run_id": "run-123"})()

    monkeypatch.setattr(kfp, "Client", FakeClient)
    rid = pl.submit("http://kfp.example:8080", {"epochs": 2}, namespace="team-a", existing_token="t")
    assert rid == "run-123" and calls["init"]["host"] == "http://kfp.example:8080"
    assert calls["run"][0].endswith("pipelines/compiled/training_pipeline.yaml")
    assert calls["run"][1]["arguments"] == {"epochs": 2} and calls["run"][1]["namespace"] == "team-a"
    with pytest.raises(FileNotFoundError):
        pl.submit("http://x", package=tmp_path / "missing.yaml")


# (distributed training through the shared volume: tests/test_pipeline_launch.py)


def test_no_top_level_folder_shadows_a_python_module():
    """The repository root is on sys.path (pytest, `python -m`, kfp's local runner), so a folder there becomes an
    importable (namespace) package: a `docker/` folder once made kfp's local runner fail with "module 'docker'
    has no attribute 'DockerClient'" (kfp imports docker-py, absent here, and caught only the ImportError).
    Every top-level folder is therefore listed here on purpose, and none is named like an installed package."""
    import importlib.metadata

    root = Path(__file__).resolve().parents[1]
    packages = {"mirec", "components", "pipelines", "serving", "monitoring", "feature_repo", "benchmarks", "tests"}
    not_modules = {"docs", "charts", "k8s", "scripts", "artifacts", "mirec.egg-info", "build", "dist"}
    folders = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}
    assert folders <= packages | not_modules, f"new top-level folder(s) {sorted(folders - packages - not_modules)}: " \
        "check the name shadows no module anything imports, then list it here"
    # feast's wheel ships a stray top-level `docs` package that nothing imports
    shadowing = (folders - packages - {"docs"}) & set(importlib.metadata.packages_distributions())
    assert not shadowing, sorted(shadowing)
