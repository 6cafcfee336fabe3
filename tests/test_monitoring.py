"""mirec.monitoring: measures, log reading, reference, checks (direction, limits, gaps), CLI and sinks.

Traffic comes from the in-process simulator (mirec.monitoring.simulate: FAISS + the real merge aggregator,
synthetic interest vectors); the reference served through the MAR is in tests/test_monitoring_reference.py.
"""

from __future__ import annotations

import json
import math
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pandas as pd
import pytest

from mirec.errors import ConfigError, DataError
from mirec.monitoring import (CHECKS, Thresholds, build_reference, load_reference, load_thresholds,
                              records_from_evaluation, run_monitor)
from mirec.monitoring import measures as M
from mirec.monitoring.logs import file_hour, parse_duration, read_window, window_bounds, window_name
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


def _frame(records, tmp_path, catalogue=None):
    path = write_jsonl(records, tmp_path / "f.jsonl")
    kw = {} if catalogue is None else {"catalogue_ids": catalogue["item_id"].to_numpy(),
                                       "catalogue_categories": catalogue["category"].to_numpy()}
    data, _ = read_window([path], None, None, **kw)
    return M.build_frame(data, catalogue)


# ---------------------------------------------------------------- config, measures, log reading

def test_thresholds_yaml_equals_builtin_defaults(tmp_path):
    assert load_thresholds("monitoring/thresholds.yaml") == Thresholds() == load_thresholds(None)
    bad = tmp_path / "t.yaml"
    bad.write_text("interest_collapse: {max_mean_pairwise_cos: 0.9, typo: 1}\n")
    with pytest.raises(ConfigError, match="typo"):
        load_thresholds(bad)


def test_per_answer_measures_by_hand(tmp_path):
    r1 = _rec([("a", "x", 0), ("b", "y", 1), ("c", "y", 1), ("d", "z", 2)], hist={"x": 5, "y": 3, "w": 2},
              hlen=10, unknown=10, rid="1")
    r2 = _rec([("a", "x", 0), ("e", "x", 0)], cos=0.9, rid="2")
    r3 = _rec([("f", "p", -1), ("g", "q", -1)], cos=None, k=0, fallback="popularity", rid="3", hlen=0)
    catalogue = pd.DataFrame({"item_id": list("abcdefghij"), "category": list("xyyzxpqxxx")})
    f = _frame([r1, r2, r3], tmp_path, catalogue)
    a = f.answers
    # ILD: pairs with different categories; counts x1 y2 z1 -> (16 - 6) / 12
    assert a.loc[0, "ild"] == pytest.approx(10 / 12) and a.loc[1, "ild"] == 0.0
    h = -(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5))  # interests [0, 1, 1, 2]
    assert a.loc[0, "effective_interests"] == pytest.approx(math.exp(h))
    assert a.loc[1, "single_interest"] == 1.0 and a.loc[0, "single_interest"] == 0.0
    assert math.isnan(a.loc[2, "effective_interests"]) and a.loc[2, "fallback"] == 1.0 and a.loc[2, "cold_start"] == 1.0
    assert a.loc[0, "unknown_item_rate"] == 0.5
    # strong history categories (>= 20%): x (0.5, served 0.25: delivered), y (0.3, served 0.5), w (0.2, served 0: under)
    assert a.loc[0, "under_delivered"] == pytest.approx(1 / 3)
    # history mix spread over the answer's 4 item rows: x 2, y 1, w 1 (largest remainder)
    rows = M.history_rows(f)
    assert sorted(np.array(f.categories)[rows[f.item_answer == 0]]) == ["w", "x", "x", "y"]
    assert (rows[f.item_answer == 1] == -1).all()  # no history -> no history rows
    s = M.summarise(f)
    assert s["window_requests"] == 3 and s["coverage"] == pytest.approx(7 / 10)
    assert s["dead_interests"] == 0 and s["k"] == 3
    assert s["fallback_rate"] == pytest.approx(1 / 3) and s["mean_pairwise_cos"] == pytest.approx(0.6)
    x = sorted([2, 1, 1, 1, 1, 1, 1, 0, 0, 0])  # exposure Gini: a x2, b..g x1, 3 of 10 items never served
    g = sum((2 * i - 10 - 1) * v for i, v in enumerate(x, 1)) / (10 * sum(x))
    assert s["exposure_gini"] == pytest.approx(g)
    assert [t["category"] for t in M.under_delivered_top(f, 0.2, 0.25, 5)] == ["w"]
    # a bootstrap sample of whole answers keeps each answer's items together
    b = f.take(np.array([0, 0, 2]))
    assert b.n_answers == 3 and list(np.bincount(b.item_answer)) == [4, 4, 2]
    assert list(b.answers["ild"][:2]) == [pytest.approx(10 / 12)] * 2


