"""Distributed training of one candidate on Kubernetes: Kubeflow Trainer v2 `TrainJob` (default) or the legacy
Training Operator `PyTorchJob` (kubeflow.org/v1), launched from the pipeline's train task and awaited there.

Every replica runs `torchrun -m mirec.cli pipeline train-worker ...` with one process per GPU (nproc_per_node =
gpus_per_worker, 1 on CPU): the Trainer's torch runtime / the Training Operator (nprocPerNode) set torchrun's
PET_* variables, torchrun sets WORLD_SIZE/RANK/LOCAL_RANK for mirec.train's DDP. The job:
- runs in the launching pod's own namespace (a Kubeflow profile; `default-editor` may create jobs only there;
  k8s/launcher-rbac.yaml is the Role it needs),
- is owned by the launching pod (ownerReference): deleting the pipeline run's pod deletes the job, and the launcher
  deletes it itself when it stops waiting (failure, timeout, a retry's SIGTERM), so no GPU job is orphaned,
- has a deadline (activeDeadlineSeconds), the restricted securityContext of the chart, and no Istio sidecar
  (`sidecar.istio.io/inject: "false"`: a sidecar keeps a finished replica Running and blocks rendezvous),
- exchanges data through the shared RWX volume (dataset in, checkpoint out).
The manifests are built from the Trainer's own typed models (kubeflow_trainer_api) / the repo's PyTorchJob template
and validated in the tests against the CRDs' schemas (k8s/schemas/).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from mirec.config import StrictModel
from mirec.errors import ConfigError, MirecError

K8S_DIR = Path(__file__).resolve().parents[1] / "k8s"
PYTORCHJOB_TEMPLATE = K8S_DIR / "pytorchjob.yaml"
SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
ISTIO_OFF = {"sidecar.istio.io/inject": "false"}
LABELS = {"app.kubernetes.io/name": "mirec", "app.kubernetes.io/component": "training"}
#: the restricted Pod Security Standard, as the chart's pods run (UID 10001 of the image)
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
JOB_KINDS = {"trainjob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"),
             "pytorchjob": ("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob")}


class LaunchConfig(StrictModel):
    """The training pipeline's `distributed` parameter."""
    enabled: bool = False
    kind: Literal["trainjob", "pytorchjob"] = "trainjob"
    workers: int = Field(2, ge=1, description="nodes (pods)")
    gpus_per_worker: int = Field(0, ge=0, description="GPUs per pod = torchrun processes per pod (0: CPU, 1 process)")
    cpu: str = "2"
    memory: str = "8Gi"
    image: str = ""  # "" = $MIREC_IMAGE (the pipeline sets the task's own image)
    namespace: str = ""  # "" = the launching pod's namespace
    runtime: str = "torch-distributed"  # TrainJob: the ClusterTrainingRuntime to run on
    shared_dir: str = "/mnt/mirec"
    pvc_name: str = ""  # "" = $MIREC_ARTIFACTS_PVC (the claim mounted at shared_dir)
    timeout_s: int = Field(24 * 3600, ge=60)
    poll_s: float = Field(10.0, ge=0)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    image_pull_secrets: list[str] = Field(default_factory=list)

    @property
    def nproc_per_node(self) -> int:
        return max(1, self.gpus_per_worker)


def own_namespace() -> str:
    """The namespace this pod runs in ($MIREC_POD_NAMESPACE from the downward API, else the service account's)."""
    ns = os.environ.get("MIREC_POD_NAMESPACE", "")
    if not ns and Path(SA_NAMESPACE_FILE).is_file():
        ns = Path(SA_NAMESPACE_FILE).read_text().strip()
    if not ns:
        raise ConfigError("distributed training: no namespace (set distributed.namespace, or run in a pod with "
                          "MIREC_POD_NAMESPACE / a service account token)")
    return ns


