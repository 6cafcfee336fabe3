"""mirec.monitoring: measures, log reading, reference, Evidently checks on simulated traffic, CLI, sinks.

Traffic comes from the in-process simulator (mirec.monitoring.simulate: FAISS + the real merge
aggregator, synthetic interest vectors), not from TorchServe.
"""

from __future__ import annotations

import json
import math
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from mirec.errors import ConfigError, DataError
from mirec.monitoring import (CHECKS, Thresholds, build_reference, load_reference, load_thresholds,
                              records_from_evaluation, run_monitor)
from mirec.monitoring import measures as M
from mirec.monitoring.logs import parse_duration, read_window, window_bounds, window_name
from mirec.monitoring.simulate import TrafficSimulator, hour, write_jsonl
from mirec.serving.schema import ServedLog

N_WINDOW = 250  # answers per simulated one-hour window (>= min_requests 200)


def _rec(items, *, cos=0.3, k=3, hist=None, fallback=None, hlen=10, unknown=0, rid="r", ts="2026-01-01T00:10:00Z"):
    return ServedLog.model_validate({
        "ts": ts, "request_id": rid, "user_id": "u", "model": "m", "version": "1", "n": len(items), "arm": "A",
        "history_len": hlen, "unknown_items": unknown, "fallback": fallback,
        "items": [{"item_id": i, "score": 1.0, "interest": k_, "category": c} for i, c, k_ in items],
        "interest_stats": {"k": k, "mean_pairwise_cos": cos, "interest_norms": [1.0] * k},
        "history_categories": hist or {}}).model_dump(mode="json")


# ---------------------------------------------------------------- config, measures, log reading

def test_thresholds_yaml_equals_builtin_defaults(tmp_path):
    assert load_thresholds("monitoring/thresholds.yaml") == Thresholds() == load_thresholds(None)
    bad = tmp_path / "t.yaml"
    bad.write_text("interest_collapse: {max_mean_pairwise_cos: 0.9, typo: 1}\n")
    with pytest.raises(ConfigError, match="typo"):
        load_thresholds(bad)


def test_per_answer_measures_by_hand():
    r1 = _rec([("a", "x", 0), ("b", "y", 1), ("c", "y", 1), ("d", "z", 2)], hist={"x": 5, "y": 3, "w": 2},
              hlen=10, unknown=10, rid="1")
    r2 = _rec([("a", "x", 0), ("e", "x", 0)], cos=0.9, rid="2")
    r3 = _rec([("f", "p", -1), ("g", "q", -1)], cos=None, k=0, fallback="popularity", rid="3")
    df = M.build_frame([r1, r2, r3])
    req = M.requests_of(df).set_index("request_id")
    # ILD: pairs with different categories; counts x1 y2 z1 -> (16 - 6) / 12
    assert req.loc["1", "ild"] == pytest.approx(10 / 12)
    assert req.loc["2", "ild"] == 0.0
    # effective interests = exp(H([1/4, 2/4, 1/4]))
    h = -(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5))
    assert req.loc["1", "effective_interests"] == pytest.approx(math.exp(h))
    assert req.loc["2", "single_interest"] == 1.0 and req.loc["1", "single_interest"] == 0.0
    assert math.isnan(req.loc["3", "effective_interests"]) and req.loc["3", "fallback"] == 1.0
    assert req.loc["1", "unknown_item_rate"] == 0.5
    # strong history categories (>= 20%): x (0.5, served 0.25: delivered), y (0.3, served 0.5), w (0.2, served 0: under)
    assert req.loc["1", "under_delivered"] == pytest.approx(1 / 3)
    # history mix spread over the answer's 4 rows: x 2, y 1, w 1 (largest remainder)
    assert sorted(df[df.request_id == "1"].history_category) == ["w", "x", "x", "y"]
    s = M.summarise(df, catalogue_size=10)
    assert s["window_requests"] == 3
    assert s["coverage"] == pytest.approx(7 / 10)
    assert s["dead_interests"] == 0 and s["k"] == 3
    assert s["fallback_rate"] == pytest.approx(1 / 3)
    assert s["mean_pairwise_cos"] == pytest.approx(0.6)
    # exposure Gini: 8 exposures over 10 items (a x2, b..g x1, 3 zeros)
    x = sorted([2, 1, 1, 1, 1, 1, 1, 0, 0, 0])
    g = sum((2 * i - 10 - 1) * v for i, v in enumerate(x, 1)) / (10 * sum(x))
    assert s["exposure_gini"] == pytest.approx(g)
    top = M.under_delivered_top([r1], None, 0.2, 0.25, 5)
    assert [t["category"] for t in top] == ["w"]


