"""Per-user diversity score d_u ∈ [0, 1] (HMISR / DIAM notes) and its calibration.

Four features, each in [0, 1], from the user's own data (docs/aggregation.md has the details):

- ``entropy``     category entropy of the history, H(p_c) / log(min(L, C))  (L = history length,
                  C = number of categories): 0 = one category, 1 = as spread as the length allows;
- ``switch``      category switch rate: share of consecutive history pairs whose categories differ;
- ``long_tail``   share of history items in the long tail (outside the most popular items that
                  together hold `head_share` = 80% of the training interactions);
- ``spread``      spread of the interest vectors (optional; needs interests): Rao's quadratic
                  entropy Σ_{i≠j} w_i w_j (1 − cos(v_i, v_j)) / (1 − 1/K), clipped to [0, 1], with
                  w the interest weights (uniform if none) — high only when the weight is shared
                  between interests that point in different directions.

Raw score r_u = Σ_f a_f·f_u / Σ_{f available} a_f (missing features drop out; default a =
entropy 0.35, switch 0.35, long_tail 0.1, spread 0.2).

Calibration (population-level, fitted once on train users, shipped as a dict):
    d_u = σ(α·(r_u − μ)/s + β)
μ, s = mean and std of r over the population; α = spread of the personalisation (α = 0 gives
everyone the same d = σ(β), i.e. one global MMR weight); β is solved (bisection) so that the
population mean of d_u equals a target d̄. Comparing personalised against global at the same d̄
(and, in benchmarks/tradeoff.py, at the same measured mean Diversity@50) is what makes the
"equal average diversity" comparison fair.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np

from mirec.metrics import DEFAULT_HEAD_SHARE, long_tail_mask  # noqa: F401  (re-exported; below the models too)

if TYPE_CHECKING:  # pragma: no cover
    from mirec.retrieval.aggregators import AggregationContext

FEATURES = ("entropy", "switch", "long_tail", "spread")
DEFAULT_WEIGHTS: dict[str, float] = {"entropy": 0.35, "switch": 0.35, "long_tail": 0.1, "spread": 0.2}

# Small identity-checked caches so that serving does not redo O(N) catalogue work per request.
_NCAT_CACHE: list[tuple[np.ndarray, int]] = []


def _n_categories(item_category: np.ndarray) -> int:
    for arr, n in _NCAT_CACHE:
        if arr is item_category:
            return n
    n = int(np.max(item_category)) + 1 if len(item_category) else 1
    _NCAT_CACHE.insert(0, (item_category, n))
    del _NCAT_CACHE[4:]
    return n


def history_features(history: np.ndarray, item_category: np.ndarray, item_popularity: np.ndarray | None = None,
                     n_categories: int | None = None, head_share: float = DEFAULT_HEAD_SHARE) -> dict[str, float]:
    """entropy, switch, long_tail of one time-ordered history (NaN where undefined: L < 2, no popularity)."""
    h = np.asarray(history, dtype=np.int64)
    out = {"entropy": math.nan, "switch": math.nan, "long_tail": math.nan}
    if h.size == 0:
        return out
    if item_popularity is not None:
        out["long_tail"] = float(long_tail_mask(item_popularity, head_share)[h].mean())
    if h.size < 2:
        return out
    cats = np.asarray(item_category)[h]
    c = n_categories if n_categories is not None else _n_categories(item_category)
    _, counts = np.unique(cats, return_counts=True)
    p = counts / h.size
    denom = math.log(max(2, min(h.size, c)))
    out["entropy"] = float(min(1.0, -(p * np.log(p)).sum() / denom))
    out["switch"] = float((cats[1:] != cats[:-1]).mean())
    return out


def interest_spread(interests: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Normalised Rao quadratic entropy of the K interests (see module doc); NaN if K < 2."""
    v = np.asarray(interests, dtype=np.float64)
    k = v.shape[0]
    if k < 2:
        return math.nan
    w = np.full(k, 1.0 / k) if weights is None else np.clip(np.asarray(weights, np.float64).reshape(-1)[:k], 0, None)
    if w.sum() <= 0:
        w = np.full(k, 1.0 / k)
    w = w / w.sum()
    u = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    dis = 1.0 - u @ u.T
    np.fill_diagonal(dis, 0.0)
    q = float(w @ dis @ w) / (1.0 - 1.0 / k)
    return float(np.clip(q, 0.0, 1.0))


