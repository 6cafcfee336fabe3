"""Metric functions (pure numpy): accuracy, diversity, collapse. Hand-checked in tests/test_metrics.py.

Accuracy (ComiRec protocol, targets = the set of held-out items):
  Recall@N  = |top-N ∩ T| / |T|
  HitRate@N = 1[|top-N ∩ T| > 0]
  NDCG@N    = Σ_{r < N, list[r] ∈ T} 1/log2(r+2)  /  Σ_{r < min(|T|, N)} 1/log2(r+2)
"""

from __future__ import annotations

import numpy as np


def recall_at(rec: np.ndarray, targets: np.ndarray, n: int) -> float:
    t = np.unique(targets)
    if len(t) == 0:
        return 0.0
    return float(np.isin(np.asarray(rec)[:n], t).sum() / len(t))


def hit_at(rec: np.ndarray, targets: np.ndarray, n: int) -> float:
    return float(np.isin(np.asarray(rec)[:n], np.unique(targets)).any())


def ndcg_at(rec: np.ndarray, targets: np.ndarray, n: int) -> float:
    t = np.unique(targets)
    if len(t) == 0:
        return 0.0
    hits = np.isin(np.asarray(rec)[:n], t)
    disc = 1.0 / np.log2(np.arange(2, n + 2))
    dcg = float((hits * disc[: len(hits)]).sum())
    idcg = float(disc[: min(len(t), n)].sum())
    return dcg / idcg


def category_diversity(rec: np.ndarray, item_category: np.ndarray) -> float:
    """Share of unordered item pairs in the list whose categories differ (nan for < 2 items)."""
    c = item_category[np.asarray(rec, np.int64)]
    m = len(c)
    if m < 2:
        return float("nan")
    _, counts = np.unique(c, return_counts=True)
    same = float((counts * (counts - 1)).sum() / 2)
    return 1.0 - same / (m * (m - 1) / 2)


def embedding_ild(rec: np.ndarray, item_vectors: np.ndarray) -> float:
    """Intra-list diversity: mean over pairs of (1 - cosine) of the item vectors (nan for < 2 items)."""
    x = item_vectors[np.asarray(rec, np.int64)].astype(np.float64)
    m = len(x)
    if m < 2:
        return float("nan")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    s = x @ x.T
    return float(1.0 - (s.sum() - np.trace(s)) / (m * (m - 1)))


def coverage(lists: list[np.ndarray], n_items: int) -> float:
    """Share of the catalogue recommended to at least one user."""
    if not lists:
        return 0.0
    return float(len(np.unique(np.concatenate([np.asarray(x, np.int64) for x in lists]))) / n_items)


def gini(x: np.ndarray) -> float:
    """Gini coefficient of non-negative values (0 = equal, -> 1 = concentrated)."""
    x = np.sort(np.asarray(x, np.float64))
    n = len(x)
    if n == 0 or x.sum() == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float((2 * i - n - 1) @ x / (n * x.sum()))


def exposure_gini(lists: list[np.ndarray], n_items: int) -> float:
    """Gini of how often each catalogue item is recommended, never-recommended items counted as 0."""
    allv = np.concatenate([np.asarray(x, np.int64) for x in lists]) if lists else np.empty(0, np.int64)
    return gini(np.bincount(allv, minlength=n_items))


def mean_pairwise_cos(v: np.ndarray) -> float:
    """Mean cosine over the K(K-1)/2 pairs of one user's interest vectors [K, d] (nan for K = 1)."""
    k = len(v)
    if k < 2:
        return float("nan")
    x = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    s = x @ x.T
    return float((s.sum() - np.trace(s)) / (k * (k - 1)))


def entropy(p: np.ndarray) -> float:
    """Shannon entropy (nats) of a non-negative vector, normalised to sum 1."""
    p = np.asarray(p, np.float64)
    s = p.sum()
    if s <= 0:
        return 0.0
    p = p[p > 0] / s
    return float(max(0.0, -(p * np.log(p)).sum()))


def interest_usage(interest_of_items: list[np.ndarray], k: int) -> dict:
    """Which interest supplied the served items.
    -> usage_entropy (pooled over users, nats), effective_interests = mean over users of exp(entropy of
    the user's own list), single_interest_share = share of users whose whole list came from one interest."""
    if not interest_of_items:
        return {"usage_entropy": 0.0, "effective_interests": 0.0, "single_interest_share": 0.0}
    pooled = np.zeros(k)
    eff, single = [], []
    for s in interest_of_items:
        c = np.bincount(np.asarray(s, np.int64), minlength=k)
        pooled[: len(c)] += c[:k]
        eff.append(np.exp(entropy(c)))
        single.append(float((c > 0).sum() <= 1))
    return {"usage_entropy": entropy(pooled), "effective_interests": float(np.mean(eff)),
            "single_interest_share": float(np.mean(single))}


