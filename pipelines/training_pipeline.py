"""The mirec training pipeline (kfp v2).

    data_ingest -> features_materialize -> build_training_data (the trainer's examples from Feast's offline store)
      -> train A | train B (in parallel; CPU, GPU or a distributed TrainJob: the compiled variant)
      -> evaluate A | evaluate B | baselines (popularity, item-kNN, single-interest: same split)
      -> gate (thresholds + champion/challenger: beat the best baseline and the release store's deployed champion
         by a margin; decision + reasons, comparison report)
      -> package_candidates (MARs of the passing candidates only) -> build_monitoring_reference
      -> deploy (publish the release to release_store: what the chart serves and monitors)

Compile:  mirec pipeline compile            (-> pipelines/compiled/training_pipeline.yaml)
Run:      mirec pipeline run --local        (kfp local SubprocessRunner, this machine's venv)
Submit:   mirec pipeline submit --host URL  (kfp.Client), or upload the YAML in the Kubeflow UI (docs/cluster.md).

Cluster settings (kfp-kubernetes; compiled into the YAML, ignored by the local runner): every task runs the `image`
parameter as UID 10001 (non-root) with a timeout and `image_pull_secret`; the Feast tasks carry the
`mirec.io/feast-client` label the chart's NetworkPolicy admits and the production feature-store settings from the
`mirec-feast` Secret; no task mounts a pre-existing PVC (data moves as kfp artifacts). The training tasks come in
three compiled variants (kfp's local runner cannot select artifacts across dsl.If branches, so the switch is the
variant, not a run parameter):
    training_pipeline.yaml              CPU training in the task's pod: runs on any cluster (the default)
    training_pipeline_gpu.yaml          GPU training: MIREC_TRAIN_GPUS (compile time, default 1) x nvidia.com/gpu,
                                        the NVIDIA node selector + toleration, image default <tag>-gpu
    training_pipeline_distributed.yaml  a Kubeflow TrainJob per candidate (parameter `distributed`) in the run's own
                                        namespace, on a ReadWriteMany PVC created for the run (kubernetes.CreatePVC)
                                        and deleted after packaging
"""


import os

from kfp import dsl, kubernetes

from components import (build_monitoring_reference_op, build_training_data_op, data_ingest_op, deploy_op,
                        evaluate_baselines_op, evaluate_candidate_op, features_materialize_op, gate_op, package_candidates_op,
                        train_candidate_op)
from components.image import BASE_IMAGE
from components.tune import tune_candidate_op

PIPELINE_NAME = "mirec-training"

# ---- cluster settings ------------------------------------------------------------------------------------
TRAIN_CPU, TRAIN_MEMORY = "4", "16G"
TRAIN_NODE_SELECTOR = ("nvidia.com/gpu.present", "true")  # label set by the NVIDIA GPU operator
TRAIN_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
ARTIFACTS_MOUNT = "/mnt/mirec"  # the per-run PVC of the distributed variant (dataset in, checkpoint out)
RUN_AS = {"run_as_user": 10001, "run_as_group": 10001, "run_as_non_root": True}  # the image's user
STEP_TIMEOUT_S = 2 * 3600  # any task; training gets TRAIN_TIMEOUT_S
TRAIN_TIMEOUT_S = 24 * 3600
OBJECT_STORE_SECRET = "mirec-object-store"  # optional: credentials for s3:// data URIs and the release store
OBJECT_STORE_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
                     "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL"}
FEAST_SECRET = "mirec-feast"  # optional: the production feature store (feature_repo/feature_store.production.yaml)
FEAST_KEYS = {k: k for k in ("MIREC_FEAST_PROFILE", "MIREC_FEAST_REGISTRY_URL", "MIREC_FEAST_REDIS",
                             "MIREC_FEAST_SOURCE_DIR")}
FEAST_CLIENT_LABEL = ("mirec.io/feast-client", "true")  # admitted by the chart's NetworkPolicy (feastClientsFrom)
TORCHSERVE_SECRET = "mirec-torchserve"  # optional: TorchServe management API token (key_file.json "management")
TORCHSERVE_KEYS = {"management-token": "TORCHSERVE_MANAGEMENT_TOKEN"}
VARIANTS = ("cpu", "gpu", "distributed")
TRAIN_ACCELERATOR = "nvidia.com/gpu"
TRAIN_GPUS = int(os.environ.get("MIREC_TRAIN_GPUS", "1"))  # gpu variant, per training task

