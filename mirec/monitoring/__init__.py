"""Monitoring of a served multi-interest recommender against its reference (Evidently 0.7).

Public API:
- `run_monitor(reference, log, since, until, out, thresholds, ...)` -> MonitorResult (exit_code 0 healthy /
  1 alert / 2 a check could not run / 3 insufficient data; bad input raises mirec.errors.DataError)
- `build_reference_from_mar(mar, dataset_dir, out_dir)` (the reference served with the MAR's own settings),
  `build_reference(records, out_dir, item_meta)`, `records_from_evaluation(...)`, `load_reference(dir)`
- `Thresholds`, `load_thresholds(path)`
- `mirec.monitoring.simulate.TrafficSimulator` (in-process traffic for tests)
Evidently is imported lazily (only when a report is built).
"""

from mirec.monitoring.config import CHECKS, Thresholds, load_thresholds
from mirec.monitoring.reference import (Reference, build_reference, build_reference_from_mar, load_reference,
                                        records_from_evaluation, reference_from_mar)
from mirec.monitoring.run import MonitorResult, run_monitor

__all__ = ["CHECKS", "MonitorResult", "Reference", "Thresholds", "build_reference", "build_reference_from_mar",
           "load_reference", "load_thresholds", "records_from_evaluation", "reference_from_mar", "run_monitor"]
