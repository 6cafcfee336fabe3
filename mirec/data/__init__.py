"""Data layer: loaders, validation with quarantine, id maps, splits, synthetic generator.

`prepare(DataConfig)` -> a prepared dataset folder (docs/CONTRACTS.md): interactions/items/users
Parquet (external ids next to contiguous indices), quarantine.parquet (every rejected row + reason),
summary.json (rows in / kept / quarantined per reason), dataset.json, and truth/ for synthetic data.
Sequence order is (user, timestamp, item_idx): same-second events are ordered by item_idx, which
follows the external item id (numerically when all ids are integers) -- a stable, documented tie-break.
"""

from mirec.data.prepare import prepare
from mirec.data.schema import Dataset, EvalExample, IdMap
from mirec.data.synth import generate
from mirec.data.validate import ValidationReport, validate

__all__ = ["Dataset", "EvalExample", "IdMap", "ValidationReport", "generate", "prepare", "validate"]
