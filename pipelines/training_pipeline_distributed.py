"""The training pipeline with distributed training tasks (see pipelines/training_pipeline.py, "variants")."""

from pipelines.training_pipeline import build

PIPELINE = build("distributed")