def raw_score(features: Mapping[str, float], weights: Mapping[str, float] | None = None) -> float:
    """Weighted mean of the available (non-NaN) features; NaN if none is available."""
    weights = DEFAULT_WEIGHTS if weights is None else weights
    num = den = 0.0
    for f, a in weights.items():
        x = features.get(f, math.nan)
        if a > 0 and x is not None and not math.isnan(x):
            num += a * x
            den += a
    return num / den if den > 0 else math.nan


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class DiversityCalibration:
    """d_u = σ(alpha·(r − mu)/std + beta). Serialisable with to_dict()/from_dict() (JSON-friendly)."""

    mu: float = 0.5
    std: float = 0.2
    alpha: float = 1.5
    beta: float = -1.0  # σ(−1) ≈ 0.27: a mild default mean when nothing was fitted
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    head_share: float = DEFAULT_HEAD_SHARE
    n_categories: int | None = None
    target_mean: float | None = None  # what beta was fitted for (informational)
    #: what r is: "features" = the weighted history/interest features above; "model" = the model's own
    #: per-user preference (ctx.model_diversity, e.g. HMISR's learned d_u), used when the request has it
    source: str = "features"

    def apply(self, raw) -> np.ndarray | float:
        """Raw score(s) -> d_u. A NaN raw score (no usable history) gets σ(beta), the population-centre value."""
        r = np.asarray(raw, dtype=np.float64)
        z = np.where(np.isnan(r), 0.0, (r - self.mu) / max(self.std, 1e-9))
        d = _sigmoid(self.alpha * z + self.beta)
        return float(d) if d.ndim == 0 else d

    def fit(self, raw_scores: Iterable[float], target_mean: float, alpha: float | None = None) -> "DiversityCalibration":
        """Set mu/std from the population and beta so that mean(d_u) == target_mean (in (0, 1))."""
        if not 0.0 < target_mean < 1.0:
            raise ValueError(f"target_mean must be in (0, 1), got {target_mean}")
        r = np.asarray(list(raw_scores), dtype=np.float64)
        r = r[~np.isnan(r)]
        if alpha is not None:
            self.alpha = float(alpha)
        if r.size:
            self.mu, self.std = float(r.mean()), float(max(r.std(), 1e-6))
            z = (r - self.mu) / self.std
        else:
            z = np.zeros(1)
        lo, hi = -30.0, 30.0  # mean σ(αz + β) is increasing in β
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            if _sigmoid(self.alpha * z + mid).mean() < target_mean:
                lo = mid
            else:
                hi = mid
        self.beta = 0.5 * (lo + hi)
        self.target_mean = float(target_mean)
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping | "DiversityCalibration" | None) -> "DiversityCalibration":
        if d is None:
            return cls()
        if isinstance(d, cls):
            return d
        return cls(**dict(d))


def user_features(ctx: "AggregationContext", calibration: DiversityCalibration | None = None) -> dict[str, float]:
    """All four features for one request context (spread NaN without ctx.interests)."""
    cal = calibration or DiversityCalibration()
    f = history_features(ctx.history, ctx.item_category, ctx.item_popularity, cal.n_categories, cal.head_share)
    f["spread"] = math.nan if ctx.interests is None else interest_spread(ctx.interests, ctx.interest_weights)
    return f


def user_diversity(ctx: "AggregationContext") -> float:
    """d_u for one request, using ctx.params['d_u_calibration'] (dict or DiversityCalibration; default if absent).
    ctx.params['d_u_features'] (a list) restricts which features are used."""
    params = ctx.params or {}
    cal = DiversityCalibration.from_dict(params.get("d_u_calibration"))
    if cal.source == "model" and ctx.model_diversity is not None:
        return float(cal.apply(ctx.model_diversity))
    weights = cal.weights
    if params.get("d_u_features") is not None:
        weights = {k: v for k, v in weights.items() if k in set(params["d_u_features"])}
    return float(cal.apply(raw_score(user_features(ctx, cal), weights)))


