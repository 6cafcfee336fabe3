"""Data-layer speed: synthetic generation and `prepare` (validate, map ids, split, write Parquet).

    .venv/bin/python benchmarks/data.py            # 10^5 and 10^6 interactions, and 10^5 users x 10^6 items
    .venv/bin/python benchmarks/data.py --quick    # skip the 10^5 x 10^6 case

Prints a table and writes benchmarks/results/data.json. `prepare` is timed the way a user runs it
on their own log: from an interactions Parquet file (the generated one) with an item file, so the
time includes reading, validation with quarantine, id mapping, the ComiRec split and writing.
Single process; the numbers depend on the machine (recorded in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mirec.config import DataConfig, SourceConfig, SynthConfig  # noqa: E402
from mirec.data import generate, prepare  # noqa: E402

CASES = [
    # name, users, items, categories (mean sequence length is 50 with the default seq_len 20..80)
    ("1e5 interactions", 2_000, 10_000, 20),
    ("1e6 interactions", 20_000, 100_000, 50),
    ("1e5 users x 1e6 items", 100_000, 1_000_000, 100),
]


def run_case(name: str, users: int, items: int, cats: int, tmp: Path) -> dict:
    cfg = SynthConfig(n_users=users, n_items=items, n_categories=cats, seed=0)
    t, c = time.perf_counter(), time.process_time()
    raw, item_df, _, _ = generate(cfg, progress=False)
    gen_s, gen_cpu = time.perf_counter() - t, time.process_time() - c
    raw.to_parquet(tmp / "raw.parquet", index=False)
    item_df.to_parquet(tmp / "items.parquet", index=False)
    n_raw = len(raw)
    del raw, item_df
    dcfg = DataConfig(name=name, out_dir=str(tmp / "out"),
                      source=SourceConfig(format="table", path=str(tmp / "raw.parquet"),
                                          items_path=str(tmp / "items.parquet"), columns={"weight": "weight"}))
    t, c = time.perf_counter(), time.process_time()
    _, rep = prepare(dcfg, progress=False)
    prep_s, prep_cpu = time.perf_counter() - t, time.process_time() - c
    return {"case": name, "users": users, "items": items, "categories": cats, "interactions": n_raw,
            "kept": rep.rows_kept, "items_kept": rep.items_kept,
            "generate_s": round(gen_s, 2), "generate_cpu_s": round(gen_cpu, 2),
            "generate_rows_per_s": round(n_raw / gen_s),
            "prepare_s": round(prep_s, 2), "prepare_cpu_s": round(prep_cpu, 2),
            "prepare_rows_per_s": round(n_raw / prep_s),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="skip the 10^5 users x 10^6 items case")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data.json"))
    args = ap.parse_args()
    cases = CASES[:2] if args.quick else CASES
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for c in cases:
            rows.append(run_case(*c, Path(d)))
            r = rows[-1]
            print(f"  done: {r['case']} ({r['generate_s'] + r['prepare_s']:.1f} s)", file=sys.stderr)
    head = (f"{'case':<24}{'interactions':>13}{'kept':>11}{'gen s':>8}{'(cpu)':>7}{'gen rows/s':>12}"
            f"{'prep s':>8}{'(cpu)':>7}{'prep rows/s':>13}{'RSS MB':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['case']:<24}{r['interactions']:>13,}{r['kept']:>11,}{r['generate_s']:>8.2f}{r['generate_cpu_s']:>7.1f}"
              f"{r['generate_rows_per_s']:>12,}{r['prepare_s']:>8.2f}{r['prepare_cpu_s']:>7.1f}"
              f"{r['prepare_rows_per_s']:>13,}{r['peak_rss_mb']:>8,}")
    print("(wall s and rows/s are wall-clock; (cpu) is this process's CPU s -- compare it when the machine is shared)")
    result = {"benchmark": "data", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"python": platform.python_version(), "platform": platform.platform(),
                          "cpus": os.cpu_count()},
              "load_average_at_end": os.getloadavg(),
              "note": "*_cpu_s = process CPU time (robust to a shared machine); prepare timed from an interactions Parquet file (read, validate+quarantine, id map, "
                      "ComiRec split, write); peak RSS is the process maximum so far",
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
