"""The kfp monitoring pipeline: compiles to a valid PipelineSpec and runs with the kfp local runner on a tiny log
(the compiled YAML itself is run, as a recurring run would); a firing window fails the run visibly."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from mirec.monitoring import Thresholds, build_reference
from mirec.monitoring.simulate import TrafficSimulator, hour, write_jsonl

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # components/ and pipelines/ are top-level packages of the checkout
    sys.path.insert(0, str(REPO))


def test_monitoring_pipeline_compiles(tmp_path):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    from pipelines.monitoring_pipeline import compile

    out = compile(tmp_path / "monitoring_pipeline.yaml")
    docs = list(yaml.safe_load_all(out.read_text()))
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
    assert spec.pipeline_info.name == "mirec-monitoring"
    params = spec.root.input_definitions.parameters
    for p in ("reference_dir", "log", "since", "until", "thresholds_path", "webhook_url", "pushgateway",
              "served_meta", "allow_settings_mismatch", "alertmanager_url", "state_dir", "fail_on_alert",
              "fail_on_insufficient_data", "artifacts_pvc"):
        assert p in params, p
    assert set(spec.components) >= {"comp-monitor-op", "comp-alert-gate-op", "comp-condition-1"}
    platform = json.dumps(docs[1]) if len(docs) > 1 else ""
    assert "pvcMount" in platform and "mirec-monitor-webhook" in platform


@pytest.mark.slow
def test_monitoring_pipeline_runs_locally_and_fails_on_alert(tmp_path, monkeypatch):
    from kfp import components, local

    from pipelines.monitoring_pipeline import compile

    sim = TrafficSimulator()
    build_reference(sim.window(400, *hour(-10), seed=1), tmp_path / "ref" / "mirec_a", sim.cat.item_meta())
    log = tmp_path / "logs" / "served.jsonl"
    write_jsonl(sim.window(120, *hour(0), seed=2, mode="collapsed"), log)
    th = tmp_path / "thresholds.yaml"
    th.write_text(yaml.safe_dump({**Thresholds().model_dump(mode="json"), "min_requests": 50}))
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    root = tmp_path / "pipeline_root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    pipe = components.load_component_from_file(str(compile(tmp_path / "monitoring_pipeline.yaml")))
    args = dict(reference_dir=str(tmp_path / "ref"), log=str(log), since="1h", until=hour(0)[1].isoformat(),
                thresholds_path=str(th))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        with pytest.raises(RuntimeError, match="alert-gate-op"):
            pipe(**args)  # fail_on_alert defaults to True: the collapsed window fails the run
    run_dir = max((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    alerts = next(run_dir.glob("monitor-op/alerts"))
    window = next(p for p in alerts.iterdir() if p.is_dir())
    doc = json.loads((window / "alerts.json").read_text())
    assert doc["status"] == "firing" and any(a["check"] == "interest_collapse" for a in doc["alerts"])
    assert (window / "trend.png").is_file() and (window / "report-items.html").is_file()
    assert (window / "report.html").stat().st_size > 100_000 and (window / "metrics.prom").is_file()
    assert next(run_dir.glob("monitor-op/report")).stat().st_size > 100_000
