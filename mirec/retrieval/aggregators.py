"""Aggregators: turn K per-interest candidate lists into one list of n items.

A small registry (like Feast's pluggable parts): `@register("name")` on a function
`(scores[K, M], items[K, M], ctx) -> list[Recommendation]`. Evaluation and the serving handler
both call `get_aggregator(name)`, so what is served is what was evaluated.

Registered aggregators (formulas and calibration: docs/aggregation.md):

- ``merge``        the K·M candidates de-duplicated and merged by raw score (evaluation default).
- ``controllable`` ComiRec's greedy selection: pick argmax_i  rel(i) + λ·Σ_{j∈S} g(i, j),
                   g(i, j) = 1 if the categories of i and j differ. λ = ctx.diversity (request) or
                   ctx.params["lambda"] (config), default 0 (== merge).
- ``personalised`` MMR with a per-user weight d_u ∈ [0, 1] (mirec.retrieval.diversity):
                   pick argmax_i (1 − d_u)·rel(i) + d_u·min_{j∈S}(1 − sim(i, j)),
                   sim = cosine clipped to [0, 1] ("embedding") or 1[same category] ("category");
                   params["dissimilarity"] = "mean" replaces the min by the mean over S. Default
                   (similarity "auto"): category + mean when the pool spans ≥ 2 categories, else
                   embedding + min (the best variant in benchmarks/tradeoff.py; see personalised()).
- ``auto``         per request: `diversity` null -> personalised (or params["default"]); a number ->
                   controllable with λ = that number (the serving contract of the request field).
- ``adaptive_k``   drop interests whose share of the user's signal (ctx.interest_weights, else
                   the share of history items each interest is closest to) is below a threshold
                   (never fewer than one interest), then aggregate what is left (merge by default).

rel(i) is the raw retrieval score normalised *within the candidate pool* (scores of different
interests live on different scales): "minmax" (default) maps the pool to [0, 1]; "zscore"
standardises then squashes with a logistic; "rank" uses 1 − rank/(P−1). The `score` field of a
returned Recommendation is always the raw retrieval score (what the index returned), and the
list order is the selection order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np


class Recommendation(NamedTuple):
    item_idx: int
    score: float
    interest: int  # which interest (0..K-1) supplied the item


@dataclass
class AggregationContext:
    n: int
    item_category: np.ndarray  # [N] category_idx per item
    exclude: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # item_idx not to serve
    history: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # the user's items
    interests: np.ndarray | None = None  # [K, d]
    interest_weights: np.ndarray | None = None  # [K] the user's signal per interest (attention mass)
    item_vectors: np.ndarray | None = None  # [N, d] for embedding similarity
    item_popularity: np.ndarray | None = None  # [N]
    diversity: float | None = None  # per-request knob (controllable lambda)
    params: dict = field(default_factory=dict)  # aggregator settings from config
    #: the model's own diversity preference for this user (HMISR's d_u), the raw score of a calibration
    #: fitted on it (DiversityCalibration.source == "model"); None = the model has none
    model_diversity: float | None = None


Aggregator = Callable[[np.ndarray, np.ndarray, AggregationContext], list[Recommendation]]
_REGISTRY: dict[str, Aggregator] = {}


def register(name: str) -> Callable[[Aggregator], Aggregator]:
    def deco(fn: Aggregator) -> Aggregator:
        _REGISTRY[name] = fn
        return fn
    return deco


def get_aggregator(name: str) -> Aggregator:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown aggregator {name!r}; known: {sorted(_REGISTRY)}") from None


def available() -> list[str]:
    return sorted(_REGISTRY)


def candidate_pool(scores: np.ndarray, items: np.ndarray, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Union of the K lists, de-duplicated (an item keeps its best score and that interest),
    excluded items and FAISS padding (-1) removed. -> (item_idx, score, interest), best first."""
    k, m = items.shape
    flat_items = items.reshape(-1)
    flat_scores = scores.reshape(-1)
    flat_interest = np.repeat(np.arange(k), m)
    ok = flat_items >= 0
    if len(exclude):
        ok &= ~np.isin(flat_items, exclude)
    flat_items, flat_scores, flat_interest = flat_items[ok], flat_scores[ok], flat_interest[ok]
    order = np.lexsort((flat_interest, -flat_scores))  # best score first; ties -> lower interest
    flat_items, flat_scores, flat_interest = flat_items[order], flat_scores[order], flat_interest[order]
    _, first = np.unique(flat_items, return_index=True)
    first.sort()
    return flat_items[first], flat_scores[first], flat_interest[first]