def test_dead_interests_counts_silent_slots():
    df = M.build_frame([_rec([("a", "x", 0), ("b", "y", 0)], k=4, rid=str(i)) for i in range(3)])
    assert M.dead_interests(df) == (3, 4)


def test_window_parsing():
    now = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
    assert parse_duration("1h30m") == timedelta(minutes=90) and parse_duration("2026-01-01") is None
    assert window_bounds("1h", None, now) == (now - timedelta(hours=1), now)
    s, e = window_bounds("2026-01-01T10:00:00Z", "2026-01-01T11:00:00", now)
    assert (s.hour, e.hour, e.tzinfo is not None) == (10, 11, True)
    assert window_bounds("2h", "1h", now) == (now - timedelta(hours=3), now - timedelta(hours=1))
    assert window_name(s, e) == "20260101T100000Z_20260101T110000Z"
    with pytest.raises(DataError):
        window_bounds("2026-01-02T00:00:00Z", "2026-01-01T00:00:00Z", now)
    with pytest.raises(DataError):
        window_bounds("yesterday-ish", None, now)


def test_read_window_filters_time_and_skips_bad_lines(tmp_path):
    log = tmp_path / "logs" / "served.jsonl"
    recs = [_rec([("a", "x", 0)], rid=str(i), ts=f"2026-01-01T0{i}:30:00Z") for i in range(4)]
    write_jsonl(recs, log)
    with log.open("a") as f:
        f.write("not json\n{\"request_id\": 1}\n\n")
    got, stats = read_window(str(tmp_path / "logs" / "*.jsonl"), *hour(1))
    assert [r["request_id"] for r in got] == ["1"]
    assert stats["bad_lines"] == 2 and stats["lines"] == 6
    got, _ = read_window(tmp_path / "logs", *hour(0, datetime(2026, 1, 1, 2, tzinfo=timezone.utc)))
    assert [r["request_id"] for r in got] == ["2"]
    with pytest.raises(DataError, match="no serving log"):
        read_window(tmp_path / "nothing*.jsonl", *hour(0))
    junk = tmp_path / "junk.jsonl"
    junk.write_text("{}\n[1]\n")
    with pytest.raises(DataError, match="no line"):
        read_window(junk, *hour(0))


def test_records_from_evaluation_and_reference_roundtrip(tmp_path):
    import numpy as np
    import pandas as pd

    items = pd.DataFrame({"item_idx": [0, 1, 2, 3], "item_id": ["i0", "i1", "i2", "i3"],
                          "category": ["x", "x", "y", "z"]})
    v = np.array([[1.0, 0.0], [0.0, 1.0]])
    served = [{"user_idx": 7, "items": [0, 2, 3], "scores": [0.9, 0.8, 0.7], "interests": [0, 1, 1],
               "history": [0, 1, 2], "interest_stats": {"k": 2, "mean_pairwise_cos": 0.0,
                                                        "interest_norms": np.linalg.norm(v, axis=1).tolist()}},
              {"user": "u8", "items": [{"item_idx": 1, "score": 0.5, "interest": 0}], "mean_pairwise_cos": 0.2,
               "interest_norms": [1.0, 1.0], "k": 2, "history_categories": {"x": 3}},
              {"user_id": "u9", "items": ["i3"], "interest_vectors": [[1.0, 0.0], [1.0, 1.0]]}]
    recs = records_from_evaluation(served, items, model="mirec_a")
    assert recs[0]["user_id"] == "7" and [i["item_id"] for i in recs[0]["items"]] == ["i0", "i2", "i3"]
    assert [i["category"] for i in recs[0]["items"]] == ["x", "y", "z"]
    assert recs[0]["history_categories"] == {"x": 2, "y": 1} and recs[0]["history_len"] == 3
    assert recs[1]["items"][0] == {"item_id": "i1", "score": 0.5, "interest": 0, "category": "x"}
    assert recs[2]["interest_stats"]["k"] == 2
    assert recs[2]["interest_stats"]["mean_pairwise_cos"] == pytest.approx(2 ** -0.5)
    ref_dir = build_reference(recs, tmp_path / "ref", items)
    ref = load_reference(ref_dir)
    assert ref.catalogue_size == 4 and len(ref.records) == 3
    summary = json.loads((ref_dir / "summary.json").read_text())
    assert summary["models"] == ["mirec_a"] and summary["measures"]["window_requests"] == 3
    with pytest.raises(DataError):
        load_reference(tmp_path)
    with pytest.raises(DataError):
        build_reference([], tmp_path / "empty")


