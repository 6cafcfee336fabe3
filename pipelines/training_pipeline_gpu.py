"""The training pipeline with gpu training tasks (see pipelines/training_pipeline.py, "variants")."""

from pipelines.training_pipeline import build

PIPELINE = build("gpu")