def test_dead_interests_counts_silent_slots(tmp_path):
    f = _frame([_rec([("a", "x", 0), ("b", "y", 0)], k=4, rid=str(i)) for i in range(3)], tmp_path)
    assert M.dead_interests(f) == (3, 4)


def test_window_parsing_and_hourly_files(tmp_path):
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
    h10 = datetime(2026, 1, 1, 10, tzinfo=timezone.utc)
    for name in ("served-20260101T10.jsonl", "served.jsonl.2026-01-01T10", "x/2026/01/01/10/served.jsonl",
                 "x/date=2026-01-01/hour=10/a.jsonl"):
        assert file_hour(name) == h10, name
    assert file_hour("served.jsonl") is None
    # hourly layout: only the window's file is opened (the others are garbage here: reading them would count)
    sim = TrafficSimulator()
    write_jsonl(sim.window(30, *hour(1), seed=1), tmp_path / "log" / "served-20260101T01.jsonl")
    for h in (0, 2):
        (tmp_path / "log" / f"served-20260101T0{h}.jsonl").write_text("garbage\n" * 5)
    data, stats = read_window(str(tmp_path / "log" / "*.jsonl"), *hour(1))
    assert len(data) == 30 and stats["bad_lines"] == 0 and stats["files_skipped"] == 2


def test_read_window_counts_bad_lines_by_reason(tmp_path):
    sim = TrafficSimulator()
    good = sim.window(40, *hour(1), seed=3)
    renamed = {**good[0], "itemz": good[0]["items"]}
    del renamed["items"]
    lines = [json.dumps(r) for r in good[:20]]
    lines += ["garbage", json.dumps(good[20])[:-30], json.dumps(renamed), json.dumps({**good[21], "schema_version": 2}),
              json.dumps({**good[22], "ts": "when?"}), ""]
    lines += [json.dumps(r) for r in good[23:]]
    log = tmp_path / "served.jsonl"  # un-stamped, append-only: lines before/after the window are not counted
    # an undated line takes the time of the dated line before it
    before = [json.dumps(r) for r in sim.window(5, *hour(0), seed=4)]
    before.insert(2, "garbage before the window")
    after = [json.dumps(r) for r in sim.window(5, *hour(2), seed=5)]
    after.insert(1, "garbage after the window")
    log.write_text("\n".join(before + lines + after) + "\n")
    data, stats = read_window(log, *hour(1))
    assert len(data) == 37  # good[:20] + good[23:]
    assert stats["bad_by_reason"] == {"not_json": 2, "wrong_schema": 1, "unknown_schema_version": 1, "no_ts": 1}
    assert stats["lines"] == 42 and stats["bad_share"] == pytest.approx(5 / 42, abs=1e-6)
    details = {e["reason"]: e["detail"] for e in stats["examples"]}
    assert "not a JSON object" in details["not_json"]
    # every line missing a field a check needs is an error that names it, not an empty window
    junk = tmp_path / "junk.jsonl"
    junk.write_text("\n".join(json.dumps({k: v for k, v in r.items() if k != "interest_stats"}) for r in good) + "\n")
    with pytest.raises(DataError, match="interest_stats"):
        read_window(junk, *hour(1))
    with pytest.raises(DataError, match="no serving log"):
        read_window(tmp_path / "nothing*.jsonl", *hour(0))