def population_features(histories: Iterable[np.ndarray], item_category: np.ndarray,
                        item_popularity: np.ndarray | None = None, interests: Iterable[np.ndarray] | None = None,
                        interest_weights: Iterable[np.ndarray] | None = None,
                        head_share: float = DEFAULT_HEAD_SHARE) -> dict[str, np.ndarray]:
    """Features for many users at once -> {feature: float[U]} (spread NaN where no interests)."""
    histories = list(histories)
    n_cat = _n_categories(item_category)
    rows = [history_features(h, item_category, item_popularity, n_cat, head_share) for h in histories]
    out = {f: np.array([r[f] for r in rows], dtype=np.float64) for f in ("entropy", "switch", "long_tail")}
    if interests is None:
        out["spread"] = np.full(len(histories), np.nan)
    else:
        ws = list(interest_weights) if interest_weights is not None else [None] * len(histories)
        out["spread"] = np.array([interest_spread(v, w) for v, w in zip(interests, ws)], dtype=np.float64)
    return out


def population_raw_scores(features: Mapping[str, np.ndarray], weights: Mapping[str, float] | None = None) -> np.ndarray:
    weights = DEFAULT_WEIGHTS if weights is None else weights
    num = np.zeros_like(next(iter(features.values())), dtype=np.float64)
    den = np.zeros_like(num)
    for f, a in weights.items():
        if a <= 0 or f not in features:
            continue
        x = np.asarray(features[f], dtype=np.float64)
        ok = ~np.isnan(x)
        num[ok] += a * x[ok]
        den[ok] += a
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def fit_calibration(histories: Iterable[np.ndarray], item_category: np.ndarray, item_popularity: np.ndarray | None,
                    target_mean: float, alpha: float = 1.5, weights: Mapping[str, float] | None = None,
                    interests: Iterable[np.ndarray] | None = None, interest_weights: Iterable[np.ndarray] | None = None,
                    head_share: float = DEFAULT_HEAD_SHARE) -> DiversityCalibration:
    """Fit a calibration on a user population (e.g. the train users' histories)."""
    w = dict(DEFAULT_WEIGHTS if weights is None else weights)
    feats = population_features(histories, item_category, item_popularity, interests, interest_weights, head_share)
    if interests is None:
        w.pop("spread", None)  # not measured on this population: keep serving consistent with the fit
    cal = DiversityCalibration(weights=w, head_share=head_share, n_categories=_n_categories(item_category))
    return cal.fit(population_raw_scores(feats, w), target_mean, alpha)


def fit_calibration_for(recommender, dataset, target_mean: float = 0.3, alpha: float = 1.5,
                        max_users: int = 3000, use_spread: bool = True) -> DiversityCalibration:
    """Fit on a dataset's train users through a `mirec.retrieval.Recommender` (interest spread from the
    model's interests and routing/attention mass, exactly as the aggregator sees them at serving)."""
    seqs = list(dataset.train_sequences().values())[:max_users]
    interests = weights = None
    if getattr(recommender, "is_neural", False):
        extras: dict = {}
        v, aux = recommender.encode(seqs, extras)
        if "user_diversity" in extras:  # the model has its own d_u (HMISR): calibrate that
            cal = DiversityCalibration(source="model", n_categories=_n_categories(dataset.item_category))
            return cal.fit(extras["user_diversity"], target_mean, alpha)
        if use_spread:
            interests, weights = list(v), [a.sum(-1) for a in aux]
    return fit_calibration(seqs, dataset.item_category, dataset.item_popularity, target_mean, alpha,
                           interests=interests, interest_weights=weights)


def save_calibration(cal: DiversityCalibration, path) -> None:
    """JSON next to a checkpoint / in a MAR; load with load_calibration and pass as
    aggregator_params={"d_u_calibration": cal.to_dict()}."""
    import json
    from pathlib import Path

    Path(path).write_text(json.dumps(cal.to_dict(), indent=2))


def load_calibration(path) -> DiversityCalibration:
    import json
    from pathlib import Path

    return DiversityCalibration.from_dict(json.loads(Path(path).read_text()))
