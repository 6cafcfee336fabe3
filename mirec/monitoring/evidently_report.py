"""The Evidently 0.7 reports of one window: built-in drift metrics + custom mirec measures, with tests.

Two Evidently datasets per (model, arm) group and its reference, because the units differ:
- **answers** (one row per answer): the per-answer measures of `mirec.monitoring.measures`; `ValueDrift`
  (normed Wasserstein) on interest cosine, ILD, history length and history popularity, `ValueDrift`
  (Jensen-Shannon) on the requested n; `MirecMeasure` (a custom `SingleValueMetric`) for window means/rates.
- **items** (one row per served item): served category and the answer's history-category mix (`ValueDrift`,
  Jensen-Shannon), Evidently's recsys `Personalization`, and `MirecMeasure` for catalogue coverage and
  exposure Gini at a matched number of answers and for dead interest slots.
Every test belongs to one alert check and has a direction: `alert` says which change fires ("lower",
"higher", "both"), and the wording of a failure says what happened ("served lists are more diverse: ...").
Limits are the configured rule widened to the sampling-noise band measured on the reference at the
window's size (`noise_band`, `null_drift_limit`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.core.datasets import Recsys
from evidently.core.metric_types import SingleValueCalculation, SingleValueMetric
from evidently.core.report import Context
from evidently.metrics import Personalization, ValueDrift
from evidently.tests import gte, lte

from mirec.monitoring import measures as M
from mirec.monitoring.config import Thresholds

#: Evidently stattests whose score is a p-value (drift when score < threshold); the others are distances.
P_VALUE_METHODS = {"ks", "chisquare", "z", "fisher_exact", "g_test", "mannw", "t_test", "cramer_von_mises",
                   "anderson", "epps_singleton", "empirical_mmd"}

ANSWER_NUMERIC = ["ild", "effective_interests", "single_interest", "mean_pairwise_cos", "history_len",
                  "unknown_item_rate", "cold_start", "fallback", "under_delivered", "head_share", "mean_log_pop",
                  "diversity_set"]
ANSWER_CATEGORICAL = ["n_cat"]
ITEM_CATEGORICAL = ["category", "history_category"]
#: each served list is one "user" of Evidently's recsys metrics (rank = position in the list; no relevance labels)
RANKING = Recsys(user_id="request", item_id="item_id", target="target", prediction="rank", recommendations_type="rank")

#: (phrase for a drop, phrase for a rise) per measure label: what happened, in the alert text
WORDS = {
    "mean_pairwise_cos": ("interests are less similar", "interests are more similar (collapsing)"),
    "cos_drift": ("interest cosines shifted down", "interest cosines shifted up (interests collapsing)"),
    "effective_interests": ("fewer interests supply the lists", "more interests supply the lists"),
    "single_interest_share": ("fewer lists come from a single interest", "more lists come from a single interest"),
    "dead_interest_share": ("fewer dead interest slots", "more interest slots supply nothing"),
    "ild": ("served lists are less diverse", "served lists are more diverse"),
    "ild_drift": ("served lists are less diverse", "served lists are more diverse"),
    "personalization": ("lists are more alike across users", "lists differ more across users"),
    "coverage": ("narrower: fewer distinct items served", "wider: more distinct items served"),
    "exposure_gini": ("exposure is spread more evenly", "exposure concentrated on fewer items"),
    "served_category_drift": ("the served-category mix changed", "the served-category mix changed"),
    "history_category_drift": ("the users' history-category mix changed", "the users' history-category mix changed"),
    "history_len_drift": ("shorter histories", "longer histories"),
    "head_share_drift": ("less popular histories", "more popular histories"),
    "mean_log_pop_drift": ("less popular histories", "more popular histories"),
    "head_share": ("less popular histories (fewer head items)", "more popular histories (more head items)"),
    "unknown_item_rate": ("fewer unknown history items", "more unknown items in the histories"),
    "cold_start_rate": ("fewer cold-start requests", "more cold-start requests (no known history item)"),
    "request_n_drift": ("the requested list length n changed", "the requested list length n changed"),
    "diversity_set_share": ("fewer requests set `diversity`", "more requests set `diversity`"),
    "fallback_rate": ("fewer fallback answers", "more fallback answers"),
    "under_delivered_rate": ("strong history categories are delivered better",
                             "strong history categories are under-delivered more often"),
}


class CheckError(Exception):
    """A check cannot be computed because a field it needs is missing from the window."""


@dataclass
class Spec:
    """One tested measure: its Evidently metric, limits, direction and how to word a failure."""

    check: str
    label: str
    title: str
    kind: str                    # "mean" | "window" | "drift" | "personalization"
    level: str                   # "answers" | "items"
    alert: str = "both"          # which change fires: lower | higher | both
    column: str | None = None    # dataset column (mean / drift)
    dir_column: str | None = None  # answers column whose mean gives a drift's direction
    lo: float | None = None
    hi: float | None = None
    reference: float | None = None
    info: dict = field(default_factory=dict)
    metric: object = None


# ---------------------------------------------------------------------------------------------- datasets
def answers_frame(f: M.Frame) -> pd.DataFrame:
    a = f.answers
    df = a[ANSWER_NUMERIC].astype(np.float64).copy()
    df["n_cat"] = pd.Categorical(a["n"].fillna(-1).astype(int).astype(str))
    return df


def items_frame(f: M.Frame) -> pd.DataFrame:
    cats = list(f.categories)
    hist = M.history_rows(f)
    return pd.DataFrame({
        "category": pd.Categorical.from_codes(f.item_category, categories=cats),
        "history_category": pd.Categorical.from_codes(hist, categories=cats),
        "item_id": f.item_code, "request": f.item_answer, "rank": f.item_rank.astype(np.int32),
        "interest": f.item_interest.astype(np.int32), "target": np.zeros(len(f.item_code), np.int8)})


def to_dataset(df: pd.DataFrame, level: str) -> Dataset:
    if level == "answers":
        dd = DataDefinition(numerical_columns=ANSWER_NUMERIC, categorical_columns=ANSWER_CATEGORICAL, text_columns=[])
    else:
        dd = DataDefinition(numerical_columns=["rank", "interest", "target"], categorical_columns=ITEM_CATEGORICAL,
                            text_columns=[], ranking=[RANKING])
    return Dataset.from_pandas(df, data_definition=dd)


# ---------------------------------------------------------------------------------------------- measures
def window_value(codes: np.ndarray, answer: np.ndarray, interest: np.ndarray, measure: str, params: dict) -> float:
    """coverage / exposure_gini at `match` answers (mean over `draws` random subsets; all answers when fewer),
    dead_interest_share over all answers. Arrays: one entry per served item."""
    size = int(params.get("catalogue_size", 1))
    if measure == "dead_interest_share":
        k = int(params.get("k", 0))
        if k <= 0:
            return 0.0
        used = np.unique(interest[(interest >= 0) & (interest < k)])
        return (k - len(used)) / k
    n_ans = int(answer.max()) + 1 if len(answer) else 0
    m = int(params.get("match") or n_ans)
    draws = int(params.get("draws", 5)) if m < n_ans else 1
    rng = np.random.default_rng(int(params.get("seed", 0)))
    vals = []
    for _ in range(draws):
        if m < n_ans:
            keep = np.zeros(n_ans, bool)
            keep[rng.choice(n_ans, size=m, replace=False)] = True
            c = codes[keep[answer]]
        else:
            c = codes
        vals.append(_coverage(c, size) if measure == "coverage" else _gini(c, size))
    return float(np.mean(vals))


def _coverage(codes: np.ndarray, size: int) -> float:
    return float(len(np.unique(codes)) / max(size, 1)) if len(codes) else 0.0


def _gini(codes: np.ndarray, size: int) -> float:
    if len(codes) == 0:
        return float("nan")
    counts = np.bincount(codes).astype(np.float64)
    n = max(size, len(counts))
    x = np.zeros(n)
    x[: len(counts)] = counts
    x.sort()
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * x).sum() / (n * x.sum()))


class MirecMeasure(SingleValueMetric):
    """One mirec window measure as an Evidently metric (current and reference value side by side).

    measure: an answers-dataset column (window mean over the answers that have it), or coverage /
    exposure_gini / dead_interest_share computed from the items dataset (params: catalogue_size, match =
    number of answers both sides are compared at, draws, seed, k)."""

    measure: str
    params: dict = {}
    title: str = ""


class MirecMeasureCalculation(SingleValueCalculation[MirecMeasure]):
    def _value(self, data: Dataset) -> float:
        df = data.as_dataframe()
        name = self.metric.measure
        if name in ("coverage", "exposure_gini", "dead_interest_share"):
            v = window_value(df["item_id"].to_numpy(), df["request"].to_numpy(), df["interest"].to_numpy(), name,
                             self.metric.params)
        else:
            col = df[self.metric.params.get("column", name)].to_numpy(np.float64)
            col = col[~np.isnan(col)]
            v = float(col.mean()) if len(col) else float("nan")
        return 0.0 if v is None or math.isnan(v) else float(v)

    def calculate(self, context: Context, current_data: Dataset, reference_data: Optional[Dataset]):
        cur = self.result(self._value(current_data))
        if reference_data is None:
            return cur
        return cur, self.result(self._value(reference_data))

    def display_name(self) -> str:
        return self.metric.title or self.metric.measure


# ---------------------------------------------------------------------------------------------- noise
_CACHE: dict = {}


def _cached(ref: M.Frame, key: tuple, fn):
    """Memoise a reference-only computation for this very reference frame (windows of one run, tests, benchmarks)."""
    import weakref

    full = (id(ref), ref.n_answers) + key
    hit = _CACHE.get(full)
    if hit is None or hit[0]() is not ref:  # ids of dead frames get reused
        if len(_CACHE) > 4096:
            _CACHE.clear()
        hit = (weakref.ref(ref), fn())
        _CACHE[full] = hit
    return hit[1]


def noise_band(ref_values: np.ndarray, n_cur: int, sigmas: float) -> float:
    """sigmas x standard error of (window mean - reference mean) under "same distribution" (CLT)."""
    v = ref_values[~np.isnan(ref_values)]
    if len(v) < 2 or n_cur <= 0:
        return 0.0
    return float(sigmas * v.std(ddof=1) * math.sqrt(1.0 / n_cur + 1.0 / len(v)))


def window_noise(ref: M.Frame, measure: str, m: int, draws: int, sigmas: float, seed: int = 0) -> tuple[float, float]:
    """-> (reference value at m answers, sigmas x std of the difference between two disjoint m-answer subsets)."""
    return _cached(ref, ("window_noise", measure, m, draws, sigmas, seed),
                   lambda: _window_noise(ref, measure, m, draws, sigmas, seed))


def _window_noise(ref: M.Frame, measure: str, m: int, draws: int, sigmas: float, seed: int) -> tuple[float, float]:
    N = ref.n_answers
    size = ref.catalogue_size
    rng = np.random.default_rng(seed)
    vals, diffs = [], []
    for _ in range(max(draws, 2)):
        perm = rng.permutation(N)
        a, b = perm[:m], perm[m: 2 * m]
        fa = ref.take(a).item_code
        va = _coverage(fa, size) if measure == "coverage" else _gini(fa, size)
        vals.append(va)
        if len(b) == m:
            fb = ref.take(b).item_code
            vb = _coverage(fb, size) if measure == "coverage" else _gini(fb, size)
            diffs.append(va - vb)
    return float(np.mean(vals)), float(sigmas * np.std(diffs)) if len(diffs) > 1 else 0.0


def null_drift_limit(ref: M.Frame, ref_col: pd.Series, level: str, method: str, n: int, *, draws: int,
                     sigmas: float, seed: int = 0) -> float:
    """Sampling-noise floor of a distance drift score for a window of `n` answers.

    Draws `draws` windows of n answers from the reference (with replacement, whole answers, so items of one
    list stay together), scores each against the full reference with the same Evidently stattest, and returns
    (mean + sigmas x std) x sqrt(1 + n/N_ref) (the window and the reference both carry sampling noise).
    0 for p-value methods (they already account for size)."""
    if method in P_VALUE_METHODS or draws <= 1 or n <= 0:
        return 0.0
    return _cached(ref, ("null", str(ref_col.name), level, method, n, draws, sigmas, seed),
                   lambda: _null_drift_limit(ref, ref_col, level, method, n, draws, sigmas, seed))


def _null_drift_limit(ref: M.Frame, ref_col: pd.Series, level: str, method: str, n: int, draws: int, sigmas: float,
                      seed: int) -> float:
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    categorical = isinstance(ref_col.dtype, pd.CategoricalDtype)
    ftype = ColumnType.Categorical if categorical else ColumnType.Numerical
    ref_clean = ref_col.dropna()
    if ref_clean.empty:
        return 0.0
    test = get_stattest(ref_clean, ref_clean, ftype, method)
    N = ref.n_answers
    values = ref_col.to_numpy() if not categorical else ref_col.cat.codes.to_numpy()
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(draws):
        pick = rng.integers(0, N, size=n)
        rows = pick if level == "answers" else M._gather(ref.item_answer, N, pick)
        v = values[rows]
        if categorical:
            s = pd.Series(pd.Categorical.from_codes(v, categories=ref_col.cat.categories)).dropna()
        else:
            s = pd.Series(v).dropna()
        if s.empty:
            continue
        scores.append(float(test(ref_clean, s, ftype, None).drift_score))
    if not scores:
        return 0.0
    return float((np.mean(scores) + sigmas * np.std(scores)) * np.sqrt(1 + n / max(N, 1)))


# ---------------------------------------------------------------------------------------------- plan
def _fin(x) -> float | None:
    return None if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))) else float(x)


def item_subset(cur: M.Frame, th: Thresholds, seed: int = 0) -> M.Frame:
    """The answers the item-level tests use (all, or a random `item_tests_max_answers` of them)."""
    return cur.subsample(th.item_tests_max_answers, seed=seed) if cur.n_answers > th.item_tests_max_answers else cur


def plan_report(cur: M.Frame, ref: M.Frame, th: Thresholds, *, seed: int = 0, cur_items: M.Frame | None = None
                ) -> tuple[list[Spec], dict, dict]:
    """-> (specs, skipped {check: {label: why}}, errors {check: message}) for one window vs its reference."""
    specs: list[Spec] = []
    skipped: dict[str, dict] = {}
    errors: dict[str, str] = {}
    n = cur.n_answers
    cur_items = cur_items if cur_items is not None else item_subset(cur, th, seed)
    n_items = cur_items.n_answers
    ca, ra = cur.answers, ref.answers
    sig = th.noise_sigmas

    def col(frame, c):
        return frame.answers[c].to_numpy(np.float64)

    def count(frame, c):
        return int(np.count_nonzero(~np.isnan(col(frame, c))))

    def mean_spec(check, label, column, title, *, lo=None, hi=None, alert, band_col=None):
        r = M.mean_of(ref, column)
        specs.append(Spec(check, label, title, "mean", "answers", alert, column=column, lo=lo, hi=hi,
                          reference=r, info={"noise_band": round(noise_band(col(ref, band_col or column),
                                                                           count(cur, column), sig), 6)}))

    def band(column):
        return noise_band(col(ref, column), count(cur, column), sig)

    def drift_spec(check, label, column, level, method, configured, title, *, alert="both", dir_column=None,
                   ref_col=None):
        floor = null_drift_limit(ref, ref_col, level, method, n if level == "answers" else n_items, draws=th.drift_null_draws,
                                 sigmas=th.drift_null_sigmas, seed=seed)
        p_value = method in P_VALUE_METHODS
        limit = configured if p_value else max(configured, floor)
        specs.append(Spec(check, label, title, "drift", level, alert, column=column, dir_column=dir_column,
                          lo=limit if p_value else None, hi=None if p_value else limit,
                          info={"method": method, "configured": configured, "noise_floor": round(floor, 6),
                                "op": "gte" if p_value else "lte"}))

    af_ref, if_ref = answers_frame(ref), items_frame(ref)
    c, d, cd, i, fb, u = (th.interest_collapse, th.diversity_drift, th.category_drift, th.input_drift,
                          th.fallback_rate, th.under_delivered)

    # ---- interest collapse (multi-interest models only)
    ref_k = M.dead_interests(ref)[1]
    model_cur = ca["fallback"].to_numpy() == 0
    if ref_k > 1 and model_cur.any():
        has_stats = (ca["k"].to_numpy() > 0) & ~np.isnan(ca["mean_pairwise_cos"].to_numpy())
        if not has_stats[model_cur].any():
            errors["interest_collapse"] = (f"the window's {int(model_cur.sum())} model answers carry no interest_stats "
                                           f"(k = 0 / mean_pairwise_cos null) while the reference has K = {ref_k}: the "
                                           "collapse check cannot run (is the handler writing interest_stats?)")
        else:
            r = M.mean_of(ref, "mean_pairwise_cos")
            mean_spec("interest_collapse", "mean_pairwise_cos", "mean_pairwise_cos", "Mean pairwise cosine of interests",
                      hi=min(c.max_mean_pairwise_cos, r + max(c.max_cos_increase, band("mean_pairwise_cos"))),
                      alert="higher")
            drift_spec("interest_collapse", "cos_drift", "mean_pairwise_cos", "answers", c.cos_drift_method,
                       c.cos_drift_threshold, "Interest-cosine distribution drift", alert="higher",
                       dir_column="mean_pairwise_cos", ref_col=af_ref["mean_pairwise_cos"])
            r = M.mean_of(ref, "effective_interests")
            mean_spec("interest_collapse", "effective_interests", "effective_interests", "Effective number of interests",
                      lo=min(r * c.min_effective_interests_ratio, r - band("effective_interests")), alert="lower")
            r = M.mean_of(ref, "single_interest")
            mean_spec("interest_collapse", "single_interest_share", "single_interest", "Single-interest answers share",
                      hi=min(1.0, r + max(c.max_single_interest_share_increase, band("single_interest"))),
                      alert="higher")
            specs.append(Spec("interest_collapse", "dead_interest_share", "Dead interests share", "window", "items",
                              "higher", hi=c.max_dead_interest_share, reference=M.dead_interests(ref)[0] / ref_k,
                              info={"params": {"k": ref_k}}))
    elif ref_k <= 1:
        skipped["interest_collapse"] = {"all": "single-interest model (reference K <= 1)"}
    else:
        skipped["interest_collapse"] = {"all": "no model answers in the window (all fallback)"}

    # ---- diversity
    def two_sided(check, label, column, title, tol, sides):
        r = M.mean_of(ref, column)
        b = band(column)
        lo = min(r * (1 - tol), r - b) if sides in ("both", "lower") else None
        hi = max(r * (1 + tol), r + b) if sides in ("both", "higher") else None
        mean_spec(check, label, column, title, lo=lo, hi=hi, alert=sides)

    two_sided("diversity_drift", "ild", "ild", "ILD (category)", d.ild_tolerance, d.ild_sides)
    drift_spec("diversity_drift", "ild_drift", "ild", "answers", "wasserstein", d.ild_drift_threshold, "ILD drift",
               alert=d.ild_sides, dir_column="ild", ref_col=af_ref["ild"])
    k_list = int(max(1, cur_items.item_rank.max() if len(cur_items.item_rank) else 1))
    pers_ref = _cached(ref, ("personalization", k_list), lambda: personalization(if_ref, k_list))
    specs.append(Spec("diversity_drift", "personalization", "Personalization (Evidently)", "personalization", "items",
                      "lower", lo=pers_ref * d.min_personalization_ratio, reference=pers_ref,
                      info={"metric": "evidently Personalization (built-in)", "k": k_list}))
    m = int(min(n_items, max(ref.n_answers // 2, 1)))
    for name, title in (("coverage", "Catalogue coverage"), ("exposure_gini", "Exposure Gini")):
        r_m, b = window_noise(ref, name, m, 10, sig, seed)
        if name == "coverage":
            lo = min(r_m * (1 - d.coverage_tolerance), r_m - b) if d.coverage_sides in ("both", "lower") else None
            hi = max(r_m * (1 + d.coverage_tolerance), r_m + b) if d.coverage_sides in ("both", "higher") else None
            alert = d.coverage_sides
        else:
            lo, hi, alert = None, min(1.0, r_m + max(d.max_gini_headroom_share * (1 - r_m), b)), "higher"
        specs.append(Spec("diversity_drift", name, title, "window", "items", alert, lo=lo, hi=hi, reference=r_m,
                          info={"match_answers": m, "noise_band": round(b, 6),
                                "params": {"match": m, "draws": 5, "seed": seed}}))

    # ---- category drift
    drift_spec("category_drift", "served_category_drift", "category", "items", cd.method, cd.threshold,
               "Served category drift", ref_col=if_ref["category"])

    # ---- input drift
    hist_ok_ref = len(ref.hist_answer) > 0
    cur_hist_needed = (ca["history_len"].to_numpy() > 0)
    if hist_ok_ref:
        if cur_hist_needed.any() and len(cur.hist_answer) == 0:
            errors["input_drift"] = ("the window's answers carry no history_categories although their histories are "
                                     "not empty: the history-mix test cannot run")
        else:
            drift_spec("input_drift", "history_category_drift", "history_category", "items", i.category_method,
                       i.category_threshold, "History category drift", ref_col=if_ref["history_category"])
    else:
        skipped.setdefault("input_drift", {})["history_category_drift"] = "the reference has no history categories"
    drift_spec("input_drift", "history_len_drift", "history_len", "answers", i.history_len_method,
               i.history_len_threshold, "History length drift", dir_column="history_len", ref_col=af_ref["history_len"])
    pop_ref = count(ref, "head_share") > 0
    pop_cur = count(cur, "head_share") > 0
    if pop_ref and pop_cur:
        for colname in ("head_share", "mean_log_pop"):
            drift_spec("input_drift", f"{colname}_drift", colname, "answers", i.popularity_method,
                       i.popularity_threshold, f"History popularity drift ({colname})", dir_column=colname,
                       ref_col=af_ref[colname])
        r = M.mean_of(ref, "head_share")
        b = max(i.max_head_share_change, band("head_share"))
        mean_spec("input_drift", "head_share", "head_share", "History head-item share", lo=r - b, hi=r + b, alert="both")
    elif pop_ref and not pop_cur:
        why = ("the window's lines carry no history_popularity (the serving code must write it: "
               "mirec.monitoring.popularity.history_popularity)")
        if i.require_history_popularity:
            errors["input_drift"] = why
        else:
            skipped.setdefault("input_drift", {})["history_popularity"] = "not tested: " + why
    else:
        skipped.setdefault("input_drift", {})["history_popularity"] = "not tested: the reference carries no history_popularity"
    for label, column, title, inc in (("unknown_item_rate", "unknown_item_rate", "Unknown-item rate",
                                       i.max_unknown_item_rate_increase),
                                      ("cold_start_rate", "cold_start", "Cold-start rate", i.max_cold_start_rate_increase)):
        r = M.mean_of(ref, column)
        mean_spec("input_drift", label, column, title, hi=min(1.0, r + max(inc, band(column))), alert="higher")
    drift_spec("input_drift", "request_n_drift", "n_cat", "answers", i.request_n_method, i.request_n_threshold,
               "Requested n drift", ref_col=af_ref["n_cat"])
    r = M.mean_of(ref, "diversity_set")
    b = max(i.max_diversity_set_share_change, band("diversity_set"))
    mean_spec("input_drift", "diversity_set_share", "diversity_set", "Share of requests setting diversity",
              lo=r - b, hi=r + b, alert="both")

    # ---- fallback, under-delivery
    r = M.mean_of(ref, "fallback")
    mean_spec("fallback_rate", "fallback_rate", "fallback", "Fallback answers share",
              hi=min(fb.max_rate, r + max(fb.max_increase, band("fallback"))), alert="higher")
    if count(ref, "under_delivered") > 0:
        r = M.mean_of(ref, "under_delivered")
        mean_spec("under_delivered", "under_delivered_rate", "under_delivered", "Under-delivered strong categories share",
                  hi=min(1.0, r + max(u.max_rate_increase, band("under_delivered"))), alert="higher")
    else:
        skipped["under_delivered"] = {"under_delivered_rate": "the reference has no history categories"}
    for s in specs:
        if s.reference is None and s.dir_column:
            s.reference = M.mean_of(ref, s.dir_column)
    return specs, skipped, errors


def personalization(items: pd.DataFrame, k: int) -> float:
    """Evidently's built-in `Personalization` (1 - mean overlap between served lists) of one items frame."""
    snap = Report([Personalization(k=k, tests=[])]).run(to_dataset(items, "items"), None)
    return float(json.loads(snap.json())["metrics"][0]["value"])


