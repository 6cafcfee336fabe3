"""Offline evaluation through the same `Recommender` that serving calls.

    out = evaluate("artifacts/models/mind", "artifacts/data/synthetic", split="test", out_dir="eval/")
    out["metrics"]["recall@50"], out["served"][0]  # {user_idx, items, scores, interests, mean_pairwise_cos}

ComiRec protocol: each interest retrieves its top-N over all items (exact FAISS inner product), the
K·N candidates are merged by score, de-duplicated and cut to N (aggregator "merge"); seen items are
NOT excluded by default (the protocol's choice; `exclude_seen=True` to change). Metrics: see
mirec.metrics. On synthetic data with planted interests (truth/user_interests.parquet) it also
measures how well the interests recover the planted categories (see `planted_recovery`).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from mirec import metrics as M
from mirec.data import Dataset
from mirec.retrieval.recommender import Recommender


def _mean(x) -> float | None:
    x = [v for v in x if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(x)) if x else None


def planted_recovery(rec: Recommender, ds: Dataset, examples, lists, details, top: int = 20) -> dict:
    """How well a user's interests recover the planted categories (synthetic data only).
    T_u = the user's true categories in the final phase (the one the targets come from).
    - served_category_recall: |categories(served list) ∩ T_u| / |T_u|
    - interest_category_recall: each interest k retrieves its top-`top` items; c_k = their majority
      category; |{c_k} ∩ T_u| / |T_u|  (a single-interest model can reach at most 1/|T_u|)
    - interest_purity: mean share of c_k in interest k's top-`top` items
    Reported over all users and over users with ≥ 2 planted interests ("_multi")."""
    truth = ds.truth()
    if truth is None:
        return {}
    t = truth[truth["phase"] == truth["phase"].max()]
    T = t.groupby("user_idx")["category_idx"].apply(lambda s: set(s.tolist())).to_dict()
    cat = ds.item_category
    rows = []
    for ex, lst, det in zip(examples, lists, details):
        if ex.user_idx not in T:
            continue
        Tu = T[ex.user_idx]
        served = {int(cat[r.item_idx]) for r in lst}
        row = {"multi": len(Tu) >= 2, "served": len(served & Tu) / len(Tu)}
        v = det.get("interests") if det else None
        if v is not None and rec.index is not None:
            _, items = rec.index.search(v, top)  # [K, top]
            maj, pur = set(), []
            for k in range(len(items)):
                c = cat[items[k][items[k] >= 0]]
                vals, cnt = np.unique(c, return_counts=True)
                maj.add(int(vals[cnt.argmax()]))
                pur.append(cnt.max() / len(c))
            row["interest"] = len(maj & Tu) / len(Tu)
            row["purity"] = float(np.mean(pur))
        rows.append(row)
    out = {}
    for suffix, sel in (("", rows), ("_multi", [r for r in rows if r["multi"]])):
        out[f"served_category_recall{suffix}"] = _mean(r["served"] for r in sel)
        out[f"interest_category_recall{suffix}"] = _mean(r.get("interest") for r in sel)
        out[f"interest_purity{suffix}"] = _mean(r.get("purity") for r in sel)
    return out


def split_fingerprint(ds: Dataset, split: str, examples) -> str:
    """What "the same offline split" means: a hash of the evaluated examples in external ids (split name, each
    user's id, input history and held-out targets, in order). Two evaluations with the same fingerprint scored the
    same users on the same histories against the same targets; the gate compares numbers only across equal ones."""
    item_ids = ds.items.sort_values("item_idx")["item_id"].astype(str).to_numpy()
    user_ids = ds.users["user_id"].astype(str).to_numpy()  # ds.users is sorted by user_idx
    h = hashlib.sha256(f"{split}\n".encode())
    for e in examples:
        h.update(f"{user_ids[e.user_idx]}\t{' '.join(item_ids[e.history])}\t{' '.join(item_ids[e.targets])}\n"
                 .encode())
    return h.hexdigest()[:16]


def evaluate(model, dataset, split: str = "test", aggregator: str = "merge", n_values=(20, 50),
             out_dir: str | Path | None = None, exclude_seen: bool = False, diversity: float | None = None,
             aggregator_params: dict | None = None, index_kind: str = "flat", max_users: int | None = None,
             collapse: bool = True, name: str | None = None) -> dict:
    """Evaluate a checkpoint dir, a loaded model or a fitted baseline on `split` of `dataset`.
    -> {"model", "split", "split_id" (split_fingerprint), "n_users", "metrics": {...}, "served": [per-user dicts at
    max(n_values)]}.
    With out_dir: writes metrics.json, metrics.md and served.jsonl (the monitoring reference input)."""
    from mirec.checkpoint import load_model

    ds = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    if isinstance(model, (str, Path)):
        model, mcfg = load_model(model)
        name = name or mcfg.name
    name = name or getattr(getattr(model, "cfg", None), "name", None) or getattr(model, "name", "model")
    examples = ds.eval_examples(split)
    if max_users is not None:
        examples = examples[:max_users]
    hist = [e.history for e in examples]
    rec = Recommender(model, items=ds.item_category, item_popularity=ds.item_popularity, aggregator=aggregator,
                      aggregator_params=aggregator_params, index_kind=index_kind)
    res: dict = {"users": len(examples)}
    lists = details = None
    for n in sorted(n_values):
        lists, details = rec.recommend(hist, n, exclude_seen=exclude_seen, diversity=diversity, return_details=True)
        ids = [np.array([r.item_idx for r in lst], np.int64) for lst in lists]
        res[f"recall@{n}"] = _mean(M.recall_at(i, e.targets, n) for i, e in zip(ids, examples))
        res[f"hitrate@{n}"] = _mean(M.hit_at(i, e.targets, n) for i, e in zip(ids, examples))
        res[f"ndcg@{n}"] = _mean(M.ndcg_at(i, e.targets, n) for i, e in zip(ids, examples))
        if collapse:
            res[f"diversity@{n}"] = _mean(M.category_diversity(i, ds.item_category) for i in ids)
            res[f"ild@{n}"] = (_mean(M.embedding_ild(i, rec.item_vectors) for i in ids)
                               if rec.item_vectors is not None else None)
            res[f"coverage@{n}"] = M.coverage(ids, ds.n_items)
            res[f"gini@{n}"] = M.exposure_gini(ids, ds.n_items)
    served = []
    if collapse and lists is not None:
        src = [np.array([r.interest for r in lst], np.int64) for lst in lists]
        res.update(M.interest_usage(src, rec.K))
        res["interest_cos"] = _mean(d["stats"]["mean_pairwise_cos"] for d in details)
        auxs = [d.get("aux") for d in details if d.get("aux") is not None and d["aux"].shape[-1] > 1]
        if auxs:
            ent = [M.routing_entropy(a[None], np.ones((1, a.shape[-1]), bool)) for a in auxs]
            res["routing_entropy"] = _mean(e[0] for e in ent)
            res["routing_entropy_norm"] = _mean(e[1] for e in ent)
        res.update(planted_recovery(rec, ds, examples, lists, details))
        n = max(n_values)  # AMR@N / CUR@N (mirec.metrics: interest separation, latent-interest recall)
        res[f"cur@{n}"] = _mean(M.latent_interest_recall([r.item_idx for r in lst], e.targets, e.history,
                                                         ds.item_category, n) for e, lst in zip(examples, lists))
        vs = [d["interests"] for d in details if d.get("interests") is not None]
        if vs and rec.K > 1:
            res[f"amr@{n}"] = _mean(M.interest_separation(x) for x in rec.index.search(np.stack(vs), n)[1])
        if hasattr(rec.model, "evaluation_metrics"):  # a model's own measures (GemiRec: code usage, NMI)
            res.update(rec.model.evaluation_metrics(ds.item_category))
        for e, lst, d in zip(examples, lists, details):
            served.append({"user_idx": e.user_idx, "items": [r.item_idx for r in lst],
                           "scores": [r.score for r in lst], "interests": [r.interest for r in lst],
                           "mean_pairwise_cos": d["stats"]["mean_pairwise_cos"],
                           "interest_norms": d["stats"]["interest_norms"], "history_len": int(len(e.history)),
                           "history": e.history.tolist()})
    out = {"model": name, "split": split, "split_id": split_fingerprint(ds, split, examples),
           "aggregator": aggregator, "n_users": len(examples), "metrics": res, "served": served}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps({k: v for k, v in out.items() if k != "served"}, indent=2))
        (out_dir / "metrics.md").write_text(f"# {name} — {split} ({aggregator})\n\n"
                                            + markdown_table([{"metric": k, "value": v} for k, v in res.items()]) + "\n")
        with open(out_dir / "served.jsonl", "w") as f:
            for s in served:
                f.write(json.dumps(s) + "\n")
    return out


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def markdown_table(rows: list[dict], cols: list[str] | None = None) -> str:
    cols = cols or list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