def _to_recs(it: np.ndarray, sc: np.ndarray, inter: np.ndarray, order) -> list[Recommendation]:
    return [Recommendation(int(it[j]), float(sc[j]), int(inter[j])) for j in order]


@register("merge")
def merge(scores: np.ndarray, items: np.ndarray, ctx: AggregationContext) -> list[Recommendation]:
    """ComiRec evaluation default: K·M candidates merged by score, de-duplicated, cut to n."""
    it, sc, inter = candidate_pool(scores, items, ctx.exclude)
    return [Recommendation(int(i), float(s), int(k)) for i, s, k in zip(it[: ctx.n], sc[: ctx.n], inter[: ctx.n])]


# --------------------------------------------------------------------------------------------
# shared pieces
# --------------------------------------------------------------------------------------------

def normalise_scores(scores: np.ndarray, method: str = "minmax") -> np.ndarray:
    """Relevance in [0, 1] from raw scores of one candidate pool (order preserved).

    minmax: (s − min)/(max − min); zscore: logistic((s − mean)/std); rank: 1 − rank/(P − 1).
    A constant pool maps to all ones.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return s
    if method == "minmax":
        lo, hi = s.min(), s.max()
        return np.ones_like(s) if hi - lo <= 1e-12 else (s - lo) / (hi - lo)
    if method == "zscore":
        sd = s.std()
        return np.ones_like(s) if sd <= 1e-12 else 1.0 / (1.0 + np.exp(-(s - s.mean()) / sd))
    if method == "rank":
        p = s.size
        if p == 1:
            return np.ones(1)
        rank = np.empty(p)
        rank[np.argsort(-s, kind="stable")] = np.arange(p)
        return 1.0 - rank / (p - 1)
    raise ValueError(f"unknown score normalisation {method!r} (minmax, zscore, rank)")


def _param(ctx: AggregationContext, key: str, default):
    return ctx.params.get(key, default) if ctx.params else default


def _cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return v @ v.T


# --------------------------------------------------------------------------------------------
# controllable (ComiRec)
# --------------------------------------------------------------------------------------------

def controllable_select(rel: np.ndarray, cats: np.ndarray, n: int, lam: float) -> np.ndarray:
    """Greedy ComiRec selection. Returns candidate positions in selection order.

    Maximises rel(i) + λ·#{j ∈ S : cat(j) ≠ cat(i)} = rel(i) + λ·|S| − λ·#{j ∈ S : cat(j) = cat(i)};
    |S| is the same for every candidate of a step, so the step picks argmax rel(i) − λ·same(i)
    with `same` maintained incrementally (one vectorised comparison per step). Ties -> the
    better-ranked candidate (argmax takes the first).
    """
    p = rel.size
    n = min(n, p)
    if lam == 0.0 or n == 0:
        return np.argsort(-rel, kind="stable")[:n]
    cats = np.asarray(cats)
    # Category counts via compact codes: same(i) = count[code(i)], an O(P) gather per step.
    _, code = np.unique(cats, return_inverse=True)
    count = np.zeros(code.max() + 1)
    key = rel.astype(np.float64).copy()
    chosen = np.empty(n, dtype=np.int64)
    taken = np.zeros(p, dtype=bool)
    for t in range(n):
        val = key - lam * count[code]
        val[taken] = -np.inf
        j = int(np.argmax(val))
        chosen[t] = j
        taken[j] = True
        count[code[j]] += 1.0
    return chosen


@register("controllable")
def controllable(scores: np.ndarray, items: np.ndarray, ctx: AggregationContext) -> list[Recommendation]:
    """ComiRec controllable aggregation; λ from the request (ctx.diversity) or config (params['lambda']).

    params: lambda (default 0.0), normalise ("minmax" | "zscore" | "rank" | "none", default minmax).
    """
    lam = ctx.diversity if ctx.diversity is not None else float(_param(ctx, "lambda", 0.0))
    if lam < 0:
        raise ValueError(f"controllable: lambda must be >= 0, got {lam}")
    it, sc, inter = candidate_pool(scores, items, ctx.exclude)
    if it.size == 0:
        return []
    method = _param(ctx, "normalise", "minmax")
    rel = sc.astype(np.float64) if method == "none" else normalise_scores(sc, method)
    order = controllable_select(rel, np.asarray(ctx.item_category)[it], ctx.n, float(lam))
    return _to_recs(it, sc, inter, order)


# --------------------------------------------------------------------------------------------
# personalised (MMR weighted by d_u)
# --------------------------------------------------------------------------------------------

def mmr_select(rel: np.ndarray, sim: np.ndarray | None, n: int, weight: float,
               cats: np.ndarray | None = None, vectors: np.ndarray | None = None,
               mode: str = "min") -> np.ndarray:
    """Greedy MMR: argmax_i (1 − w)·rel(i) + w·dis(i, S); the first pick is argmax rel.

    dis(i, S) = min_{j∈S}(1 − sim(i, j))  (mode "min", classic MMR / the HMISR formula), or
              = mean_{j∈S}(1 − sim(i, j)) (mode "mean": keeps rewarding spread after every category
                is covered once; with category similarity it is the share of S in other categories).
    Similarity, first given wins: `sim` a [P, P] matrix; `vectors` [P, d] unit-norm candidate
    vectors (cosine computed lazily, one [P, d]·[d] product per pick — cheaper than the full
    P×P product, whose multi-threaded BLAS call costs milliseconds on a busy box); `cats`
    (sim = 1[same category]). Similarities are clipped to [0, 1] (a negative cosine counts as
    unrelated, not as "more than dissimilar"), so dis ∈ [0, 1] like rel. The running `dis` is
    updated with one vectorised operation per step.
    """
    if mode not in ("min", "mean"):
        raise ValueError(f"unknown MMR dissimilarity mode {mode!r} (min, mean)")
    p = rel.size
    n = min(n, p)
    if weight <= 0.0 or n == 0:
        return np.argsort(-rel, kind="stable")[:n]
    rel = rel.astype(np.float64)
    dis = np.ones(p)  # empty S: every candidate counts as fully dissimilar -> first pick = argmax rel
    acc = np.zeros(p)  # mode "mean": Σ_{j∈S} (1 − sim(i, j))
    taken = np.zeros(p, dtype=bool)
    chosen = np.empty(n, dtype=np.int64)
    a, b = 1.0 - weight, weight
    for t in range(n):
        val = a * rel + b * dis
        val[taken] = -np.inf
        j = int(np.argmax(val))
        chosen[t] = j
        taken[j] = True
        if sim is not None:
            d_j = 1.0 - np.clip(sim[j], 0.0, 1.0)
        elif vectors is not None:
            d_j = 1.0 - np.clip(vectors @ vectors[j], 0.0, 1.0)
        else:
            d_j = (cats != cats[j]).astype(np.float64)
        if mode == "min":
            np.minimum(dis, d_j, out=dis)
        else:
            acc += d_j
            dis = acc / (t + 1)
    return chosen


def _user_d(ctx: AggregationContext) -> float:
    """d_u for this request: ctx.diversity (explicit override) > params['d_u'] (precomputed) >
    computed from the history/interests with the calibration in params['d_u_calibration']."""
    if ctx.diversity is not None:
        return float(np.clip(ctx.diversity, 0.0, 1.0))
    if ctx.params and ctx.params.get("d_u") is not None:
        return float(np.clip(ctx.params["d_u"], 0.0, 1.0))
    from mirec.retrieval.diversity import user_diversity  # local: diversity imports nothing from here
    return user_diversity(ctx)


@register("personalised")
def personalised(scores: np.ndarray, items: np.ndarray, ctx: AggregationContext) -> list[Recommendation]:
    """MMR selection weighted by the user's diversity score d_u.

    params: similarity ("auto" default | "category" | "embedding"), dissimilarity ("min" | "mean";
    default "mean" for category, "min" for embedding), normalise (default minmax), d_u (precomputed),
    d_u_calibration (dict, see mirec.retrieval.diversity.DiversityCalibration).
    similarity "auto" = category when the pool spans ≥ 2 categories, else embedding when
    ctx.item_vectors is set, else relevance order (nothing to diversify on). The defaults are the
    variant that did best in benchmarks/tradeoff.py (docs/aggregation.md).
    """
    it, sc, inter = candidate_pool(scores, items, ctx.exclude)
    if it.size == 0:
        return []
    d_u = _user_d(ctx)
    rel = normalise_scores(sc, _param(ctx, "normalise", "minmax"))
    how = _param(ctx, "similarity", "auto")
    cats = np.asarray(ctx.item_category)[it]
    if how == "auto":
        how = ("category" if cats.size and (cats != cats[0]).any()
               else "embedding" if ctx.item_vectors is not None else "none")
    mode = _param(ctx, "dissimilarity", "mean" if how == "category" else "min")
    if how == "embedding":
        if ctx.item_vectors is None:
            raise ValueError("personalised: similarity='embedding' needs ctx.item_vectors")
        v = np.asarray(ctx.item_vectors, dtype=np.float64)[it]
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        order = mmr_select(rel, None, ctx.n, d_u, vectors=v, mode=mode)
    elif how == "category":
        order = mmr_select(rel, None, ctx.n, d_u, cats=cats, mode=mode)
    elif how == "none":
        order = np.argsort(-rel, kind="stable")[: ctx.n]
    else:
        raise ValueError(f"personalised: unknown similarity {how!r} (auto, category, embedding)")
    return _to_recs(it, sc, inter, order)


# --------------------------------------------------------------------------------------------
# adaptive_k
# --------------------------------------------------------------------------------------------

def interest_usage(interests: np.ndarray, history: np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
    """Share of the history items that each interest is closest to (inner product), [K], sums to 1."""
    k = interests.shape[0]
    if len(history) == 0:
        return np.full(k, 1.0 / k)
    h = np.asarray(item_vectors)[np.asarray(history, dtype=np.int64)]
    owner = np.argmax(h @ np.asarray(interests).T, axis=1)
    return np.bincount(owner, minlength=k) / len(history)


def interest_shares(ctx: AggregationContext, k: int, signal: str = "auto") -> np.ndarray | None:
    """Per-interest share of the user's signal, [K] summing to 1, or None if it cannot be measured.

    signal: "weights" = ctx.interest_weights normalised (attention / routing mass);
            "usage"   = share of history items each interest is closest to (needs ctx.interests and
                        ctx.item_vectors);
            "auto"    = weights when they are informative, else usage. Weights that are all equal
                        carry no signal: ComiRec-SA's attention rows each sum to 1 over the sequence,
                        so their per-interest mass is always 1/K; MIND/DR routing (softmax over
                        interests) does differ per interest.
    """
    w = None
    if ctx.interest_weights is not None and signal in ("auto", "weights"):
        w = np.clip(np.asarray(ctx.interest_weights, dtype=np.float64).reshape(-1)[:k], 0.0, None)
        w = w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / max(len(w), 1))
        if signal == "weights" or (len(w) and np.ptp(w) > 1e-3 / k):
            return w
    if signal in ("auto", "usage") and ctx.interests is not None and ctx.item_vectors is not None:
        return interest_usage(np.asarray(ctx.interests)[:k], ctx.history, ctx.item_vectors)
    return w  # uninformative weights (all kept) or None


def select_interests(shares: np.ndarray, threshold: float = 0.1,
                     interests: np.ndarray | None = None, dedup_cos: float | None = None) -> np.ndarray:
    """Indices of the interests kept: share ≥ threshold; never fewer than one (the strongest).

    With `dedup_cos` and the interest vectors, an interest whose cosine to a stronger kept one is
    ≥ dedup_cos is folded into it first (its share added), so near-duplicate interests of a
    one-interest user count as one.
    """
    s = np.asarray(shares, dtype=np.float64).copy()
    order = np.argsort(-s, kind="stable")
    if dedup_cos is not None and interests is not None and len(s) > 1:
        cos = _cosine_matrix(interests)
        alive = np.ones(len(s), dtype=bool)
        for a_pos, a in enumerate(order):
            if not alive[a]:
                continue
            for b in order[a_pos + 1:]:
                if alive[b] and cos[a, b] >= dedup_cos:
                    s[a] += s[b]
                    s[b] = 0.0
                    alive[b] = False
    keep = np.flatnonzero(s >= threshold)
    if keep.size == 0:
        keep = np.array([int(np.argmax(s))])
    return np.sort(keep)


@register("adaptive_k")
def adaptive_k(scores: np.ndarray, items: np.ndarray, ctx: AggregationContext) -> list[Recommendation]:
    """Drop weak interests, then aggregate the kept ones.

    params: threshold (share below which an interest is dropped, default 0.1), signal ("auto" |
    "weights" | "usage", see interest_shares), dedup_cos (None),
    then ("merge" default; any registered aggregator, e.g. "personalised"), fill (default True:
    if the kept interests give fewer than n candidates, top up from the dropped ones by score).
    Without weights or interests+vectors it degrades to `then` over all interests.
    """
    k = scores.shape[0]
    then = get_aggregator(_param(ctx, "then", "merge"))
    if then is adaptive_k:
        raise ValueError("adaptive_k: params['then'] cannot be adaptive_k")
    shares = interest_shares(ctx, k, _param(ctx, "signal", "auto"))
    if shares is None or k <= 1:
        return then(scores, items, ctx)
    keep = select_interests(shares, float(_param(ctx, "threshold", 0.1)),
                            None if ctx.interests is None else np.asarray(ctx.interests)[:k],
                            _param(ctx, "dedup_cos", None))
    sub = then(scores[keep], items[keep], ctx)
    recs = [Recommendation(r.item_idx, r.score, int(keep[r.interest])) for r in sub]
    if len(recs) < ctx.n and _param(ctx, "fill", True) and len(keep) < k:
        dropped = np.setdiff1d(np.arange(k), keep)
        seen = np.concatenate([np.asarray(ctx.exclude, dtype=np.int64), [r.item_idx for r in recs]]).astype(np.int64)
        it, sc, inter = candidate_pool(scores[dropped], items[dropped], seen)
        m = ctx.n - len(recs)
        recs += [Recommendation(int(i), float(s), int(dropped[j])) for i, s, j in zip(it[:m], sc[:m], inter[:m])]
    return recs


# --------------------------------------------------------------------------------------------
# auto: the serving contract for the request field `diversity`
# --------------------------------------------------------------------------------------------

@register("auto")
def auto(scores: np.ndarray, items: np.ndarray, ctx: AggregationContext) -> list[Recommendation]:
    """Request-driven choice: `diversity` null -> params['default'] (default "personalised", d_u from
    the user's history); `diversity` a number -> `controllable` with λ = that number."""
    if ctx.diversity is None:
        name = _param(ctx, "default", "personalised")
        if name == "auto":
            raise ValueError("auto: params['default'] cannot be auto")
        return get_aggregator(name)(scores, items, ctx)
    return controllable(scores, items, ctx)