def owner_reference() -> list[dict]:
    """ownerReference to the launching pod (downward API: MIREC_POD_NAME / MIREC_POD_UID); [] outside a pod."""
    name, uid = os.environ.get("MIREC_POD_NAME", ""), os.environ.get("MIREC_POD_UID", "")
    if not (name and uid):
        return []
    # blockOwnerDeletion false: setting it needs `update pods/finalizers`, which default-editor lacks
    return [{"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid, "controller": False,
             "blockOwnerDeletion": False}]


def torchrun_command(worker_args: list[str]) -> list[str]:
    """torchrun reads nnodes/node_rank/nproc_per_node/master from the PET_* variables the operators set."""
    return ["torchrun", "-m", "mirec.cli", "pipeline", "train-worker", *worker_args]


def _volumes(cfg: LaunchConfig, pvc: str) -> tuple[list[dict], list[dict]]:
    vols = [{"name": "artifacts", "persistentVolumeClaim": {"claimName": pvc}},
            {"name": "dshm", "emptyDir": {"medium": "Memory"}}]  # NCCL/gloo shared memory
    mounts = [{"name": "artifacts", "mountPath": cfg.shared_dir}, {"name": "dshm", "mountPath": "/dev/shm"}]
    return vols, mounts


def render_trainjob(job_name: str, image: str, command: list[str], cfg: LaunchConfig, namespace: str,
                    pvc: str, owners: list[dict] | None = None) -> dict:
    """A trainer.kubeflow.org/v1alpha1 TrainJob on the `cfg.runtime` ClusterTrainingRuntime, checked by the
    Trainer's typed models (kubeflow_trainer_api: an unknown field or a wrong type raises)."""
    from kubeflow_trainer_api import models as m

    vols, mounts = _volumes(cfg, pvc)
    resources: dict[str, Any] = {"cpu": cfg.cpu, "memory": cfg.memory}
    if cfg.gpus_per_worker:
        resources["nvidia.com/gpu"] = str(cfg.gpus_per_worker)
    pod: dict[str, Any] = {"securityContext": POD_SECURITY, "volumes": vols,
                           "containers": [{"name": "node", "securityContext": CONTAINER_SECURITY,
                                           "volumeMounts": mounts}]}
    if cfg.node_selector:
        pod["nodeSelector"] = dict(cfg.node_selector)
    if cfg.tolerations:
        pod["tolerations"] = copy.deepcopy(cfg.tolerations)
    if cfg.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in cfg.image_pull_secrets]
    # the runtime's replicated job that runs the trainer is named "node" (torch-distributed runtime)
    node = {"name": "node", "template": {"spec": {"template": {
        "metadata": {"labels": LABELS, "annotations": ISTIO_OFF}, "spec": pod}}}}
    meta: dict[str, Any] = {"name": job_name, "namespace": namespace, "labels": LABELS, "annotations": ISTIO_OFF}
    if owners:
        meta["ownerReferences"] = copy.deepcopy(owners)
    job = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "metadata": meta,
           "spec": {"runtimeRef": {"name": cfg.runtime, "kind": "ClusterTrainingRuntime",
                                   "apiGroup": "trainer.kubeflow.org"},
                    "activeDeadlineSeconds": cfg.timeout_s,
                    "trainer": {"image": image, "command": list(command), "numNodes": cfg.workers,
                                "numProcPerNode": cfg.nproc_per_node,
                                "resourcesPerNode": {"requests": resources, "limits": resources}},
                    "runtimePatches": [{"manager": "mirec.io/launcher", "trainingRuntimeSpec": {
                        "template": {"spec": {"replicatedJobs": [node]}}}}]}}
    job = json.loads(json.dumps(job))  # no shared sub-objects (YAML would print anchors)
    typed = m.TrainerV1alpha1TrainJob.from_dict(job)
    spec = typed.spec.to_dict()
    if spec != job["spec"]:
        raise MirecError(f"TrainJob spec did not survive the Trainer API models: {spec} != {job['spec']}")
    return job


