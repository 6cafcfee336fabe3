"""Closed-loop A/B proof on synthetic users: does `mirec ab report` pick the truly better arm, keep A/A false
positives under alpha with daily peeking, and flag an injected 45/55 assignment skew?

    .venv/bin/python benchmarks/ab.py                       # -> benchmarks/results/ab.json
    .venv/bin/python benchmarks/ab.py --quick --out /tmp/ab.json

What is real and what stands in:
  - users: the synthetic generator's (`mirec data prepare`, synth), whose true interests (truth/user_interests.parquet:
    categories and weights, latest phase) decide their clicks: p(click | item at position p) =
    min(1, click_scale * (floor + w_u[category(item)]) / (1 + position_decay * p)); a click is a purchase with
    probability purchase_p. Users carry their own history (last 20 items + their clicks: the closed loop is in
    the client; the Feast push loop is measured separately below).
  - arms: one ComiRec-SA model at two quality levels (trained `weak_steps` optimizer steps vs `strong_epochs`
    epochs); which arm (A or B) gets the strong one is drawn per trial. A/A: both arms serve the strong model.
    SRM: an A/A whose API splits 45/55 while the report expects 50/50.
  - the API is the real FastAPI app (`mirec.serving.api.create_app`) driven through Starlette's TestClient; TorchServe
    is the in-process stand-in (`mirec.serving.testing.InProcessTorchServe`: the handler's RecommendService without
    the Java hop), for speed. Every answer and every event goes through /recommend and /feedback; the report reads
    the API's served log and feedback log.
  - simulated clock: a trial's days happen in seconds of wall time, so after the run each served-log line's `ts` is
    set to the simulated time of its request (by request_id); feedback events carry the simulated time as their `ts`.
  - feedback -> history latency: a REAL Feast store (SQLite online, DuckDB offline) applied + materialized from
    the same data; POST /feedback (click) then POST /recommend with only user_id, timed until the served log shows
    the history one item longer.
  - report time at 10^6 events: logs written directly (not through the API) in the served/feedback log format.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import prometheus_client  # noqa: E402,F401 - before feast (see mirec/features/__init__.py)

from mirec.ab.config import ABConfig  # noqa: E402
from mirec.ab.report import build_report, write_report  # noqa: E402

N_REQ = 20
HIST = 20


# ---- data and models -------------------------------------------------------------------------------------------
def prepare_data(out: Path, n_users: int, n_items: int, n_cats: int, seed: int) -> Path:
    from mirec.config import DataConfig
    from mirec.data import prepare

    prepare(DataConfig(out_dir=str(out), synth={"n_users": n_users, "n_items": n_items, "n_categories": n_cats,
                                               "seed": seed}), progress=False)
    return out


def train_pair(data: Path, out: Path, weak_steps: int, strong_epochs: int, samples_per_epoch: int) -> dict:
    from mirec.models import ModelConfig
    from mirec.train import TrainConfig, train

    res = {}
    mcfg = ModelConfig(name="comirec_sa", dim=32, K=4, max_len=HIST)
    # an "epoch" here is capped at samples_per_epoch examples: 2 cores shared, the gap between the two levels
    # (offline recall@50, reported) is what matters
    for name, tcfg in (("weak", TrainConfig(epochs=1, max_steps=weak_steps, eval_max_users=200, seed=1,
                                            num_negatives=256)),
                       ("strong", TrainConfig(epochs=strong_epochs, patience=3, eval_max_users=200, seed=1,
                                              samples_per_epoch=samples_per_epoch, num_negatives=256))):
        t0 = time.perf_counter()
        r = train(data, mcfg, tcfg, out / name, progress=False)
        res[name] = {"model": r.model.eval(), "metrics": r.metrics, "seconds": round(time.perf_counter() - t0, 1)}
    return res


def services(data: Path, models: dict) -> dict:
    from mirec.data import Dataset
    from mirec.data.schema import IdMap
    from mirec.retrieval.recommender import Recommender
    from mirec.serving.service import RecommendService

    ds = Dataset(data)
    items = ds.items.sort_values("item_idx").reset_index(drop=True)
    out = {}
    for name, m in models.items():
        rec = Recommender(m["model"], items=items, item_popularity=items["popularity"].to_numpy())
        out[name] = (rec, IdMap(items["item_id"].to_numpy()), items["category"].to_numpy())
    return out


class Population:
    """Synthetic users: true category weights (latest phase) and a starting history."""

    def __init__(self, data: Path):
        from mirec.data import Dataset

        ds = Dataset(data)
        truth = pd.read_parquet(data / "truth" / "user_interests.parquet")
        truth = truth[truth["phase"] == truth.groupby("user_id")["phase"].transform("max")]
        self.n_cats = ds.n_categories
        self.weights: dict[str, np.ndarray] = {}
        for uid, g in truth.groupby("user_id"):
            w = np.zeros(self.n_cats)
            np.add.at(w, g["category_idx"].to_numpy(), g["weight"].to_numpy(float))
            self.weights[str(uid)] = w / max(w.sum(), 1e-9)
        items = ds.items
        self.cat_of = dict(zip(items["item_id"].astype(str), items["category_idx"].astype(int)))
        inter = ds.interactions.sort_values(["user_idx", "timestamp"])
        self.history = {str(u): list(g["item_id"].astype(str))[-HIST:] for u, g in inter.groupby("user_id")}
        self.users = sorted(set(self.weights) & set(self.history))


# ---- one trial -------------------------------------------------------------------------------------------------
def trial_users(pop: Population, count: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """(user id sent to the API, base synthetic user). Beyond the population's size users are cloned: "u12~3" has
    u12's true interests and history but is a user of its own for assignment and statistics."""
    base = pop.users
    reps = -(-count // len(base))
    ids = [(f"{u}~{r}" if r else u, u) for r in range(reps) for u in base]
    pick = rng.choice(len(ids), size=count, replace=False)
    return [ids[i] for i in pick]


async def _simulate(k: int, kind: str, svc: dict, pop: Population, args, tdir: Path,
                    rng: np.random.Generator) -> dict:
    import httpx

    from mirec.serving.ab import Arm, Experiment
    from mirec.serving.api import create_app
    from mirec.serving.service import RecommendService
    from mirec.serving.settings import ApiSettings
    from mirec.serving.testing import InProcessTorchServe

    if kind == "ab":
        strong_arm = "A" if rng.random() < 0.5 else "B"
        models = {"A": "strong" if strong_arm == "A" else "weak", "B": "strong" if strong_arm == "B" else "weak"}
        weights, n_users, days = (0.5, 0.5), args.users, args.days
    else:
        strong_arm = None
        models = {"A": "strong", "B": "strong"}
        weights = (0.45, 0.55) if kind == "srm" else (0.5, 0.5)
        n_users, days = (args.srm_users, 1) if kind == "srm" else (args.aa_users, args.days)
    upstream = {}
    for arm, m in models.items():
        rec, ids, cats = svc[m]
        upstream[f"model_{arm}"] = RecommendService(rec, ids, cats, f"model_{arm}_{m}", "1.0")
    settings = ApiSettings(torchserve_url="http://in-process", log_path=str(tdir / "served.jsonl"),
                           experiment=Experiment(salt=f"ab-bench-{k}-{rng.integers(1 << 30)}", arms=[
                               Arm(name="A", model="model_A", weight=weights[0]),
                               Arm(name="B", model="model_B", weight=weights[1])]))
    users = trial_users(pop, n_users, rng)
    hist = {u: list(pop.history[b]) for u, b in users}
    start = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=days + 1)
    sim_ts: dict[str, str] = {}
    served_sim = tdir / "served_sim.jsonl"
    done: set[str] = set()
    cfg = ABConfig(min_users_per_arm=args.min_users)
    rep, report_s, looks = None, 0.0, 0
    app = create_app(settings, upstream=InProcessTorchServe(upstream))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
            for d in range(days):
                events = []
                for u, base in users:
                    if kind != "srm" and rng.random() > args.active_p:
                        continue
                    rid = f"t{k}d{d}{u}"
                    ts = start + timedelta(days=d, seconds=int(rng.integers(0, 80_000)))
                    # SRM trials: only the split matters; an empty history is the handler's cheap popularity answer
                    body = {"user_id": u, "history": [] if kind == "srm" else hist[u][-HIST:], "n": N_REQ}
                    r = await c.post("/recommend", json=body, headers={"X-Request-Id": rid})
                    if r.status_code != 200:
                        raise RuntimeError(f"/recommend answered {r.status_code}: {r.text[:200]}")
                    sim_ts[rid] = ts.isoformat()
                    w = pop.weights[base]
                    for pos, it in enumerate(r.json()["items"]):
                        aff = w[pop.cat_of.get(it["item_id"], 0)]
                        p = min(1.0, args.click_scale * (args.floor + aff) / (1 + args.position_decay * pos))
                        if rng.random() < p:
                            ets = ts + timedelta(seconds=int(5 + 10 * pos))
                            # 10% of clients lose the request id: the report joins those by user + time
                            ev = {"request_id": rid if rng.random() > 0.1 else None, "user_id": u,
                                  "item_id": it["item_id"], "type": "click", "ts": ets.isoformat()}
                            events.append(ev)
                            hist[u].append(it["item_id"])
                            if rng.random() < args.purchase_p:
                                events.append({**ev, "type": "purchase", "value": 10.0,
                                               "ts": (ets + timedelta(seconds=60)).isoformat()})
                for i in range(0, len(events), 500):
                    r = await c.post("/feedback", json={"events": events[i:i + 500]})
                    if r.status_code != 200:
                        raise RuntimeError(f"/feedback answered {r.status_code}: {r.text[:200]}")
                # simulated clock: the day's new served-log lines, with their simulated ts (module docstring)
                # every file of the served log: the API rotates it (hourly by default), and a trial that crossed an
                # hour boundary once lost the answers before it here (SRM trial 22 of the first run: 1,472 of 4,000)
                with open(served_sim, "ab") as fh:
                    for f in sorted(tdir.glob("served.jsonl*")):
                        for line in f.read_bytes().splitlines():
                            rec = orjson.loads(line)
                            if rec["request_id"] in done:
                                continue
                            done.add(rec["request_id"])
                            rec["ts"] = sim_ts[rec["request_id"]]
                            fh.write(orjson.dumps(rec) + b"\n")
                # the daily look; a decided test (or a broken split) stops the experiment, as it would in production
                t0 = time.perf_counter()
                # the feedback log rotates hourly like the served log: every file of it
                rep = build_report(served_sim, str(tdir / "feedback.jsonl*"), {"A": 0.5, "B": 0.5}, cfg)
                report_s = time.perf_counter() - t0
                looks += 1
                if rep.decision.status in ("winner", "srm", "vetoed"):
                    break
    return {"rep": rep, "strong_arm": strong_arm, "report_s": report_s, "looks": looks}


