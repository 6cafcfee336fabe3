"""Monitoring thresholds (pydantic), loaded from YAML (`monitoring/thresholds.yaml` holds the defaults).

Every number here is a default with a reason (docs/monitoring.md, "Thresholds"); the
rule of thumb: compare a window to the evaluation reference (relative rules) and keep a few
absolute guard rails that are wrong for any multi-interest model. Defaults were checked with
`benchmarks/monitoring.py`: no false alarm over 25 healthy one-hour windows of 300 requests.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from mirec.config import StrictModel, load_yaml_config


class CollapseThresholds(StrictModel):
    #: absolute guard rail: distinct interests of a user should not point the same way
    max_mean_pairwise_cos: float = Field(0.9, ge=-1, le=1)
    #: window mean cosine may exceed the reference mean by at most this much
    max_cos_increase: float = Field(0.2, ge=0)
    #: window effective number of interests must stay >= this share of the reference's
    min_effective_interests_ratio: float = Field(0.7, gt=0, le=1)
    #: share of answers whose whole list came from one interest: at most reference + this
    max_single_interest_share_increase: float = Field(0.2, ge=0, le=1)
    #: share of the K interest slots that never supplied a served item in the window
    max_dead_interest_share: float = Field(0.5, ge=0, le=1)


class DiversityThresholds(StrictModel):
    #: window mean ILD (category-based) must stay >= this share of the reference mean
    min_ild_ratio: float = Field(0.8, gt=0, le=1)
    #: Evidently drift score (normed Wasserstein) of the per-answer ILD distribution
    ild_drift_threshold: float = Field(0.2, gt=0)
    #: catalogue coverage >= this share of the reference's (at the same number of answers)
    min_coverage_ratio: float = Field(0.7, gt=0, le=1)
    #: exposure Gini may rise by at most this much over the reference (same number of answers)
    max_gini_increase: float = Field(0.1, ge=0)
    #: Evidently Personalization (1 - mean overlap between lists) >= this share of the reference's
    min_personalization_ratio: float = Field(0.8, gt=0, le=1)


class CategoryDriftThresholds(StrictModel):
    #: Evidently stattest for the served-category column
    method: str = "jensenshannon"
    #: drift when the Jensen-Shannon distance between served-category mixes exceeds this
    threshold: float = Field(0.1, gt=0)


class InputDriftThresholds(StrictModel):
    #: stattest and threshold for the users' history-category mix (one row per history share)
    category_method: str = "jensenshannon"
    category_threshold: float = Field(0.1, gt=0)
    #: stattest and threshold for the history length distribution
    history_len_method: str = "wasserstein"
    history_len_threshold: float = Field(0.2, gt=0)
    #: unknown-item rate may exceed the reference by at most this much (absolute)
    max_unknown_item_rate_increase: float = Field(0.05, ge=0, le=1)


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


class Thresholds(StrictModel):
    #: windows (or model/arm groups) with fewer answers are reported but not tested
    min_requests: int = Field(200, ge=1)
    #: distance drift scores (Jensen-Shannon, Wasserstein) shrink slowly with window size, so a fixed
    #: threshold false-alarms on small windows: each distance limit is raised to the sampling-noise
    #: floor measured on the reference (draws x windows of the same size; mean + sigmas x std)
    drift_null_draws: int = Field(20, ge=0)
    drift_null_sigmas: float = Field(4.0, ge=0)
    interest_collapse: CollapseThresholds = Field(default_factory=CollapseThresholds)
    diversity_drift: DiversityThresholds = Field(default_factory=DiversityThresholds)
    category_drift: CategoryDriftThresholds = Field(default_factory=CategoryDriftThresholds)
    input_drift: InputDriftThresholds = Field(default_factory=InputDriftThresholds)
    fallback_rate: FallbackThresholds = Field(default_factory=FallbackThresholds)
    under_delivered: UnderDeliveredThresholds = Field(default_factory=UnderDeliveredThresholds)


CHECKS = ("interest_collapse", "diversity_drift", "category_drift", "input_drift", "fallback_rate", "under_delivered")


def load_thresholds(path: str | Path | None = None) -> Thresholds:
    """Thresholds from a YAML file (None: the built-in defaults, equal to monitoring/thresholds.yaml)."""
    return load_yaml_config(Thresholds, path)
