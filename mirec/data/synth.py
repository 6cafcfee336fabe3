"""Synthetic multi-interest data with planted structure (the embedded default and the benchmark scale source).

Geometry: `n_categories` cluster centres on the unit sphere in R^dim; each item belongs to one
category and sits near its centre (item_vector = centre + 0.3·N(0, I/dim)), so item vectors
cluster by category. Category sizes are uneven (Dirichlet), every category non-empty. Within a
category, item popularity is Zipf (`popularity_skew`) over a random rank.

Users: each user has k true interests (k uniform in `interests_per_user`), categories drawn
without replacement with probability ∝ category size, mixture weights ~ Dirichlet(1). Each event
picks an interest by weight, then an item of that category by popularity; a share `noise` of
events is uniform over the catalogue. Drift over time: with probability `drift` a user's
sequence has two phases, and in the second half one of the interests (same weight) is replaced
by a category the user did not have. Timestamps: a random start in the first 30 days of 2024,
then exponential gaps (mean 1 h, at least 1 s, so a user's events never tie).

Ground truth (`truth`): one row per (user, phase, interest): user_id, phase (0|1), category,
weight, n_interests, diversity_pref (normalised entropy of the weights: 0 = one interest), drifted.

Everything is vectorised over users and events (no per-user Python loop), so 10^5 users over
10^6 items take seconds; the result depends only on the config (seed included).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mirec.config import SynthConfig

START_TS = 1_704_067_200  # 2024-01-01T00:00:00Z
#: users per chunk when drawing interests (bounds the [chunk, n_categories] key matrix)
_CHUNK_CELLS = 4_000_000


def _category_sampler(rng: np.random.Generator, item_cat: np.ndarray, n_cat: int, skew: float):
    """Zipf-within-category sampling tables: -> sample(cats: int array) -> item ids."""
    n = len(item_cat)
    # Random popularity rank within each category: sort items by (category, random key).
    order = np.lexsort((rng.random(n), item_cat))  # item ids grouped by category, random order inside
    starts = np.searchsorted(item_cat[order], np.arange(n_cat))
    counts = np.bincount(item_cat, minlength=n_cat)
    rank = np.arange(n) - np.repeat(starts, counts) + 1
    p = 1.0 / rank.astype(np.float64) ** skew
    csum = np.cumsum(p)
    cat_of = item_cat[order]
    before = np.concatenate([[0.0], csum])[starts][cat_of]
    total = np.add.reduceat(p, starts)[cat_of]
    within = (csum - before) / total  # in (0, 1], ends at 1 for each category
    key = cat_of + within  # strictly increasing over the whole array
    ends = starts + counts - 1

    def sample(cats: np.ndarray) -> np.ndarray:
        u = rng.random(len(cats))
        pos = np.searchsorted(key, cats + u, side="right")
        pos = np.minimum(np.maximum(pos, starts[cats]), ends[cats])
        return order[pos]

    return sample


def _draw_interests(rng: np.random.Generator, n_users: int, k: np.ndarray, hi_k: int,
                    cat_weight: np.ndarray) -> np.ndarray:
    """[n_users, hi_k] distinct categories per user (weighted, without replacement; Gumbel top-k).

    Columns >= k[u] are -1."""
    C = len(cat_weight)
    hi = min(hi_k, C)
    out = np.full((n_users, hi_k), -1, dtype=np.int64)
    logw = np.log(cat_weight)
    step = max(1, _CHUNK_CELLS // C)
    for a in range(0, n_users, step):
        b = min(n_users, a + step)
        keys = logw[None, :] + rng.gumbel(size=(b - a, C))
        top = np.argpartition(-keys, hi - 1, axis=1)[:, :hi] if hi < C else np.tile(np.arange(C), (b - a, 1))
        tk = np.take_along_axis(keys, top, axis=1)
        top = np.take_along_axis(top, np.argsort(-tk, axis=1), axis=1)
        out[a:b, :hi] = top
    out[np.arange(hi_k)[None, :] >= k[:, None]] = -1
    return out


def generate(cfg: SynthConfig, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, np.ndarray]:
    """-> (raw interactions, items, truth, item_vectors[n_items, dim] (row i = item 'i{i}'))."""
    rng = np.random.default_rng(cfg.seed)
    C, N, d, U = cfg.n_categories, cfg.n_items, cfg.dim, cfg.n_users
    lo_k, hi_k = sorted(cfg.interests_per_user)
    lo_l, hi_l = sorted(cfg.seq_len)
    lo_k, hi_k = max(1, min(lo_k, C)), max(1, min(hi_k, C))
    lo_l = max(2, lo_l)
    hi_l = max(lo_l, hi_l)
    steps = tqdm(total=4, desc="synth", unit="step", disable=None if progress else True, leave=False)

    centres = rng.normal(size=(C, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sizes = np.maximum(1, np.floor(rng.dirichlet(np.full(C, 2.0)) * (N - C)).astype(np.int64) + 1)
    sizes[-1] += N - sizes.sum()
    if sizes[-1] < 1:  # rounding pushed the last category empty: take from the largest
        j = int(np.argmax(sizes[:-1]))
        sizes[j] -= 1 - sizes[-1]
        sizes[-1] = 1
    item_cat = np.repeat(np.arange(C), sizes)
    item_vec = (centres[item_cat] + 0.3 * rng.normal(size=(N, d)) / np.sqrt(d)).astype(np.float32)
    sample_items = _category_sampler(rng, item_cat, C, cfg.popularity_skew)
    cat_weight = sizes / sizes.sum()
    steps.update()

    # --- users: interests, weights, lengths, drift
    k = rng.integers(lo_k, hi_k + 1, size=U)
    cats0 = _draw_interests(rng, U, k, hi_k, cat_weight)
    valid = cats0 >= 0
    w = np.where(valid, rng.exponential(size=(U, hi_k)), 0.0)
    w /= w.sum(axis=1, keepdims=True)  # Dirichlet(1) over the user's k interests
    length = rng.integers(lo_l, hi_l + 1, size=U)
    drifted = (rng.random(U) < cfg.drift) & (k < C)
    cats1 = cats0.copy()
    slot = (rng.random(U) * k).astype(np.int64)
    du = np.flatnonzero(drifted)
    new = rng.integers(0, C, size=len(du))
    for _ in range(1000):  # resample the few that hit one of the user's own categories
        clash = (cats0[du] == new[:, None]).any(axis=1)
        if not clash.any():
            break
        new[clash] = rng.integers(0, C, size=int(clash.sum()))
    cats1[du, slot[du]] = new
    steps.update()

    # --- events
    T = int(length.sum())
    user = np.repeat(np.arange(U), length)
    start = np.concatenate([[0], np.cumsum(length)[:-1]])
    pos = np.arange(T) - np.repeat(start, length)
    phase = pos >= np.repeat(length // 2, length)
    cw = np.cumsum(w, axis=1)
    r = rng.random(T)
    pick = np.zeros(T, dtype=np.int64)
    for j in range(hi_k - 1):
        pick += r >= cw[user, j]
    pick = np.minimum(pick, k[user] - 1)  # guard against float round-off at the top of the cdf
    cat = np.where(phase, cats1[user, pick], cats0[user, pick])
    items = sample_items(cat)
    noisy = rng.random(T) < cfg.noise
    items[noisy] = rng.integers(0, N, size=int(noisy.sum()))
    gaps = rng.exponential(3600.0, size=T).astype(np.int64) + 1
    csum = np.cumsum(gaps)
    offset = np.repeat(csum[start] - gaps[start], length)  # cumulative sum before the user's first event
    t0 = START_TS + rng.integers(0, 86400 * 30, size=U)
    ts = np.repeat(t0, length) + (csum - offset)
    steps.update()

    raw = pd.DataFrame({
        "user_id": _ids("u", user),
        "item_id": _ids("i", items),
        "timestamp": ts.astype(np.int64),
        "weight": np.ones(T, dtype=np.float32),
    })
    items_df = pd.DataFrame({"item_id": _ids("i", np.arange(N)), "category": _ids("c", item_cat)})
    items_df["categories"] = items_df["category"]

    # --- ground truth: one row per (user, phase, interest)
    ent = np.where(w > 0, -w * np.log(np.where(w > 0, w, 1.0)), 0.0).sum(axis=1) / np.log(max(C, 2))
    ent = np.where(k > 1, ent, 0.0)
    uu, jj = np.nonzero(valid)
    parts = []
    for ph, cats in ((0, cats0), (1, cats1)):
        parts.append(pd.DataFrame({
            "user_id": uu, "phase": np.full(len(uu), ph, dtype=np.int64), "category": cats[uu, jj],
            "weight": w[uu, jj], "n_interests": k[uu], "diversity_pref": ent[uu], "drifted": drifted[uu],
        }))
    truth_df = pd.concat(parts, ignore_index=True).sort_values(["user_id", "phase"], kind="mergesort")
    truth_df = truth_df.reset_index(drop=True)
    truth_df["user_id"] = _ids("u", truth_df["user_id"].to_numpy())
    truth_df["category"] = _ids("c", truth_df["category"].to_numpy())
    steps.update()
    steps.close()
    return raw, items_df, truth_df, item_vec


def _ids(prefix: str, x: np.ndarray) -> pd.Series:
    """Vectorised f'{prefix}{x}' (much faster than a Python f-string loop on millions of rows)."""
    x = np.asarray(x, dtype=np.int64)
    uniq, inv = np.unique(x, return_inverse=True)
    labels = np.array([f"{prefix}{v}" for v in uniq], dtype=object)
    return pd.Series(labels[inv], dtype=object)
