"""Synthetic multi-interest data with planted structure (the embedded default and the benchmark scale source).

Geometry: `n_categories` cluster centres in R^dim; each item belongs to one category and sits near
its centre (item_vector = centre + 0.3·noise). Within a category, item popularity is Zipf
(`popularity_skew`). Each user has 1..4 true interests (categories, drawn by category size) with
Dirichlet mixture weights; each event picks an interest by weight and an item of that category by
popularity; a share `noise` of events is uniform over the catalogue. With probability `drift`, one
interest is swapped for a new category halfway through the sequence (interests drift over time).

Ground truth saved: per user, the true interests (category_idx, weight, phase) and a planted
diversity preference = normalised entropy of the user's interest weights (0 = one interest).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mirec.config import SynthConfig

START_TS = 1_704_067_200  # 2024-01-01T00:00:00Z


def generate(cfg: SynthConfig, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, np.ndarray]:
    """-> (raw interactions, items, truth, item_vectors[n_items, dim])."""
    rng = np.random.default_rng(cfg.seed)
    C, N, d = cfg.n_categories, cfg.n_items, cfg.dim
    centres = rng.normal(size=(C, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # Uneven category sizes (Dirichlet), every category non-empty.
    sizes = np.maximum(1, np.floor(rng.dirichlet(np.full(C, 2.0)) * (N - C)).astype(int) + 1)
    sizes[-1] += N - sizes.sum()
    item_cat = np.repeat(np.arange(C), sizes)
    item_vec = centres[item_cat] + 0.3 * rng.normal(size=(N, d)) / np.sqrt(d)
    # Within-category Zipf popularity; cumulative tables for fast sampling.
    cat_items, cat_cdf = [], []
    for c in range(C):
        idx = np.flatnonzero(item_cat == c)
        rank = rng.permutation(len(idx)) + 1
        p = 1.0 / rank.astype(float) ** cfg.popularity_skew
        cat_items.append(idx)
        cat_cdf.append(np.cumsum(p / p.sum()))
    cat_weight = sizes / sizes.sum()

    lo_k, hi_k = cfg.interests_per_user
    lo_l, hi_l = cfg.seq_len
    users, items, times, truth = [], [], [], []
    it = range(cfg.n_users)
    if progress:
        it = tqdm(it, desc="synth users", unit="user", mininterval=1.0, leave=False)
    for u in it:
        k = int(rng.integers(lo_k, hi_k + 1))
        cats = rng.choice(C, size=min(k, C), replace=False, p=cat_weight)
        w = rng.dirichlet(np.full(len(cats), 1.0)) if len(cats) > 1 else np.ones(1)
        length = int(rng.integers(lo_l, hi_l + 1))
        phase_cats = [cats.copy(), cats.copy()]
        drifted = len(cats) >= 1 and rng.random() < cfg.drift
        if drifted:
            choices = np.setdiff1d(np.arange(C), cats)
            if len(choices):
                phase_cats[1][rng.integers(len(cats))] = rng.choice(choices)
        seq = np.empty(length, dtype=np.int64)
        half = length // 2
        for phase, (a, b) in enumerate(((0, half), (half, length))):
            n = b - a
            pick = rng.choice(len(cats), size=n, p=w)
            for j, c in enumerate(phase_cats[phase]):
                m = pick == j
                cnt = int(m.sum())
                if cnt:
                    seq[a:b][m] = cat_items[c][np.searchsorted(cat_cdf[c], rng.random(cnt), side="right").clip(max=len(cat_items[c]) - 1)]
        noisy = rng.random(length) < cfg.noise
        seq[noisy] = rng.integers(0, N, size=int(noisy.sum()))
        gaps = rng.exponential(3600.0, size=length).astype(np.int64) + 1
        ts = START_TS + int(rng.integers(0, 86400 * 30)) + np.cumsum(gaps)
        users.append(np.full(length, u))
        items.append(seq)
        times.append(ts)
        ent = float(-(w * np.log(w)).sum() / np.log(C)) if len(w) > 1 else 0.0
        for phase in (0, 1):
            for c, wt in zip(phase_cats[phase], w):
                truth.append((u, phase, int(c), float(wt), len(cats), ent, drifted))
    raw = pd.DataFrame({
        "user_id": [f"u{u}" for u in np.concatenate(users)],
        "item_id": [f"i{i}" for i in np.concatenate(items)],
        "timestamp": np.concatenate(times),
        "weight": 1.0,
    })
    items_df = pd.DataFrame({"item_id": [f"i{i}" for i in range(N)],
                             "category": [f"c{c}" for c in item_cat]})
    items_df["categories"] = items_df["category"]
    truth_df = pd.DataFrame(truth, columns=["user_id", "phase", "category", "weight", "n_interests",
                                            "diversity_pref", "drifted"])
    truth_df["user_id"] = "u" + truth_df["user_id"].astype(str)
    truth_df["category"] = "c" + truth_df["category"].astype(str)
    return raw, items_df, truth_df, item_vec.astype(np.float32)
