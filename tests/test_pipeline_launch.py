"""Distributed training launch (issue 16, item 4): Kubeflow Trainer v2 TrainJob (default) and the legacy PyTorchJob,
both validated strictly against their CRD schemas (../shared/k8s-schemas; the TrainJob CRD converted here with the
same rules), torchrun with one process per GPU, the Istio annotation, the ownerReference to the launching pod, the
deadline, the securityContext, the run's own namespace, job cleanup when the wait ends badly, and the launcher's
Role/RoleBinding (kubernetes-validate). No cluster: the Kubernetes API is a fake object (cannot exist here)."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import requires_shared, shared_path
from mirec import launch
from mirec.errors import ConfigError, MirecError

REPO = Path(__file__).resolve().parents[1]
IMAGE = "ghcr.io/mirec-project/mirec:0.1.0"
OWNER = {"MIREC_POD_NAME": "mirec-training-xyz-train", "MIREC_POD_UID": "0b1c2d3e-aaaa-bbbb-cccc-1234567890ab",
         "MIREC_POD_NAMESPACE": "kubeflow-user"}


@pytest.fixture
def in_pod(monkeypatch):
    for k, v in OWNER.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MIREC_IMAGE", IMAGE)


def crd_schema(crd_file: Path, strict: bool = True) -> dict:
    """JSON Schema of a CRD's first version (openAPIV3Schema), unknown fields forbidden where the CRD lists
    properties (as `kubectl --validate=strict` / the API server's pruning would treat them)."""
    crd = yaml.safe_load(crd_file.read_text())
    schema = copy.deepcopy(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])

    def conv(node):
        if isinstance(node, list):
            return [conv(x) for x in node]
        if not isinstance(node, dict):
            return node
        out = {k: conv(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
        if node.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if strict and "properties" in node and "additionalProperties" not in node \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out

    return conv(schema)


def _trainjob(cfg: launch.LaunchConfig | None = None) -> dict:
    return launch.render_job(cfg or launch.LaunchConfig(enabled=True, workers=3, gpus_per_worker=4,
                                                        pvc_name="mirec-train-pvc"), "mirec-train-a-1", ["--x", "y"])


def test_trainjob_runs_torchrun_one_process_per_gpu_in_the_runs_namespace(in_pod):
    job = _trainjob()
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert job["metadata"]["namespace"] == "kubeflow-user"  # the launching pod's, never "kubeflow"
    t = job["spec"]["trainer"]
    assert t["command"][:5] == ["torchrun", "-m", "mirec.cli", "pipeline", "train-worker"]
    assert t["numNodes"] == 3 and t["numProcPerNode"] == 4
    assert t["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    assert job["spec"]["activeDeadlineSeconds"] == 24 * 3600
    assert job["spec"]["runtimeRef"] == {"name": "torch-distributed", "kind": "ClusterTrainingRuntime",
                                         "apiGroup": "trainer.kubeflow.org"}
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Pod", OWNER["MIREC_POD_NAME"], OWNER["MIREC_POD_UID"])
    node = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod = node["template"]["spec"]["template"]
    assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True and pod["spec"]["securityContext"]["fsGroup"] == 10001
    c = pod["spec"]["containers"][0]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "mirec-train-pvc"
    # CPU only: one process per node, no GPU request
    cpu = _trainjob(launch.LaunchConfig(enabled=True, workers=2, pvc_name="p"))
    assert cpu["spec"]["trainer"]["numProcPerNode"] == 1
    assert "nvidia.com/gpu" not in cpu["spec"]["trainer"]["resourcesPerNode"]["limits"]


@requires_shared
def test_trainjob_valid_against_its_strict_crd_schema(in_pod):
    import jsonschema

    schema = crd_schema(shared_path("k8s-schemas", "crds", "trainer.kubeflow.org_trainjobs.yaml"))
    for cfg in (launch.LaunchConfig(enabled=True, workers=1, pvc_name="p"),
                launch.LaunchConfig(enabled=True, workers=4, gpus_per_worker=8, pvc_name="p",
                                    node_selector={"nvidia.com/gpu.present": "true"},
                                    tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}],
                                    image_pull_secrets=["regcred"])):
        jsonschema.validate(_trainjob(cfg), schema)
    bad = _trainjob()
    bad["spec"]["trainer"]["numProcsPerNode"] = 2  # a typo'd field is refused
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def _pytorchjob(workers: int, gpus: int = 0) -> dict:
    return launch.render_job(launch.LaunchConfig(enabled=True, kind="pytorchjob", workers=workers,
                                                 gpus_per_worker=gpus, pvc_name="mirec-train-pvc"),
                             "mirec-train-a-1", ["--x", "y"])


def test_legacy_pytorchjob_has_the_same_guarantees(in_pod):
    job = _pytorchjob(3, gpus=2)
    assert job["metadata"]["namespace"] == "kubeflow-user" and job["spec"]["nprocPerNode"] == "2"
    assert job["spec"]["runPolicy"]["activeDeadlineSeconds"] == 24 * 3600
    assert job["metadata"]["ownerReferences"][0]["uid"] == OWNER["MIREC_POD_UID"]
    for role in ("Master", "Worker"):
        tpl = job["spec"]["pytorchReplicaSpecs"][role]["template"]
        assert tpl["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
        assert tpl["spec"]["securityContext"]["runAsNonRoot"] is True
        c = tpl["spec"]["containers"][0]
        assert c["command"][0] == "torchrun" and c["resources"]["limits"]["nvidia.com/gpu"] == 2
        assert tpl["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "mirec-train-pvc"
    assert "Worker" not in _pytorchjob(1)["spec"]["pytorchReplicaSpecs"]


@requires_shared
@pytest.mark.parametrize("workers", [1, 4])
def test_pytorchjob_valid_against_strict_crd_schema(in_pod, workers):
    import jsonschema

    schema = json.loads(shared_path("k8s-schemas", "pytorchjob-kubeflow-v1-strict.json").read_text())
    jsonschema.validate(_pytorchjob(workers, gpus=1), schema)
    bad = _pytorchjob(workers)
    bad["spec"]["pytorchReplicaSpecs"]["Master"]["replicaz"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_launch_needs_namespace_image_and_volume(monkeypatch):
    for k in (*OWNER, "MIREC_IMAGE", "MIREC_ARTIFACTS_PVC"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(launch, "SA_NAMESPACE_FILE", "/nonexistent")
    with pytest.raises(ConfigError, match="image"):
        launch.render_job(launch.LaunchConfig(enabled=True, pvc_name="p"), "j", [])
    with pytest.raises(ConfigError, match="claim"):
        launch.render_job(launch.LaunchConfig(enabled=True, image=IMAGE), "j", [])
    with pytest.raises(ConfigError, match="namespace"):
        launch.render_job(launch.LaunchConfig(enabled=True, image=IMAGE, pvc_name="p"), "j", [])
    job = launch.render_job(launch.LaunchConfig(enabled=True, image=IMAGE, pvc_name="p", namespace="team-a"), "j", [])
    assert job["metadata"]["namespace"] == "team-a" and "ownerReferences" not in job["metadata"]


class FakeApi:
    """The Kubernetes CustomObjectsApi surface the launcher uses (a cluster cannot exist here)."""

    def __init__(self, conditions: list[list[dict]]):
        self.conditions, self.created, self.deleted, self.polls = conditions, None, [], 0

    def create_namespaced_custom_object(self, group, version, ns, plural, body):
        self.created = (group, version, ns, plural, body)

    def get_namespaced_custom_object(self, group, version, ns, plural, name):
        c = self.conditions[min(self.polls, len(self.conditions) - 1)]
        self.polls += 1
        return {"status": {"conditions": c}}

    def delete_namespaced_custom_object(self, group, version, ns, plural, name):
        self.deleted.append((plural, name))


def test_submit_waits_for_completion_and_deletes_failed_or_abandoned_jobs(in_pod):
    job = _trainjob()
    ok = FakeApi([[{"type": "Created", "status": "True"}], [{"type": "Complete", "status": "True"}]])
    assert launch.submit_job(job, api=ok, poll_s=0)["conditions"][0]["type"] == "Complete"
    assert ok.created[:4] == ("trainer.kubeflow.org", "v1alpha1", "kubeflow-user", "trainjobs") and not ok.deleted
    failed = FakeApi([[{"type": "Failed", "status": "True"}]])
    with pytest.raises(MirecError, match="failed"):
        launch.submit_job(job, api=failed, poll_s=0)
    assert failed.deleted == [("trainjobs", "mirec-train-a-1")]
    stuck = FakeApi([[{"type": "Running", "status": "True"}]])
    with pytest.raises(MirecError, match="did not finish"):
        launch.submit_job(job, api=stuck, poll_s=0.01, timeout_s=0.05)
    assert stuck.deleted == [("trainjobs", "mirec-train-a-1")]
    legacy = FakeApi([[{"type": "Succeeded", "status": "True"}]])
    launch.submit_job(_pytorchjob(2), api=legacy, poll_s=0)
    assert legacy.created[:4] == ("kubeflow.org", "v1", "kubeflow-user", "pytorchjobs")


def test_launcher_rbac_is_committed_and_schema_valid(tmp_path):
    committed = [d for d in yaml.safe_load_all((REPO / "k8s" / "launcher-rbac.yaml").read_text()) if d]
    assert committed == launch.render_launcher_rbac("kubeflow-user")
    role = committed[0]
    assert {r["apiGroups"][0] for r in role["rules"]} == {"trainer.kubeflow.org", "kubeflow.org"}
    assert committed[1]["subjects"][0]["name"] == "default-editor"
    kv = Path(__import__("sys").executable).with_name("kubernetes-validate")
    if not kv.exists():
        pytest.skip("kubernetes-validate not installed")
    out = subprocess.run([str(kv), "--strict", "-k", "1.32.0", "--quiet", str(REPO / "k8s" / "launcher-rbac.yaml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_train_candidate_distributed_exchanges_through_the_shared_volume(in_pod, tmp_path, monkeypatch):
    """train_candidate in the distributed variant: dataset -> shared volume -> TrainJob (here its command run
    locally by a fake submit, WORLD_SIZE=1, instead of a cluster) -> checkpoint back into the Model artifact."""
    import os
    import sys

    from mirec import steps

    ds = tmp_path / "ds"
    steps.data_ingest(ds, data_config={"synth": {"n_users": 60, "n_items": 80, "n_categories": 4,
                                                 "seq_len": [10, 20]}})
    shared = tmp_path / "shared"
    shared.mkdir()
    submitted = []

    def fake_submit(job, api=None, poll_s=10.0, timeout_s=0):
        submitted.append(job)
        cmd = job["spec"]["trainer"]["command"]
        assert cmd[:3] == ["torchrun", "-m", "mirec.cli"]
        env = {**os.environ, "WORLD_SIZE": "1", "RANK": "0"}
        subprocess.run([sys.executable, *cmd[1:]], check=True, env=env, capture_output=True)
        return {"conditions": [{"type": "Complete", "status": "True"}]}

    monkeypatch.setattr(launch, "submit_job", fake_submit)
    info = steps.train_candidate(ds, tmp_path / "model", "A", {"name": "mind", "dim": 8, "K": 2},
                                 {"batch_size": 64, "num_negatives": 16}, epochs=1,
                                 distributed={"workers": 3, "shared_dir": str(shared), "gpus_per_worker": 1},
                                 train_mode="distributed", job_image=IMAGE, shared_pvc="run-pvc")
    assert info["mode"] == "trainjob(3 workers)"
    job = submitted[0]
    assert job["spec"]["trainer"]["numNodes"] == 3 and job["spec"]["trainer"]["image"] == IMAGE
    assert (tmp_path / "model" / "model.pt").is_file() and (tmp_path / "model" / "trainjob.yaml").is_file()
    with pytest.raises(ConfigError):  # no shared volume mounted
        steps.train_candidate(ds, tmp_path / "m2", "A", {"name": "mind"}, {}, epochs=1, train_mode="distributed",
                              distributed={"shared_dir": str(tmp_path / "nope")}, job_image="x", shared_pvc="p")
    with pytest.raises(ConfigError, match="train_mode"):
        steps.train_candidate(ds, tmp_path / "m3", "A", {"name": "mind"}, {}, epochs=1, train_mode="tpu")
