"""The Evidently 0.7 report of one window: built-in drift metrics + custom mirec measures, with tests.

- Built-in: `ValueDrift` (served-category mix, history-category mix: Jensen-Shannon by default;
  per-answer ILD and history length: normed Wasserstein by default; methods/thresholds from the
  thresholds file), `MeanValue` where a plain mean is the measure.
- Custom: `MirecMeasure(measure=...)`, a `SingleValueMetric` subclass that computes one of the
  window measures of `mirec.monitoring.measures` (effective interests, single-interest share,
  dead-interest share, coverage and exposure Gini at a matched number of answers, rates) on the
  current and the reference dataset, so the HTML shows current vs reference side by side.
Every test is tied to one alert check; the check fires when any of its tests fails
(`checks_from_snapshot`).
"""

from __future__ import annotations

import json
import math
from typing import Optional

import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.core.metric_types import SingleValueCalculation, SingleValueMetric
from evidently.core.report import Context
from evidently.core.datasets import Recsys
from evidently.metrics import Personalization, ValueDrift
from evidently.tests import gte, lte

from mirec.monitoring import measures as M
from mirec.monitoring.config import Thresholds

#: Evidently stattests whose score is a p-value (drift when score < threshold); the others are distances.
P_VALUE_METHODS = {"ks", "chisquare", "z", "fisher_exact", "g_test", "mannw", "t_test", "cramer_von_mises",
                   "anderson", "epps_singleton", "empirical_mmd"}

CATEGORICAL = ["category", "history_category"]
NUMERICAL = M.REQUEST_COLUMNS + ["interest", "rank", "first"]


def _measure(df: pd.DataFrame, name: str, params: dict) -> float:
    size = int(params.get("catalogue_size", 1))
    if name == "coverage":
        return M.coverage(df, size)
    if name == "exposure_gini":
        return M.exposure_gini(df, size)
    if name == "dead_interest_share":
        dead, k = M.dead_interests(df)
        return dead / k if k else 0.0
    column = {"single_interest_share": "single_interest", "fallback_rate": "fallback",
              "under_delivered_rate": "under_delivered"}.get(name, name)
    return M.mean_of(df, column)


class MirecMeasure(SingleValueMetric):
    """One mirec window measure as an Evidently metric (current and reference value)."""

    measure: str
    #: catalogue_size (coverage, Gini); match_requests: compute on this many answers (same-size comparison)
    params: dict = {}
    title: str = ""


class MirecMeasureCalculation(SingleValueCalculation[MirecMeasure]):
    def _value(self, data: Dataset, subsample: bool) -> float:
        df = data.as_dataframe()
        n = self.metric.params.get("match_requests")
        if subsample and n:
            df = M.subsample_requests(df, int(n))
        v = _measure(df, self.metric.measure, self.metric.params)
        return 0.0 if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    def calculate(self, context: Context, current_data: Dataset, reference_data: Optional[Dataset]):
        cur = self.result(self._value(current_data, subsample=False))
        if reference_data is None:
            return cur
        return cur, self.result(self._value(reference_data, subsample=True))

    def display_name(self) -> str:
        return self.metric.title or self.metric.measure


#: each served list is one "user" of Evidently's recsys metrics (rank = position in the list; no relevance labels)
RANKING = Recsys(user_id="request_id", item_id="item_id", target="target", prediction="rank", recommendations_type="rank")


def to_dataset(df: pd.DataFrame) -> Dataset:
    cols = [c for c in NUMERICAL + CATEGORICAL + ["item_id", "request_id"] if c in df.columns]
    data = df[cols].copy()
    data["target"] = 0
    dd = DataDefinition(numerical_columns=[c for c in NUMERICAL if c in cols] + ["target"],
                        categorical_columns=[c for c in CATEGORICAL if c in cols], text_columns=[],
                        ranking=[RANKING])
    return Dataset.from_pandas(data, data_definition=dd)


def _lists_only(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["item_id"].notna()]


def personalization(df: pd.DataFrame, k: int) -> float:
    """Evidently's built-in `Personalization` (1 - mean cosine overlap between served lists) of one frame."""
    import weakref

    key = (id(df), len(df), k)
    hit = _PERS_CACHE.get(key)
    if hit is None or hit[0]() is not df:
        snap = Report([Personalization(k=k, tests=[])]).run(to_dataset(_lists_only(df)), None)
        hit = (weakref.ref(df), float(json.loads(snap.json())["metrics"][0]["value"]))
        _PERS_CACHE[key] = hit
    return hit[1]


_PERS_CACHE: dict = {}