def _metric(s: Spec, catalogue_size: int):
    tests = []
    if s.lo is not None:
        tests.append(gte(s.lo))
    if s.hi is not None:
        tests.append(lte(s.hi))
    if s.kind == "drift":
        return ValueDrift(column=s.column, method=s.info["method"], threshold=s.hi if s.hi is not None else s.lo,
                          tests=tests)
    if s.kind == "personalization":
        return Personalization(k=s.info["k"], tests=tests)
    params = {"catalogue_size": catalogue_size, **s.info.get("params", {})}
    if s.kind == "mean":
        params["column"] = s.column
    return MirecMeasure(measure=s.label if s.kind == "window" else s.column, params=params, title=s.title, tests=tests)


@dataclass
class GroupReport:
    snapshots: dict                 # level -> Evidently snapshot
    specs: list[Spec]
    results: dict                   # label -> {"status", "value", "direction", "message", "tests": [...]}
    skipped: dict
    errors: dict


def run_report(cur: M.Frame, ref: M.Frame, th: Thresholds, *, name: str = "mirec monitor",
               metadata: dict | None = None) -> GroupReport:
    cur_items = item_subset(cur, th)
    specs, skipped, errors = plan_report(cur, ref, th, cur_items=cur_items)
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    snaps, owner = {}, {}
    frames = {"answers": (answers_frame(cur), answers_frame(ref)), "items": (items_frame(cur_items), items_frame(ref))}
    for level in ("answers", "items"):
        lv = [s for s in specs if s.level == level]
        for s in lv:
            s.metric = _metric(s, cur.catalogue_size)
            owner[s.metric.get_fingerprint()] = s
        c_df, r_df = frames[level]
        snaps[level] = Report([s.metric for s in lv], metadata={**meta, "dataset": level}).run(
            to_dataset(c_df, level), to_dataset(r_df, level), name=f"{name} ({level})")
    results = evaluate_tests(snaps, owner, cur, ref, cur_items)
    return GroupReport(snaps, specs, results, skipped, errors)


