"""Quality benchmark: every model and baseline, several seeds, mean ± std; prints a table, writes JSON.

    .venv/bin/python benchmarks/quality.py --datasets synth,ml --seeds 3
    .venv/bin/python benchmarks/quality.py --quick        # 1 seed, 1 short epoch, synth only (smoke)

Datasets: `synth` = the embedded synthetic multi-interest generator (2000 users, planted categories);
`ml` = ../shared/data/ml-latest-small prepared with `mirec data prepare` (genres as categories).
Seeds vary model initialisation, sampling and negatives; the user split is the dataset's own (fixed).
Test split, ComiRec protocol (merge aggregator, exact FAISS, seen items kept).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mirec.data import Dataset  # noqa: E402
from mirec.evaluate import evaluate, markdown_table  # noqa: E402
from mirec.models import BASELINES, ModelConfig, fit_baseline  # noqa: E402
from mirec.train import TrainConfig, train  # noqa: E402

ML_RAW = ROOT.parent / "shared" / "data" / "ml-latest-small"
DEFAULT_MODELS = "popularity,itemknn,single,mind,comirec_sa,comirec_dr,comirec_sa+remi"
#: "+remi": routing regularisation + interest-aware hard negatives (REMI), same architecture
REMI = {"remi_rr_weight": 1.0, "remi_hard_neg_beta": 1.0}
SHOW = ["recall@20", "recall@50", "hitrate@20", "hitrate@50", "ndcg@20", "ndcg@50", "diversity@50", "ild@50",
        "coverage@50", "gini@50", "interest_cos", "effective_interests", "single_interest_share",
        "routing_entropy_norm", "interest_category_recall", "interest_category_recall_multi", "interest_purity",
        "train_time_s", "samples_per_s"]


def prepare(name: str, cache: Path) -> Path:
    out = cache / name
    if (out / "dataset.json").exists():
        return out
    exe = str(Path(sys.executable).parent / "mirec")
    if name == "synth":
        cmd = [exe, "data", "synth", "-o", str(out)]
    elif name == "ml":
        cmd = [exe, "data", "prepare", str(ML_RAW), "-o", str(out)]
    else:
        raise SystemExit(f"unknown dataset {name!r} (synth, ml)")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


def run_one(ds: Dataset, model: str, seed: int, args, work: Path) -> dict:
    if model in BASELINES:
        t0 = time.perf_counter()
        m = fit_baseline(model, ds.train_sequences(), ds.n_items)
        fit_s = time.perf_counter() - t0
        res = evaluate(m, ds, split="test", name=model)["metrics"]
        return {**res, "train_time_s": fit_s, "samples_per_s": None}
    name, _, variant = model.partition("+")
    extra = REMI if variant == "remi" else {}
    mcfg = ModelConfig(name=name, dim=args.dim, K=args.k, max_len=args.max_len)
    tcfg = TrainConfig(epochs=args.epochs, seed=seed, samples_per_epoch=args.samples_per_epoch,
                       patience=args.patience, **extra)
    r = train(ds.root, mcfg, tcfg, work / f"{ds.name}_{model}_{seed}", progress=False)
    res = evaluate(r.checkpoint, ds, split="test")["metrics"]
    return {**res, "train_time_s": r.metrics["train_time_s"], "samples_per_s": r.metrics["samples_per_s"],
            "epochs_run": r.metrics["epochs"], "best_val_recall@50": r.metrics["best_val_recall@50"]}


def summarise(runs: list[dict]) -> dict:
    keys = dict.fromkeys(k for r in runs for k in r)
    out = {}
    for k in keys:
        v = [r.get(k) for r in runs]
        v = [x for x in v if isinstance(x, (int, float)) and x is not None and not math.isnan(x)]
        if v:
            out[k] = {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="synth,ml", help="comma list of synth, ml")
    ap.add_argument("--models", default=DEFAULT_MODELS, help="comma list; MODEL+remi turns the REMI options on")
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--samples-per-epoch", type=int, default=12800)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="smoke run: synth, 1 seed, 1 epoch of 5120 samples")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "mirec_bench_data")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/quality.json, "
                                                          "quality_quick.json with --quick)")
    args = ap.parse_args()
    if args.quick:
        args.datasets, args.seeds, args.epochs, args.samples_per_epoch = "synth", 1, 1, 5120
    out_path = args.out or ROOT / "benchmarks" / "results" / ("quality_quick.json" if args.quick else "quality.json")
    torch.set_num_threads(1 if os.getloadavg()[0] >= (os.cpu_count() or 1) else min(8, torch.get_num_threads()))
    results: dict = {"command": " ".join(sys.argv), "settings": {k: str(v) for k, v in vars(args).items()},
                     "machine": {"platform": platform.platform(), "torch": torch.__version__,
                                 "threads": torch.get_num_threads()},
                     "datasets": {}}
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        for dname in [d.strip() for d in args.datasets.split(",") if d.strip()]:
            ds = Dataset(prepare(dname, args.cache))
            results["datasets"][dname] = {"n_users": ds.n_users, "n_items": ds.n_items, "models": {}}
            rows = []
            for model in models:
                seeds = [0] if model == "popularity" else list(range(args.seeds))  # popularity is deterministic
                runs = []
                for s in seeds:
                    t0 = time.perf_counter()
                    runs.append(run_one(ds, model, s, args, Path(tmp)))
                    print(f"[{dname}] {model} seed {s}: recall@50 {runs[-1]['recall@50']:.4f} "
                          f"({time.perf_counter() - t0:.0f}s)", flush=True)
                summ = summarise(runs)
                results["datasets"][dname]["models"][model] = {"summary": summ, "runs": runs}
                rows.append({"model": model, **{k: _pm(summ.get(k)) for k in SHOW}})
                out_path.parent.mkdir(parents=True, exist_ok=True)
                out_path.write_text(json.dumps(results, indent=2))
            print(f"\n## {dname} (test users, mean ± std over seeds)\n")
            print(markdown_table(rows, ["model"] + SHOW))
    out_path.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out_path}")


def _pm(s: dict | None) -> str:
    if not s:
        return "–"
    m, sd = s["mean"], s["std"]
    if abs(m) >= 100:
        return f"{m:.0f} ± {sd:.0f}"
    return f"{m:.4f} ± {sd:.4f}"


if __name__ == "__main__":
    main()