def render_pytorchjob(job_name: str, image: str, command: list[str], workers: int = 1, namespace: str = "",
                      gpus_per_worker: int = 0, cpu: str = "2", memory: str = "8Gi", pvc_name: str = "mirec-artifacts",
                      mount_path: str = "/mnt/mirec", node_selector: dict | None = None,
                      tolerations: list | None = None, template: str | Path | None = None,
                      owners: list[dict] | None = None, timeout_s: int = 24 * 3600,
                      image_pull_secrets: list[str] | None = None) -> dict:
    """The legacy PyTorchJob (kubeflow.org/v1) from the repo's template: 1 Master + (workers - 1) Workers, each
    running `command` with nprocPerNode = max(1, gpus_per_worker) processes."""
    import yaml

    path = Path(template) if template else PYTORCHJOB_TEMPLATE
    if not path.is_file():
        raise ConfigError(f"PyTorchJob template not found: {path}")
    text = path.read_text()
    for key, val in {"JOB_NAME": job_name, "NAMESPACE": namespace or own_namespace(), "IMAGE": image,
                     "PVC_NAME": pvc_name, "MOUNT_PATH": mount_path, "CPU": cpu, "MEMORY": memory}.items():
        text = text.replace("${" + key + "}", str(val))
    job = yaml.safe_load(text)
    job["spec"]["nprocPerNode"] = str(max(1, int(gpus_per_worker)))
    job["spec"]["runPolicy"]["activeDeadlineSeconds"] = int(timeout_s)
    if owners:
        job["metadata"]["ownerReferences"] = copy.deepcopy(owners)
    specs = job["spec"]["pytorchReplicaSpecs"]
    workers = max(1, int(workers))
    for spec in specs.values():
        c = spec["template"]["spec"]["containers"][0]
        c["command"] = list(command)
        if gpus_per_worker:
            for part in ("requests", "limits"):
                c.setdefault("resources", {}).setdefault(part, {})["nvidia.com/gpu"] = int(gpus_per_worker)
        pod = spec["template"]["spec"]
        if node_selector:
            pod["nodeSelector"] = dict(node_selector)
        if tolerations:
            pod["tolerations"] = copy.deepcopy(tolerations)
        if image_pull_secrets:
            pod["imagePullSecrets"] = [{"name": s} for s in image_pull_secrets]
    if workers == 1:
        specs.pop("Worker", None)
    else:
        specs["Worker"]["replicas"] = workers - 1
    return job


