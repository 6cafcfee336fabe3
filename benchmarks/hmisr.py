"""HMISR on the synthetic set (issue 19): adaptive K_u and learned d_u against the planted truth, and recall at
equal mean Diversity@50 against the global-λ curves (benchmarks/tradeoff.py's protocol).

    .venv/bin/python benchmarks/hmisr.py                       # trains (or reuses) the models under --work

Models, one training each at the budget below (seed 0, split seed = the dataset's): `hmisr` (defaults),
`hmisr` with strong orthogonality (λ_basis = λ_margin = 0.1, margin 0), and ComiRec-SA (the best other model of
benchmarks/tradeoff.py on this set). Measures:

- planted: Spearman(K_u, planted number of interests), Pearson / Spearman(d_u, planted diversity preference),
  on all users' full histories and on the test users' 80% inputs;
- trade-off (test users, n = 50, seen items kept): ComiRec-SA's and HMISR's global curves (`controllable` λ sweep,
  one global category-mean MMR weight), HMISR's `personalised` points (its own d_u, calibrated on the train users
  to a mean d̄, strength α), each compared with a global curve interpolated at its mean Diversity@50
  (tradeoff.compare_at_diversity: paired per-user difference, bootstrap 95% interval);
- related interests: users with ≥ 2 planted interests, split by the largest cosine between the planted
  category centres of their interests (top third = "related"); Recall@50 (merge) of the default model against the
  strong-orthogonality ablation per group, paired difference with a bootstrap interval.

Writes benchmarks/results/hmisr.json and hmisr.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import tradeoff as T  # noqa: E402

from mirec.data import Dataset  # noqa: E402
from mirec.models.base import pad_histories  # noqa: E402
from mirec.retrieval import diversity as D  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
LAMBDAS = [0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
MMR_W = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7]
TARGETS = [0.1, 0.2, 0.3]
ALPHAS = [1.5, 3.0]
STRONG = {"lambda_basis": 0.1, "lambda_margin": 0.1, "margin": 0.0}
CAT_MEAN = {"similarity": "category", "dissimilarity": "mean"}


def get_model(ds: Dataset, name: str, options: dict, tag: str, work: Path, budget: dict):
    from mirec.models import ModelConfig
    from mirec.train import MODEL_FILE, TrainConfig, load_model, train

    ck = work / "models" / f"{ds.name}_{tag}"
    if not (ck / MODEL_FILE).exists():
        train(ds, ModelConfig(name=name, options=options), TrainConfig(**budget, seed=0, num_threads=1), ck,
              progress=False)
    m = json.loads((ck / "train_metrics.json").read_text())
    model, _ = load_model(ck)
    return model, {"checkpoint": str(ck), **{k: m.get(k) for k in ("best_val_recall@50", "epochs", "train_time_s")}}


def encode(model, histories) -> tuple[np.ndarray, np.ndarray]:
    """-> (K_u [U], d_u [U]) as served."""
    import torch

    K, d = [], []
    with torch.inference_mode():
        for s in range(0, len(histories), 256):
            seq, mask = pad_histories(histories[s: s + 256], model.cfg.max_len)
            model.serving_interests(seq, mask)
            K.append(model.k_active.numpy())
            d.append(model.user_diversity.float().numpy())
    return np.concatenate(K), np.concatenate(d)


def planted(model, ds: Dataset, cal: D.DiversityCalibration) -> dict:
    from scipy.stats import pearsonr, spearmanr

    truth = ds.truth()
    pref = truth.groupby("user_idx")["diversity_pref"].first()
    n_int = truth.groupby("user_idx")["n_interests"].first()
    out = {}
    test = ds.eval_examples("test")
    for scope, users, hists in (("all_users_full_history", pref.index.to_numpy(),
                                 [ds.sequences[int(u)] for u in pref.index.to_numpy()]),
                                ("test_users_input_history", np.array([e.user_idx for e in test]),
                                 [e.history for e in test])):
        K, d = encode(model, hists)
        k_true, y = n_int.loc[users].to_numpy(), pref.loc[users].to_numpy()
        out[scope] = {
            "users": int(len(users)),
            "spearman_K_u_vs_planted_n_interests": float(spearmanr(K, k_true)[0]) if np.ptp(K) else None,
            "mean_K_u_by_planted_n": {str(j): float(K[k_true == j].mean()) for j in np.unique(k_true)},
            "K_u_histogram": np.bincount(K, minlength=model.K + 1)[1:].tolist(),
            "pearson_d_u_vs_planted_preference": float(pearsonr(d, y)[0]),
            "pearson_calibrated_d_u_vs_planted_preference": float(pearsonr(cal.apply(d), y)[0]),
            "spearman_d_u_vs_planted_preference": float(spearmanr(d, y)[0]),
            "spearman_d_u_vs_planted_n_interests": float(spearmanr(d, k_true)[0]),
        }
    return out


def curves(runner, rows: list, label: str) -> dict:
    """Global curves of one model: controllable λ sweep and one category-mean MMR weight for everybody."""
    out = {"controllable": [], "global_mmr_category_mean": []}
    for lam in LAMBDAS:
        r = runner.run("controllable", diversity=float(lam))
        rows.append({"model": label, **T.summarise("controllable", lam, r)})
        out["controllable"].append({"param": lam, "recall": r["recall"], "mean_rec": r["recall"].mean(),
                                    "mean_div": np.nanmean(r["div"])})
    for w in MMR_W:
        r = runner.run("personalised", diversity=float(w), params=dict(CAT_MEAN))
        rows.append({"model": label, **T.summarise("global_mmr_category_mean", w, r)})
        out["global_mmr_category_mean"].append({"param": w, "recall": r["recall"], "mean_rec": r["recall"].mean(),
                                                "mean_div": np.nanmean(r["div"])})
    return out


def related_interest_users(ds: Dataset, default, strong, rng) -> dict:
    """Recall@50 (merge) per user of the two models on valid + test users with ≥ 2 planted interests, by the
    largest cosine between the planted category centres of the user's interests."""
    truth = ds.truth()
    vec = ds.truth_item_vectors()
    cat = np.asarray(ds.item_category)
    cen = np.stack([vec[cat == c].mean(0) for c in range(int(cat.max()) + 1)])
    cen /= np.linalg.norm(cen, axis=1, keepdims=True)
    t0 = truth[truth["phase"] == 0]
    user_cats = t0.groupby("user_idx")["category_idx"].apply(list)
    out_runs = {}
    for label, model in (("default", default), ("strong_ortho", strong)):
        r = T.Runner(model, ds, ["valid", "test"], False).run("merge")
        out_runs[label] = dict(zip(r["users"].tolist(), r["recall"].tolist()))
    users = [u for u in out_runs["default"] if len(user_cats.get(u, [])) >= 2]
    maxcos = np.array([max(float(cen[a] @ cen[b]) for i, a in enumerate(user_cats[u]) for b in user_cats[u][i + 1:])
                       for u in users])
    cut = float(np.quantile(maxcos, 2 / 3))
    res = {"users_with_2plus_interests": len(users), "related_cut_max_centre_cos": cut}
    for g, sel in (("related", maxcos >= cut), ("unrelated", maxcos < cut)):
        us = [u for u, s in zip(users, sel) if s]
        a = np.array([out_runs["default"][u] for u in us])
        b = np.array([out_runs["strong_ortho"][u] for u in us])
        diff = a - b
        bs = np.array([diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(2000)])
        res[g] = {"users": len(us), "recall@50_default": float(a.mean()), "recall@50_strong_ortho": float(b.mean()),
                  "delta": float(diff.mean()), "ci95": [float(np.quantile(bs, 0.025)), float(np.quantile(bs, 0.975))]}
    return res


