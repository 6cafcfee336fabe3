"""Optional tuning step of the training pipeline: an Optuna study for candidate A (mirec.tune.tune_step).

Not in components.__all__: that list is the one-`mirec.steps`-call registry (tests/test_pipeline.py), and this
step's function lives in mirec.tune. The pipeline imports it from here.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def tune_candidate_op(training_data: Input[Dataset], model_config: dict, train_config: dict, k_interests: int,
                      epochs: int, tuning: dict, study: Output[Artifact]
                      ) -> NamedTuple("TunedConfig", [("model_config", dict), ("train_config", dict)]):
    """tuning.enabled: the best configs of a study (best_config.yaml, study.json, study.png in `study`);
    otherwise model_config / train_config unchanged."""
    from collections import namedtuple

    from mirec import steps
    from mirec.tune import tune_step

    info = tune_step(training_data.path, study.path, model_config=model_config, train_config=train_config,
                     k_interests=k_interests, epochs=epochs, tuning=tuning)
    study.metadata.update(steps.artifact_metadata(info))
    return namedtuple("TunedConfig", ["model_config", "train_config"])(info["model_config"], info["train_config"])
