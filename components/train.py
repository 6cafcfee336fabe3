"""Training and evaluation components (one task per candidate)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train_candidate_op(training_data: Input[Dataset], name: str, model_config: dict, train_config: dict,
                       k_interests: int, epochs: int, distributed: dict, train_mode: str, job_image: str,
                       shared_pvc: str, model: Output[Model]):
    """Train one candidate in the task's pod (train_mode cpu/gpu), or as a Kubeflow TrainJob / PyTorchJob running
    job_image with the shared_pvc volume (train_mode distributed)."""
    from mirec import steps

    info = steps.train_candidate(training_data.path, model.path, name=name, model_config=model_config,
                                 train_config=train_config, k_interests=k_interests, epochs=epochs,
                                 distributed=distributed, train_mode=train_mode, job_image=job_image,
                                 shared_pvc=shared_pvc)
    model.metadata.update(steps.artifact_metadata(info))


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate_candidate_op(training_data: Input[Dataset], model: Input[Model], name: str, eval_config: dict,
                          metrics: Output[Metrics], evaluation: Output[Dataset]):
    """Offline evaluation: Recall/NDCG/HitRate, diversity and collapse -> a Metrics artifact the UI shows."""
    from mirec import steps

    info = steps.evaluate_candidate(training_data.path, model.path, evaluation.path, name=name,
                                    eval_config=eval_config)
    for key, value in steps.ui_metrics(info).items():
        metrics.log_metric(key, value)
    evaluation.metadata.update(steps.artifact_metadata(info))


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate_baselines_op(training_data: Input[Dataset], baselines: list, eval_config: dict, train_config: dict,
                          epochs: int, evaluation: Output[Dataset]):
    """The gate's baselines (popularity, item-kNN, a trained single-interest model) on the candidates' split."""
    from mirec import steps

    info = steps.evaluate_baselines(training_data.path, evaluation.path, baselines=baselines,
                                    eval_config=eval_config, train_config=train_config, epochs=epochs)
    evaluation.metadata.update(steps.artifact_metadata(info))
