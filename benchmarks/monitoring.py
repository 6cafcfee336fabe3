"""Monitoring proof: false alarms on healthy traffic, detection of planted faults, and the cost of a window.

Traffic comes from a **really trained model served through the handler's code**: the checkpoint of `mirec train`
is packaged as a MAR (`mirec.serving.packaging.package`, aggregator `auto` with the checkpoint's d_u
calibration, as the pipeline packages it), the MAR is loaded with `RecommendService.load` (what
serving/handler.py runs inside TorchServe), every request is a `RecommendRequest` with the API's defaults (n 50,
exclude_seen, diversity null -> personalised) and every answer is written as the API writes its ServedLog line
(`mirec.monitoring.reference.served_log_records`). The reference is the same MAR serving every valid + test user
(`build_reference_from_mar`); healthy traffic is the *train* users (another sample of the same population; their
evaluation-protocol input histories, like the reference's), windows of 250, 1,000 and 10,000 answers drawn from
the served pool. Each window is checked by `run_monitor` exactly as `mirec monitor` does (HTML off).

Planted faults (each served through the same service, then cut into windows of `--fault-window` answers):
  interest_blend w   every interest blended with the user's mean interest: v <- (1-w) v + w mean(v)
  dominant_interest  interest 0 scaled x3 (it supplies most items)
  diversity_up       requests set diversity = 0.9 (controllable lambda)
  diversity_down     each list restricted to its top 1 or 2 categories (refilled from them)
  category_dominated 60% of every history replaced by items of two categories
  popular_history    30% / 60% of every history replaced by head items (top 10% by popularity)
  short_history      histories cut to their last 3 items
  log_garbage / log_truncated / log_wrong_schema / log_unknown_version / log_no_interest_stats: served-log faults
Timing: a generated log (the in-process simulator, n = 50 items per answer) in the hourly layout, one fresh
process per size: wall seconds of run_monitor (read + checks) and peak memory = the high-water mark of the
process's anonymous resident memory (RssAnon, sampled every 5 ms) above its level after the imports and the
reference load (ru_maxrss is not used: after fork+exec Linux reports the parent's high-water mark).

    nice -n 19 .venv/bin/python benchmarks/monitoring.py --model artifacts/monbench/model --data artifacts/monbench/data
    nice -n 19 .venv/bin/python benchmarks/monitoring.py ... --quick          # few windows (smoke)
    nice -n 19 .venv/bin/python benchmarks/monitoring.py --timing-only --timing-sizes 1000,10000,100000

Writes benchmarks/results/monitoring.json ({"healthy", "scenarios", "timing", ...}) and prints the confusion table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mirec.monitoring import CHECKS, Thresholds, load_reference, run_monitor  # noqa: E402
from mirec.monitoring.simulate import hour, write_jsonl  # noqa: E402

BASE = datetime(2026, 1, 1, tzinfo=timezone.utc)


# ---------------------------------------------------------------------------------------------- serving
class Traffic:
    def __init__(self, model_dir: Path, data_dir: Path, work: Path, log=print):
        from mirec.data import Dataset
        from mirec.monitoring.reference import build_reference_from_mar, load_service
        from mirec.serving.packaging import PackageSpec, package

        self.ds = Dataset(data_dir)
        self.work = work
        mar = work / "pkg" / "model-store" / "mirec_a.mar"
        if not mar.exists():
            spec = PackageSpec.model_validate({"out_dir": str(work / "pkg"), "candidates": [
                {"name": "mirec_a", "version": "1", "checkpoint": str(model_dir)}]})
            package(spec, log=lambda *_: None)
        self.mar = mar
        self.tmp = tempfile.mkdtemp(prefix="mirec-monbench-mar-")
        self.svc = load_service(mar, self.tmp)
        self.meta = self.svc.meta
        log(f"MAR {mar}: aggregator {self.meta['aggregator']}, params {sorted(self.meta['aggregator_params'])}")
        ref_dir = work / "ref" / "mirec_a"
        if not (ref_dir / "summary.json").exists():
            t = time.perf_counter()
            build_reference_from_mar(mar, self.ds, ref_dir, arm="A", ts=BASE - timedelta(days=30))
            log(f"reference: {ref_dir} ({time.perf_counter() - t:.0f} s)")
        self.ref = load_reference(work / "ref")
        from mirec.data.split import split_sequence

        frac = self.ds.meta.get("input_frac", 0.8)
        self.ids = np.asarray(self.ds.item_ids.to_external(np.arange(self.ds.n_items)), dtype=object)
        self.train_users = [int(u) for u in self.ds.users_in("train")]
        self.hist = {u: split_sequence(self.ds.sequences[u], frac)[0] for u in self.train_users
                     if len(self.ds.sequences[u]) >= 2}
        self.train_users = list(self.hist)
        pop = self.svc.recommender.item_popularity
        from mirec.monitoring.popularity import head_mask

        self.head_items = np.flatnonzero(head_mask(pop))
        self.head_p = pop[self.head_items] / pop[self.head_items].sum()
        self.cat_items = {c: np.flatnonzero(self.ds.item_category == c) for c in range(self.ds.n_categories)}

    def serve(self, users, ts, *, rng, history_fn=None, diversity=None, restrict=None, n=50) -> list[dict]:
        from mirec.monitoring.reference import served_log_records
        from mirec.serving.schema import RecommendRequest

        reqs = []
        for u in users:
            h = self.hist[u]
            if history_fn is not None:
                h = history_fn(h, rng)
            reqs.append(RecommendRequest(user_id=f"u{u}", history=[str(x) for x in self.ids[h]],
                                         n=n * (3 if restrict else 1), diversity=diversity))
        out = []
        for s in range(0, len(reqs), 256):
            out += served_log_records(self.svc, reqs[s: s + 256], arm="A", ts=ts[s: s + 256],
                                      request_ids=[f"q{s + j}-{rng.integers(1 << 40)}" for j in range(len(reqs[s: s + 256]))])
        if restrict:  # keep each list's top `restrict` categories, refilled from them (the list stays n long)
            for r in out:
                cats = [it["category"] for it in r["items"]]
                top = [c for c, _ in sorted(((c, -cats.index(c)) for c in set(cats)),
                                            key=lambda x: (-cats.count(x[0]), -x[1]))[:restrict]]
                r["items"] = [it for it in r["items"] if it["category"] in top][:n]
                r["n"] = n
        return out

    def interests_hook(self, kind: str | None, value: float = 0.0):
        """Plant an interest fault in the served model (None: restore)."""
        model = self.svc.recommender.model
        if not hasattr(self, "_orig"):
            self._orig = model.serving_interests
        if kind is None:
            model.serving_interests = self._orig
            return
        orig = self._orig

        def blended(seq, mask):
            v = orig(seq, mask)
            if kind == "blend":
                return (1 - value) * v + value * v.mean(dim=1, keepdim=True)
            v = v.clone()
            v[:, 0] = v[:, 0] * value
            return v

        model.serving_interests = blended


def _ts(start: datetime, n: int, rng) -> list[datetime]:
    return sorted(start + timedelta(seconds=float(x)) for x in rng.uniform(0, 3600, n))


# ---------------------------------------------------------------------------------------------- windows
def check_window(ref, records, w: int, th: Thresholds, log_lines: list[str] | None = None):
    until = (BASE + timedelta(hours=w + 1)).isoformat()
    if log_lines is not None:
        with tempfile.TemporaryDirectory(prefix="mirec-monbench-log-") as tmp:
            p = Path(tmp) / "served.jsonl"
            p.write_text("\n".join(log_lines) + "\n")
            return run_monitor(ref, p, since="1h", until=until, out=None, thresholds=th, html=False, trend=False)
    return run_monitor(ref, None, since="1h", until=until, out=None, records=records, thresholds=th, html=False,
                       trend=False)


def _row(res, w, n):
    g = res.groups[0] if res.groups else {}
    failed = {c: [t["measure"] for t in r.get("tests", []) if t["firing"]] for c, r in g.get("checks", {}).items()
              if r.get("firing")}
    errors = [c for c, r in g.get("checks", {}).items() if r.get("error")]
    return {"window": w, "answers": n, "exit_code": res.exit_code, "firing": res.firing, "failed_tests": failed,
            "errors": errors, "log_bad_share": res.log.get("bad_share")}


def corrupt(records: list[dict], kind: str, share: float, rng) -> list[str]:
    lines = []
    for r in records:
        hit = rng.random() < share
        if not hit:
            lines.append(json.dumps(r))
        elif kind == "garbage":
            lines += [json.dumps(r), "\x00garbage " + "x" * int(rng.integers(5, 80))]
        elif kind == "truncated":
            s = json.dumps(r)
            lines.append(s[: int(len(s) * rng.uniform(0.2, 0.95))])
        elif kind == "wrong_schema":
            bad = {**r, "recommended": r["items"]}
            del bad["items"]
            lines.append(json.dumps(bad))
        elif kind == "unknown_version":
            lines.append(json.dumps({**r, "schema_version": 2}))
        elif kind == "no_interest_stats":
            lines.append(json.dumps({**r, "interest_stats": {"k": 0, "mean_pairwise_cos": None, "interest_norms": []}}))
    return lines


def fault_plan(tr: Traffic) -> list[dict]:
    """name, severity, expected check, how it is served."""
    two = [int(x) for x in np.argsort([-len(tr.cat_items[c]) for c in tr.cat_items])[:2]]

    def replace(share, pool_fn):
        def fn(h, rng):
            h = h.copy()
            m = rng.random(len(h)) < share
            h[m] = pool_fn(int(m.sum()), rng)
            return h
        return fn

    popular = lambda k, rng: rng.choice(tr.head_items, size=k, p=tr.head_p)  # noqa: E731
    two_cats = lambda k, rng: np.concatenate([tr.cat_items[two[0]], tr.cat_items[two[1]]])[  # noqa: E731
        rng.integers(0, len(tr.cat_items[two[0]]) + len(tr.cat_items[two[1]]), size=k)]
    plan = [{"name": "interest_blend", "severity": w, "expected_check": "interest_collapse", "hook": ("blend", w)}
            for w in (0.3, 0.5, 0.8, 1.0)]
    plan += [{"name": "dominant_interest", "severity": 3.0, "expected_check": "interest_collapse", "hook": ("scale", 3.0)}]
    plan += [{"name": "diversity_up", "severity": "lambda 0.9", "expected_check": "diversity_drift", "diversity": 0.9},
             {"name": "diversity_down", "severity": "top 2 categories", "expected_check": "diversity_drift", "restrict": 2},
             {"name": "diversity_down", "severity": "top 1 category", "expected_check": "diversity_drift", "restrict": 1}]
    plan += [{"name": "category_dominated", "severity": 0.6, "expected_check": "input_drift", "history": replace(0.6, two_cats)},
             {"name": "popular_history", "severity": 0.3, "expected_check": "input_drift", "history": replace(0.3, popular)},
             {"name": "popular_history", "severity": 0.6, "expected_check": "input_drift", "history": replace(0.6, popular)},
             {"name": "short_history", "severity": "last 3 items", "expected_check": "input_drift",
              "history": lambda h, rng: h[-3:]}]
    plan += [{"name": f"log_{k}", "severity": s, "expected_check": "log_quality", "log": (k, s)}
             for k, s in (("garbage", 0.05), ("truncated", 0.03), ("wrong_schema", 0.5), ("unknown_version", 0.2),
                          ("no_interest_stats", 1.0))]
    return plan


def run(tr: Traffic, *, healthy_sizes: list[int], fault_windows: int, fault_window: int, seed: int, log=print,
        only: set[str] | None = None, save=None) -> dict:
    th = Thresholds()
    rng = np.random.default_rng(seed)
    users = np.array(tr.train_users)
    # ---- healthy: the whole train-user pool served once, windows drawn from it
    t = time.perf_counter()
    pool = tr.serve(list(users), _ts(BASE, len(users), rng), rng=rng)
    log(f"healthy pool: {len(pool)} answers served in {time.perf_counter() - t:.0f} s")
    rows = []
    for w, n in enumerate(healthy_sizes):
        pick = rng.choice(len(pool), size=n, replace=n > len(pool))
        start = BASE + timedelta(hours=w)
        recs = [{**pool[i], "ts": (start + timedelta(seconds=float(s))).isoformat(), "request_id": f"h{w}-{j}"}
                for j, (i, s) in enumerate(zip(pick, np.sort(rng.uniform(0, 3600, n))))]
        res = check_window(tr.ref, recs, w, th)
        rows.append(_row(res, w, n))
        if res.firing:
            log(f"  healthy window {w} ({n} answers) FIRED: {rows[-1]['failed_tests']}")
    healthy = {"windows": len(rows), "false_alarms": sum(bool(r["firing"]) or r["exit_code"] == 2 for r in rows),
               "sizes": {str(n): healthy_sizes.count(n) for n in sorted(set(healthy_sizes))},
               "per_check_fired": {c: sum(c in r["firing"] for r in rows) for c in CHECKS},
               "seconds": round(time.perf_counter() - t, 1), "rows": rows}
    log(f"healthy: {healthy['false_alarms']} of {healthy['windows']} windows alerted ({healthy['seconds']} s)")
    scenarios = []
    if save:
        save({"healthy": healthy, "scenarios": scenarios, "partial": True})
    for sc in fault_plan(tr):
        if only and sc["name"] not in only:
            continue
        t = time.perf_counter()
        rows = []
        if "log" in sc:
            kind, share = sc["log"]
            for w in range(fault_windows):
                pick = rng.choice(len(pool), size=fault_window, replace=False)
                start = BASE + timedelta(hours=1000 + w)
                recs = [{**pool[i], "ts": (start + timedelta(seconds=float(s))).isoformat(), "request_id": f"l{w}-{j}"}
                        for j, (i, s) in enumerate(zip(pick, np.sort(rng.uniform(0, 3600, fault_window))))]
                lines = corrupt(recs, kind, share, rng)
                try:
                    res = check_window(tr.ref, None, 1000 + w, th, log_lines=lines)
                    rows.append(_row(res, w, fault_window))
                except Exception as exc:  # every line bad -> bad input (exit 2): also a detection of the fault
                    rows.append({"window": w, "answers": fault_window, "exit_code": 2, "firing": [],
                                 "error": f"{type(exc).__name__}: {exc}"[:200]})
        else:
            if "hook" in sc:
                tr.interests_hook(*sc["hook"])
            try:
                n_all = fault_windows * fault_window
                pick = rng.choice(users, size=n_all, replace=n_all > len(users))
                served = tr.serve(list(pick), [BASE] * n_all, rng=rng, history_fn=sc.get("history"),
                                  diversity=sc.get("diversity"), restrict=sc.get("restrict"))
            finally:
                tr.interests_hook(None)
            for w in range(fault_windows):
                start = BASE + timedelta(hours=2000 + w)
                chunk = served[w * fault_window: (w + 1) * fault_window]
                recs = [{**r, "ts": (start + timedelta(seconds=float(s))).isoformat()}
                        for r, s in zip(chunk, np.sort(rng.uniform(0, 3600, len(chunk))))]
                rows.append(_row(check_window(tr.ref, recs, 2000 + w, th), w, len(chunk)))
        exp = sc["expected_check"]
        hit = [exp in r["firing"] or (exp == "log_quality" and r["exit_code"] == 2) for r in rows]
        entry = {"name": sc["name"], "severity": sc["severity"], "windows": len(rows), "detected": sum(hit),
                 "expected_check": exp, "detection_rate": round(sum(hit) / len(rows), 3),
                 "other_checks_fired": {c: n for c in CHECKS if c != exp and (n := sum(c in r["firing"] for r in rows))},
                 "seconds": round(time.perf_counter() - t, 1), "rows": rows}
        scenarios.append(entry)
        log(f"{sc['name']} {sc['severity']}: {entry['detected']}/{entry['windows']} by {exp} "
            f"(others {entry['other_checks_fired']}; {entry['seconds']} s)")
        if save:
            save({"healthy": healthy, "scenarios": scenarios, "partial": True})
    return {"healthy": healthy, "scenarios": scenarios}


# ---------------------------------------------------------------------------------------------- timing
TIMING_CHILD = r'''
import json, sys, threading, time
def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon"):
            return int(line.split(":")[1].split()[0]) * 1024
peak = [0]
def sample():
    while True:
        peak[0] = max(peak[0], anon()); time.sleep(0.005)
from mirec.monitoring import load_reference, run_monitor
import duckdb, evidently, matplotlib  # imports before the baseline
ref = load_reference(sys.argv[1])
base = anon(); peak[0] = base
threading.Thread(target=sample, daemon=True).start()
t = time.perf_counter()
res = run_monitor(ref, sys.argv[2], since="1h", until=sys.argv[3], out=None, html=False, trend=False)
secs = time.perf_counter() - t
print(json.dumps({"seconds": round(secs, 2), "peak_mb": round((peak[0] - base) / 1e6, 1),
                  "rss_after_imports_mb": round(base / 1e6, 1),
                  "answers": res.groups[0]["requests"], "files_read": len(res.window["read"]["files"]),
                  "files_skipped": res.window["read"]["files_skipped"], "exit_code": res.exit_code}))
'''


def timing(sizes: list[int], work: Path, log=print) -> list[dict]:
    from mirec.monitoring import build_reference
    from mirec.monitoring.simulate import TrafficSimulator

    sim = TrafficSimulator(n=50)
    ref = work / "timing" / "ref"
    if not (ref / "summary.json").exists():
        build_reference(sim.window(5000, *hour(-100), seed=999), ref, sim.cat.item_meta())
    out = []
    for n in sizes:
        logdir = work / "timing" / f"log{n}" / "pod-0"
        target = logdir / "served-20260101T01.jsonl"
        if not target.exists():
            for h, size in ((0, min(n, 5000)), (1, n), (2, min(n, 5000))):  # the hours around are not read
                f = logdir / f"served-20260101T0{h}.jsonl"
                for s in range(0, size, 10000):
                    write_jsonl(sim.window(min(10000, size - s), *hour(h), seed=n + 100 * h + s), f, append=s > 0)
        proc = subprocess.run([sys.executable, "-c", TIMING_CHILD, str(ref), str(logdir.parent / "*" / "*.jsonl"),
                               hour(1)[1].isoformat()], capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["bytes_per_answer"] = round(row["peak_mb"] * 1e6 / max(row["answers"], 1))
        row["log_mb"] = round(target.stat().st_size / 1e6, 1)
        out.append(row)
        log(f"timing {n}: {row}")
    return out


# ---------------------------------------------------------------------------------------------- output
def table(res: dict) -> str:
    h = res["healthy"]
    lines = ["| traffic | severity | windows | expected check | detected | other checks fired |", "|---|---|---|---|---|---|",
             f"| healthy ({', '.join(f'{k} answers x{v}' for k, v in h['sizes'].items())}) | - | {h['windows']} | (none) | "
             f"false alarms **{h['false_alarms']}** | {', '.join(f'{c}:{n}' for c, n in h['per_check_fired'].items() if n) or '-'} |"]
    for s in res["scenarios"]:
        others = ", ".join(f"{c}:{n}" for c, n in s["other_checks_fired"].items()) or "-"
        lines.append(f"| {s['name']} | {s['severity']} | {s['windows']} | {s['expected_check']} | "
                     f"**{s['detected']}/{s['windows']}** | {others} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="artifacts/monbench/model", help="a `mirec train` checkpoint folder")
    ap.add_argument("--data", default="artifacts/monbench/data", help="its prepared dataset")
    ap.add_argument("--work", default="artifacts/monbench/work")
    ap.add_argument("--healthy", default="250x20,1000x14,10000x6", help="healthy window sizes: SIZExCOUNT,...")
    ap.add_argument("--fault-windows", type=int, default=20)
    ap.add_argument("--fault-window", type=int, default=250, help="answers per fault window")
    ap.add_argument("--timing-sizes", default="1000,10000,100000")
    ap.add_argument("--timing-only", action="store_true")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--quick", action="store_true", help="smoke run: few windows")
    ap.add_argument("--scenarios", default="", help="comma-separated fault names to run (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "monitoring.json"))
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    out_path = Path(a.out)
    res = json.loads(out_path.read_text()) if a.timing_only and out_path.exists() else {}
    if not a.timing_only:
        if a.quick:
            a.healthy, a.fault_windows = "250x3,1000x2", 3
        sizes = [int(s) for part in a.healthy.split(",") for s in [part.split("x")[0]] * int(part.split("x")[1])]
        tr = Traffic(Path(a.model), Path(a.data), work)

        def save(partial):  # results so far (a long run killed half-way keeps them)
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps({**partial, "generated": datetime.now(timezone.utc).isoformat()},
                                           indent=1, default=str))

        res = run(tr, healthy_sizes=sizes, fault_windows=a.fault_windows, fault_window=a.fault_window, seed=a.seed,
                  only=set(filter(None, a.scenarios.split(","))) or None, save=save)
        res["traffic"] = {"model": str(a.model), "mar": str(tr.mar), "aggregator": tr.meta["aggregator"],
                          "aggregator_params": sorted(tr.meta["aggregator_params"]), "reference_answers":
                          tr.ref.model_frame("mirec_a").n_answers, "healthy_pool": "train users, evaluation input histories",
                          "served_through": "mirec.serving.service.RecommendService (the TorchServe handler's code), "
                                            "API request defaults, ServedLog as the API writes it"}
        res["thresholds"] = Thresholds().model_dump(mode="json")
    if not a.no_timing:
        res["timing"] = timing([int(x) for x in a.timing_sizes.split(",")], work)
    res["generated"] = datetime.now(timezone.utc).isoformat()
    res["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(), "note": "2 cores shared with other jobs, nice 19"}
    res["timing_seconds" if a.timing_only else "total_seconds"] = round(time.perf_counter() - t0, 1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(res, indent=1, default=str))
    if "healthy" in res:
        print(table(res))
    res.pop("partial", None)
    print(f"written {out_path} ({round(time.perf_counter() - t0, 1)} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
