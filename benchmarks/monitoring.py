"""Monitoring detection benchmark: detection rate and false-alarm rate over >= 20 windows per scenario.

Traffic: the in-process equivalent of the serving stack (mirec.monitoring.simulate.TrafficSimulator:
FAISS flat index + the real `merge` aggregator over a synthetic catalogue, synthetic interest
vectors instead of a trained model; ServedLog records exactly as the server logs them). Each
window is checked by `mirec.monitoring.run_monitor` (Evidently report + tests) against a reference
built from healthy traffic, exactly as `mirec monitor` does (HTML off, records passed in memory).

    .venv/bin/python benchmarks/monitoring.py                     # 25 windows x 6 scenarios
    .venv/bin/python benchmarks/monitoring.py --windows 5 --quick # smoke run

Writes benchmarks/results/monitoring.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mirec.monitoring import CHECKS, Thresholds, build_reference, load_reference, run_monitor  # noqa: E402
from mirec.monitoring.simulate import TrafficSimulator, hour  # noqa: E402

# name -> (window -> simulator kwargs, expected check or None for healthy, description)
SCENARIOS = {
    "healthy": (lambda w: {}, None, "healthy model, stationary traffic"),
    "collapsed": (lambda w: {"mode": "collapsed"}, "interest_collapse", "all K interests equal"),
    "dominant": (lambda w: {"mode": "dominant", "dominance": 1.1}, "interest_collapse",
                 "one interest has 1.1x the norm of the others and supplies most items"),
    "abrupt_shift": (lambda w: {"shift": 0.5}, "category_drift", "users' category mix half-way to the permuted prior"),
    "slow_shift": (lambda w: {"shift": 0.02 * w}, "category_drift", "category mix moves 0.02 per window (0 -> 0.48)"),
    "fallback_surge": (lambda w: {"fallback_rate": 0.3}, "fallback_rate", "30% popularity-fallback answers"),
}


def run(windows: int, requests: int, ref_requests: int, scenarios: list[str], seed: int = 0) -> dict:
    sim = TrafficSimulator()
    th = Thresholds()
    tmp = Path(tempfile.mkdtemp(prefix="mirec-monbench-"))
    t0 = time.perf_counter()
    build_reference(sim.window(ref_requests, *hour(-1000), seed=10_000 + seed), tmp / "ref", sim.cat.item_meta())
    ref = load_reference(tmp / "ref")
    out = {}
    for name in scenarios:
        kw_of, expected, desc = SCENARIOS[name]
        rows = []
        t = time.perf_counter()
        for w in range(windows):
            kw = kw_of(w)
            recs = sim.window(requests, *hour(w), seed=seed * 100_000 + zlib.crc32(name.encode()) % 1000 * 1000 + w, **kw)
            res = run_monitor(ref, None, since="1h", until=hour(w)[1].isoformat(), out=None, records=recs,
                              thresholds=th)
            g = res.groups[0]
            failed = {c: [t["measure"] for t in r.get("tests", []) if t["status"] == "FAIL"]
                      for c, r in g["checks"].items() if r.get("firing")}
            rows.append({"window": w, "shift": kw.get("shift", 0.0), "firing": res.firing, "failed_tests": failed,
                         "category_drift_score": g["values"].get("category_drift_score"),
                         "category_drift_limit": g["limits"].get("category_drift", {}).get("served_category_drift", {}).get("limit"),
                         "effective_interests": g["values"].get("effective_interests"),
                         "mean_pairwise_cos": g["values"].get("mean_pairwise_cos")})
        secs = time.perf_counter() - t
        any_alert = [bool(r["firing"]) for r in rows]
        entry = {"description": desc, "expected_check": expected, "windows": windows, "seconds": round(secs, 1),
                 "per_check_fired": {c: sum(c in r["firing"] for r in rows) for c in CHECKS}, "rows": rows}
        if expected is None:
            entry["false_alarm_rate"] = sum(any_alert) / windows
            entry["check_false_alarm_rate"] = sum(len(r["firing"]) for r in rows) / (windows * len(CHECKS))
        else:
            hits = [expected in r["firing"] for r in rows]
            entry["detection_rate"] = sum(hits) / windows
            entry["first_detection_window"] = hits.index(True) if any(hits) else None
            if name == "slow_shift" and any(hits):
                first = hits.index(True)
                entry["shift_at_first_detection"] = rows[first]["shift"]
                entry["detection_rate_after_first"] = sum(hits[first:]) / len(hits[first:])
        out[name] = entry
    return {"generated": datetime.now(timezone.utc).isoformat(), "windows_per_scenario": windows,
            "requests_per_window": requests, "reference_requests": ref_requests,
            "traffic": "in-process equivalent of the serving stack (TrafficSimulator: FAISS flat + merge aggregator, "
                       "synthetic catalogue of 2000 items / 20 categories, K=4 synthetic interests, n=20)",
            "thresholds": th.model_dump(mode="json"), "machine": {"python": platform.python_version(),
                                                                   "cpus": __import__("os").cpu_count()},
            "total_seconds": round(time.perf_counter() - t0, 1), "scenarios": out}


def table(res: dict) -> str:
    lines = ["| scenario | expected check | windows | detection rate | first detected (window) | false-alarm rate | other checks fired |",
             "|---|---|---|---|---|---|---|"]
    for name, e in res["scenarios"].items():
        exp = e["expected_check"]
        others = {c: n for c, n in e["per_check_fired"].items() if n and c != exp}
        det = f"{e['detection_rate']:.2f}" if exp else "-"
        first = e.get("first_detection_window")
        if name == "slow_shift" and first is not None:
            first = f"{first} (shift {e['shift_at_first_detection']:.2f})"
        fa = f"{e['false_alarm_rate']:.2f}" if exp is None else "-"
        lines.append(f"| {name} | {exp or '(none)'} | {e['windows']} | {det} | {first if exp else '-'} | {fa} | "
                     f"{', '.join(f'{c}:{n}' for c, n in others.items()) or '-'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=25)
    ap.add_argument("--requests", type=int, default=400, help="answers per one-hour window")
    ap.add_argument("--ref-requests", type=int, default=3000)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smaller windows and reference (smoke run)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "monitoring.json"))
    a = ap.parse_args(argv)
    if a.quick:
        a.requests, a.ref_requests = 250, 1500
    res = run(a.windows, a.requests, a.ref_requests, a.scenarios.split(","), a.seed)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(table(res))
    print(f"\n{res['windows_per_scenario']} windows x {res['requests_per_window']} answers; reference "
          f"{res['reference_requests']} answers; {res['total_seconds']} s; written {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
