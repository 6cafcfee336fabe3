"""Monitoring thresholds (pydantic), loaded from YAML (`monitoring/thresholds.yaml` holds the defaults).

Every number here is a default with a reason (docs/monitoring.md, "Thresholds"). Rule of thumb: compare a
window with the reference (relative rules), widen every limit to the sampling-noise band measured on the
reference at the window's size, and keep a few absolute guard rails that are wrong for any multi-interest
model. `sides` says which way a change alerts: "lower" (a drop), "higher" (a rise) or "both".
Defaults were checked with `benchmarks/monitoring.py` (healthy windows of 250 to 10,000 answers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from mirec.config import StrictModel, load_yaml_config

Sides = Literal["both", "lower", "higher"]


class CollapseThresholds(StrictModel):
    #: absolute guard rail: distinct interests of a user should not point the same way
    max_mean_pairwise_cos: float = Field(0.9, ge=-1, le=1)
    #: window mean cosine may exceed the reference mean by at most this much (or the noise band)
    max_cos_increase: float = Field(0.1, ge=0)
    #: drift of the per-answer interest-cosine distribution (normed Wasserstein), alerting on a rise only:
    #: sees a moderate collapse (interests blended towards their mean) before the mean moves much. 0.3: held-out
    #: users (the reference) and trained-on users (most live traffic) differ by ~0.18 on a trained model
    #: (benchmarks/monitoring.py), a blend of 0.3 moves it by > 0.5
    cos_drift_method: str = "wasserstein"
    cos_drift_threshold: float = Field(0.3, gt=0)
    #: window effective number of interests must stay >= this share of the reference's
    min_effective_interests_ratio: float = Field(0.85, gt=0, le=1)
    #: share of answers whose whole list came from one interest: at most reference + this
    max_single_interest_share_increase: float = Field(0.1, ge=0, le=1)
    #: share of the K interest slots that never supplied a served item in the window
    max_dead_interest_share: float = Field(0.5, ge=0, le=1)


class DiversityThresholds(StrictModel):
    #: window mean ILD (category-based) within reference x (1 -/+ this) on the configured side(s)
    ild_tolerance: float = Field(0.15, gt=0, le=1)
    ild_sides: Sides = "both"
    #: Evidently drift score (normed Wasserstein) of the per-answer ILD distribution
    ild_drift_threshold: float = Field(0.2, gt=0)
    #: catalogue coverage within reference x (1 -/+ this), both at the same number of answers
    coverage_tolerance: float = Field(0.3, gt=0, le=1)
    coverage_sides: Sides = "both"
    #: exposure Gini (same number of answers) may rise by at most this share of its headroom (1 - reference):
    #: with a reference Gini of 0.92 the limit is 0.96, not an unreachable 1.0
    max_gini_headroom_share: float = Field(0.5, gt=0, le=1)
    #: Evidently Personalization (1 - mean overlap between lists) >= this share of the reference's
    min_personalization_ratio: float = Field(0.8, gt=0, le=1)


class CategoryDriftThresholds(StrictModel):
    #: Evidently stattest for the served-category column
    method: str = "jensenshannon"
    #: drift when the Jensen-Shannon distance between served-category mixes exceeds this (or the noise floor)
    threshold: float = Field(0.1, gt=0)


class InputDriftThresholds(StrictModel):
    #: stattest and threshold for the users' history-category mix (every answer weighs the same)
    category_method: str = "jensenshannon"
    category_threshold: float = Field(0.1, gt=0)
    #: stattest and threshold for the history length distribution
    history_len_method: str = "wasserstein"
    history_len_threshold: float = Field(0.2, gt=0)
    #: history popularity (share of head items, mean log-popularity of the history): drift tests ...
    popularity_method: str = "wasserstein"
    #: 0.3: popularity is counted on the training interactions, so trained-on users' histories (most live traffic)
    #: are a little more popular than the held-out reference users' (normed Wasserstein ~0.07-0.1 at any window
    #: size, benchmarks/monitoring.py); 30% popular items in the histories move it by ~4
    popularity_threshold: float = Field(0.3, gt=0)
    #: ... and the window mean head share within reference +/- this (absolute)
    max_head_share_change: float = Field(0.05, ge=0, le=1)
    #: history popularity is new in the served log: when the window's lines do not carry it, the tests are
    #: reported "not tested" (true: an error, like any other missing field)
    require_history_popularity: bool = False
    #: unknown-item rate and cold-start rate (answers without a known history item): at most reference + this
    max_unknown_item_rate_increase: float = Field(0.05, ge=0, le=1)
    max_cold_start_rate_increase: float = Field(0.05, ge=0, le=1)
    #: requested list length n (categorical drift) and share of requests that set `diversity` (+/- this)
    request_n_method: str = "jensenshannon"
    request_n_threshold: float = Field(0.1, gt=0)
    max_diversity_set_share_change: float = Field(0.05, ge=0, le=1)


class FallbackThresholds(StrictModel):
    #: cold-start/popularity fallback answers: at most reference + this ...
    max_increase: float = Field(0.05, ge=0, le=1)
    #: ... and never more than this share of answers
    max_rate: float = Field(0.2, ge=0, le=1)


class UnderDeliveredThresholds(StrictModel):
    #: a category is "strong" for a user when it holds at least this share of the history
    strong_share: float = Field(0.2, gt=0, le=1)
    #: it is "under-delivered" when its share of the served list is below this fraction of its history share
    min_delivery_ratio: float = Field(0.25, ge=0, le=1)
    #: alert when the share of (user, strong category) pairs under-delivered exceeds reference + this
    max_rate_increase: float = Field(0.15, ge=0, le=1)
    #: how many under-delivered categories to report
    top_n: int = Field(5, ge=1)


class LogQualityThresholds(StrictModel):
    #: alert `log_quality` when more than this share of the window's lines are bad (not JSON, no ts, a missing or
    #: mistyped field, an unknown schema_version), or of its model answers lack interest statistics
    max_bad_share: float = Field(0.01, ge=0, le=1)


class Thresholds(StrictModel):
    #: windows (or model/arm groups) with fewer answers are reported `insufficient_data` (exit 3) and not tested
    min_requests: int = Field(200, ge=1)
    #: distance drift scores (Jensen-Shannon, Wasserstein) of two samples of one distribution are not 0: each
    #: distance limit is raised to the sampling-noise floor measured on the reference at the window's size
    #: (draws x windows of the same size; mean + sigmas x std)
    drift_null_draws: int = Field(50, ge=0)
    drift_null_sigmas: float = Field(4.5, ge=0)
    #: every point limit (means, rates, coverage, Gini) is at least this many standard errors of the
    #: window-vs-reference difference away from the reference value
    noise_sigmas: float = Field(4.0, ge=0)
    #: item-level tests (served/history category mix, Personalization, coverage, Gini, dead slots) use at most this
    #: many answers of a window (a random subset, the noise floor is measured at that size): at 20,000 answers
    #: the category-mix noise floor is already ~0.01, far below the limits, and memory stays bounded
    item_tests_max_answers: int = Field(20000, ge=100)
    log_quality: LogQualityThresholds = Field(default_factory=LogQualityThresholds)
    interest_collapse: CollapseThresholds = Field(default_factory=CollapseThresholds)
    diversity_drift: DiversityThresholds = Field(default_factory=DiversityThresholds)
    category_drift: CategoryDriftThresholds = Field(default_factory=CategoryDriftThresholds)
    input_drift: InputDriftThresholds = Field(default_factory=InputDriftThresholds)
    fallback_rate: FallbackThresholds = Field(default_factory=FallbackThresholds)
    under_delivered: UnderDeliveredThresholds = Field(default_factory=UnderDeliveredThresholds)


CHECKS = ("log_quality", "interest_collapse", "diversity_drift", "category_drift", "input_drift", "fallback_rate",
          "under_delivered")
SEVERITY = {"interest_collapse": "critical", "log_quality": "critical"}


def load_thresholds(path: str | Path | None = None) -> Thresholds:
    """Thresholds from a YAML file (None: the built-in defaults, equal to monitoring/thresholds.yaml)."""
    return load_yaml_config(Thresholds, path)