# ---------------------------------------------------------------- scenarios (Evidently tests)

@pytest.fixture(scope="module")
def sim():
    return TrafficSimulator()


@pytest.fixture(scope="module")
def reference(sim, tmp_path_factory):
    d = build_reference(sim.window(1500, *hour(-100), seed=999), tmp_path_factory.mktemp("ref"), sim.cat.item_meta())
    return load_reference(d)


def _monitor(reference, recs, w, **kw):
    return run_monitor(reference, None, since="1h", until=hour(w)[1].isoformat(), out=None, records=recs, **kw)


def test_healthy_model_no_alert_over_several_windows(sim, reference):
    for w in range(3):
        res = _monitor(reference, sim.window(N_WINDOW, *hour(w), seed=100 + w), w)
        assert res.exit_code == 0, (w, res.alerts)
        g = res.groups[0]
        assert set(g["checks"]) == set(CHECKS) and g["status"] == "ok"
        assert all(len(c["tests"]) >= 1 for c in g["checks"].values())  # every check ran Evidently tests


@pytest.mark.parametrize("mode,kw", [("collapsed", {}), ("dominant", {"dominance": 1.1})])
def test_collapsed_model_fires_collapse_in_first_window(sim, reference, mode, kw):
    res = _monitor(reference, sim.window(N_WINDOW, *hour(0), seed=7, mode=mode, **kw), 0)
    assert res.exit_code == 1
    assert "interest_collapse" in res.firing
    g = res.groups[0]
    assert g["values"]["effective_interests"] < 1.5
    alert = next(a for a in res.alerts if a["check"] == "interest_collapse")
    assert alert["severity"] == "critical" and "effective_interests" in alert["failed_tests"]


def test_category_shift_fires_drift(sim, reference):
    res = _monitor(reference, sim.window(N_WINDOW, *hour(0), seed=8, shift=0.6), 0)
    assert {"category_drift", "input_drift"} <= set(res.firing)
    assert "interest_collapse" not in res.firing
    assert res.groups[0]["values"]["category_drift_score"] > 0.1


def test_fallback_surge_and_small_window(sim, reference):
    res = _monitor(reference, sim.window(N_WINDOW, *hour(0), seed=9, fallback_rate=0.4), 0)
    assert "fallback_rate" in res.firing
    small = _monitor(reference, sim.window(20, *hour(0), seed=9, mode="collapsed"), 0)
    assert small.exit_code == 0 and small.groups[0]["status"] == "insufficient_data"


def test_two_arms_are_checked_separately(reference):
    a = TrafficSimulator(model="mirec_a", arm="A").window(N_WINDOW, *hour(0), seed=11)
    b = TrafficSimulator(model="mirec_b", arm="B").window(N_WINDOW, *hour(0), seed=12, mode="collapsed")
    res = _monitor(reference, a + b, 0)
    by = {(g["model"], g["arm"]): g for g in res.groups}
    assert by[("mirec_a", "A")]["status"] == "ok"
    assert by[("mirec_b", "B")]["checks"]["interest_collapse"]["firing"]
    assert by[("mirec_b", "B")]["reference_model"] == "(all)"  # reference holds mirec_a only


# ---------------------------------------------------------------- CLI, files, sinks

class _Capture(BaseHTTPRequestHandler):
    bodies: list = []

    def _take(self):
        n = int(self.headers.get("Content-Length", 0))
        type(self).bodies.append((self.command, self.path, self.headers.get("Content-Type"), self.rfile.read(n)))
        self.send_response(200 if self.command == "POST" else 202)
        self.end_headers()

    do_POST = do_PUT = _take

    def log_message(self, *a):
        pass


@pytest.fixture
def http_capture():
    class H(_Capture):
        bodies = []

    srv = HTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", H.bodies
    srv.shutdown()
    srv.server_close()


