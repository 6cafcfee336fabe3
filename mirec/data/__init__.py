"""Data layer: loaders, validation with quarantine, id maps, splits, synthetic generator."""

from mirec.data.prepare import prepare
from mirec.data.schema import Dataset, EvalExample, IdMap
from mirec.data.synth import generate
from mirec.data.validate import ValidationReport, validate

__all__ = ["Dataset", "EvalExample", "IdMap", "ValidationReport", "generate", "prepare", "validate"]
