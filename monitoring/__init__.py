"""Evidently glue of mirec monitoring (thin). The logic lives in `mirec.monitoring` (importable and testable
without a cluster); this folder holds what adapts it to its engines:

- thresholds.yaml     the default thresholds (== mirec.monitoring.Thresholds()), documented
- `python -m monitoring ...`  the same command as `mirec monitor ...` (for images that only ship this folder's entry)
- `monitoring.evidently_ui(...)`  add snapshots to an Evidently workspace (mirec.monitoring.workspace)
See monitoring/README.md and docs/monitoring.md.
"""

from pathlib import Path

from mirec.monitoring.workspace import add_to_workspace as evidently_ui

DEFAULT_THRESHOLDS = Path(__file__).resolve().parent / "thresholds.yaml"

__all__ = ["DEFAULT_THRESHOLDS", "evidently_ui"]