def test_records_from_evaluation_and_reference_roundtrip(tmp_path):
    items = pd.DataFrame({"item_idx": [0, 1, 2, 3], "item_id": ["i0", "i1", "i2", "i3"],
                          "category": ["x", "x", "y", "z"], "popularity": [10, 5, 1, 0]})
    v = np.array([[1.0, 0.0], [0.0, 1.0]])
    served = [{"user_idx": 7, "items": [0, 2, 3], "scores": [0.9, 0.8, 0.7], "interests": [0, 1, 1],
               "history": [0, 1, 2], "interest_stats": {"k": 2, "mean_pairwise_cos": 0.0,
                                                        "interest_norms": np.linalg.norm(v, axis=1).tolist()}},
              {"user": "u8", "items": [{"item_idx": 1, "score": 0.5, "interest": 0}], "mean_pairwise_cos": 0.2,
               "interest_norms": [1.0, 1.0], "k": 2, "history_categories": {"x": 3}},
              {"user_id": "u9", "items": ["i3"], "interest_vectors": [[1.0, 0.0], [1.0, 1.0]]}]
    recs = records_from_evaluation(served, items, model="mirec_a")
    assert recs[0]["user_id"] == "7" and [i["item_id"] for i in recs[0]["items"]] == ["i0", "i2", "i3"]
    assert recs[0]["history_categories"] == {"x": 2, "y": 1} and recs[0]["history_len"] == 3
    assert recs[0]["history_popularity"]["head_share"] == pytest.approx(1 / 3)  # head = top 10% = item 0
    assert recs[2]["interest_stats"]["mean_pairwise_cos"] == pytest.approx(2 ** -0.5)
    ref = load_reference(build_reference(recs, tmp_path / "ref", items))
    assert ref.catalogue_size == 4 and ref.model_frame("mirec_a").n_answers == 3
    summary = json.loads((tmp_path / "ref" / "summary.json").read_text())
    assert summary["models"] == ["mirec_a"] and summary["measures"]["mirec_a"]["window_requests"] == 3
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="not a monitoring reference"):
        load_reference(tmp_path / "nothing")
    with pytest.raises(DataError):
        build_reference([], tmp_path / "empty")
    # a folder of per-model references (the training pipeline's layout) loads as one
    build_reference(records_from_evaluation(served, items, model="mirec_b"), tmp_path / "multi" / "mirec_b", items)
    build_reference(recs, tmp_path / "multi" / "mirec_a", items)
    assert load_reference(tmp_path / "multi").models == ["mirec_a", "mirec_b"]


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


def _failed(res, check):
    g = res.groups[0]
    return {t["measure"]: t for t in g["checks"][check]["tests"] if t["firing"]}


def test_healthy_model_no_alert_over_several_windows(sim, reference):
    for w, n in enumerate((N_WINDOW, 600, 3000)):  # 3000 > the reference: limits come from its bootstrap
        res = _monitor(reference, sim.window(n, *hour(w), seed=100 + w), w)
        assert res.exit_code == 0, (w, res.alerts)
        g = res.groups[0]
        assert set(g["checks"]) == set(CHECKS) - {"log_quality"} and g["status"] == "ok"
        assert all(len(c["tests"]) >= 1 for c in g["checks"].values())  # every check ran Evidently tests
    lim = g["limits"]["diversity_drift"]
    # coverage and Gini: both sides at the same number of answers (half the reference here: 750)
    assert lim["coverage"]["match_answers"] == lim["exposure_gini"]["match_answers"] == 750
    assert lim["exposure_gini"]["upper"] < 1.0  # the Gini limit can be reached


@pytest.mark.parametrize("mode,kw", [("collapsed", {}), ("dominant", {"dominance": 1.1})])
def test_collapsed_model_fires_collapse_with_direction(sim, reference, mode, kw):
    res = _monitor(reference, sim.window(N_WINDOW, *hour(0), seed=7, mode=mode, **kw), 0)
    assert res.exit_code == 1 and "interest_collapse" in res.firing
    alert = next(a for a in res.alerts if a["check"] == "interest_collapse")
    assert alert["severity"] == "critical" and "effective_interests" in alert["failed_tests"]
    if mode == "collapsed":
        assert alert["headline"] == "interests are more similar (collapsing)"
        assert "cos_drift" in alert["failed_tests"]
        div = next(a for a in res.alerts if a["check"] == "diversity_drift")
        assert div["headline"] == "served lists are less diverse"


def test_moderate_collapse_seen_by_the_cosine_distribution_test(sim, reference):
    """Interests blended halfway towards their mean: effective interests barely move, the per-answer cosine
    distribution shifts up (the drift test)."""
    recs = sim.window(N_WINDOW, *hour(0), seed=17)
    for r in recs:
        c = r["interest_stats"]["mean_pairwise_cos"]
        if c is not None:
            r["interest_stats"]["mean_pairwise_cos"] = c + 0.5 * (1 - c) * 0.6
    res = _monitor(reference, recs, 0)
    assert "cos_drift" in _failed(res, "interest_collapse")


