"""The mirec training pipeline (kfp v2).

    data_ingest -> features_materialize -> build_training_data -> train A | train B (in parallel)
      -> evaluate A | evaluate B -> gate (decision + reasons, comparison report)
      -> package_candidates (MARs of the passing candidates only) -> build_monitoring_reference -> deploy

Compile:  mirec pipeline compile            (-> pipelines/compiled/training_pipeline.yaml)
Run:      mirec pipeline run --local        (kfp local SubprocessRunner, this machine's venv)
Submit:   mirec pipeline submit --host URL  (kfp.Client), or upload the YAML in the Kubeflow UI.

Cluster settings (kfp-kubernetes; compiled into the YAML, ignored by the local runner) are the constants
below: GPU request, node selector and toleration on the training tasks, the artifacts PVC, secrets as env.
"""


from kfp import dsl, kubernetes

from components.image import BASE_IMAGE
from components import (build_monitoring_reference_op, build_training_data_op, data_ingest_op, deploy_op,
                        evaluate_candidate_op, features_materialize_op, gate_op, package_candidates_op,
                        train_candidate_op)
from components.tune import tune_candidate_op

PIPELINE_NAME = "mirec-training"

# ---- cluster settings ------------------------------------------------------------------------------------
TRAIN_ACCELERATOR = "nvidia.com/gpu"  # resource name of the GPU request on the training tasks
TRAIN_GPUS = 1
TRAIN_CPU, TRAIN_MEMORY = "4", "16G"
TRAIN_NODE_SELECTOR = ("nvidia.com/gpu.present", "true")  # label set by the NVIDIA GPU operator
TRAIN_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
ARTIFACTS_MOUNT = "/mnt/mirec"  # the PVC (pipeline parameter artifacts_pvc): raw data, PyTorchJob exchange dir
OBJECT_STORE_SECRET = "mirec-object-store"  # optional: credentials for s3:// / gs:// data URIs
OBJECT_STORE_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
                     "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL"}
TORCHSERVE_SECRET = "mirec-torchserve"  # optional: TorchServe management API token (key_file.json "management")
TORCHSERVE_KEYS = {"management-token": "TORCHSERVE_MANAGEMENT_TOKEN"}

# ---- parameter defaults (the main job: embedded synthetic data) --------------------------------------------
DEFAULT_CANDIDATE_A = {"name": "mind", "dim": 32}
DEFAULT_CANDIDATE_B = {"name": "comirec_sa", "dim": 32}
DEFAULT_TRAIN_CONFIG = {"batch_size": 256, "patience": 2}
DEFAULT_THRESHOLDS = {"primary": "recall@50", "min_recall@50": 0.02, "min_ndcg@50": 0.005,
                      "max_interest_cos": 0.95, "max_single_interest_share": 0.9}
DEFAULT_EVAL_CONFIG = {"split": "test", "n_values": [20, 50], "tradeoff_lambdas": [0.0, 0.05, 0.1, 0.2, 0.5]}
#: optional Optuna study for candidate A before it trains (mirec.tune.TuningStep: enabled, trials, epochs, timeout_s,
#: jobs, seed, space); disabled, the step passes candidate A's configs through unchanged
DEFAULT_TUNING = {"enabled": False, "trials": 10}


def _train_task(data, name: str, model_config, train_config, k_interests, epochs, distributed, pvc):
    t = train_candidate_op(training_data=data, name=name, model_config=model_config, train_config=train_config,
                           k_interests=k_interests, epochs=epochs, distributed=distributed)
    t.set_display_name(f"train candidate {name}")
    t.set_accelerator_type(TRAIN_ACCELERATOR).set_accelerator_limit(TRAIN_GPUS)
    t.set_cpu_limit(TRAIN_CPU).set_memory_limit(TRAIN_MEMORY)
    t.set_retry(num_retries=1)
    t.set_env_variable("MIREC_IMAGE", BASE_IMAGE)  # the PyTorchJob replicas run the same image
    kubernetes.add_node_selector(t, label_key=TRAIN_NODE_SELECTOR[0], label_value=TRAIN_NODE_SELECTOR[1])
    kubernetes.add_toleration(t, **TRAIN_TOLERATION)
    kubernetes.mount_pvc(t, pvc_name=pvc, mount_path=ARTIFACTS_MOUNT)
    return t


@dsl.pipeline(name=PIPELINE_NAME,
              description="mirec: data -> Feast -> train candidates A and B in parallel -> evaluate -> gate -> "
                          "package MARs -> monitoring reference -> deploy")