def test_cli_outputs_webhook_and_prometheus(sim, reference, tmp_path, http_capture):
    from prometheus_client.parser import text_string_to_metric_families
    from typer.testing import CliRunner

    from mirec.cli import app

    url, bodies = http_capture
    log = tmp_path / "log" / "served.jsonl"
    write_jsonl(sim.window(N_WINDOW, *hour(0), seed=21), log)
    write_jsonl(sim.window(N_WINDOW, *hour(1), seed=22, mode="collapsed"), log, append=True)
    base = ["monitor", "--reference", str(reference.path), "--log", str(tmp_path / "log" / "*.jsonl"),
            "--since", "1h", "--out", str(tmp_path / "out"), "--webhook-url", url + "/hook"]
    ok = CliRunner().invoke(app, base + ["--until", "2026-01-01T01:00:00Z", "--no-html"])
    assert ok.exit_code == 0, ok.output
    assert bodies == []  # nothing posted for a healthy window
    prom = tmp_path / "textfile" / "mirec.prom"
    bad = CliRunner().invoke(app, base + ["--until", "2026-01-01T02:00:00Z", "--prom-file", str(prom),
                                          "--pushgateway", url])
    assert bad.exit_code == 1, bad.output
    assert "interest_collapse" in bad.output
    wdir = tmp_path / "out" / "20260101T010000Z_20260101T020000Z"
    for f in ("report.html", "report.json", "alerts.json", "metrics.prom"):
        assert (wdir / f).is_file(), f
    assert not (tmp_path / "out" / "20260101T000000Z_20260101T010000Z" / "report.html").exists()
    alerts = json.loads((wdir / "alerts.json").read_text())
    assert alerts["status"] == "firing" and alerts["exit_code"] == 1
    assert alerts["sinks"]["webhook"]["ok"] and alerts["sinks"]["pushgateway"]["ok"]
    report = json.loads((wdir / "report.json").read_text())
    assert report["groups"][0]["evidently"]["tests"]  # Evidently test results are in the JSON
    # webhook: Alertmanager v4 body + Slack text, received by a real HTTP server
    posts = [b for b in bodies if b[0] == "POST"]
    assert len(posts) == 1 and posts[0][1] == "/hook" and posts[0][2] == "application/json"
    body = json.loads(posts[0][3])
    assert body["version"] == "4" and body["status"] == "firing"
    checks = {a["labels"]["check"] for a in body["alerts"]}
    assert "interest_collapse" in checks and all(a["startsAt"] == "2026-01-01T02:00:00Z" for a in body["alerts"])
    assert all({"alertname", "model", "arm", "severity"} <= set(a["labels"]) for a in body["alerts"])
    assert "interest_collapse" in body["text"]
    # push gateway got the same exposition (PUT /metrics/job/mirec_monitor)
    pushes = [b for b in bodies if b[0] == "PUT"]
    assert pushes and pushes[0][1] == "/metrics/job/mirec_monitor" and b"mirec_monitor_alert" in pushes[0][3]
    # Prometheus text: names and labels the chart's PrometheusRule uses
    fams = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    assert (wdir / "metrics.prom").read_text().count("mirec_monitor_alert{") == len(CHECKS)
    for name in ("mirec_monitor_alert", "mirec_monitor_mean_pairwise_cos", "mirec_monitor_effective_interests",
                 "mirec_monitor_single_interest_share", "mirec_monitor_dead_interests",
                 "mirec_monitor_category_drift_score", "mirec_monitor_ild", "mirec_monitor_coverage",
                 "mirec_monitor_exposure_gini", "mirec_monitor_fallback_rate", "mirec_monitor_unknown_item_rate",
                 "mirec_monitor_window_requests"):
        assert name in fams, name
        for s in fams[name].samples:
            assert s.labels["model"] == "mirec_a" and s.labels["arm"] == "A"
    alert = {s.labels["check"]: s.value for s in fams["mirec_monitor_alert"].samples}
    assert set(alert) == set(CHECKS) and alert["interest_collapse"] == 1.0
    assert fams["mirec_monitor_window_requests"].samples[0].value == N_WINDOW


def test_cli_bad_input_exits_2(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", "from mirec.cli import run; run()", "monitor", "--reference",
                        str(tmp_path), "--log", str(tmp_path / "x.jsonl"), "--since", "1h", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "not a monitoring reference" in r.stderr and "Traceback" not in r.stderr


def test_webhook_failure_does_not_hide_alert_and_workspace_sink(sim, reference, tmp_path):
    res = _monitor(reference, sim.window(N_WINDOW, *hour(0), seed=31, mode="collapsed"), 0,
                   webhook_url="http://127.0.0.1:9/nothing-listens", workspace=tmp_path / "ws")
    assert res.exit_code == 1 and res.sinks["webhook"]["ok"] is False
    assert res.sinks["workspace"]["ok"], res.sinks["workspace"]
    from evidently.ui.workspace import Workspace

    ws = Workspace(str(tmp_path / "ws"))
    projects = ws.list_projects()
    assert [p.name for p in projects] == ["mirec mirec_a/A"]
    assert len(ws.list_runs(projects[0].id)) == 1