def render_launcher_rbac(namespace: str, service_account: str = "default-editor") -> list[dict]:
    """Role + RoleBinding that let the pipeline's pods (service account `service_account`) run training jobs in
    `namespace` (k8s/launcher-rbac.yaml is this, rendered for the profile `kubeflow-user`)."""
    rules = [{"apiGroups": [g], "resources": [p, f"{p}/status"], "verbs": ["create", "get", "list", "watch", "delete"]}
             for g, _, p, _ in JOB_KINDS.values()]
    meta = {"name": "mirec-training-launcher", "namespace": namespace, "labels": LABELS}
    return [{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta, "rules": rules},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": meta["name"]},
             "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}]}]


def _custom_objects_api():
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except Exception:
        config.load_kube_config()
    return client.CustomObjectsApi()


def _finished(kind: str, obj: dict) -> tuple[bool, bool]:
    """(done, succeeded) from the job's conditions (TrainJob: Complete/Failed; PyTorchJob: Succeeded/Failed)."""
    conds = {c.get("type"): c.get("status") for c in (obj.get("status") or {}).get("conditions") or []}
    ok = conds.get("Complete" if kind == "trainjob" else "Succeeded") == "True"
    return ok or conds.get("Failed") == "True", ok


def submit_job(job: dict, api=None, poll_s: float = 10.0, timeout_s: float = 24 * 3600) -> dict:
    """Create the job (TrainJob or PyTorchJob, by its kind) and wait: -> its final status on success; MirecError on
    failure or timeout. However the wait ends without success (failure, timeout, an exception such as the SIGTERM
    of a retried task), the job is deleted so that no replica keeps its GPUs."""
    kind = "trainjob" if job["kind"] == "TrainJob" else "pytorchjob"
    group, version, plural, _ = JOB_KINDS[kind]
    api = api or _custom_objects_api()
    ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
    api.create_namespaced_custom_object(group, version, ns, plural, job)
    succeeded = False
    try:
        t0 = time.monotonic()
        while True:
            obj = api.get_namespaced_custom_object(group, version, ns, plural, name)
            done, succeeded = _finished(kind, obj)
            if succeeded:
                return obj.get("status") or {}
            if done:
                raise MirecError(f"{job['kind']} {ns}/{name} failed: {obj.get('status')}")
            if time.monotonic() - t0 > timeout_s:
                raise MirecError(f"{job['kind']} {ns}/{name} did not finish in {timeout_s:.0f}s")
            time.sleep(poll_s)
    finally:
        if not succeeded:
            try:
                api.delete_namespaced_custom_object(group, version, ns, plural, name)
            except Exception:  # already gone / no permission: the ownerReference still collects it
                pass


def submit_pytorchjob(job: dict, api=None, poll_s: float = 10.0, timeout_s: float = 24 * 3600) -> dict:
    """Compatibility name of `submit_job`."""
    return submit_job(job, api=api, poll_s=poll_s, timeout_s=timeout_s)


def render_job(cfg: LaunchConfig, job_name: str, worker_args: list[str]) -> dict:
    image = cfg.image or os.environ.get("MIREC_IMAGE", "")
    if not image:
        raise ConfigError("distributed training needs an image (distributed.image or $MIREC_IMAGE)")
    pvc = cfg.pvc_name or os.environ.get("MIREC_ARTIFACTS_PVC", "")
    if not pvc:
        raise ConfigError("distributed training needs the shared volume's claim (distributed.pvc_name, or the "
                          "pipeline's artifacts_pvc parameter)")
    ns = cfg.namespace or own_namespace()
    command = torchrun_command(worker_args)
    if cfg.kind == "trainjob":
        return render_trainjob(job_name, image, command, cfg, ns, pvc, owners=owner_reference())
    return render_pytorchjob(job_name, image, command, workers=cfg.workers, namespace=ns,
                             gpus_per_worker=cfg.gpus_per_worker, cpu=cfg.cpu, memory=cfg.memory, pvc_name=pvc,
                             mount_path=cfg.shared_dir, node_selector=cfg.node_selector, tolerations=cfg.tolerations,
                             owners=owner_reference(), timeout_s=cfg.timeout_s,
                             image_pull_secrets=cfg.image_pull_secrets)


def train_distributed(dataset_dir: str | Path, out: Path, name: str, mcfg, tcfg, dist: dict, api=None) -> dict:
    """Copy the dataset to the shared volume, run the job, copy the checkpoint back into `out`."""
    import yaml

    try:
        cfg = LaunchConfig.model_validate(dist)
    except Exception as exc:
        raise ConfigError(f"invalid distributed config: {' '.join(str(exc).split())[:400]}") from None
    shared = Path(cfg.shared_dir)
    if not shared.is_dir():
        raise ConfigError(f"distributed training needs the shared volume mounted at {shared} (distributed.shared_dir)")
    run_id = f"{name.lower()}-{datetime.now(timezone.utc):%Y%m%d%H%M%S}"
    work = shared / "trainjobs" / run_id
    data, ckpt = work / "dataset", work / "checkpoint"
    shutil.copytree(dataset_dir, data)
    (work / "model_config.json").write_text(mcfg.model_dump_json())
    (work / "train_config.json").write_text(tcfg.model_dump_json())
    args = ["--dataset-dir", str(data), "--model-config", str(work / "model_config.json"), "--train-config",
            str(work / "train_config.json"), "--out-dir", str(ckpt)]
    job = render_job(cfg, f"mirec-train-{run_id}", args)
    (out / f"{cfg.kind}.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
    submit_job(job, api=api, poll_s=cfg.poll_s, timeout_s=cfg.timeout_s)
    for f in ckpt.iterdir():
        (shutil.copytree if f.is_dir() else shutil.copy2)(f, out / f.name)
    tm = ckpt / "train_metrics.json"
    return json.loads(tm.read_text()) if tm.is_file() else {}