# ---- parameter defaults (the main job: embedded synthetic data) --------------------------------------------
#: the candidates at their model defaults (dim 64): the same size as the trained single-interest baseline, so the
#: gate compares like with like (at dim 32 both lost to item-kNN on the embedded data: 0.516 / 0.551 vs 0.551)
DEFAULT_CANDIDATE_A = {"name": "mind"}
DEFAULT_CANDIDATE_B = {"name": "comirec_sa"}
DEFAULT_TRAIN_CONFIG = {"batch_size": 256, "patience": 2}
DEFAULT_THRESHOLDS = {"primary": "recall@50", "min_recall@50": 0.02, "min_ndcg@50": 0.005,
                      "max_interest_cos": 0.95, "max_single_interest_share": 0.9,
                      # mirec.ab.gate.GateRule: at least the best baseline (re-fitted on the same split), and the deployed
                      # champion + 2% (relative)
                      "champion_challenger": {"metric": "recall@50", "margin": 0.02, "baseline_margin": 0.0,
                                              "margin_kind": "relative"}}
#: the champion/challenger rule's baselines (mirec.steps.evaluate_baselines): fitted, or trained ({"name": model})
DEFAULT_BASELINES = ["popularity", "itemknn", {"name": "single"}]
DEFAULT_EVAL_CONFIG = {"split": "test", "n_values": [20, 50], "tradeoff_lambdas": [0.0, 0.05, 0.1, 0.2, 0.5]}
#: optional Optuna study for candidate A before it trains (mirec.tune.TuningStep: enabled, trials, epochs, timeout_s,
#: jobs, seed, space); disabled, the step passes candidate A's configs through unchanged
DEFAULT_TUNING = {"enabled": False, "trials": 10}


def _cluster(task, image, pull_secret, timeout_s: int = STEP_TIMEOUT_S):
    """What every task gets on the cluster: the image parameter, non-root, a timeout, the pull secret."""
    task.set_container_image(image)
    kubernetes.set_security_context(task, **RUN_AS)
    kubernetes.set_timeout(task, timeout_s)
    kubernetes.set_image_pull_secrets(task, [pull_secret])
    return task


def _feast_client(task):
    kubernetes.add_pod_label(task, *FEAST_CLIENT_LABEL)
    kubernetes.use_secret_as_env(task, secret_name=FEAST_SECRET, secret_key_to_env=FEAST_KEYS, optional=True)
    kubernetes.use_secret_as_env(task, secret_name=OBJECT_STORE_SECRET, secret_key_to_env=OBJECT_STORE_KEYS,
                                 optional=True)
    return task


def _train_task(data, name: str, model_config, train_config, k_interests, epochs, distributed, image, pull_secret,
                variant: str, pvc=None):
    t = train_candidate_op(training_data=data, name=name, model_config=model_config, train_config=train_config,
                           k_interests=k_interests, epochs=epochs, distributed=distributed,
                           train_mode=variant, job_image=image, shared_pvc=pvc if pvc is not None else "")
    t.set_display_name(f"train candidate {name}" + ("" if variant == "cpu" else f" ({variant})"))
    t.set_cpu_limit(TRAIN_CPU).set_memory_limit(TRAIN_MEMORY)
    t.set_retry(num_retries=1)
    _cluster(t, image, pull_secret, TRAIN_TIMEOUT_S)
    if variant == "gpu":
        t.set_accelerator_type(TRAIN_ACCELERATOR).set_accelerator_limit(TRAIN_GPUS)
        kubernetes.add_node_selector(t, label_key=TRAIN_NODE_SELECTOR[0], label_value=TRAIN_NODE_SELECTOR[1])
        kubernetes.add_toleration(t, **TRAIN_TOLERATION)
    if variant == "distributed":  # the launcher: its job runs in this pod's namespace, owned by this pod
        for env, field in (("MIREC_POD_NAMESPACE", "metadata.namespace"), ("MIREC_POD_NAME", "metadata.name"),
                           ("MIREC_POD_UID", "metadata.uid")):
            kubernetes.use_field_path_as_env(t, env_name=env, field_path=field)
        kubernetes.mount_pvc(t, pvc_name=pvc, mount_path=ARTIFACTS_MOUNT)
    return t


