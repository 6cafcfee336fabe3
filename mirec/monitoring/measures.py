"""Served answers (columns from `mirec.monitoring.logs`) -> per-answer and window measures, vectorised (numpy).

`Frame` holds one window (or the reference): `answers` (one row per answer, with the per-answer measures
below as columns) and parallel item arrays (one entry per served item: answer, item code, category code,
interest, rank) and history entries (answer, category code, count). Nothing loops in Python per answer
or per item; `Frame.take(rows)` subsets/bootstraps whole answers.

Per-answer measures (columns of `answers`)
- `ild`: category ILD = share of item pairs in the list with different categories (NaN below 2 items).
- `list_categories`: distinct categories in the list.
- `effective_interests`: exp(entropy of the `interest` that supplied each item) (fallback items, interest -1, excluded).
- `single_interest`: 1 when every model-supplied item of the list came from one interest (NaN below 2 such items).
- `mean_pairwise_cos`: from the log's interest_stats (cosine between the user's K interests).
- `under_delivered`: Trinity idea: share of the user's strong history categories (>= strong_share of
  the history) whose share of the served list is below min_delivery_ratio x their history share.
- `history_len`, `unknown_item_rate` = unknown / (history_len + unknown), `cold_start` (no known history item),
  `fallback`, `head_share` / `mean_log_pop` (history popularity, when the log carries it), `n` (requested),
  `diversity_set` (the request set `diversity`), `model_answer` (not a fallback).
Window measures: coverage (distinct served items / catalogue), exposure Gini over the whole catalogue
(unserved items count as 0), dead interests (slots 0..K-1 that supplied no item), category shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

UNKNOWN_CATEGORY = "(unknown)"
#: per-answer measure columns of Frame.answers
ANSWER_MEASURES = ["ild", "list_categories", "effective_interests", "single_interest", "mean_pairwise_cos", "k",
                   "history_len", "unknown_item_rate", "cold_start", "fallback", "under_delivered", "head_share",
                   "mean_log_pop", "n", "diversity_set", "model_answer"]


@dataclass
class Frame:
    answers: pd.DataFrame
    item_answer: np.ndarray      # int32, non-decreasing (items of one answer are contiguous, in rank order)
    item_code: np.ndarray        # int32: catalogue index; >= catalogue_size for items unknown to the catalogue
    item_category: np.ndarray    # int32 code into `categories` (-1 none)
    item_interest: np.ndarray    # int16 (-1 fallback)
    item_rank: np.ndarray        # int16, 1-based
    hist_answer: np.ndarray      # int32, non-decreasing
    hist_category: np.ndarray    # int32 code into `categories`
    hist_count: np.ndarray       # int32
    categories: list[str]
    catalogue_size: int
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.answers)

    @property
    def n_answers(self) -> int:
        return len(self.answers)

    # ---- selection ---------------------------------------------------------------------------------------
    def take(self, rows: np.ndarray) -> "Frame":
        """The answers at positions `rows` (repeats allowed: a bootstrap sample), renumbered 0..len(rows)-1."""
        rows = np.asarray(rows, np.int64)
        A = self.n_answers
        i_idx = _gather(self.item_answer, A, rows)
        h_idx = _gather(self.hist_answer, A, rows)
        i_new = np.repeat(np.arange(len(rows), dtype=np.int32), _counts(self.item_answer, A)[rows])
        h_new = np.repeat(np.arange(len(rows), dtype=np.int32), _counts(self.hist_answer, A)[rows])
        return Frame(self.answers.iloc[rows].reset_index(drop=True), i_new, self.item_code[i_idx],
                     self.item_category[i_idx], self.item_interest[i_idx], self.item_rank[i_idx], h_new,
                     self.hist_category[h_idx], self.hist_count[h_idx], self.categories, self.catalogue_size,
                     self.extra)

    def where(self, mask: np.ndarray) -> "Frame":
        mask = np.asarray(mask, bool)
        return self if mask.all() else self.take(np.flatnonzero(mask))

    def subsample(self, n: int, seed: int = 0, replace: bool = False) -> "Frame":
        if not replace and n >= self.n_answers:
            return self
        rng = np.random.default_rng(seed)
        return self.take(rng.choice(self.n_answers, size=n, replace=replace))

    def with_categories(self, categories: list[str]) -> "Frame":
        """The same frame with its category codes mapped onto `categories` (extended by unseen names)."""
        if categories == self.categories:
            return self
        names = list(categories)
        pos = {c: i for i, c in enumerate(names)}
        for c in self.categories:
            if c not in pos:
                pos[c] = len(names)
                names.append(c)
        lut = np.array([pos[c] for c in self.categories] + [-1], np.int32)  # index -1 -> -1
        return Frame(self.answers, self.item_answer, self.item_code, lut[self.item_category], self.item_interest,
                     self.item_rank, self.hist_answer, lut[self.hist_category], self.hist_count, names,
                     self.catalogue_size, self.extra)


def _counts(owner: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(owner, minlength=n)[:n] if len(owner) else np.zeros(n, np.int64)


def _gather(owner: np.ndarray, n: int, rows: np.ndarray) -> np.ndarray:
    """Positions of the entries of answers `rows` (in that order) in an array grouped by answer."""
    cnt = _counts(owner, n)
    start = np.concatenate([[0], np.cumsum(cnt)[:-1]]) if n else np.zeros(0, np.int64)
    c = cnt[rows]
    total = int(c.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offs = np.repeat(start[rows] - np.concatenate([[0], np.cumsum(c)[:-1]]), c)
    return offs + np.arange(total)


# ---- building a frame -------------------------------------------------------------------------------------
def build_frame(data, catalogue: pd.DataFrame | None = None, *, strong_share: float = 0.2,
                min_delivery_ratio: float = 0.25) -> Frame:
    """`mirec.monitoring.logs.LogData` (+ the catalogue: item_id, category) -> Frame with per-answer measures."""
    cats = list(data.categories)
    cat_pos = {c: i for i, c in enumerate(cats)}
    item_category = np.asarray(data.item_category, np.int32)  # filled in place below (the LogData's array)
    if data.catalogue_size:  # read with the catalogue: codes are catalogue positions already
        size = int(data.catalogue_size)
        item_code = np.asarray(data.item_id, np.int32)
        if catalogue is not None and len(catalogue) != size:
            raise ValueError(f"the log was read with a catalogue of {size} items, the frame is built with {len(catalogue)}")
    elif catalogue is not None and len(catalogue):
        cat_ids = pd.Index(catalogue["item_id"].astype(str))
        code_of = cat_ids.get_indexer(pd.Index(np.asarray(data.item_ids, dtype=object).astype(str))) \
            if len(data.item_ids) else np.zeros(0, np.int64)
        size = len(cat_ids)
        unknown = code_of < 0
        code_of = np.where(unknown, size + np.cumsum(unknown) - 1, code_of).astype(np.int32)
        item_code = code_of[data.item_id] if len(data.item_id) else np.zeros(0, np.int32)
    else:
        size = len(data.item_ids)
        item_code = np.asarray(data.item_id, np.int32)
    missing = item_category < 0
    if missing.any() and catalogue is not None and len(catalogue):
        # items without a logged category: the catalogue's
        ccat = catalogue["category"].astype(object).where(catalogue["category"].notna(), UNKNOWN_CATEGORY).astype(str)
        for c in pd.unique(ccat):
            if c not in cat_pos:
                cat_pos[c] = len(cats)
                cats.append(c)
        lut = np.array([cat_pos[c] for c in ccat], np.int32)
        known = missing & (item_code < size)
        item_category[known] = lut[item_code[known]]
    if (item_category < 0).any():
        if UNKNOWN_CATEGORY not in cat_pos:
            cat_pos[UNKNOWN_CATEGORY] = len(cats)
            cats.append(UNKNOWN_CATEGORY)
        item_category[item_category < 0] = cat_pos[UNKNOWN_CATEGORY]
    a = data.answers
    A = len(a)
    ans = pd.DataFrame({
        "model": a["model"].astype(str).to_numpy(), "arm": a["arm"].fillna("").astype(str).to_numpy(),
        "line": a["line"].to_numpy(np.float64) if "line" in a else np.full(A, np.nan),
        "version": a["version"].astype(str).to_numpy(), "ts_ms": a["ts_ms"].to_numpy(np.float64),
        "n": a["n"].to_numpy(np.float64), "diversity": a["diversity"].to_numpy(np.float64),
        "history_len": a["history_len"].to_numpy(np.float64), "unknown_items": a["unknown_items"].to_numpy(np.float64),
        "fallback": a["fallback"].astype(bool).to_numpy().astype(np.float64),
        "k": a["k"].to_numpy(np.float64), "mean_pairwise_cos": a["mean_pairwise_cos"].to_numpy(np.float64),
        "n_items": a["n_items"].to_numpy(np.float64),
        "head_share": a["head_share"].to_numpy(np.float64), "mean_log_pop": a["mean_log_pop"].to_numpy(np.float64),
    })
    f = Frame(ans, np.asarray(data.item_answer, np.int32), np.asarray(item_code, np.int32), item_category,
              np.asarray(data.item_interest, np.int16), np.asarray(data.item_rank, np.int16),
              np.asarray(data.hist_answer, np.int32), np.asarray(data.hist_category, np.int32),
              np.asarray(data.hist_count, np.int32), cats, int(size))
    add_answer_measures(f, strong_share, min_delivery_ratio)
    return f


def _per_answer_pairs(owner: np.ndarray, key: np.ndarray, n_keys: int, A: int):
    """Unique (answer, key) pairs with counts -> (answer, key, count)."""
    if len(owner) == 0:
        z = np.zeros(0, np.int64)
        return z, z, z
    combo = owner.astype(np.int64) * n_keys + key.astype(np.int64)
    if A * n_keys <= (1 << 24):  # a dense count table is cheaper than sorting
        counts = np.bincount(combo, minlength=A * n_keys)
        u = np.flatnonzero(counts)
        c = counts[u]
    else:
        u, c = np.unique(combo, return_counts=True)
    return u // n_keys, u % n_keys, c


def add_answer_measures(f: Frame, strong_share: float = 0.2, min_delivery_ratio: float = 0.25) -> None:
    a = f.answers
    A = len(a)
    C = max(len(f.categories), 1)
    n = _counts(f.item_answer, A).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        # ILD and distinct categories
        pa_, pc_, cnt = _per_answer_pairs(f.item_answer, f.item_category, C, A)
        f.extra["served_pairs"] = (pa_, pc_, cnt)
        sq = np.bincount(pa_, weights=cnt.astype(np.float64) ** 2, minlength=A)[:A] if len(pa_) else np.zeros(A)
        a["ild"] = np.where(n >= 2, (n * n - sq) / (n * (n - 1)), np.nan)
        a["list_categories"] = np.where(n > 0, np.bincount(pa_, minlength=A)[:A] if len(pa_) else 0, np.nan)
        # effective interests / single interest (model-supplied items only)
        m = f.item_interest >= 0
        K = int(f.item_interest[m].max()) + 1 if m.any() else 1
        ia, _, ic = _per_answer_pairs(f.item_answer[m], f.item_interest[m], K, A)
        nm = _counts(f.item_answer[m], A).astype(np.float64)
        p = ic / nm[ia] if len(ia) else np.zeros(0)
        ent = np.bincount(ia, weights=-(p * np.log(p)), minlength=A)[:A] if len(ia) else np.zeros(A)
        distinct = np.bincount(ia, minlength=A)[:A] if len(ia) else np.zeros(A)
        a["effective_interests"] = np.where(nm > 0, np.exp(ent), np.nan)
        a["single_interest"] = np.where(nm >= 2, (distinct == 1).astype(float), np.nan)
        # history
        hl, unk = a["history_len"].to_numpy(), a["unknown_items"].to_numpy()
        a["unknown_item_rate"] = np.where(hl + unk > 0, unk / (hl + unk), 0.0)
        a["cold_start"] = (hl <= 0).astype(float)
        a["model_answer"] = 1.0 - a["fallback"].to_numpy()
        a["diversity_set"] = a["diversity"].notna().astype(float)
        # under-delivered strong history categories (Trinity)
        a["under_delivered"] = under_delivered_per_answer(f, strong_share, min_delivery_ratio)[0]
        f.extra.pop("served_pairs", None)


def under_delivered_per_answer(f: Frame, strong_share: float, min_ratio: float):
    """-> (per-answer share of strong categories under-delivered [A], strong-entry table (answer, category,
    history share, served share, under))."""
    A = f.n_answers
    C = max(len(f.categories), 1)
    ha, hc, hn = f.hist_answer.astype(np.int64), f.hist_category.astype(np.int64), f.hist_count.astype(np.float64)
    pos = hn > 0
    ha, hc, hn = ha[pos], hc[pos], hn[pos]
    if len(ha) == 0:
        return np.full(A, np.nan), (ha, hc, np.zeros(0), np.zeros(0), np.zeros(0, bool))
    tot = np.bincount(ha, weights=hn, minlength=A)[:A]
    hs = hn / tot[ha]
    strong = hs >= strong_share
    sa, sc, shs = ha[strong], hc[strong], hs[strong]
    n = _counts(f.item_answer, A).astype(np.float64)
    pa_, pc_, cnt = f.extra.get("served_pairs") or _per_answer_pairs(f.item_answer, f.item_category, C, A)
    keys = pa_ * C + pc_
    q = sa * C + sc
    j = np.searchsorted(keys, q)
    j = np.minimum(j, max(len(keys) - 1, 0))
    hit = (len(keys) > 0) & (keys[j] == q) if len(keys) else np.zeros(len(q), bool)
    served = np.where(hit, cnt[j] if len(keys) else 0, 0) / np.maximum(n[sa], 1)
    under = served < min_ratio * shs
    ns = np.bincount(sa, minlength=A)[:A]
    nu = np.bincount(sa, weights=under.astype(float), minlength=A)[:A]
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(ns > 0, nu / ns, np.nan)
    return rate, (sa, sc, shs, served, under)


def history_rows(f: Frame) -> np.ndarray:
    """[n items] history-category code per item row: each answer's history mix spread over that answer's item
    rows (largest remainder), so every answer weighs the same in the history-mix drift test (-1: no history)."""
    A = f.n_answers
    S = _counts(f.item_answer, A)
    out = np.full(len(f.item_answer), -1, np.int32)
    ha, hc, hn = f.hist_answer.astype(np.int64), f.hist_category, f.hist_count.astype(np.float64)
    pos = hn > 0
    ha, hc, hn = ha[pos], hc[pos], hn[pos]
    if len(ha) == 0:
        return out
    tot = np.bincount(ha, weights=hn, minlength=A)[:A]
    exact = hn / tot[ha] * S[ha]
    base = np.floor(exact + 1e-9).astype(np.int64)
    deficit = S - np.bincount(ha, weights=base, minlength=A)[:A].astype(np.int64)
    rem = exact - base
    order = np.lexsort((hc, -rem, ha))
    ha_o = ha[order]
    first = np.searchsorted(ha_o, ha_o)  # first position of each answer in the sorted order
    rank = np.arange(len(ha_o)) - first
    slots = base[order] + (rank < deficit[ha_o])
    start = np.concatenate([[0], np.cumsum(S)[:-1]])
    # positions: answer block start + running offset inside the block
    within = np.cumsum(slots) - slots
    block0 = within[first]
    dst0 = start[ha_o] + (within - block0)
    idx = np.repeat(dst0, slots) + (np.arange(int(slots.sum())) - np.repeat(np.cumsum(slots) - slots, slots))
    out[idx] = np.repeat(hc[order], slots)
    return out


# ---- window measures --------------------------------------------------------------------------------------
def mean_of(f: Frame, column: str) -> float:
    v = f.answers[column].to_numpy(np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else float("nan")


def coverage(f: Frame) -> float:
    return float(len(np.unique(f.item_code)) / max(f.catalogue_size, 1)) if len(f.item_code) else 0.0


def exposure_gini(f: Frame) -> float:
    if len(f.item_code) == 0:
        return float("nan")
    counts = np.bincount(f.item_code).astype(np.float64)
    n = max(f.catalogue_size, len(counts))
    x = np.zeros(n)
    x[: len(counts)] = counts
    x.sort()
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * x).sum() / (n * x.sum()))


def dead_interests(f: Frame) -> tuple[int, int]:
    """-> (dead, K): interest slots 0..K-1 that supplied no served item; K = most common k of model answers."""
    ks = f.answers["k"].to_numpy()
    ks = ks[(ks > 0) & ~np.isnan(ks)]
    if len(ks) == 0:
        return 0, 0
    vals, cnt = np.unique(ks, return_counts=True)
    k = int(vals[cnt.argmax()])
    used = np.unique(f.item_interest[(f.item_interest >= 0) & (f.item_interest < k)])
    return k - len(used), k


def category_shares(f: Frame, history: bool = False) -> pd.Series:
    """Share of served items (or, history=True, of the answers' equal-weight history mix) per category name."""
    if history:
        A = f.n_answers
        hn = f.hist_count.astype(np.float64)
        tot = np.bincount(f.hist_answer, weights=hn, minlength=A)[:A] if len(hn) else np.zeros(A)
        w = hn / np.maximum(tot[f.hist_answer], 1) if len(hn) else hn
        s = np.bincount(f.hist_category, weights=w, minlength=len(f.categories)) if len(hn) else np.zeros(len(f.categories))
    else:
        s = np.bincount(f.item_category, minlength=len(f.categories)).astype(float) if len(f.item_category) \
            else np.zeros(len(f.categories))
    total = s.sum()
    return pd.Series(s / total if total else s, index=f.categories[: len(s)] + [UNKNOWN_CATEGORY] * max(0, len(s) - len(f.categories)))


def summarise(f: Frame) -> dict:
    """The window measures (the numbers exported to Prometheus and alerts.json)."""
    dead, k = dead_interests(f)
    cat = category_shares(f).sort_values(ascending=False)
    return {
        "window_requests": f.n_answers,
        "mean_pairwise_cos": mean_of(f, "mean_pairwise_cos"),
        "effective_interests": mean_of(f, "effective_interests"),
        "single_interest_share": mean_of(f, "single_interest"),
        "dead_interests": dead, "k": k,
        "ild": mean_of(f, "ild"), "list_categories": mean_of(f, "list_categories"),
        "coverage": coverage(f), "exposure_gini": exposure_gini(f),
        "history_len": mean_of(f, "history_len"), "fallback_rate": mean_of(f, "fallback"),
        "unknown_item_rate": mean_of(f, "unknown_item_rate"), "cold_start_rate": mean_of(f, "cold_start"),
        "head_share": mean_of(f, "head_share"), "mean_log_pop": mean_of(f, "mean_log_pop"),
        "under_delivered_rate": mean_of(f, "under_delivered"),
        "diversity_set_share": mean_of(f, "diversity_set"), "mean_n": mean_of(f, "n"),
        "served_category_share": {str(k_): round(float(v), 5) for k_, v in cat.items() if v > 0},
    }


def under_delivered_top(f: Frame, strong_share: float, min_ratio: float, top_n: int) -> list[dict]:
    """Trinity report: categories strong in users' histories but rarely served, most affected users first."""
    _, (sa, sc, shs, served, under) = under_delivered_per_answer(f, strong_share, min_ratio)
    if len(sc) == 0:
        return []
    C = max(len(f.categories), int(sc.max()) + 1)
    strong = np.bincount(sc, minlength=C)
    und = np.bincount(sc, weights=under.astype(float), minlength=C)
    hs = np.bincount(sc, weights=shs, minlength=C)
    ss = np.bincount(sc, weights=served, minlength=C)
    rows = [{"category": f.categories[c] if c < len(f.categories) else UNKNOWN_CATEGORY,
             "users_strong": int(strong[c]), "users_under_delivered": int(und[c]),
             "under_delivered_share": round(und[c] / strong[c], 4), "mean_history_share": round(hs[c] / strong[c], 4),
             "mean_served_share": round(ss[c] / strong[c], 4)} for c in np.flatnonzero(und > 0)]
    rows.sort(key=lambda x: (-x["users_under_delivered"], -x["under_delivered_share"], x["category"]))
    return rows[:top_n]