def run_trial(k: int, kind: str, svc: dict, pop: Population, args, work: Path, rng: np.random.Generator) -> dict:
    import asyncio

    tdir = work / f"trial{k}"
    tdir.mkdir(parents=True)
    res = asyncio.run(_simulate(k, kind, svc, pop, args, tdir, rng))
    rep = res["rep"]
    if k % args.trials == 0:  # keep the first trial's report of each kind (JSON)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_name(f"{args.out.stem}_report_{kind}.json").write_text(rep.model_dump_json(indent=1))
    last = rep.cumulative[-1]
    srm_ok = all(d.srm is None or not d.srm.tested or d.srm.ok for d in rep.cumulative)
    dec = rep.decision
    comp = last.comparisons["B"][rep.config.primary]
    out = {"arms": {"ab": "weak/strong", "aa": "A/A", "srm": "A/A skew 45/55"}[kind],
           "true_better": res["strong_arm"], "decided": dec.winner, "status": dec.status,
           "days": res["looks"], "srm_ok": srm_ok,
           "users": {a: last.arms[a].users for a in ("A", "B")},
           "ctr": {a: last.arms[a].metrics["ctr"]["value"] for a in ("A", "B")},
           "final_always_valid_p": comp["always_valid_p_running"], "srm_p": last.srm.p_value if last.srm else None,
           "report_s": round(res["report_s"], 2)}
    shutil.rmtree(tdir, ignore_errors=True)
    return out


