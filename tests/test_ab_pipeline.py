"""The A/B report pipeline compiles to a valid PipelineSpec and runs with the kfp local runner on generated logs
(the component is the real one: it reads the logs and writes report.html/report.json)."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kfp")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def test_ab_pipeline_compiles(tmp_path):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    from pipelines.ab_pipeline import compile

    docs = list(yaml.safe_load_all(compile(tmp_path / "ab_pipeline.yaml").read_text()))
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
    assert spec.pipeline_info.name == "mirec-ab-report"
    assert set(spec.root.input_definitions.parameters) == {"served_log", "feedback_log", "arms", "config_path",
                                                           "metrics_path", "artifacts_pvc"}
    assert "comp-ab-report-op" in spec.components
    assert "pvcMount" in json.dumps(docs[1])


@pytest.mark.slow
def test_ab_pipeline_runs_locally(tmp_path, monkeypatch):
    from kfp import components, local

    from pipelines.ab_pipeline import compile
    from test_ab_stats import write_logs

    served, feedback = write_logs(tmp_path / "logs", users=800, days=2, p=(0.06, 0.12), seed=11)
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    root = tmp_path / "pipeline_root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    pipe = components.load_component_from_file(str(compile(tmp_path / "ab_pipeline.yaml")))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        pipe(served_log=str(served), feedback_log=str(feedback), arms="A=0.5,B=0.5")
    run_dir = max((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    rep = json.loads(next(run_dir.glob("ab-report-op/report_json")).joinpath("report.json").read_text())
    assert rep["decision"]["status"] == "winner" and rep["decision"]["winner"] == "B"
    assert "<svg " in next(run_dir.glob("ab-report-op/report")).read_text()  # the plots (inline SVG)
