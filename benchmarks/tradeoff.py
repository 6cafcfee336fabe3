"""Accuracy–diversity trade-off of the aggregators (issue 9): Recall@50 against Diversity@50.

    .venv/bin/python benchmarks/tradeoff.py                      # synthetic + ml-latest-small, ComiRec-SA + MIND
    .venv/bin/python benchmarks/tradeoff.py --datasets synthetic --models comirec_sa,mind --quick

For every dataset: prepare it (mirec.data.prepare), train a model with `mirec.train.train` (or reuse
the checkpoint under --work), then run `mirec.evaluate.evaluate` — the same Recommender the serving
handler uses — once per aggregator setting:

- global curves: `controllable` over a λ sweep (ComiRec), and one global MMR weight w for everybody
  (`personalised` with the request override `diversity = w`), category and embedding similarity;
- personalised points: `personalised` with d_u from the user's history (+ interest spread),
  calibrated on the train users so that mean d_u = d̄, for several d̄ (and personalisation strengths α);
- adaptive points: `adaptive_k` (thresholds), alone and followed by personalised MMR.

Claim tested: at the same mean Diversity@50, personalised MMR reaches a higher Recall@50 than the
global curve. Each personalised point is compared with the global curve interpolated at its mean
Diversity@50 (linear between the two bracketing λ settings, on the curve's upper envelope); the
per-user paired difference (the same interpolation per user) gives a bootstrap 95% interval.

Per-user check (synthetic): Pearson/Spearman of d_u (history-only, and with interest spread) against
the planted diversity preference; adaptive_k's kept interests against the planted number of interests.

Writes benchmarks/results/tradeoff.json, tradeoff.md, tradeoff.png (and per-dataset JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mirec import metrics as M  # noqa: E402
from mirec.data import Dataset, prepare  # noqa: E402
from mirec.retrieval import diversity as D  # noqa: E402
from mirec.retrieval.aggregators import AggregationContext, get_aggregator  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
N = 50
LAMBDAS = [0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0]
MMR_W = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
TARGETS = [0.1, 0.2, 0.3, 0.5]
ALPHAS = [1.5, 3.0]
ADAPT_T = [0.1, 0.2, 0.3]


# ---------------------------------------------------------------------------------------------
# data + model
# ---------------------------------------------------------------------------------------------
def prepare_dataset(name: str, work: Path, ml_path: Path) -> Path:
    from mirec.config import DataConfig, SourceConfig, SynthConfig

    out = work / "data" / name
    if (out / "dataset.json").exists():
        return out
    if name == "synthetic":
        cfg = DataConfig(name=name, synth=SynthConfig(), out_dir=str(out))
    elif name == "ml-latest-small":
        cfg = DataConfig(name=name, source=SourceConfig(format="movielens-csv", path=str(ml_path)), out_dir=str(out))
    else:
        raise SystemExit(f"unknown dataset {name!r} (synthetic, ml-latest-small)")
    prepare(cfg, progress=False)
    return out


def get_model(data_dir: Path, model: str, work: Path, epochs: int, retrain: bool, dim: int, K: int):
    from mirec.models import ModelConfig
    from mirec.train import MODEL_FILE, TrainConfig, load_model, train

    ck = work / "models" / f"{data_dir.name}_{model}"
    info = {"checkpoint": str(ck)}
    if retrain or not (ck / MODEL_FILE).exists():
        t0 = time.perf_counter()
        res = train(data_dir, ModelConfig(name=model, dim=dim, K=K),
                    TrainConfig(epochs=epochs, patience=2, num_threads=1, seed=42), ck, progress=False)
        info.update(train_s=round(time.perf_counter() - t0, 1), **{k: res.metrics.get(k) for k in
                                                                   ("best_val_recall@50", "epochs")})
    elif (ck / "train_metrics.json").exists():
        m = json.loads((ck / "train_metrics.json").read_text())
        info.update({k: m.get(k) for k in ("best_val_recall@50", "epochs")}, train_s=m.get("train_time_s"))
    m, _ = load_model(ck)
    return m, info


# ---------------------------------------------------------------------------------------------
# one evaluated setting = per-user Recall@50 / Diversity@50 through mirec.evaluate
# ---------------------------------------------------------------------------------------------
class Runner:
    def __init__(self, model, ds: Dataset, splits: list[str], exclude_seen: bool):
        from mirec.evaluate import evaluate

        self.evaluate, self.model, self.ds, self.splits, self.exclude_seen = evaluate, model, ds, splits, exclude_seen
        self.examples = {s: {e.user_idx: e for e in ds.eval_examples(s)} for s in splits}

    def run(self, aggregator: str, diversity: float | None = None, params: dict | None = None) -> dict:
        rec, div, ild, users, k_used = [], [], [], [], []
        vec = self.model.item_vectors()
        for s in self.splits:
            out = self.evaluate(self.model, self.ds, split=s, aggregator=aggregator, n_values=(N,),
                                diversity=diversity, aggregator_params=params, exclude_seen=self.exclude_seen,
                                collapse=True)
            for row in out["served"]:
                e = self.examples[s][row["user_idx"]]
                items = np.asarray(row["items"], np.int64)
                rec.append(M.recall_at(items, e.targets, N))
                div.append(M.category_diversity(items, self.ds.item_category))
                ild.append(M.embedding_ild(items, vec))
                users.append(row["user_idx"])
                k_used.append(len(set(row["interests"])))
        return {"recall": np.array(rec), "div": np.array(div), "ild": np.array(ild), "users": np.array(users),
                "k_used": np.array(k_used)}


def summarise(kind: str, param, r: dict, extra: dict | None = None) -> dict:
    return {"kind": kind, "param": param, "recall@50": float(np.mean(r["recall"])),
            "diversity@50": float(np.nanmean(r["div"])), "ild@50": float(np.nanmean(r["ild"])),
            "interests_used": float(np.mean(r["k_used"])), **(extra or {})}


# ---------------------------------------------------------------------------------------------
# comparison at matched mean diversity
# ---------------------------------------------------------------------------------------------
def upper_envelope(points: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """Points (diversity, recall, id) -> the non-dominated ones sorted by diversity (a global curve is
    not guaranteed monotone; a fair baseline is its best recall at each diversity)."""
    pts = sorted(points, key=lambda p: (p[0], -p[1]))
    env: list = []
    for p in sorted(pts, key=lambda p: -p[0]):  # from high diversity down: keep if recall beats all to its right
        if not env or p[1] > env[-1][1]:
            env.append(p)
    return sorted(env, key=lambda p: p[0])


def compare_at_diversity(point: dict, curve: list[dict], rng: np.random.Generator, boot: int = 2000) -> dict:
    """Recall of `point` minus the global curve's recall interpolated at the point's mean diversity."""
    env = upper_envelope([(c["mean_div"], c["mean_rec"], i) for i, c in enumerate(curve)])
    d = point["mean_div"]
    lo = min(c["mean_div"] for c in curve)
    if d < lo - 1e-12 or d > env[-1][0]:
        return {"delta_recall": None, "note": "outside the global curve's diversity range"}
    j = int(np.searchsorted([e[0] for e in env], d))
    if j == 0:  # below the envelope's first point: a global setting with more diversity has more recall
        a = b = env[0]
        t = 0.0
    else:
        a, b = env[j - 1], env[j]
        t = 0.0 if b[0] == a[0] else (d - a[0]) / (b[0] - a[0])
    base_user = (1 - t) * curve[a[2]]["recall"] + t * curve[b[2]]["recall"]  # per-user interpolation
    diff = point["recall"] - base_user
    bs = np.array([diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(boot)])
    base = float(base_user.mean())
    return {"global_recall_at_div": base, "delta_recall": float(diff.mean()),
            "delta_rel": float(diff.mean() / base) if base > 0 else None,
            "ci95": [float(np.quantile(bs, 0.025)), float(np.quantile(bs, 0.975))],
            "bracket": [curve[a[2]]["param"], curve[b[2]]["param"]]}


# ---------------------------------------------------------------------------------------------
# d_u population + planted-preference correlation
# ---------------------------------------------------------------------------------------------
def train_population(model, ds: Dataset, max_users: int = 3000):
    from mirec.retrieval.recommender import Recommender

    seqs = list(ds.train_sequences().values())[:max_users]
    rec = Recommender(model, items=ds.item_category, item_popularity=ds.item_popularity)
    v, aux = rec.encode(seqs)
    w = [a.sum(-1) for a in aux]
    return seqs, v, w, rec


def planted_correlation(ds: Dataset, rec) -> dict | None:
    from scipy.stats import pearsonr, spearmanr

    truth = ds.truth()
    if truth is None:
        return None
    pref = truth.groupby("user_idx")["diversity_pref"].first()
    n_int = truth.groupby("user_idx")["n_interests"].first()
    out = {}
    for scope, users in (("all_users_full_history", pref.index.to_numpy()),
                         ("test_users_input_history", np.array([e.user_idx for e in ds.eval_examples("test")]))):
        if scope.startswith("all"):
            hists = [ds.sequences[int(u)] for u in users]
        else:
            hists = [e.history for e in ds.eval_examples("test")]
        feats = D.population_features(hists, ds.item_category, ds.item_popularity)
        y = pref.loc[users].to_numpy()
        row = {"users": int(len(users))}
        w_hist = {k: v for k, v in D.DEFAULT_WEIGHTS.items() if k != "spread"}
        r_hist = D.population_raw_scores(feats, w_hist)
        cal = D.DiversityCalibration(weights=w_hist).fit(r_hist, 0.3)
        row["d_u_history_only"] = {"pearson": float(pearsonr(cal.apply(r_hist), y)[0]),
                                   "spearman": float(spearmanr(r_hist, y)[0])}
        for f in ("entropy", "switch", "long_tail"):
            row[f"feature_{f}_spearman"] = float(spearmanr(feats[f], y, nan_policy="omit")[0])
        if rec is not None:
            v, aux = rec.encode(hists)
            feats["spread"] = np.array([D.interest_spread(x, a.sum(-1)) for x, a in zip(v, aux)])
            r_all = D.population_raw_scores(feats, D.DEFAULT_WEIGHTS)
            cal2 = D.DiversityCalibration().fit(r_all, 0.3)
            row["d_u_with_spread"] = {"pearson": float(pearsonr(cal2.apply(r_all), y)[0]),
                                      "spearman": float(spearmanr(r_all, y)[0])}
            row["feature_spread_spearman"] = float(spearmanr(feats["spread"], y, nan_policy="omit")[0])
        row["planted_n_interests_vs_d_u_spearman"] = float(spearmanr(r_hist, n_int.loc[users].to_numpy())[0])
        out[scope] = row
    return out


# ---------------------------------------------------------------------------------------------
# µs per call of each aggregator on real candidates
# ---------------------------------------------------------------------------------------------
def time_aggregators(model, ds: Dataset, cal: D.DiversityCalibration, users: int = 100, reps: int = 3) -> dict:
    from mirec.retrieval.recommender import Recommender

    ex = ds.eval_examples("test")[:users]
    rec = Recommender(model, items=ds.item_category, item_popularity=ds.item_popularity)
    hs = [e.history for e in ex]
    scores, items, v, aux = rec._candidates(hs, N)
    settings = {"merge": ("merge", None, {}), "controllable λ=0.1": ("controllable", 0.1, {}),
                "personalised (category, min)": ("personalised", None, {"similarity": "category", "dissimilarity": "min",
                                                                        "d_u_calibration": cal.to_dict()}),
                "personalised (category, mean)": ("personalised", None, {"similarity": "category", "dissimilarity": "mean",
                                                                         "d_u_calibration": cal.to_dict()}),
                "personalised (embedding)": ("personalised", None, {"similarity": "embedding",
                                                                    "d_u_calibration": cal.to_dict()}),
                "adaptive_k": ("adaptive_k", None, {"threshold": 0.2})}
    out = {"candidates_per_call": int(items.shape[1] * items.shape[2]), "n": N}
    for label, (name, div, params) in settings.items():
        f = get_aggregator(name)
        ctxs = [AggregationContext(n=N, item_category=rec.item_category, exclude=np.empty(0, np.int64), history=h,
                                   interests=v[b], interest_weights=aux[b].sum(-1), item_vectors=rec.item_vectors,
                                   item_popularity=rec.item_popularity, diversity=div, params=params)
                for b, h in enumerate(hs)]
        best = math.inf
        for _ in range(reps):
            t0 = time.perf_counter()
            for b, c in enumerate(ctxs):
                f(scores[b], items[b], c)
            best = min(best, (time.perf_counter() - t0) / len(ctxs))
        out[label] = round(best * 1e6, 1)
    return out


# ---------------------------------------------------------------------------------------------
def run_dataset(name: str, model_name: str, args) -> dict:
    t0 = time.perf_counter()
    work = Path(args.work)
    data_dir = prepare_dataset(name, work, Path(args.ml_path))
    ds = Dataset(data_dir)
    model, minfo = get_model(data_dir, model_name, work, args.epochs, args.retrain, args.dim, args.K)
    splits = ["test"] if name == "synthetic" else ["valid", "test"]
    runner = Runner(model, ds, splits, args.exclude_seen)
    rng = np.random.default_rng(0)
    lambdas, mmr_w, targets, alphas, adapt = LAMBDAS, MMR_W, TARGETS, ALPHAS, ADAPT_T
    if args.quick:
        lambdas, mmr_w, targets, alphas, adapt = [0, 0.02, 0.1, 0.5], [0, 0.2, 0.5, 0.8], [0.2, 0.5], [1.5], [0.2]
    # MMR variants: (label, params) — similarity and dissimilarity mode
    variants = {"category": {"similarity": "category", "dissimilarity": "min"},
                "category_mean": {"similarity": "category", "dissimilarity": "mean"},
                "embedding": {"similarity": "embedding", "dissimilarity": "min"}}

    rows, raw = [], {}

    def add(kind, param, r, extra=None):
        raw[(kind, str(param))] = r
        rows.append(summarise(kind, param, r, extra))
        return r

    add("merge", None, runner.run("merge"))
    curves = {"controllable": [], **{f"global_mmr_{s}": [] for s in variants}}
    for lam in lambdas:
        r = add("controllable", lam, runner.run("controllable", diversity=float(lam)))
        curves["controllable"].append({"param": lam, "recall": r["recall"], "mean_rec": r["recall"].mean(),
                                       "mean_div": np.nanmean(r["div"])})
    for s, vp in variants.items():
        for w in mmr_w:
            r = add(f"global_mmr_{s}", w, runner.run("personalised", diversity=float(w), params=dict(vp)))
            curves[f"global_mmr_{s}"].append({"param": w, "recall": r["recall"], "mean_rec": r["recall"].mean(),
                                              "mean_div": np.nanmean(r["div"])})

    # calibration on train users: history features + interest spread (interests from the model)
    seqs, v_tr, w_tr, _ = train_population(model, ds)
    comparisons = []
    cal_ref = None
    for alpha in alphas:
        for target in targets:
            cal = D.fit_calibration(seqs, ds.item_category, ds.item_popularity, target_mean=target, alpha=alpha,
                                    interests=list(v_tr), interest_weights=w_tr)
            cal_ref = cal_ref or cal
            for s, vp in variants.items():
                params = {**vp, "d_u_calibration": cal.to_dict()}
                r = runner.run("personalised", params=params)
                # the d_u each evaluated user got (same formula as the aggregator, recomputed here)
                label = f"d̄={target}, α={alpha}"
                add(f"personalised_{s}", label, r, {"target_mean_d": target, "alpha": alpha})
                pt = {"recall": r["recall"], "mean_div": np.nanmean(r["div"])}
                for cname in ("controllable", f"global_mmr_{s}"):
                    c = compare_at_diversity(pt, curves[cname], rng)
                    comparisons.append({"point": f"personalised_{s} {label}", "vs": cname,
                                        "recall@50": float(r["recall"].mean()),
                                        "diversity@50": float(pt["mean_div"]), **c})
    for t in adapt:
        r = add("adaptive_k", t, runner.run("adaptive_k", params={"threshold": t}))
        pt = {"recall": r["recall"], "mean_div": np.nanmean(r["div"])}
        for cname in ("controllable", "global_mmr_category_mean"):
            c = compare_at_diversity(pt, curves[cname], rng)
            comparisons.append({"point": f"adaptive_k t={t}", "vs": cname, "recall@50": float(r["recall"].mean()),
                                "diversity@50": float(pt["mean_div"]), **c})
    for target in targets:  # adaptive_k (t=0.1) followed by personalised category-mean MMR
        cal = D.fit_calibration(seqs, ds.item_category, ds.item_popularity, target_mean=target, alpha=alphas[-1],
                                interests=list(v_tr), interest_weights=w_tr)
        label = f"t=0.1, d̄={target}, α={alphas[-1]}"
        r = add("adaptive_k+personalised_category_mean", label, runner.run(
            "adaptive_k", params={"threshold": 0.1, "then": "personalised", "similarity": "category",
                                  "dissimilarity": "mean", "d_u_calibration": cal.to_dict()}))
        pt = {"recall": r["recall"], "mean_div": np.nanmean(r["div"])}
        for cname in ("controllable", "global_mmr_category_mean"):
            comparisons.append({"point": f"adaptive_k+personalised_category_mean {label}", "vs": cname,
                                "recall@50": float(r["recall"].mean()), "diversity@50": float(pt["mean_div"]),
                                **compare_at_diversity(pt, curves[cname], rng)})
    np.savez_compressed(work / f"per_user_{name}_{model_name}.npz",
                        **{f"{k}|{p}|{f}": v[f] for (k, p), v in raw.items() for f in ("recall", "div", "users")})

    # per-user: planted preference (synthetic) and adaptive_k's kept interests vs planted count
    from mirec.retrieval.recommender import Recommender
    rec = Recommender(model, items=ds.item_category, item_popularity=ds.item_popularity)
    planted = planted_correlation(ds, rec)
    adaptive_vs_planted = None
    truth = ds.truth()
    if truth is not None and ("adaptive_k", str(adapt[0])) in raw:
        n_int = truth.groupby("user_idx")["n_interests"].first()
        out = {}
        for t in adapt:
            ra = raw[("adaptive_k", str(t))]
            k = ra["k_used"]
            pl = n_int.loc[ra["users"]].to_numpy()
            out[str(t)] = {f"planted_{p}": {"users": int((pl == p).sum()), "mean_interests_used": float(k[pl == p].mean()),
                                            "recall@50": float(ra["recall"][pl == p].mean()),
                                            "merge_recall@50": float(raw[("merge", "None")]["recall"][pl == p].mean())}
                           for p in sorted(set(pl.tolist()))}
        adaptive_vs_planted = out

    timing = time_aggregators(model, ds, cal_ref)
    return {"dataset": name, "model": model_name, "model_info": minfo, "splits": splits,
            "eval_users": int(len(raw[("merge", "None")]["recall"])), "exclude_seen": args.exclude_seen,
            "rows": rows, "comparisons": comparisons, "planted_correlation": planted,
            "adaptive_vs_planted": adaptive_vs_planted, "aggregator_us_per_call": timing,
            "calibration_example": cal_ref.to_dict(), "seconds": round(time.perf_counter() - t0, 1)}


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------
def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncol = min(2, len(results))
    nrow = math.ceil(len(results) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(7.5 * ncol, 5.2 * nrow), squeeze=False)
    for ax in axes.flat[len(results):]:
        ax.axis("off")
    style = {"controllable": ("C0", "o-"), "global_mmr_category": ("C1", "s--"),
             "global_mmr_category_mean": ("C5", "v-."), "global_mmr_embedding": ("C2", "^:")}
    pts = {"personalised_category": ("C1", "*"), "personalised_category_mean": ("C5", "*"),
           "personalised_embedding": ("C2", "P"), "adaptive_k": ("C3", "D"),
           "adaptive_k+personalised_category_mean": ("C4", "X"), "merge": ("k", "o")}
    for ax, res in zip(axes.flat, results):
        rows = res["rows"]
        merge_rec = next(r["recall@50"] for r in rows if r["kind"] == "merge")
        for kind, (c, ls) in style.items():
            xs = [(r["diversity@50"], r["recall@50"]) for r in rows if r["kind"] == kind]
            xs.sort()
            if xs:
                ax.plot(*zip(*xs), ls, color=c, ms=4, lw=1.2, label=f"{kind} (global sweep)")
        for kind, (c, mk) in pts.items():
            xs = [(r["diversity@50"], r["recall@50"]) for r in rows if r["kind"] == kind]
            if xs:
                ax.scatter(*zip(*xs), marker=mk, color=c, s=70 if mk == "*" else 40, zorder=5, label=kind,
                           edgecolors="k", linewidths=0.4)
        ax.set_xlabel("Diversity@50 (share of item pairs of different categories)")
        ax.set_ylabel("Recall@50")
        lo = min(r["recall@50"] for r in rows)
        if lo < 0.85 * merge_rec:  # MMR-embedding at high weights collapses; keep the interesting range readable
            ax.set_ylim(0.85 * merge_rec, None)
            lo_note = " (y cut at 85% of merge)"
        else:
            lo_note = ""
        ax.set_title(f"{res['dataset']} · {res['model']} · {res['eval_users']} users{lo_note}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(results: list[dict]) -> str:
    out = ["# Accuracy–diversity trade-off (benchmarks/tradeoff.py)", ""]
    for res in results:
        mi = res["model_info"]
        out += [f"## {res['dataset']} · {res['model']} (splits {'+'.join(res['splits'])}, {res['eval_users']} users, "
                f"exclude_seen={res['exclude_seen']}; model best valid R@50 {mi.get('best_val_recall@50')})", "",
                "| kind | setting | Recall@50 | Diversity@50 | ILD@50 (emb) | interests used |", "|---|---|---|---|---|---|"]
        for r in res["rows"]:
            out.append(f"| {r['kind']} | {r['param']} | {r['recall@50']:.4f} | {r['diversity@50']:.4f} | "
                       f"{r['ild@50']:.4f} | {r['interests_used']:.2f} |")
        out += ["", "### At matched mean Diversity@50 (global curve interpolated on its upper envelope)", "",
                "| point | vs global | Recall@50 | Diversity@50 | global Recall@50 at that diversity | Δ recall | Δ rel | 95% CI (paired bootstrap) |",
                "|---|---|---|---|---|---|---|---|"]
        for c in res["comparisons"]:
            if c.get("delta_recall") is None:
                out.append(f"| {c['point']} | {c['vs']} | {c['recall@50']:.4f} | {c['diversity@50']:.4f} | – | – | – | {c.get('note', '')} |")
                continue
            out.append(f"| {c['point']} | {c['vs']} | {c['recall@50']:.4f} | {c['diversity@50']:.4f} | "
                       f"{c['global_recall_at_div']:.4f} | {c['delta_recall']:+.4f} | {100 * c['delta_rel']:+.1f}% | "
                       f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] |")
        if res.get("planted_correlation"):
            out += ["", "### d_u vs planted diversity preference", "", "```",
                    json.dumps(res["planted_correlation"], indent=1), "```"]
        if res.get("adaptive_vs_planted"):
            out += ["", "### adaptive_k: interests used vs planted number of interests", "", "```",
                    json.dumps(res["adaptive_vs_planted"], indent=1), "```"]
        out += ["", f"Aggregator cost (µs per call, best of 3, one user, n={N} from "
                f"{res['aggregator_us_per_call']['candidates_per_call']} candidates): "
                + ", ".join(f"{k} {v}" for k, v in res["aggregator_us_per_call"].items()
                            if k not in ("candidates_per_call", "n")), ""]
    return "\n".join(out)


def group_breakdown(work: Path, name: str, model_name: str, point: tuple[str, str], curve_kind: str) -> str | None:
    """Per planted number of interests (synthetic): Recall@50/Diversity@50 of one personalised point
    against the global curve interpolated (per user, as in compare_at_diversity) at the point's mean
    Diversity@50. Reads the per-user arrays saved by a run (work/per_user_<dataset>_<model>.npz)."""
    z = np.load(work / f"per_user_{name}_{model_name}.npz")
    ds = Dataset(work / "data" / name)
    truth = ds.truth()
    if truth is None:
        return None
    get = lambda k, p, f: z[f"{k}|{p}|{f}"]  # noqa: E731
    curve = []
    for key in z.files:
        k, p, f = key.split("|")
        if k == curve_kind and f == "recall":
            curve.append({"param": p, "recall": get(k, p, "recall"), "div_u": get(k, p, "div"),
                          "mean_rec": get(k, p, "recall").mean(), "mean_div": np.nanmean(get(k, p, "div"))})
    pr, pd_ = get(*point, "recall"), get(*point, "div")
    users = get(*point, "users")
    env = upper_envelope([(c["mean_div"], c["mean_rec"], i) for i, c in enumerate(curve)])
    d = np.nanmean(pd_)
    j = int(np.searchsorted([e[0] for e in env], d))
    a, b = (env[0], env[0]) if j == 0 else (env[j - 1], env[min(j, len(env) - 1)])
    t = 0.0 if b[0] == a[0] else (d - a[0]) / (b[0] - a[0])
    g_rec = (1 - t) * curve[a[2]]["recall"] + t * curve[b[2]]["recall"]
    g_div = (1 - t) * curve[a[2]]["div_u"] + t * curve[b[2]]["div_u"]
    n_int = truth.groupby("user_idx")["n_interests"].first().loc[users].to_numpy()
    lines = [f"#### {name} · {model_name}: {point[0]} {point[1]} vs {curve_kind} (w between "
             f"{curve[a[2]]['param']} and {curve[b[2]]['param']}) by planted number of interests", "",
             "| planted interests | users | personalised Recall@50 | global Recall@50 | Δ | personalised Div@50 | global Div@50 |",
             "|---|---|---|---|---|---|---|"]
    for k in sorted(set(n_int.tolist())):
        m = n_int == k
        lines.append(f"| {k} | {int(m.sum())} | {pr[m].mean():.4f} | {g_rec[m].mean():.4f} | {pr[m].mean() - g_rec[m].mean():+.4f} | "
                     f"{np.nanmean(pd_[m]):.4f} | {np.nanmean(g_div[m]):.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="synthetic,ml-latest-small")
    p.add_argument("--models", default="comirec_sa,mind")
    p.add_argument("--work", default=str(ROOT / "artifacts" / "bench" / "tradeoff"))
    p.add_argument("--ml-path", default=str(ROOT.parent / "shared" / "data" / "ml-latest-small"))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--K", type=int, default=4)
    p.add_argument("--exclude-seen", action="store_true", help="exclude history items (the protocol default: no)")
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--quick", action="store_true", help="short sweeps (smoke run)")
    p.add_argument("--out", default=str(RESULTS / "tradeoff"), help="output prefix (.json/.md/.png are added)")
    p.add_argument("--breakdown", nargs=3, metavar=("KIND", "SETTING", "CURVE"),
                   help="only print the per-planted-group breakdown of one saved point, e.g. "
                        "personalised_category_mean 'd̄=0.2, α=3.0' global_mmr_category_mean")
    p.add_argument("--replot", action="store_true", help="only redraw the plot and table from <out>.json")
    args = p.parse_args(argv)
    if args.replot:
        out = Path(args.out)
        results = json.loads(out.with_suffix(".json").read_text())
        out.with_suffix(".md").write_text(markdown(results))
        plot(results, out.with_suffix(".png"))
        return 0
    if args.breakdown:
        for name in args.datasets.split(","):
            for model_name in args.models.split(","):
                txt = group_breakdown(Path(args.work), name, model_name, tuple(args.breakdown[:2]), args.breakdown[2])
                if txt:
                    print(txt + "\n")
        return 0
    import torch
    torch.set_num_threads(1)
    results = []
    for name in args.datasets.split(","):
        for model_name in args.models.split(","):
            res = run_dataset(name, model_name, args)
            results.append(res)
            print(f"{name}/{model_name}: {res['seconds']} s", flush=True)
            part = Path(f"{args.out}_{name}_{model_name}")
            part.parent.mkdir(parents=True, exist_ok=True)
            part.with_suffix(".json").write_text(json.dumps(res, indent=1, default=float))
            part.with_suffix(".md").write_text(markdown([res]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=float))
    out.with_suffix(".md").write_text(markdown(results))
    plot(results, out.with_suffix(".png"))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
