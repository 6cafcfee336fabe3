"""ServedLog records -> one analysis frame, and the window measures computed from it.

The frame has one row per served item (an answer with no items keeps one row with empty item
columns). Per-answer measures sit on the answer's first row (`first == 1`) and are NaN on the
others, so Evidently column metrics and drift tests see one value per answer, while the item
columns (`item_id`, `category`, `interest`) see every served item. `history_category` spreads each
answer's history-category mix over that answer's rows (largest-remainder quantisation), so every
answer weighs the same in the history-mix drift test.

Per-answer measures
- `ild`: category ILD = share of item pairs in the list with different categories.
- `effective_interests`: exp(entropy of the `interest` that supplied each item) (fallback items, interest -1, excluded).
- `single_interest`: 1 when every model-supplied item of the list came from one interest.
- `mean_pairwise_cos`: from the log's interest_stats (cosine between the user's K interests).
- `under_delivered`: Trinity idea: share of the user's strong history categories (>= strong_share of
  the history) whose share of the served list is below min_delivery_ratio x their history share.
Window measures: coverage (distinct served items / catalogue), exposure Gini over the whole
catalogue (unserved items count as 0), dead interests (slots 0..K-1 that supplied no item).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

REQUEST_COLUMNS = ["ild", "list_categories", "effective_interests", "single_interest", "mean_pairwise_cos",
                   "k", "history_len", "unknown_item_rate", "fallback", "under_delivered"]
UNKNOWN_CATEGORY = "(unknown)"


def _quantise(counts: dict[str, int], slots: int) -> list[str | None]:
    total = sum(v for v in counts.values() if v > 0)
    if not total or slots <= 0:
        return [None] * max(slots, 0)
    keys = sorted(counts)
    exact = np.array([max(counts[k], 0) / total * slots for k in keys])
    base = np.floor(exact).astype(int)
    rest = slots - base.sum()
    if rest > 0:
        base[np.argsort(-(exact - base), kind="stable")[:rest]] += 1
    return [k for k, b in zip(keys, base) for _ in range(b)]


def _entropy_exp(labels: list[int]) -> float:
    if not labels:
        return float("nan")
    c = np.fromiter(Counter(labels).values(), float)
    p = c / c.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def _ild(cats: list[str]) -> float:
    n = len(cats)
    if n < 2:
        return float("nan")
    sq = sum(v * v for v in Counter(cats).values())
    return (n * n - sq) / (n * (n - 1))


def under_delivered_pairs(hist: dict[str, int], served: list[str], strong_share: float, min_ratio: float):
    """-> list of (category, history share, served share, under_delivered: bool) for the strong categories."""
    total = sum(v for v in hist.values() if v > 0)
    if not total:
        return []
    sc = Counter(served)
    n = max(len(served), 1)
    out = []
    for c, v in hist.items():
        hs = v / total
        if hs >= strong_share:
            ss = sc.get(c, 0) / n
            out.append((c, hs, ss, ss < min_ratio * hs))
    return out


def build_frame(records: list[dict], item_category: dict[str, str] | None = None, *,
                strong_share: float = 0.2, min_delivery_ratio: float = 0.25) -> pd.DataFrame:
    """ServedLog dicts (or pydantic models) -> the per-item analysis frame."""
    item_category = item_category or {}
    cols: dict[str, list] = {c: [] for c in ["request_id", "user_id", "model", "arm", "ts", "first", "rank",
                                            "item_id", "category", "interest", "score", "history_category",
                                            *REQUEST_COLUMNS]}
    for r in records:
        if hasattr(r, "model_dump"):
            r = r.model_dump(mode="json")
        items = r.get("items") or []
        cats = [it.get("category") or item_category.get(str(it["item_id"]), UNKNOWN_CATEGORY) for it in items]
        interests = [int(it.get("interest", -1)) for it in items]
        model_int = [i for i in interests if i >= 0]
        stats = r.get("interest_stats") or {}
        hist = r.get("history_categories") or {}
        hlen = int(r.get("history_len") or 0)
        unk = int(r.get("unknown_items") or 0)
        pairs = under_delivered_pairs(hist, cats, strong_share, min_delivery_ratio)
        per = {
            "ild": _ild(cats),
            "list_categories": float(len(set(cats))) if cats else float("nan"),
            "effective_interests": _entropy_exp(model_int),
            "single_interest": (float(len(set(model_int)) == 1) if len(model_int) >= 2 else float("nan")),
            "mean_pairwise_cos": (float(stats["mean_pairwise_cos"]) if stats.get("mean_pairwise_cos") is not None
                                  else float("nan")),
            "k": float(stats.get("k") or 0),
            "history_len": float(hlen),
            "unknown_item_rate": unk / (hlen + unk) if (hlen + unk) else 0.0,
            "fallback": float(r.get("fallback") is not None),
            "under_delivered": (float(np.mean([p[3] for p in pairs])) if pairs else float("nan")),
        }
        rows = max(len(items), 1)
        hq = _quantise(hist, rows)
        for j in range(rows):
            it = items[j] if j < len(items) else None
            cols["request_id"].append(str(r.get("request_id")))
            cols["user_id"].append(None if r.get("user_id") is None else str(r.get("user_id")))
            cols["model"].append(str(r.get("model")))
            cols["arm"].append(r.get("arm") or "")
            cols["ts"].append(r.get("ts"))
            cols["first"].append(int(j == 0))
            cols["rank"].append(j + 1 if it else 0)
            cols["item_id"].append(str(it["item_id"]) if it else None)
            cols["category"].append(cats[j] if it else None)
            cols["interest"].append(interests[j] if it else np.nan)
            cols["score"].append(float(it.get("score", np.nan)) if it else np.nan)
            cols["history_category"].append(hq[j])
            for c in REQUEST_COLUMNS:
                cols[c].append(per[c] if j == 0 else np.nan)
    df = pd.DataFrame(cols)
    for c in REQUEST_COLUMNS + ["interest", "score"]:
        df[c] = df[c].astype(float)
    df["ts"] = pd.to_datetime(df["ts"], utc=True, format="ISO8601")
    return df


def requests_of(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["first"] == 1]


def n_requests(df: pd.DataFrame) -> int:
    return int((df["first"] == 1).sum())


def subsample_requests(df: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """Rows of `n` answers drawn without replacement (all when the frame has fewer)."""
    ids = df.loc[df["first"] == 1, "request_id"].to_numpy()
    if n >= len(ids):
        return df
    keep = np.random.default_rng(seed).choice(ids, size=n, replace=False)
    return df[df["request_id"].isin(set(keep))]


def coverage(df: pd.DataFrame, catalogue_size: int) -> float:
    return float(df["item_id"].dropna().nunique() / max(catalogue_size, 1))


def exposure_gini(df: pd.DataFrame, catalogue_size: int) -> float:
    counts = df["item_id"].dropna().value_counts().to_numpy(dtype=float)
    n = max(catalogue_size, len(counts))
    x = np.zeros(n)
    x[: len(counts)] = counts
    if x.sum() == 0:
        return float("nan")
    x.sort()
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * x).sum() / (n * x.sum()))


def dead_interests(df: pd.DataFrame) -> tuple[int, int]:
    """-> (dead, K): interest slots 0..K-1 that supplied no served item in the frame; K = most common k."""
    ks = requests_of(df)["k"]
    ks = ks[ks > 0]
    if ks.empty:
        return 0, 0
    k = int(ks.mode().iloc[0])
    used = set(int(i) for i in df["interest"].dropna().unique() if 0 <= i < k)
    return k - len(used), k


def mean_of(df: pd.DataFrame, column: str) -> float:
    v = requests_of(df)[column].dropna()
    return float(v.mean()) if len(v) else float("nan")


def summarise(df: pd.DataFrame, catalogue_size: int) -> dict:
    """The window measures (the numbers exported to Prometheus and alerts.json)."""
    dead, k = dead_interests(df)
    cat = df["category"].dropna().value_counts(normalize=True)
    return {
        "window_requests": n_requests(df),
        "mean_pairwise_cos": mean_of(df, "mean_pairwise_cos"),
        "effective_interests": mean_of(df, "effective_interests"),
        "single_interest_share": mean_of(df, "single_interest"),
        "dead_interests": dead,
        "k": k,
        "ild": mean_of(df, "ild"),
        "list_categories": mean_of(df, "list_categories"),
        "coverage": coverage(df, catalogue_size),
        "exposure_gini": exposure_gini(df, catalogue_size),
        "history_len": mean_of(df, "history_len"),
        "fallback_rate": mean_of(df, "fallback"),
        "unknown_item_rate": mean_of(df, "unknown_item_rate"),
        "under_delivered_rate": mean_of(df, "under_delivered"),
        "served_category_share": {str(k_): round(float(v), 5) for k_, v in cat.items()},
    }


def under_delivered_top(records: list[dict], item_category: dict[str, str] | None, strong_share: float,
                        min_ratio: float, top_n: int) -> list[dict]:
    """Trinity report: categories strong in users' histories but rarely served, most affected users first."""
    item_category = item_category or {}
    strong, under, hs_sum, ss_sum = Counter(), Counter(), Counter(), Counter()
    for r in records:
        if hasattr(r, "model_dump"):
            r = r.model_dump(mode="json")
        cats = [it.get("category") or item_category.get(str(it["item_id"]), UNKNOWN_CATEGORY)
                for it in r.get("items") or []]
        for c, hs, ss, u in under_delivered_pairs(r.get("history_categories") or {}, cats, strong_share, min_ratio):
            strong[c] += 1
            under[c] += int(u)
            hs_sum[c] += hs
            ss_sum[c] += ss
    rows = [{"category": c, "users_strong": strong[c], "users_under_delivered": under[c],
             "under_delivered_share": round(under[c] / strong[c], 4),
             "mean_history_share": round(hs_sum[c] / strong[c], 4), "mean_served_share": round(ss_sum[c] / strong[c], 4)}
            for c in strong if under[c]]
    rows.sort(key=lambda x: (-x["users_under_delivered"], -x["under_delivered_share"], x["category"]))
    return rows[:top_n]