def test_category_shift_fires_drift_and_popular_histories_fire_input_drift(sim, reference):
    res = _monitor(reference, sim.window(N_WINDOW, *hour(0), seed=8, shift=0.6), 0)
    assert {"category_drift", "input_drift"} <= set(res.firing) and "interest_collapse" not in res.firing
    cat = next(a for a in res.alerts if a["check"] == "category_drift")
    assert "total variation" in cat["description"] and "(reference" in cat["description"]
    res = _monitor(reference, sim.window(N_WINDOW, *hour(0), seed=9, popular_history=0.3), 0)
    assert res.firing == ["input_drift"]
    assert next(a for a in res.alerts if a["check"] == "input_drift")["headline"] == "more popular histories"


def test_diversity_alert_says_which_way_and_sides_are_configurable(sim, reference):
    recs = sim.window(N_WINDOW, *hour(0), seed=10)
    by_cat = [np.flatnonzero(sim.cat.item_category == c) for c in range(20)]
    rng = np.random.default_rng(0)
    for r in recs:  # every list spread evenly over 10 categories -> ILD ~0.95 vs ~0.45: more diverse
        cats = rng.choice(20, size=10, replace=False)
        for j, it in enumerate(r["items"]):
            it["item_id"] = sim.cat.item_ids[int(rng.choice(by_cat[cats[j % 10]]))]
    res = _monitor(reference, recs, 0)
    failed = _failed(res, "diversity_drift")
    assert failed["ild"]["direction"] == "higher" and failed["ild"]["message"].startswith("served lists are more diverse")
    only_lower = Thresholds(diversity_drift={"ild_sides": "lower"})
    res2 = _monitor(reference, recs, 0, thresholds=only_lower)
    assert "ild" not in _failed(res2, "diversity_drift")
    assert res2.groups[0]["limits"]["diversity_drift"]["ild"]["upper"] is None


def test_exposure_gini_fires_when_exposure_concentrates(sim, reference):
    recs = sim.window(N_WINDOW, *hour(0), seed=12)
    top = [sim.cat.item_ids[j] for j in sim.cat.popular[:30]]
    for i, r in enumerate(recs):
        for j, it in enumerate(r["items"]):
            it["item_id"] = top[(i + j) % 30]
    res = _monitor(reference, recs, 0)
    failed = _failed(res, "diversity_drift")
    assert failed["exposure_gini"]["message"].startswith("exposure concentrated on fewer items")
    assert failed["coverage"]["message"].startswith("narrower")


def test_fallback_surge_and_small_window_is_insufficient_data(sim, reference):
    res = _monitor(reference, sim.window(N_WINDOW, *hour(0), seed=9, fallback_rate=0.4), 0)
    assert "fallback_rate" in res.firing
    small = _monitor(reference, sim.window(20, *hour(0), seed=9, mode="collapsed"), 0)
    assert small.exit_code == 3 and small.groups[0]["status"] == "insufficient_data" and not small.alerts


def test_log_quality_alert_and_missing_interest_stats_are_not_silent(sim, reference, tmp_path):
    recs = sim.window(N_WINDOW, *hour(0), seed=13)
    log = tmp_path / "served.jsonl"
    write_jsonl(recs, log)
    with log.open("a") as f:
        f.write("garbage\n" * 5)  # 2% of the window
    res = run_monitor(reference, log, since="1h", until=hour(0)[1].isoformat(), out=None)
    assert res.firing == ["log_quality"] and res.log["bad_by_reason"] == {"not_json": 5}
    assert res.alerts[0]["model"] == "*" and "5 of 255 lines bad" in res.alerts[0]["summary"]
    with log.open("a") as f:
        pass
    write_jsonl(recs, log)
    with log.open("a") as f:
        f.write("garbage\n")  # 0.4%: below the 1% threshold
    assert run_monitor(reference, log, since="1h", until=hour(0)[1].isoformat(), out=None).exit_code == 0
    # model answers without interest statistics: the collapse check is an error (exit 2), not a pass
    for r in recs:
        r["interest_stats"] = {"k": 0, "mean_pairwise_cos": None, "interest_norms": []}
    res = _monitor(reference, recs, 0)
    assert res.exit_code == 2 and "interest_stats" in res.groups[0]["checks"]["interest_collapse"]["error"]
    assert "log_quality" in res.firing and res.log["bad_by_reason"]["no_interest_stats"] > 0