# ---- feedback -> history latency with a real Feast store --------------------------------------------------------
def feast_latency(data: Path, svc: dict, work: Path, n: int) -> dict:
    from fastapi.testclient import TestClient

    from mirec.features import store as S
    from mirec.features.config import FeaturesConfig
    from mirec.serving.ab import Arm, Experiment
    from mirec.serving.api import create_app
    from mirec.serving.service import RecommendService
    from mirec.serving.settings import ApiSettings
    from mirec.serving.testing import InProcessTorchServe

    repo = work / "feast_repo"
    repo.mkdir()
    for f in ("definitions.py", "feature_store.yaml"):
        shutil.copy(ROOT / "feature_repo" / f, repo / f)
    cfg = FeaturesConfig(repo_path=str(repo), seq_len=HIST)
    S.apply(data, cfg, log=lambda s: None)
    S.materialize(cfg, log=lambda s: None)
    rec, ids, cats = svc["strong"]
    up = InProcessTorchServe({"m": RecommendService(rec, ids, cats, "m", "1.0")})
    settings = ApiSettings(torchserve_url="http://in-process", log_path=str(work / "feast_served.jsonl"),
                           experiment=Experiment(salt="lat", arms=[Arm(name="A", model="m")]),
                           feast={"repo_path": str(repo), "timeout_ms": 500})
    users = sorted(pd.read_parquet(data / "users.parquet")["user_id"].astype(str))[:n]
    catalogue = list(pd.read_parquet(data / "items.parquet")["item_id"].astype(str))
    lat, seen, grew = [], 0, 0
    with TestClient(create_app(settings, upstream=up)) as c:
        for i, u in enumerate(users):
            c.post("/recommend", json={"user_id": u, "n": 10})  # warm + current state
            before = orjson.loads((work / "feast_served.jsonl").read_bytes().splitlines()[-1])
            item = catalogue[(i * 7919) % len(catalogue)]
            t0 = time.perf_counter()
            r = c.post("/feedback", json={"user_id": u, "item_id": item, "type": "click",
                                          "request_id": before["request_id"]})
            assert r.status_code == 200, r.text
            r2 = c.post("/recommend", json={"user_id": u, "n": 10})
            lat.append(time.perf_counter() - t0)
            after = orjson.loads((work / "feast_served.jsonl").read_bytes().splitlines()[-1])
            grew += int(after["history_len"] > before["history_len"] or before["history_len"] >= HIST)
            seen += int(item not in [x["item_id"] for x in r2.json()["items"]])  # exclude_seen: the click is history
    a = np.array(lat) * 1e3
    return {"n": len(lat), "p50_ms": round(float(np.percentile(a, 50)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "max_ms": round(float(a.max()), 2), "history_grew": grew, "clicked_item_excluded_next": seen,
            "what": "POST /feedback (click) + the next POST /recommend (user_id only, history from Feast) through the "
                    "real API and a real Feast SQLite online store; history_grew counts next answers whose history was "
                    "one item longer (or already at the L cap)"}


# ---- report time at 10^6 events ----------------------------------------------------------------------------------
def big_logs(work: Path, n_events: int, n_users: int, seed: int = 0) -> tuple[Path, Path, int]:
    rng = np.random.default_rng(seed)
    n_req = n_events // 5
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    s_path, f_path = work / "big_served.jsonl", work / "big_feedback.jsonl"
    users = rng.integers(0, n_users, n_req)
    days = rng.integers(0, 14, n_req)
    secs = rng.integers(0, 86_000, n_req)
    n_items = 20_000
    with open(s_path, "wb") as fs:
        for r in range(n_req):
            arm = "A" if (users[r] * 2654435761) % 2 else "B"
            its = rng.integers(0, n_items, N_REQ)
            fs.write(orjson.dumps({
                "schema_version": 1, "ts": (start + timedelta(days=int(days[r]), seconds=int(secs[r]))).isoformat(),
                "request_id": f"r{r}", "user_id": f"u{users[r]}", "arm": arm, "model": f"m{arm}", "version": "1",
                "n": N_REQ, "fallback": None, "latency_ms": float(rng.gamma(2.0, 4.0)),
                "items": [{"item_id": f"i{x}", "score": 0.5, "interest": int(x % 4), "category": f"c{x % 30}"}
                          for x in its]}) + b"\n")
    with open(f_path, "wb") as ff:
        req = rng.integers(0, n_req, n_events)
        pos = rng.integers(0, N_REQ, n_events)
        kinds = rng.choice(["impression", "click", "add_to_cart", "purchase"], n_events, p=[0.6, 0.3, 0.05, 0.05])
        for e in range(n_events):
            r = int(req[e])
            ff.write(orjson.dumps({
                "schema_version": 1, "ts": (start + timedelta(days=int(days[r]), seconds=int(secs[r]) + 30)).isoformat(),
                "request_id": f"r{r}", "user_id": f"u{users[r]}", "item_id": f"i{(r * 31 + int(pos[e])) % n_items}",
                "type": str(kinds[e]), "value": None, "assigned_arm": None}) + b"\n")
    return s_path, f_path, n_req


def write_results(result: dict, out: Path) -> None:
    """`out` (ab.json): exactly the issue's shape {trials, power, aa_false_positive_rate}; everything else measured
    (SRM detection, latency, report time, per-trial detail, set-up) in <stem>_details.json beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({k: result[k] for k in ("trials", "power", "aa_false_positive_rate")}, indent=1))
    out.with_name(f"{out.stem}_details.json").write_text(json.dumps(result, indent=1))


def summarize(detail: list[dict], extras: dict, setup: dict) -> dict:
    """The issue's JSON shape (trials, power, aa_false_positive_rate) + the other measured figures."""
    ab = [t for t in detail if t["kind"] == "ab"]
    aa = [t for t in detail if t["kind"] == "aa"]
    srm = [t for t in detail if t["kind"] == "srm"]

    def rate(xs, pred):
        return sum(pred(t) for t in xs) / len(xs) if xs else None

    return {
        "trials": [{k: t[k] for k in ("arms", "true_better", "decided", "days", "srm_ok")} for t in detail],
        "power": rate(ab, lambda t: t["decided"] == t["true_better"]),
        "aa_false_positive_rate": rate(aa, lambda t: t["decided"] is not None),
        "srm_detection_rate": rate(srm, lambda t: not t["srm_ok"]),
        "aa_srm_false_alarm_rate": rate(aa, lambda t: not t["srm_ok"]),
        "wrong_winner_rate": rate(ab, lambda t: t["decided"] is not None and t["decided"] != t["true_better"]),
        "trials_per_kind": {"ab": len(ab), "aa": len(aa), "srm": len(srm)},
        "mean_decision_day_ab": float(np.mean([t["days"] for t in ab if t["decided"]])) if any(
            t["decided"] for t in ab) else None,
        **extras,
        "setup": setup,
        "detail": detail,
    }


def setup_of(args, kinds: list[str]) -> dict:
    return {"kinds": kinds, "users_per_trial": {"ab": args.users, "aa": args.aa_users, "srm": args.srm_users},
            "days": args.days, "srm_days": 1, "active_p": args.active_p, "n": N_REQ, "seed": args.seed,
            "click_scale": args.click_scale, "floor": args.floor, "position_decay": args.position_decay,
            "purchase_p": args.purchase_p, "primary": "ctr", "alpha": 0.05, "tau_rel": 0.1,
            "min_users_per_arm": args.min_users, "weak_steps": args.weak_steps,
            "strong_epochs": args.strong_epochs, "samples_per_epoch": args.samples_per_epoch,
            "torchserve": "in-process stand-in (mirec.serving.testing.InProcessTorchServe)"}


def time_big_report(work: Path, n_events: int) -> dict:
    """Generate `n_events` feedback events (+ their served answers) and time `mirec ab report` on them."""
    t0 = time.perf_counter()
    s_path, f_path, n_req = big_logs(work, n_events, 100_000)
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    rep = build_report(s_path, f_path, {"A": 0.5, "B": 0.5})
    t_build = time.perf_counter() - t0
    write_report(rep, work / "big_report")
    t_report = time.perf_counter() - t0
    out = {"events": n_events, "served_answers": n_req, "days": rep.data["days"],
           "users": sum(a.users for a in rep.cumulative[-1].arms.values()),
           "generate_logs_s": round(t_gen, 1), "build_s": round(t_build, 1),
           "build_and_write_s": round(t_report, 1), "report_seconds_field": rep.seconds,
           "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print("report", out, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=50, help="trials of each kind (A/B, A/A, SRM)")
    ap.add_argument("--kinds", default="ab,aa,srm", help="which trial kinds to run (comma-separated)")
    ap.add_argument("--no-extras", action="store_true", help="skip the Feast latency and the 10^6-event report")
    ap.add_argument("--report-only", action="store_true",
                    help="only (re-)time the --big-events report and update report_10e6 in <out>_details.json")
    ap.add_argument("--merge", type=Path, nargs="*", help="only merge these result files (from --kinds runs) into --out")
    ap.add_argument("--note", default="", help="with --merge: how the merged runs were made (kept in setup)")
    ap.add_argument("--users", type=int, default=400, help="users per A/B trial")
    ap.add_argument("--aa-users", type=int, default=250, help="users per A/A trial")
    ap.add_argument("--srm-users", type=int, default=4000, help="users per SRM trial (one day)")
    ap.add_argument("--days", type=int, default=4)
    ap.add_argument("--active-p", type=float, default=0.8)
    ap.add_argument("--click-scale", type=float, default=0.35)
    ap.add_argument("--floor", type=float, default=0.02)
    ap.add_argument("--position-decay", type=float, default=0.3)
    ap.add_argument("--purchase-p", type=float, default=0.1)
    ap.add_argument("--min-users", type=int, default=100)
    ap.add_argument("--weak-steps", type=int, default=30)
    ap.add_argument("--strong-epochs", type=int, default=10)
    ap.add_argument("--samples-per-epoch", type=int, default=20_000)
    ap.add_argument("--big-events", type=int, default=1_000_000)
    ap.add_argument("--latency-n", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="2 trials each, 10^5 events, 5 latency probes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ab.json")
    args = ap.parse_args()
    if args.merge:
        # a "*_partial.json" (a run stopped after its trials) holds the trial details only
        parts = [{"detail": d, "setup": {}} if isinstance(d := json.loads(Path(p).read_text()), list) else d
                 for p in args.merge]
        extras = {}
        for part in parts:
            extras.update({k: v for k, v in part.items() if k in ("feedback_to_history_latency", "report_10e6")})
        setup = {**setup_of(args, sorted({t["kind"] for p in parts for t in p["detail"]})),
                 "merged_from": [str(p) for p in args.merge], "note": args.note,
                 "runs": [p["setup"] for p in parts]}
        result = summarize([t for p in parts for t in p["detail"]], extras, setup)
        write_results(result, args.out)
        print(json.dumps({k: v for k, v in result.items() if k not in ("trials", "detail", "setup")}, indent=1))
        return
    if args.quick:
        args.trials, args.big_events, args.latency_n, args.srm_users = 2, 100_000, 5, 1000
    if args.report_only:
        work = Path(tempfile.mkdtemp(prefix="mirec-ab-report-"))
        try:
            timed = time_big_report(work, args.big_events)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        details = args.out.with_name(f"{args.out.stem}_details.json")
        result = json.loads(details.read_text()) if details.exists() else {}
        result["report_10e6"] = timed
        details.write_text(json.dumps(result, indent=1))
        return
    import torch

    torch.set_num_threads(1)
    t_all = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="mirec-ab-bench-"))
    rng = np.random.default_rng([args.seed, *map(ord, args.kinds)])  # each --kinds run its own stream
    kinds = [k for k in args.kinds.split(",") if k]
    try:
        data = prepare_data(work / "data", 2000, 500, 12, args.seed)
        models = train_pair(data, work / "models", args.weak_steps, args.strong_epochs, args.samples_per_epoch)
        print({k: {"val_recall@50": v["metrics"].get("best_val_recall@50"), "s": v["seconds"]}
               for k, v in models.items()}, flush=True)
        svc = services(data, models)
        pop = Population(data)
        detail = []
        k = 0
        for kind in kinds:
            t0 = time.perf_counter()
            for _ in range(args.trials):
                detail.append({"kind": kind, **run_trial(k, kind, svc, pop, args, work / "trials", rng)})
                k += 1
                tr = detail[-1]
                print(f"{kind} {k}: decided {tr['decided']} true {tr['true_better']} day {tr['days']} srm_ok "
                      f"{tr['srm_ok']} ctr {tr['ctr']} users {tr['users']}", flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)  # after every trial: a stopped run keeps its trials
                args.out.with_name(f"{args.out.stem}_partial.json").write_text(json.dumps(detail, indent=1))
            print(f"{kind}: {time.perf_counter() - t0:.0f} s", flush=True)
        extras: dict = {}
        if not args.no_extras:
            extras["feedback_to_history_latency"] = feast_latency(data, svc, work, args.latency_n)
            print("latency", extras["feedback_to_history_latency"], flush=True)
            extras["report_10e6"] = time_big_report(work, args.big_events)
        setup = {**setup_of(args, kinds),
                 "offline_val_recall@50": {k2: v["metrics"].get("best_val_recall@50") for k2, v in models.items()},
                 "seconds": round(time.perf_counter() - t_all, 1)}
        result = summarize(detail, extras, setup)
        write_results(result, args.out)
        print(json.dumps({k2: v for k2, v in result.items() if k2 not in ("trials", "detail", "setup")}, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