def quality_runs(ds: Dataset, work: Path, runs_path: Path) -> None:
    """Append the cached checkpoints of this benchmark as run 0 of benchmarks/quality.py's runs file (same
    protocol as quality.run_one: the dataset's own split, init seed 0, test users, merge; one thread here), so
    `quality.py --summarise-only` puts them in its rows without training them again."""
    from mirec.evaluate import evaluate

    done = [json.loads(x) for x in runs_path.read_text().splitlines() if x.strip()] if runs_path.exists() else []
    keys = {(r["dataset"], r["model"], r["config"], r["run"]) for r in done}
    for model, tag in (("hmisr", "hmisr"), ("hmisr+strongortho", "hmisr_strongortho")):
        ck = work / "models" / f"{ds.name}_{tag}"
        if (ds.name, model, "default", 0) in keys or not (ck / "model.pt").exists():
            continue
        t0 = time.perf_counter()
        tm = json.loads((ck / "train_metrics.json").read_text())
        res = evaluate(ck, ds, split="test")["metrics"]
        out = {**res, "train_time_s": tm["train_time_s"], "samples_per_s": tm["samples_per_s"], "epochs_run": tm["epochs"],
               "best_epoch": tm["best_epoch"], "best_val_recall@50": tm["best_val_recall@50"],
               "stopped_by": tm["stopped_by"]}
        rec = {"dataset": ds.name, "model": model, "config": "default", "run": 0,
               "split_seed": int(ds.meta.get("split_seed", 0)), "init_seed": 0, "wall_s": time.perf_counter() - t0,
               "metrics": out, "source": f"benchmarks/hmisr.py checkpoint {ck.name}"}
        with open(runs_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{model}: test recall@50 {res['recall@50']:.4f}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="/tmp/mirec_bench_data/synth", help="prepared synthetic dataset "
                   "(benchmarks/quality.py --data synth prepares one under its --cache)")
    p.add_argument("--work", default=str(ROOT / "artifacts" / "bench" / "hmisr"))
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--samples-per-epoch", type=int, default=20000, help="0 = full passes (TrainConfig's default)")
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--full-budget", action="store_true", help="train at the shipped TrainConfig defaults "
                   "(full-pass epochs, its max epochs and patience: the quality benchmark's budget); overrides "
                   "--epochs / --samples-per-epoch / --patience")
    p.add_argument("--out", default=str(RESULTS / "hmisr"))
    p.add_argument("--quality-runs", default=None, help="only append the cached checkpoints as run 0 to this "
                   "benchmarks/quality.py runs file (e.g. benchmarks/results/quality_hmisr.runs.jsonl)")
    args = p.parse_args(argv)
    if args.quality_runs:
        quality_runs(Dataset(args.data), Path(args.work), Path(args.quality_runs))
        return 0
    t_start = time.perf_counter()
    work = Path(args.work)
    ds = Dataset(args.data)
    if args.full_budget:
        from mirec.train import TrainConfig

        shipped = TrainConfig()
        budget = {"epochs": shipped.epochs, "samples_per_epoch": shipped.samples_per_epoch,
                  "patience": shipped.patience}
    else:
        budget = {"epochs": args.epochs, "samples_per_epoch": args.samples_per_epoch or None,
                  "patience": args.patience}
    rng = np.random.default_rng(0)
    hm, hm_info = get_model(ds, "hmisr", {}, "hmisr", work, budget)
    so, so_info = get_model(ds, "hmisr", STRONG, "hmisr_strongortho", work, budget)
    sa, sa_info = get_model(ds, "comirec_sa", {}, "comirec_sa", work, budget)
    print("models ready", round(time.perf_counter() - t_start), flush=True)

    from mirec.retrieval.recommender import Recommender

    cal_of = {}
    rec_hm = Recommender(hm, items=ds.item_category, item_popularity=ds.item_popularity)
    for a in ALPHAS:
        for t in TARGETS:
            cal_of[(t, a)] = D.fit_calibration_for(rec_hm, ds, target_mean=t, alpha=a)
    result = {"dataset": ds.name, "budget": budget, "models": {"hmisr": hm_info, "hmisr+strongortho": so_info,
                                                                "comirec_sa": sa_info},
              "planted": {"hmisr": planted(hm, ds, cal_of[(0.2, 3.0)]),
                          "hmisr+strongortho": planted(so, ds, cal_of[(0.2, 3.0)])}}
    print("planted", json.dumps(result["planted"]["hmisr"], indent=1), flush=True)

    rows: list = []
    runners = {"hmisr": T.Runner(hm, ds, ["test"], False), "comirec_sa": T.Runner(sa, ds, ["test"], False)}
    for label, r in runners.items():
        rows.append({"model": label, **T.summarise("merge", None, r.run("merge"))})
    glob = {label: curves(r, rows, label) for label, r in runners.items()}
    print("curves done", round(time.perf_counter() - t_start), flush=True)
    comparisons = []
    points = [("hmisr merge", runners["hmisr"].run("merge"))]
    for (t, a), cal in cal_of.items():
        r = runners["hmisr"].run("personalised", params={**CAT_MEAN, "d_u_calibration": cal.to_dict()})
        rows.append({"model": "hmisr", **T.summarise("personalised_category_mean (model d_u)", f"d̄={t}, α={a}", r)})
        points.append((f"hmisr personalised d̄={t}, α={a}", r))
    for name, r in points:
        pt = {"recall": r["recall"], "mean_div": np.nanmean(r["div"])}
        for cm in glob:
            for ck in glob[cm]:
                comparisons.append({"point": name, "vs": f"{cm} {ck}", "recall@50": float(r["recall"].mean()),
                                    "diversity@50": float(pt["mean_div"]),
                                    **T.compare_at_diversity(pt, glob[cm][ck], rng)})
    result["rows"] = rows
    result["comparisons"] = comparisons
    result["related_interests"] = related_interest_users(ds, hm, so, rng)
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=float))
    md = [f"# HMISR on {ds.name}\n", f"budget {budget}; models {json.dumps(result['models'])}\n", "## planted\n",
          "```", json.dumps(result["planted"], indent=1), "```", "\n## rows (test users)\n",
          "| model | kind | param | recall@50 | diversity@50 | interests used |", "|---|---|---|---|---|---|"]
    md += [f"| {r['model']} | {r['kind']} | {r['param']} | {r['recall@50']:.4f} | {r['diversity@50']:.3f} | "
           f"{r['interests_used']:.2f} |" for r in rows]
    md += ["\n## at matched mean Diversity@50\n", "| point | vs | recall@50 | div@50 | curve at div | Δ rel | 95% CI |",
           "|---|---|---|---|---|---|---|"]
    for c in comparisons:
        rel = f"{100 * c['delta_rel']:+.1f}%" if c.get("delta_rel") is not None else c.get("note", "–")
        ci = f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]" if "ci95" in c else "–"
        gr = f"{c['global_recall_at_div']:.4f}" if "global_recall_at_div" in c else "–"
        md.append(f"| {c['point']} | {c['vs']} | {c['recall@50']:.4f} | {c['diversity@50']:.3f} | {gr} | {rel} | {ci} |")
    md += ["\n## related-interest users (merge)\n", "```", json.dumps(result["related_interests"], indent=1), "```"]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