def build(variant: str = "cpu"):
    """The training pipeline with the training tasks of `variant` (cpu | gpu | distributed)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
    name = PIPELINE_NAME if variant == "cpu" else f"{PIPELINE_NAME}-{variant}"
    default_image = BASE_IMAGE + "-gpu" if variant == "gpu" else BASE_IMAGE

    @dsl.pipeline(name=name,
                  description=f"mirec ({variant} training): data -> Feast -> train candidates A and B in parallel -> evaluate -> gate -> "
                              "package MARs -> monitoring reference -> publish the release")
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
        distributed_pvc_size: str = "20Gi",
        distributed_storage_class: str = "",
        tuning: dict = DEFAULT_TUNING,
        eval_config: dict = DEFAULT_EVAL_CONFIG,
        thresholds: dict = DEFAULT_THRESHOLDS,
        baselines: list = DEFAULT_BASELINES,
        champion_release: str = "",
        model_version: str = "",
        package_config: dict = {},
        experiment_split: float = 0.5,
        deploy_mode: str = "helm-values",
        torchserve_management_url: str = "",
        mar_base_url: str = "",
        release_store: str = "",
        release_name: str = "mirec",
        image: str = default_image,
        image_pull_secret: str = "mirec-registry",
    ):
        """Train two multi-interest candidates, gate them and publish the winner(s) as one release.

        Args:
            data_uri: Raw interactions (path, file://, s3://); "" = the embedded synthetic data (data_config tunes it).
            data_format: Format of data_uri: table, movielens-csv, movielens-dat, whitespace (synthetic when data_uri is "").
            data_config: mirec DataConfig overrides, e.g. {"synth": {"n_users": 300}, "min_user_count": 3}.
            split: comirec (users 8:1:1) or temporal.
            use_feast: Feast apply + materialize; the trainer's examples then come from Feast's offline store.
            features_config: mirec FeaturesConfig (profile, seq_len...); production settings come from the mirec-feast Secret.
            max_feast_labels: How many Feast training rows are checked against the dataset's own sequences.
            candidate_a: ModelConfig of candidate A (k_interests fills K when absent).
            candidate_b: ModelConfig of candidate B.
            k_interests: Number of interests K.
            epochs: Maximum epochs (early stopping on validation Recall@50).
            train_config: mirec TrainConfig overrides.
            distributed: Distributed variant: mirec.launch.LaunchConfig (kind trainjob|pytorchjob, workers, gpus_per_worker, runtime...).
            distributed_pvc_size: Distributed variant: size of the ReadWriteMany PVC created for the run.
            distributed_storage_class: Distributed variant: storage class of that PVC (an RWX class); "" = the cluster default.
            tuning: Optuna study for candidate A first: {"enabled": true, "trials": 10}.
            eval_config: Offline evaluation settings (split, n_values, tradeoff_lambdas).
            thresholds: Gate rules: primary + min_<metric> / max_<metric>; champion_challenger: {metric, margin (over the champion), baseline_margin, margin_kind, collapse_guards, allow_no_champion, on_split_mismatch} (false = off).
            baselines: What candidates must beat (same split): popularity, itemknn (fitted), {"name": "single", ...} (trained with train_config/epochs).
            champion_release: URI of the deployed release (the champion); "" = the newest release under release_store/release_name; "none" = no champion.
            model_version: Version of the packaged models ("" = a UTC timestamp).
            package_config: mirec PackageSpec overrides (index, aggregator, workers...).
            experiment_split: A's share of the A/B traffic in the release (production: e.g. 0.9).
            deploy_mode: helm-values (publish + values) | torchserve (also register with a running TorchServe).
            torchserve_management_url: TorchServe management API for deploy_mode=torchserve.
            mar_base_url: Legacy: an HTTP(S) prefix the chart downloads MARs from, instead of the release store.
            release_store: Where releases are published: s3://bucket/prefix (credentials: mirec-object-store Secret), file://...
            release_name: Release folder name: the release is <release_store>/<release_name>/<version>/.
            image: The project image (Dockerfile) every task runs: the CPU build; the gpu variant: the CUDA build (-gpu).
            image_pull_secret: Image pull Secret of the registry (a missing Secret only warns).
        """
        ingest = data_ingest_op(data_uri=data_uri, data_format=data_format, data_config=data_config, split=split)
        ingest.set_display_name("validate + ingest data")
        _cluster(ingest, image, image_pull_secret)
        kubernetes.use_secret_as_env(ingest, secret_name=OBJECT_STORE_SECRET, secret_key_to_env=OBJECT_STORE_KEYS,
                                     optional=True)

        feast = features_materialize_op(dataset=ingest.outputs["dataset"], features_config=features_config,
                                        use_feast=use_feast)
        feast.set_display_name("Feast apply + materialize")
        _feast_client(_cluster(feast, image, image_pull_secret))

        tdata = build_training_data_op(dataset=ingest.outputs["dataset"], feature_store=feast.outputs["feature_store"],
                                       max_labels=max_feast_labels)
        tdata.set_display_name("training examples from Feast (point-in-time)")
        _feast_client(_cluster(tdata, image, image_pull_secret))
        data = tdata.outputs["training_data"]

        tune_a = tune_candidate_op(training_data=data, model_config=candidate_a, train_config=train_config,
                                   k_interests=k_interests, epochs=epochs, tuning=tuning)
        tune_a.set_display_name("tune candidate A (optional)").set_cpu_limit(TRAIN_CPU).set_memory_limit(TRAIN_MEMORY)
        _cluster(tune_a, image, image_pull_secret, TRAIN_TIMEOUT_S)
        models, cleanup = {}, []
        for cand, mcfg, tcfg in (("A", tune_a.outputs["model_config"], tune_a.outputs["train_config"]),
                                 ("B", candidate_b, train_config)):
            pvc = None
            if variant == "distributed":  # the shared volume of this candidate's TrainJob, for this run only
                claim = kubernetes.CreatePVC(pvc_name_suffix=f"-mirec-train-{cand.lower()}",
                                             access_modes=["ReadWriteMany"], size=distributed_pvc_size,
                                             storage_class_name=distributed_storage_class)
                claim.set_display_name(f"create the shared volume of {cand}'s TrainJob")
                pvc = claim.outputs["name"]
                cleanup.append(pvc)
            task = _train_task(data, cand, mcfg, tcfg, k_interests, epochs, distributed, image, image_pull_secret,
                               variant, pvc=pvc)
            models[cand] = task.outputs["model"]
        model_a, model_b = models["A"], models["B"]

        eval_a = evaluate_candidate_op(training_data=data, model=model_a, name="A",
                                       eval_config=eval_config).set_display_name("evaluate candidate A")
        eval_b = evaluate_candidate_op(training_data=data, model=model_b, name="B",
                                       eval_config=eval_config).set_display_name("evaluate candidate B")
        base = evaluate_baselines_op(training_data=data, baselines=baselines, eval_config=eval_config,
                                     train_config=train_config, epochs=epochs)
        base.set_display_name("baselines (same split)").set_cpu_limit(TRAIN_CPU).set_memory_limit(TRAIN_MEMORY)
        decide = gate_op(evaluation_a=eval_a.outputs["evaluation"], evaluation_b=eval_b.outputs["evaluation"],
                         baselines=base.outputs["evaluation"], thresholds=thresholds, release_store=release_store,
                         release_name=release_name, champion_release=champion_release)
        decide.set_display_name("compare + gate (champion/challenger)")
        kubernetes.use_secret_as_env(decide, secret_name=OBJECT_STORE_SECRET, secret_key_to_env=OBJECT_STORE_KEYS,
                                     optional=True)  # reads the deployed champion from the release store
        pkg = package_candidates_op(model_a=model_a, model_b=model_b,
                                    evaluation_a=eval_a.outputs["evaluation"], evaluation_b=eval_b.outputs["evaluation"],
                                    decision=decide.outputs["decision"], version=model_version,
                                    package_config=package_config).set_display_name("package MARs (gated)")
        ref = build_monitoring_reference_op(evaluation_a=eval_a.outputs["evaluation"],
                                            evaluation_b=eval_b.outputs["evaluation"], training_data=data,
                                            package=pkg.outputs["package"])
        ref.set_display_name("monitoring reference")
        dep = deploy_op(package=pkg.outputs["package"], reference=ref.outputs["reference"],
                        experiment_split=experiment_split, deploy_mode=deploy_mode,
                        torchserve_management_url=torchserve_management_url, mar_base_url=mar_base_url,
                        release_store=release_store, release_name=release_name)
        dep.set_display_name("publish the release (+ Helm values)")
        dep.set_caching_options(False)
        kubernetes.use_secret_as_env(dep, secret_name=TORCHSERVE_SECRET, secret_key_to_env=TORCHSERVE_KEYS,
                                     optional=True)
        kubernetes.use_secret_as_env(dep, secret_name=OBJECT_STORE_SECRET, secret_key_to_env=OBJECT_STORE_KEYS,
                                     optional=True)
        for task in (eval_a, eval_b, decide, pkg, ref, dep):
            _cluster(task, image, image_pull_secret)
        _cluster(base, image, image_pull_secret, TRAIN_TIMEOUT_S)  # it may train the single-interest baseline
        for claim_name in cleanup:  # the volumes go once the checkpoints are packaged
            kubernetes.DeletePVC(pvc_name=claim_name).after(pkg).set_display_name("delete a TrainJob volume")


    return training_pipeline


training_pipeline = build("cpu")
PIPELINE = training_pipeline
