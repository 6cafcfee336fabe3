"""benchmarks/overload.py: how outcomes are classified (no servers), and a --quick run through the real stack
(TorchServe + `mirec api`, the product's default timeout_ms and limits) whose JSON has the counts, a served log
with one line per 200 answer, and both servers alive afterwards."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "overload.py"
java = pytest.mark.skipif(shutil.which("java") is None, reason="Java is not installed (TorchServe needs it)")
torchserve = pytest.mark.skipif(not Path(sys.executable).with_name("torchserve").exists()
                                and shutil.which("torchserve") is None, reason="TorchServe is not installed")


def _module():
    spec = importlib.util.spec_from_file_location("mirec_bench_overload", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tally_classifies_every_outcome():
    ov = _module()
    o = ov.Outcome()
    o.rows = [(0.1, 0.010, 200, False), (0.2, 0.002, 429, True), (0.3, 0.003, 429, False),
              (1.0, 1.001, 504, False), (2.0, 0.1, 503, False), (3.0, 0.1, 502, False), (4.0, 0.1, 500, False),
              (5.5, 0.1, 422, False), (6.0, 5.0, ov.TIMEOUT, False), (7.0, 0.001, ov.CONN_ERROR, False)]
    o.errors = {"ConnectionResetError": 1}
    counts, latency, timeline, _ = ov.tally([o, ov.Outcome()], wall=10.0, seconds=10.0)
    assert counts["requests"] == 10 and counts["answers_200"] == 1
    assert counts["shed_429"] == 2 and counts["shed_429_with_retry_after"] == 1
    assert counts["upstream_timeout_504"] == 1 and counts["upstream_unavailable_503"] == 1
    assert counts["api_5xx_other"] == 2 and counts["other_4xx"] == 1  # 500 + 502; 422
    assert counts["client_timeouts"] == 1 and counts["connection_errors"] == 1
    assert counts["connection_errors_by_type"] == {"ConnectionResetError": 1}
    assert latency["200"]["n"] == 1 and latency["429"]["n"] == 2
    assert [b["t_s"] for b in timeline] == [0, 5] and sum(b["200"] + b["429"] + b["504"] + b["client_timeout"]
                                                           + b["other"] for b in timeline) == 10


@java
@torchserve
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_overload_quick_run(tmp_path):
    out = tmp_path / "o.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                        "--workdir", str(tmp_path / "work")], capture_output=True, text=True, timeout=1100, cwd=ROOT)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    res = json.loads(out.read_text())
    s, c = res["settings"], res["counts"]
    assert s["concurrency"] == 32 and s["seconds"] == 10 and s["items"] == 10_000
    assert all(s["product_defaults"].values()) and s["timeout_ms"] == 1000 and s["max_in_flight"] == 64
    for k in ("requests", "answers_200", "shed_429", "upstream_timeout_504", "upstream_unavailable_503", "other_4xx",
              "api_5xx_other", "client_timeouts", "connection_errors"):
        assert isinstance(c[k], int), k
    assert c["answers_200"] > 0
    assert c["requests"] == (c["answers_200"] + c["shed_429"] + c["upstream_timeout_504"]
                             + c["upstream_unavailable_503"] + c["other_4xx"] + c["api_5xx_other"] + c["other_status"]
                             + c["client_timeouts"] + c["connection_errors"])
    assert res["served_log"]["lines_during_run"] == c["answers_200"], (res["served_log"], c)
    assert res["checks"]["served_log_matches"] and res["checks"]["alive_after"], res["after"]
    assert res["after"]["api_healthz"] == 200 and res["after"]["torchserve_ping"] == 200
    assert res["after"]["recommend_status"] == 200
    assert "TARGET MET" in r.stdout and "served-log lines" in r.stdout