def test_unknown_model_and_other_version_are_refused(reference):
    b = TrafficSimulator(model="mirec_b", arm="B").window(N_WINDOW, *hour(0), seed=12)
    with pytest.raises(DataError, match="not in the reference"):
        _monitor(reference, b, 0)
    res = _monitor(reference, b, 0, allow_model_mismatch=True)
    assert res.groups[0]["reference_model"] == "(all)"
    v2 = TrafficSimulator(version="2.0").window(N_WINDOW, *hour(0), seed=12)
    with pytest.raises(DataError, match="version: reference 1.0 vs served 2.0"):
        _monitor(reference, v2, 0)
    ok = _monitor(reference, v2, 0, allow_settings_mismatch=True)
    assert ok.settings["mirec_a"]["differences"]


def test_two_arms_are_checked_separately(tmp_path):
    a_sim, b_sim = TrafficSimulator(model="mirec_a", arm="A"), TrafficSimulator(model="mirec_b", arm="B")
    build_reference(a_sim.window(1500, *hour(-9), seed=1), tmp_path / "ref" / "mirec_a", a_sim.cat.item_meta())
    build_reference(b_sim.window(1500, *hour(-9), seed=2), tmp_path / "ref" / "mirec_b", b_sim.cat.item_meta())
    ref = load_reference(tmp_path / "ref")
    res = _monitor(ref, a_sim.window(N_WINDOW, *hour(0), seed=11) +
                   b_sim.window(N_WINDOW, *hour(0), seed=12, mode="collapsed"), 0)
    by = {(g["model"], g["arm"]): g for g in res.groups}
    assert by[("mirec_a", "A")]["status"] == "ok" and by[("mirec_a", "A")]["reference_model"] == "mirec_a"
    assert by[("mirec_b", "B")]["checks"]["interest_collapse"]["firing"]


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