def _direction(s: Spec, value: float | None, cur: M.Frame, ref: M.Frame) -> tuple[str, float | None, float | None]:
    """-> ("lower" | "higher" | "changed", current, reference) of a spec's measure."""
    if s.kind == "drift":
        if s.dir_column:
            cv, rv = M.mean_of(cur, s.dir_column), M.mean_of(ref, s.dir_column)
            return ("higher" if cv > rv else "lower"), cv, rv
        return "changed", value, None
    rv = s.reference
    if value is None or rv is None:
        return "changed", value, rv
    return ("higher" if value > rv else "lower"), value, rv


def _mix_change(cur: M.Frame, ref: M.Frame, history: bool, top: int = 3) -> tuple[str, float]:
    """Top category share changes and the total variation distance between the two mixes."""
    cs = M.category_shares(cur, history=history)
    rs = M.category_shares(ref, history=history)
    cs = cs.groupby(level=0).sum()
    rs = rs.groupby(level=0).sum()
    keys = cs.index.union(rs.index)
    cs, rs = cs.reindex(keys, fill_value=0.0), rs.reindex(keys, fill_value=0.0)
    delta = (cs - rs)
    tv = float(delta.abs().sum() / 2)
    order = delta.abs().sort_values(ascending=False).index[:top]
    parts = [f"{k} {cs[k]:.1%} (reference {rs[k]:.1%})" for k in order if abs(delta[k]) > 0]
    return ", ".join(parts), tv