def _nan0(x: float) -> float:
    return 0.0 if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def null_drift_limit(ref: pd.DataFrame, column: str, method: str, n: int, *, draws: int, sigmas: float,
                     seed: int = 0) -> float:
    """Sampling-noise floor of a distance drift score for a window of `n` answers.

    Draws `draws` windows of n answers from the reference (with replacement, whole answers, so
    items of one list stay together), scores each against the full reference with the same
    Evidently stattest, and returns (mean + sigmas*std) x sqrt(1 + n/N_ref) (the window and the
    reference both carry sampling noise). 0 for p-value methods (they already account for size)."""
    if method in P_VALUE_METHODS or draws <= 1 or n <= 0:
        return 0.0
    import weakref

    key = (id(ref), len(ref), column, method, n, draws, sigmas, seed)
    hit = _NULL_CACHE.get(key)
    if hit is None or hit[0]() is not ref:  # cached for this very frame (ids of dead frames get reused)
        hit = (weakref.ref(ref), _null_drift_limit(ref, column, method, n, draws, sigmas, seed))
        _NULL_CACHE[key] = hit
    return hit[1]


_NULL_CACHE: dict = {}


def _null_drift_limit(ref, column, method, n, draws, sigmas, seed) -> float:
    import numpy as np
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    ftype = ColumnType.Categorical if column in CATEGORICAL else ColumnType.Numerical
    ref_col = ref[column].dropna()
    if ref_col.empty:
        return 0.0
    stattest = get_stattest(ref_col, ref_col, ftype, method)
    ids = ref.loc[ref["first"] == 1, "request_id"].to_numpy()
    codes = pd.Categorical(ref["request_id"], categories=ids).codes
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(len(ids)))
    ends = np.searchsorted(codes[order], np.arange(len(ids)), side="right")
    rng = np.random.default_rng(seed)
    values = ref[column].to_numpy()
    scores = []
    for _ in range(draws):
        pick = rng.integers(0, len(ids), size=n)
        rows = np.concatenate([order[starts[i]:ends[i]] for i in pick])
        sample = pd.Series(values[rows]).dropna()
        if sample.empty:
            continue
        scores.append(float(stattest(ref_col, sample, ftype, None).drift_score))
    if not scores:
        return 0.0
    return float((np.mean(scores) + sigmas * np.std(scores)) * np.sqrt(1 + n / max(len(ids), 1)))


def _drift(column: str, method: str, threshold: float, title: str) -> ValueDrift:
    test = gte(threshold) if method in P_VALUE_METHODS else lte(threshold)
    return ValueDrift(column=column, method=method, threshold=threshold, tests=[test])


