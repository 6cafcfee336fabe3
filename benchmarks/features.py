"""Feature store benchmark: materialize throughput and online lookup latency.

    .venv/bin/python benchmarks/features.py                       # 10^5 and 10^6 interactions
    .venv/bin/python benchmarks/features.py --sizes 100000 --out benchmarks/results/features-small.json

For each size: a synthetic dataset (mirec.data, ~50 events per user) -> `apply` (derived sources + registry)
-> full `materialize` (rows/s = source rows read per second of Feast materialization, per view) ->
online lookups of 1 and 100 random users: p50/p99 of Feast `get_online_features` (direct) and of
`OnlineHistoryClient.recent_items` (the serving path: worker thread + deadline).
Local profile: DuckDB offline store, SQLite online store. Single process; CPU time is shared with
whatever else runs on the machine, so report the machine and load with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _pct(xs: list[float]) -> dict:
    a = np.asarray(xs)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "mean_ms": round(float(a.mean()), 3), "n": len(a)}


def run_size(target: int, work: Path, seq_len: int, reps: int) -> dict:
    import pandas as pd

    from mirec.config import DataConfig
    from mirec.data import prepare
    from mirec.features import store as S
    from mirec.features.config import FeaturesConfig
    from mirec.features.online import OnlineHistoryClient

    n_users = max(10, round(target / 48))  # synthetic users average ~48 events after filtering
    data = work / f"data_{target}"
    t0 = time.perf_counter()
    prepare(DataConfig(out_dir=str(data), synth={"n_users": n_users, "n_items": max(5000, n_users),
                                                  "seed": 0}), progress=False)
    t_data = time.perf_counter() - t0
    cfg = FeaturesConfig(repo_path=str(ROOT / "feature_repo"), store_dir=str(work / f"feast_{target}"),
                         seq_len=seq_len).resolved()
    t0 = time.perf_counter()
    meta = S.apply(data, cfg, log=lambda s: print("  " + s, flush=True))
    t_apply = time.perf_counter() - t0
    reports = S.materialize(cfg, log=lambda s: print("  " + s, flush=True))
    mat = {r.view: r.as_dict() for r in reports}
    total_rows = sum(r.rows for r in reports)
    total_s = sum(r.seconds for r in reports)

    users = pd.read_parquet(data / "users.parquet")["user_id"].to_numpy()
    rng = np.random.default_rng(0)
    fs = S.open_store(cfg)
    service = fs.get_feature_service("mirec_serving")
    client = OnlineHistoryClient(cfg.repo_path, timeout_ms=1000, store_dir=cfg.store_dir)
    lookups = {}
    for batch in (1, 100):
        direct, via_client = [], []
        for i in range(reps + 5):
            ids = [str(u) for u in rng.choice(users, batch, replace=False)]
            t = time.perf_counter()
            fs.get_online_features(features=service, entity_rows=[{"user_id": u} for u in ids]).to_dict()
            d = (time.perf_counter() - t) * 1e3
            t = time.perf_counter()
            out = client.recent_items(ids)
            c = (time.perf_counter() - t) * 1e3
            assert len(out) == len(set(ids))
            if i >= 5:  # warm-up
                direct.append(d)
                via_client.append(c)
        lookups[f"batch_{batch}"] = {"feast_direct": _pct(direct), "online_history_client": _pct(via_client)}
    return {
        "interactions": meta["counts"]["interactions"], "users": meta["counts"]["users"],
        "user_snapshots": meta["counts"]["user_history"], "item_rows": meta["counts"]["item_stats"],
        "seq_len": seq_len, "prepare_s": round(t_data, 2), "apply_s": round(t_apply, 2),
        "materialize": mat, "materialize_total": {"rows": total_rows, "seconds": round(total_s, 2),
                                                  "rows_per_s": round(total_rows / total_s, 1)},
        "lookup": lookups, "client_fallbacks": client.fallbacks,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--seq-len", type=int, default=50)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "features.json")
    ap.add_argument("--work", type=Path, default=None, help="Scratch folder (default: a temp dir, removed).")
    args = ap.parse_args()
    results = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                           "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()},
               "started": datetime.now(timezone.utc).isoformat(), "profile": "local (duckdb offline, sqlite online)",
               "command": " ".join([Path(sys.executable).name, *sys.argv]), "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for n in args.sizes:
            print(f"== {n:,} interactions", flush=True)
            results["sizes"][str(n)] = r = run_size(n, work, args.seq_len, args.reps)
            lk = r["lookup"]
            print(f"  materialize {r['materialize_total']['rows_per_s']:,.0f} rows/s; lookup p50/p99 "
                  f"1 user {lk['batch_1']['online_history_client']['p50_ms']}/"
                  f"{lk['batch_1']['online_history_client']['p99_ms']} ms, 100 users "
                  f"{lk['batch_100']['online_history_client']['p50_ms']}/"
                  f"{lk['batch_100']['online_history_client']['p99_ms']} ms", flush=True)
    results["load_avg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