def evaluate_tests(snaps: dict, owner: dict, cur: M.Frame, ref: M.Frame, cur_items: M.Frame | None = None) -> dict:
    cur_items = cur_items if cur_items is not None else cur
    values = {}
    for snap in snaps.values():
        for m in json.loads(snap.json())["metrics"]:
            if m["id"] in owner:
                v = m.get("value")
                values[m["id"]] = float(v) if isinstance(v, (int, float)) else None
    out: dict[str, dict] = {}
    for snap in snaps.values():
        for tr in snap.tests_results:
            s = owner.get(tr.metric_config.metric_id)
            if s is None:
                continue
            status = tr.status.value if hasattr(tr.status, "value") else str(tr.status)
            e = out.setdefault(s.label, {"check": s.check, "spec": s, "tests": [], "status": "SUCCESS",
                                         "value": values.get(tr.metric_config.metric_id)})
            e["tests"].append({"status": status, "name": tr.name, "description": tr.description})
            if status == "FAIL":
                e["status"] = "FAIL"
    for label, e in out.items():
        s: Spec = e["spec"]
        direction, cv, rv = _direction(s, e["value"], cur, ref)
        e["direction"] = direction
        alerting = e["status"] == "FAIL" and (s.alert == "both" or direction in (s.alert, "changed"))
        e["firing"] = alerting
        if e["status"] != "FAIL":
            e["message"] = None
            continue
        lower, higher = WORDS.get(label, ("decreased", "increased"))
        phrase = lower if direction == "lower" else higher
        v = e["value"]
        if s.kind == "drift":
            limit = s.hi if s.hi is not None else s.lo
            extra = ""
            if s.column in ("category", "history_category"):
                parts, tv = _mix_change(cur_items, ref, history=s.column == "history_category")
                extra = f"; total variation {tv:.3f}; {parts}"
            elif cv is not None and rv is not None:
                extra = f"; mean {cv:.3g} vs {rv:.3g} in the reference"
            msg = f"{phrase}: {s.title} {s.info['method']} {v:.3g} {'<' if s.info['op'] == 'gte' else '>'} limit {limit:.3g}{extra}"
        else:
            bound = s.lo if direction == "lower" and s.lo is not None else s.hi if s.hi is not None else s.lo
            op = "<" if direction == "lower" else ">"
            msg = f"{phrase}: {s.title} {v:.3g} {op} limit {bound:.3g} (reference {_fmt(rv)})"
        if not alerting:
            msg = f"not alerting ({s.alert} only): {msg}"
        e["message"] = msg
    return out


def _fmt(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def limits_of(specs: list[Spec]) -> dict[str, dict]:
    """{check: {label: {lower, upper, reference, alert, ...}}} for alerts.json."""
    out: dict[str, dict] = {}
    for s in specs:
        out.setdefault(s.check, {})[s.label] = {
            "lower": _fin(s.lo), "upper": _fin(s.hi), "reference": _fin(s.reference), "alert": s.alert,
            "kind": s.kind, **{k: v for k, v in s.info.items() if k != "params"}}
    return out
