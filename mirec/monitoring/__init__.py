"""Monitoring of a served multi-interest recommender against its evaluation reference (Evidently 0.7).

Public API:
- `run_monitor(reference, log, since, until, out, thresholds, webhook_url=, prom_file=, pushgateway=)`
  -> MonitorResult (exit_code 0 healthy / 1 alert; bad input raises mirec.errors.DataError)
- `build_reference(records, out_dir, item_meta)`, `records_from_evaluation(...)`, `load_reference(dir)`
- `Thresholds`, `load_thresholds(path)`
- `mirec.monitoring.simulate.TrafficSimulator` (in-process traffic for tests and the benchmark)
Evidently is imported lazily (only when a report is built).
"""

from mirec.monitoring.config import CHECKS, Thresholds, load_thresholds
from mirec.monitoring.reference import Reference, build_reference, load_reference, records_from_evaluation
from mirec.monitoring.run import MonitorResult, run_monitor

__all__ = ["CHECKS", "MonitorResult", "Reference", "Thresholds", "build_reference", "load_reference",
           "load_thresholds", "records_from_evaluation", "run_monitor"]