def test_cli_alertmanager_resolved_slack_prometheus_and_trend(sim, reference, tmp_path, http_capture):
    from prometheus_client.parser import text_string_to_metric_families
    from typer.testing import CliRunner

    from mirec.cli import app

    url, bodies = http_capture
    log = tmp_path / "log" / "served.jsonl"
    write_jsonl(sim.window(N_WINDOW, *hour(0), seed=21), log)
    write_jsonl(sim.window(N_WINDOW, *hour(1), seed=22, mode="collapsed"), log, append=True)
    write_jsonl(sim.window(N_WINDOW, *hour(2), seed=23), log, append=True)
    write_jsonl(sim.window(30, *hour(3), seed=24), log, append=True)
    base = ["monitor", "--reference", str(reference.path), "--log", str(tmp_path / "log" / "*.jsonl"),
            "--since", "1h", "--out", str(tmp_path / "out"), "--webhook-url", url + "/slack",
            "--alertmanager-url", url, "--state-dir", str(tmp_path / "state")]
    ok = CliRunner().invoke(app, base + ["--until", "2026-01-01T01:00:00Z", "--no-html"])
    assert ok.exit_code == 0, ok.output
    assert bodies == [] and "log: 250 lines in the window, 0 bad" in ok.output  # nothing sent for a healthy window
    prom = tmp_path / "textfile" / "mirec.prom"
    bad = CliRunner().invoke(app, base + ["--until", "2026-01-01T02:00:00Z", "--prom-file", str(prom),
                                          "--pushgateway", url])
    assert bad.exit_code == 1, bad.output
    assert "[interest_collapse] interests are more similar (collapsing)" in bad.output
    wdir = tmp_path / "out" / "20260101T010000Z_20260101T020000Z"
    for f in ("report.html", "report-items.html", "report.json", "alerts.json", "metrics.prom", "trend.png"):
        assert (wdir / f).is_file(), f
    assert not (tmp_path / "out" / "20260101T000000Z_20260101T010000Z" / "report.html").exists()
    alerts = json.loads((wdir / "alerts.json").read_text())
    assert alerts["status"] == "firing" and alerts["exit_code"] == 1
    assert alerts["sinks"]["alertmanager"]["ok"] and alerts["sinks"]["webhook"]["ok"] and alerts["sinks"]["pushgateway"]["ok"]
    assert json.loads((wdir / "report.json").read_text())["groups"][0]["evidently"]["answers"]["tests"]
    # Alertmanager API v2: a list of alerts with labels, startsAt and a future endsAt
    am = [json.loads(b[3]) for b in bodies if b[1] == "/api/v2/alerts"]
    assert len(am) == 1 and isinstance(am[0], list)
    collapse = next(a for a in am[0] if a["labels"]["check"] == "interest_collapse")
    assert collapse["labels"] == {"alertname": "MirecMonitor", "check": "interest_collapse", "model": "mirec_a",
                                  "arm": "A", "severity": "critical"}
    assert collapse["startsAt"] == "2026-01-01T02:00:00Z" and collapse["endsAt"] > collapse["startsAt"]
    assert collapse["annotations"]["runbook"].endswith("runbook-interest-collapse")
    slack = json.loads(next(b[3] for b in bodies if b[1] == "/slack"))
    line = next(x for x in slack["text"].splitlines() if "[interest_collapse]" in x)
    assert line.count("mirec_a/A") == 1  # the model/arm prefix appears once
    pushes = [b for b in bodies if b[0] == "PUT"]
    assert pushes and pushes[0][1] == "/metrics/job/mirec_monitor" and b"mirec_monitor_alert" in pushes[0][3]
    fams = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    for name in ("mirec_monitor_alert", "mirec_monitor_window_tested", "mirec_monitor_value", "mirec_monitor_limit",
                 "mirec_monitor_mean_pairwise_cos", "mirec_monitor_effective_interests", "mirec_monitor_ild",
                 "mirec_monitor_category_drift_score", "mirec_monitor_log_bad_line_share"):
        assert name in fams, name
    alert = {s.labels["check"]: s.value for s in fams["mirec_monitor_alert"].samples if s.labels["model"] == "mirec_a"}
    assert set(alert) == set(CHECKS) - {"log_quality"} and alert["interest_collapse"] == 1.0
    limits = {(s.labels["measure"], s.labels["bound"]) for s in fams["mirec_monitor_limit"].samples}
    assert ("served_category_drift", "upper") in limits and ("effective_interests", "lower") in limits
    # the next, healthy window resolves the open alerts (state kept between runs)
    bodies.clear()
    healed = CliRunner().invoke(app, base + ["--until", "2026-01-01T03:00:00Z", "--no-html"])
    assert healed.exit_code == 0 and "resolved: [interest_collapse] mirec_a/A" in healed.output
    am = json.loads(next(b[3] for b in bodies if b[1] == "/api/v2/alerts"))
    resolved = next(a for a in am if a["labels"]["check"] == "interest_collapse")
    assert resolved["endsAt"] == "2026-01-01T03:00:00Z" and resolved["startsAt"] == "2026-01-01T02:00:00Z"
    assert ":large_green_circle: [interest_collapse]" in json.loads(next(b[3] for b in bodies if b[1] == "/slack"))["text"]
    # too few answers: exit 3, the gauge says untested, nothing resolved or sent
    bodies.clear()
    few = CliRunner().invoke(app, base + ["--until", "2026-01-01T04:00:00Z", "--no-html", "--prom-file", str(prom)])
    assert few.exit_code == 3 and "insufficient data" in few.output and bodies == []
    tested = {s.name: s.value for s in next(text_string_to_metric_families(
        "\n".join(x for x in prom.read_text().splitlines() if "window_tested" in x))).samples}
    assert tested == {"mirec_monitor_window_tested": 0.0}


def test_cli_bad_input_exits_2(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", "from mirec.cli import run; run()", "monitor", "--reference",
                        str(tmp_path), "--log", str(tmp_path / "x.jsonl"), "--since", "1h", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    err = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(err) == 1 and err[0].startswith("error:") and "not a monitoring reference" in err[0]


def test_webhook_failure_does_not_hide_alert_and_workspace_sink(sim, reference, tmp_path):
    res = _monitor(reference, sim.window(N_WINDOW, *hour(0), seed=31, mode="collapsed"), 0,
                   webhook_url="http://127.0.0.1:9/nothing-listens", workspace=tmp_path / "ws")
    assert res.exit_code == 1 and res.sinks["webhook"]["ok"] is False
    assert res.sinks["workspace"]["ok"], res.sinks["workspace"]
    from evidently.ui.workspace import Workspace

    ws = Workspace(str(tmp_path / "ws"))
    projects = ws.list_projects()
    assert [p.name for p in projects] == ["mirec mirec_a/A"]
    assert len(ws.list_runs(projects[0].id)) == 2  # the answers and the items snapshot