def plan_report(cur: pd.DataFrame, ref: pd.DataFrame, catalogue_size: int, th: Thresholds) -> tuple[list, dict, dict]:
    """-> (metrics, {metric fingerprint: (check, measure label)}, limits used) for one window vs reference.

    Reference-relative limits are computed here from the reference frame; coverage and Gini are
    compared at the same number of answers (the reference subsampled to the window's size)."""
    n = M.n_requests(cur)
    ref_sub = M.subsample_requests(ref, n)
    rs = {name: _nan0(_measure(ref, name, {"catalogue_size": catalogue_size}))
          for name in ("mean_pairwise_cos", "effective_interests", "single_interest_share", "ild",
                       "unknown_item_rate", "fallback_rate", "under_delivered_rate")}
    rs["coverage"] = M.coverage(ref_sub, catalogue_size)
    rs["exposure_gini"] = _nan0(M.exposure_gini(ref_sub, catalogue_size))
    limits: dict[str, dict] = {}
    skipped: dict[str, dict] = {}
    plan: list[tuple[str, object]] = []

    def drift(check: str, label: str, column: str, method: str, configured: float, title: str):
        if cur[column].notna().sum() == 0 or ref[column].notna().sum() == 0:
            side = "reference" if ref[column].notna().sum() == 0 else "window"
            skipped.setdefault(check, {})[label] = f"no {column} values in the {side}"
            return
        floor = null_drift_limit(ref, column, method, n, draws=th.drift_null_draws, sigmas=th.drift_null_sigmas)
        limit = max(configured, floor)
        plan.append((check, label, _drift(column, method, limit, title)))
        limits.setdefault(check, {})[label] = {"limit": round(limit, 6), "configured": configured,
                                                "noise_floor": round(floor, 6), "method": method,
                                                "op": "gte" if method in P_VALUE_METHODS else "lte"}

    c, d, cd, i, f, u = (th.interest_collapse, th.diversity_drift, th.category_drift, th.input_drift,
                         th.fallback_rate, th.under_delivered)

    def measure(check: str, name: str, test, limit: float, title: str, **params):
        if name in ("under_delivered_rate",) and ref["under_delivered"].notna().sum() == 0:
            skipped.setdefault(check, {})[name] = "the reference has no history categories"
            return
        m = MirecMeasure(measure=name, params={"catalogue_size": catalogue_size, **params}, title=title,
                         tests=[test(limit)])
        limits.setdefault(check, {})[name] = {"limit": round(limit, 6), "op": test.__name__,
                                               "reference": round(rs.get(name, float("nan")), 6)}
        plan.append((check, name, m))

    ref_k = M.dead_interests(ref)[1]
    cur_model = M.requests_of(cur)["k"].gt(0).any()
    if ref_k > 1 and cur_model:
        measure("interest_collapse", "mean_pairwise_cos", lte,
                min(c.max_mean_pairwise_cos, rs["mean_pairwise_cos"] + c.max_cos_increase), "Mean pairwise cosine of interests")
        measure("interest_collapse", "effective_interests", gte,
                rs["effective_interests"] * c.min_effective_interests_ratio, "Effective number of interests")
        measure("interest_collapse", "single_interest_share", lte,
                min(1.0, rs["single_interest_share"] + c.max_single_interest_share_increase), "Single-interest answers share")
        measure("interest_collapse", "dead_interest_share", lte, c.max_dead_interest_share, "Dead interests share")
    measure("diversity_drift", "ild", gte, rs["ild"] * d.min_ild_ratio, "ILD (category)")
    drift("diversity_drift", "ild_drift", "ild", "wasserstein", d.ild_drift_threshold, "ILD drift")
    k_list = int(max(1, cur["rank"].max() if len(cur) else 1))
    pers_limit = personalization(ref, k_list) * d.min_personalization_ratio
    pers = Personalization(k=k_list, tests=[gte(pers_limit)])
    plan.append(("diversity_drift", "personalization", pers))
    limits["diversity_drift"]["personalization"] = {"limit": round(pers_limit, 6), "op": "gte",
                                                    "reference": round(personalization(ref, k_list), 6),
                                                    "metric": "evidently Personalization (built-in)"}
    measure("diversity_drift", "coverage", gte, rs["coverage"] * d.min_coverage_ratio, "Catalogue coverage",
            match_requests=n)
    measure("diversity_drift", "exposure_gini", lte, min(1.0, rs["exposure_gini"] + d.max_gini_increase),
            "Exposure Gini", match_requests=n)
    drift("category_drift", "served_category_drift", "category", cd.method, cd.threshold, "Served category drift")
    drift("input_drift", "history_category_drift", "history_category", i.category_method, i.category_threshold,
          "History category drift")
    drift("input_drift", "history_len_drift", "history_len", i.history_len_method, i.history_len_threshold,
          "History length drift")
    measure("input_drift", "unknown_item_rate", lte, rs["unknown_item_rate"] + i.max_unknown_item_rate_increase,
            "Unknown-item rate")
    measure("fallback_rate", "fallback_rate", lte, min(f.max_rate, rs["fallback_rate"] + f.max_increase),
            "Fallback answers share")
    measure("under_delivered", "under_delivered_rate", lte, min(1.0, rs["under_delivered_rate"] + u.max_rate_increase),
            "Under-delivered strong categories share")
    metrics = [m for _, _, m in plan]
    owner = {m.get_fingerprint(): (check, name) for check, name, m in plan}
    if skipped:
        limits["skipped"] = skipped
    return metrics, owner, limits


def run_report(cur: pd.DataFrame, ref: pd.DataFrame, catalogue_size: int, th: Thresholds, *, name: str = "mirec monitor",
               metadata: dict | None = None):
    """-> (Evidently snapshot, owner map, limits)."""
    metrics, owner, limits = plan_report(cur, ref, catalogue_size, th)
    report = Report(metrics, metadata={k: str(v) for k, v in (metadata or {}).items()})
    snap = report.run(to_dataset(cur), to_dataset(ref), name=name)
    return snap, owner, limits


def checks_from_snapshot(snap, owner: dict) -> dict[str, dict]:
    """Evidently test results grouped per alert check: {check: {firing, tests: [...], values: {...}}}."""
    out: dict[str, dict] = {}
    for tr in snap.tests_results:
        mid = tr.metric_config.metric_id
        check, label = owner.get(mid, ("other", mid))
        status = tr.status.value if hasattr(tr.status, "value") else str(tr.status)
        entry = out.setdefault(check, {"firing": False, "tests": []})
        entry["tests"].append({"measure": label, "status": status, "name": tr.name, "description": tr.description})
        if status == "FAIL":
            entry["firing"] = True
    return out


def metric_values(snap, owner: dict) -> dict[str, float]:
    """{measure label: current value} from the snapshot's JSON (drift scores included)."""
    import json

    out = {}
    for m in json.loads(snap.json())["metrics"]:
        if m["id"] in owner:
            v = m.get("value")
            out[owner[m["id"]][1]] = float(v) if isinstance(v, (int, float)) else v
    return out
