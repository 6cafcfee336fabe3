"""Per-user outcome metrics of each arm, per day and cumulated up to each day.

Every metric is a ratio of per-user sums (num_u, den_u) so that the statistics can work over users
(`mirec.ab.stats.ratio_estimate`):

| metric | num_u | den_u |
|---|---|---|
| ctr (CTR@n) | the user's answers with a click at a position < n | the user's answers |
| click_rate | 1 if the user clicked anything served | 1 |
| clicks_per_user | clicks on served answers | 1 |
| purchase_rate | 1 if the user purchased anything | 1 |
| purchases_per_user | purchases | 1 |
| next_hit_rate | 1 if the user's first click (after being served) was on an item of the answer it follows | 1 if the user clicked |
| clicked_diversity | share of pairs of the user's clicked items in different categories | 1 if >= 2 clicks |
| clicked_novelty | sum over clicks of -log2(item's share of all served impressions) | clicks |

Events count for the arm of the answer they were joined to (`mirec.ab.join`); unmatched events are counted in the
report's data section only. Days are UTC days since the first served answer (day 0).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mirec.ab.config import ABConfig

DAY = pd.Timedelta(days=1)


def day_index(ts: pd.Series, start: pd.Timestamp) -> np.ndarray:
    return ((ts.dt.floor("D") - start.floor("D")) // DAY).to_numpy().astype(np.int64)


class _Columns:
    """Columns of `frame` restricted to `mask`, as numpy arrays, without copying the frame."""

    def __init__(self, frame: pd.DataFrame, mask: np.ndarray):
        self.frame, self.mask = frame, mask

    def get(self, name: str, dtype) -> np.ndarray:
        return self.frame[name].to_numpy(dtype=dtype)[self.mask]


class UserFrames:
    """Per-event arrays keyed by an integer (arm, user) code; `users()` sums them over a day range with bincount
    (vectorised: a daily look over 10^6 events takes well under a second)."""

    def __init__(self, served: pd.DataFrame, joined: pd.DataFrame, cfg: ABConfig):
        """`served`: the served table (rows as `joined.served_row` counts them); `joined`: `mirec.ab.join`'s table."""
        self.start = served["ts"].min()
        self.n_days = int(day_index(served["ts"], self.start).max()) + 1 if len(served) else 0
        ukey, uniques = pd.MultiIndex.from_arrays([served["arm"].astype(str), served["user_id"].astype(str)]).factorize()
        self.n_keys = len(uniques)
        self.key_arm = np.asarray(uniques.get_level_values(0), dtype=object)
        self.key_user = np.asarray(uniques.get_level_values(1), dtype=object)
        self.s_key = ukey.astype(np.int64)
        self.s_day = day_index(served["ts"], self.start)
        self.s_fb = served["fallback"].notna().to_numpy().astype(np.float64)
        self.latency = ServiceArrays(served["arm"].to_numpy(dtype=object), self.s_day,
                                     served["latency_ms"].to_numpy(float), self.s_fb)
        ev_row_all = joined["served_row"].to_numpy(np.int64)
        kind_all = joined["type"].to_numpy(dtype=object)
        matched = ev_row_all >= 0
        ev_row = ev_row_all[matched]
        ev_ts = joined["ts"].values[matched]
        start64 = np.datetime64(self.start.floor("D").tz_convert(None)) if len(served) else np.datetime64(0, "ns")
        ev_day = np.maximum((ev_ts - start64) // np.timedelta64(1, "D"), 0).astype(np.int64)
        kind = kind_all[matched]
        is_click = kind == "click"
        order = np.argsort(ev_ts[is_click], kind="stable")  # clicks by time: first click per user
        ev = _Columns(joined, matched)
        c_row = ev_row[is_click][order]
        self.c_key = self.s_key[c_row] if len(c_row) else np.empty(0, np.int64)
        self.c_day = ev_day[is_click][order]
        self.c_row = c_row
        # novelty: how rarely the experiment served the item (an item never served counts as the rarest served one)
        share = ev.get("item_share", float)[is_click][order]
        floor = np.nanmin(share) if np.isfinite(share).any() else 1.0
        self.c_nov = -np.log2(np.where(np.isfinite(share), share, floor))
        pos = joined["position"].to_numpy(dtype="float64", na_value=np.nan)[matched][is_click][order]
        self.c_top = ~np.isnan(pos) & (pos < cfg.ctr_top_n)
        self.c_hit = ev.get("in_list", bool)[is_click][order]
        cats = pd.Series(ev.get("category", object)[is_click][order]).fillna("<unknown>")
        self.c_cat, cat_uniques = pd.factorize(cats)
        self.n_cats = max(len(cat_uniques), 1)
        is_purchase = kind == "purchase"
        p_row = ev_row[is_purchase]
        self.p_key = self.s_key[p_row] if len(p_row) else np.empty(0, np.int64)
        self.p_day = ev_day[is_purchase]

    @staticmethod
    def _mask(day: np.ndarray, until_day: int | None, only_day: int | None) -> np.ndarray:
        if only_day is not None:
            return day == only_day
        return np.ones(len(day), bool) if until_day is None else day <= until_day

    def users(self, until_day: int | None = None, only_day: int | None = None) -> pd.DataFrame:
        """One row per (arm, user) served in the window, with each metric's num/den over days <= until_day (or the
        day only_day alone)."""
        U = self.n_keys
        m = self._mask(self.s_day, until_day, only_day)
        requests = np.bincount(self.s_key[m], minlength=U)
        fallbacks = np.bincount(self.s_key[m], weights=self.s_fb[m], minlength=U)
        cm = self._mask(self.c_day, until_day, only_day)
        ck = self.c_key[cm]
        clicks = np.bincount(ck, minlength=U).astype(float)
        novelty = np.bincount(ck, weights=self.c_nov[cm], minlength=U)
        # answers with a click in the top n: one per answer (the first such click)
        top_rows, top_first = np.unique(self.c_row[cm][self.c_top[cm]], return_index=True)
        clicked_requests = np.bincount(ck[self.c_top[cm]][top_first], minlength=U).astype(float)
        pm = self._mask(self.p_day, until_day, only_day)
        purchases = np.bincount(self.p_key[pm], minlength=U).astype(float)
        # clicked-category diversity: pairs of clicks in different categories / all pairs
        keys, counts = np.unique(ck * self.n_cats + self.c_cat[cm], return_counts=True)
        owner = keys // self.n_cats
        c = np.bincount(owner, weights=counts, minlength=U)
        sq = np.bincount(owner, weights=counts.astype(float) ** 2, minlength=U)
        pairs = c * (c - 1) / 2
        with np.errstate(invalid="ignore", divide="ignore"):
            ild = np.where(pairs > 0, (c * c - sq) / 2 / np.where(pairs > 0, pairs, 1), 0.0)
        # the first click (clicks are in time order): was it on an item of the answer it follows?
        first_keys, first_at = np.unique(ck, return_index=True)
        first_hit = np.zeros(U)
        first_hit[first_keys] = self.c_hit[cm][first_at]
        has_click = np.zeros(U)
        has_click[first_keys] = 1.0
        present = requests > 0
        return pd.DataFrame({"arm": self.key_arm[present], "user_id": self.key_user[present],
                             "requests": requests[present].astype(float), "fallbacks": fallbacks[present],
                             "clicks": clicks[present], "novelty": novelty[present],
                             "clicked_requests": clicked_requests[present], "purchases": purchases[present],
                             "ild": ild[present], "first_hit": first_hit[present], "has_click": has_click[present]})


def metric_columns(u: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """metric -> (num_u, den_u) arrays for the users in `u` (one arm)."""
    ones = np.ones(len(u))
    clicks = u["clicks"].to_numpy(float)
    return {
        "ctr": (u["clicked_requests"].to_numpy(float), u["requests"].to_numpy(float)),
        "click_rate": ((clicks > 0).astype(float), ones),
        "clicks_per_user": (clicks, ones),
        "purchase_rate": ((u["purchases"].to_numpy(float) > 0).astype(float), ones),
        "purchases_per_user": (u["purchases"].to_numpy(float), ones),
        "next_hit_rate": (u["first_hit"].to_numpy(float), u["has_click"].to_numpy(float)),
        "clicked_diversity": (u["ild"].to_numpy(float), (clicks >= 2).astype(float)),
        "clicked_novelty": (u["novelty"].to_numpy(float), clicks),
    }


class ServiceArrays:
    """Per-answer arm, day, latency and fallback flag (numpy), for the service figures and guardrails."""

    def __init__(self, arm: np.ndarray, day: np.ndarray, latency_ms: np.ndarray, fallback: np.ndarray):
        self.arm, self.day, self.latency_ms, self.fallback = arm, day, latency_ms, fallback
        self._by_arm = {a: self.arm == a for a in set(arm.tolist())}

    def select(self, arm: str, until_day: int | None, only_day: int | None) -> np.ndarray:
        m = self._by_arm.get(arm, np.zeros(len(self.arm), bool))
        if only_day is not None:
            return m & (self.day == only_day)
        return m if until_day is None else m & (self.day <= until_day)


def quantile_ci(sorted_x: np.ndarray, q: float, alpha: float = 0.05) -> tuple[float, float]:
    """Distribution-free (1 - alpha) interval of the q-quantile from order statistics (binomial, scipy)."""
    from scipy import stats

    n = len(sorted_x)
    lo = int(stats.binom.ppf(alpha / 2, n, q))
    hi = int(stats.binom.ppf(1 - alpha / 2, n, q)) + 1
    return float(sorted_x[max(lo - 1, 0)]), float(sorted_x[min(hi - 1, n - 1)])


def service_stats(latency: ServiceArrays, arm: str, until_day: int | None = None,
                  only_day: int | None = None) -> dict:
    """Latency p50/p99 (ms, with the p99's 95% interval) and fallback rate of one arm's answers."""
    m = latency.select(arm, until_day, only_day)
    if not m.any():
        return {"latency_p50_ms": None, "latency_p99_ms": None, "latency_p99_ci": None, "fallback_rate": None,
                "answers": 0}
    lat = np.sort(latency.latency_ms[m])
    return {"latency_p50_ms": float(np.percentile(lat, 50)), "latency_p99_ms": float(np.percentile(lat, 99)),
            "latency_p99_ci": list(quantile_ci(lat, 0.99)), "fallback_rate": float(latency.fallback[m].mean()),
            "answers": int(m.sum())}