def routing_entropy(aux: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Entropy of each interest's routing/attention weights over the (real) sequence positions.
    aux [B, K, L], mask [B, L] -> (mean entropy in nats, mean entropy / log(len)). A collapsed interest
    that reads one item has entropy 0; uniform attention has normalised entropy 1."""
    a = np.asarray(aux, np.float64) * mask[:, None, :]
    p = a / np.maximum(a.sum(-1, keepdims=True), 1e-12)
    h = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(-1)  # [B, K]
    n = mask.sum(1)
    norm = np.where(n > 1, h / np.log(np.maximum(n, 2))[:, None], np.nan)
    ok = n > 1
    return float(h[ok].mean()) if ok.any() else float("nan"), float(np.nanmean(norm[ok])) if ok.any() else float("nan")


# ---- interest separation and latent interests (GemiRec's AMR@N / CUR@N; the seed does not define them, so:) ----
def interest_separation(interest_lists: np.ndarray) -> float:
    """AMR@N (our definition): 1 − the mean over interest pairs k < k' of |R_k ∩ R_k'| / N, R_k = interest k's own
    top-N items ([K, N] item ids, −1 = none). 1 = the K interests retrieve disjoint lists, 0 = identical lists
    (collapse); nan for K = 1."""
    R = [set(int(x) for x in r if x >= 0) for r in np.asarray(interest_lists)]
    k, n = len(R), np.asarray(interest_lists).shape[-1]
    if k < 2 or n == 0:
        return float("nan")
    ov = [len(R[a] & R[b]) / n for a in range(k) for b in range(a + 1, k)]
    return float(1.0 - np.mean(ov))


def latent_interest_recall(rec: np.ndarray, targets: np.ndarray, history: np.ndarray, item_category: np.ndarray,
                           n: int) -> float | None:
    """CUR@N: Recall@N restricted to the targets whose category never occurs in the input history (interests
    absent from the history); None when the user has no such target (left out of the mean)."""
    t = np.unique(np.asarray(targets, np.int64))
    seen = np.unique(item_category[np.asarray(history, np.int64)])
    new = t[~np.isin(item_category[t], seen)]
    if len(new) == 0:
        return None
    return float(np.isin(np.asarray(rec, np.int64)[:n], new).sum() / len(new))


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information of two labelings, I(a; b) / sqrt(H(a) H(b)) (1 = same partition up to
    renaming, 0 = independent; 0 when either is constant)."""
    a, b = np.unique(np.asarray(a), return_inverse=True)[1], np.unique(np.asarray(b), return_inverse=True)[1]
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1)
    p = joint / joint.sum()
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])).sum())
    ha, hb = entropy(pa), entropy(pb)
    return float(mi / np.sqrt(ha * hb)) if ha > 0 and hb > 0 else 0.0


# ---- history popularity (input drift: "histories filled with popular items"; see mirec.monitoring.popularity) ----
HEAD_FRACTION = 0.1


def head_mask(popularity: np.ndarray, fraction: float = HEAD_FRACTION) -> np.ndarray:
    """[N] bool: the top `fraction` of items by popularity (at least one item)."""
    pop = np.asarray(popularity, np.float64)
    k = max(1, int(round(fraction * len(pop))))
    order = np.lexsort((np.arange(len(pop)), -pop))  # most popular first, ties by item_idx
    mask = np.zeros(len(pop), bool)
    mask[order[:k]] = True
    return mask


def history_popularity(history_idx: np.ndarray, popularity: np.ndarray, head: np.ndarray | None = None
                       ) -> dict[str, float] | None:
    """Known history item_idx -> {"head_share", "mean_log_pop"}; None for an empty history."""
    h = np.asarray(history_idx, np.int64)
    if h.size == 0:
        return None
    pop = np.asarray(popularity, np.float64)
    head = head_mask(pop) if head is None else head
    return {"head_share": round(float(head[h].mean()), 6), "mean_log_pop": round(float(np.log1p(pop[h]).mean()), 6)}


# ---- long tail (the d_u feature "long_tail" in mirec.retrieval.diversity; HMISR's training data hook) ----
DEFAULT_HEAD_SHARE = 0.8
# identity-checked, so that serving does not redo O(N) catalogue work per request
_TAIL_CACHE: list[tuple[np.ndarray, float, np.ndarray]] = []


def long_tail_mask(popularity: np.ndarray, head_share: float = DEFAULT_HEAD_SHARE) -> np.ndarray:
    """bool[N]: True for long-tail items = outside the smallest set of most popular items that
    together hold `head_share` of all interactions (ties at the boundary count as head)."""
    for arr, hs, mask in _TAIL_CACHE:
        if arr is popularity and hs == head_share:
            return mask
    pop = np.asarray(popularity, dtype=np.float64)
    total = pop.sum()
    if total <= 0:
        mask = np.zeros(pop.shape, dtype=bool)
    else:
        srt = np.sort(pop)[::-1]
        cut = int(np.searchsorted(np.cumsum(srt), head_share * total))  # index of the last head item
        threshold = srt[min(cut, len(srt) - 1)]
        mask = pop < threshold
    _TAIL_CACHE.insert(0, (popularity, head_share, mask))
    del _TAIL_CACHE[4:]
    return mask
