"""kfp v2 components of the mirec training pipeline: one thin typed wrapper per step in `mirec.steps`.

Every component body imports mirec inside the function (kfp lightweight components ship only the function's
source) and calls exactly one `mirec.steps` function; all logic lives there. The components run in the
project image (Dockerfile), see components/image.py.
"""

from components.data import build_training_data_op, data_ingest_op, features_materialize_op
from components.gate import gate_op
from components.release import build_monitoring_reference_op, deploy_op, package_candidates_op
from components.train import evaluate_baselines_op, evaluate_candidate_op, train_candidate_op

__all__ = ["build_monitoring_reference_op", "build_training_data_op", "data_ingest_op", "deploy_op",
           "evaluate_baselines_op", "evaluate_candidate_op", "features_materialize_op", "gate_op", "package_candidates_op",
           "train_candidate_op"]