def training_pipeline(
    data_uri: str = "",
    data_format: str = "synthetic",
    data_config: dict = {},
    split: str = "comirec",
    use_feast: bool = True,
    features_config: dict = {},
    max_feast_labels: int = 2000,
    candidate_a: dict = DEFAULT_CANDIDATE_A,
    candidate_b: dict = DEFAULT_CANDIDATE_B,
    k_interests: int = 4,
    epochs: int = 6,
    train_config: dict = DEFAULT_TRAIN_CONFIG,
    distributed: dict = {"enabled": False},
    tuning: dict = DEFAULT_TUNING,
    eval_config: dict = DEFAULT_EVAL_CONFIG,
    thresholds: dict = DEFAULT_THRESHOLDS,
    model_version: str = "",
    package_config: dict = {},
    experiment_split: float = 0.5,
    deploy_mode: str = "helm-values",
    torchserve_management_url: str = "",
    mar_base_url: str = "",
    artifacts_pvc: str = "mirec-artifacts",
):
    """data_uri "" = the embedded synthetic data (data_config tunes it); candidate_a/b: mirec ModelConfig
    dicts (k_interests fills K when absent); thresholds: primary + min_<metric>/max_<metric> gate rules;
    experiment_split: A's share of the A/B traffic in the deployed Helm values; tuning.enabled: candidate A trains
    the best config of an Optuna study (tuning.trials trials) over the default search space (or tuning.space)."""
    ingest = data_ingest_op(data_uri=data_uri, data_format=data_format, data_config=data_config, split=split)
    ingest.set_display_name("validate + ingest data")
    kubernetes.use_secret_as_env(ingest, secret_name=OBJECT_STORE_SECRET, secret_key_to_env=OBJECT_STORE_KEYS,
                                 optional=True)
    kubernetes.mount_pvc(ingest, pvc_name=artifacts_pvc, mount_path=ARTIFACTS_MOUNT)

    feast = features_materialize_op(dataset=ingest.outputs["dataset"], features_config=features_config,
                                    use_feast=use_feast)
    feast.set_display_name("Feast apply + materialize")
    kubernetes.use_secret_as_env(feast, secret_name=OBJECT_STORE_SECRET, secret_key_to_env=OBJECT_STORE_KEYS,
                                 optional=True)

    tdata = build_training_data_op(dataset=ingest.outputs["dataset"], feature_store=feast.outputs["feature_store"],
                                   max_labels=max_feast_labels)
    tdata.set_display_name("build training data (point-in-time)")
    data = tdata.outputs["training_data"]

    tune_a = tune_candidate_op(training_data=data, model_config=candidate_a, train_config=train_config,
                               k_interests=k_interests, epochs=epochs, tuning=tuning)
    tune_a.set_display_name("tune candidate A (optional)").set_cpu_limit(TRAIN_CPU).set_memory_limit(TRAIN_MEMORY)
    train_a = _train_task(data, "A", tune_a.outputs["model_config"], tune_a.outputs["train_config"], k_interests, epochs,
                          distributed, artifacts_pvc)
    train_b = _train_task(data, "B", candidate_b, train_config, k_interests, epochs, distributed, artifacts_pvc)

    eval_a = evaluate_candidate_op(training_data=data, model=train_a.outputs["model"], name="A",
                                   eval_config=eval_config).set_display_name("evaluate candidate A")
    eval_b = evaluate_candidate_op(training_data=data, model=train_b.outputs["model"], name="B",
                                   eval_config=eval_config).set_display_name("evaluate candidate B")

    decide = gate_op(evaluation_a=eval_a.outputs["evaluation"], evaluation_b=eval_b.outputs["evaluation"],
                     thresholds=thresholds).set_display_name("compare + gate")

    pkg = package_candidates_op(model_a=train_a.outputs["model"], model_b=train_b.outputs["model"],
                                evaluation_a=eval_a.outputs["evaluation"], evaluation_b=eval_b.outputs["evaluation"],
                                decision=decide.outputs["decision"], version=model_version,
                                package_config=package_config).set_display_name("package MARs (gated)")

    ref = build_monitoring_reference_op(evaluation_a=eval_a.outputs["evaluation"],
                                        evaluation_b=eval_b.outputs["evaluation"], training_data=data,
                                        package=pkg.outputs["package"])
    ref.set_display_name("monitoring reference")

    dep = deploy_op(package=pkg.outputs["package"], experiment_split=experiment_split, deploy_mode=deploy_mode,
                    torchserve_management_url=torchserve_management_url, mar_base_url=mar_base_url)
    dep.set_display_name("deploy (Helm values / TorchServe)")
    dep.after(ref)
    dep.set_caching_options(False)
    kubernetes.use_secret_as_env(dep, secret_name=TORCHSERVE_SECRET, secret_key_to_env=TORCHSERVE_KEYS,
                                 optional=True)


PIPELINE = training_pipeline
