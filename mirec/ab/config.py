"""Settings of an A/B analysis (`mirec ab report --config FILE`, YAML; every key optional)."""

from __future__ import annotations

from pydantic import Field

from mirec.config import StrictModel

#: metrics the report computes per arm (user-level ratios; see mirec.ab.metrics)
OUTCOME_METRICS = ("ctr", "click_rate", "clicks_per_user", "purchase_rate", "purchases_per_user", "next_hit_rate",
                   "clicked_diversity", "clicked_novelty")


class Guardrails(StrictModel):
    """Operational limits a winner must respect (treatment vs control); a breach vetoes the winner."""

    #: latency p99 of the winner at most this much above the other arm's (relative: 0.2 = +20%) ...
    latency_p99_max_rel_increase: float = Field(0.2, ge=0)
    #: ... or this many ms above it, whichever is larger (a tiny absolute rise on a fast service is noise)
    latency_p99_min_abs_ms: float = Field(5.0, ge=0)
    #: share of answers served by the popularity fallback, absolute increase
    fallback_rate_max_increase: float = Field(0.01, ge=0)
    #: share of /recommend requests answered with a 5xx (needs --metrics: the API's Prometheus text), absolute increase
    error_rate_max_increase: float = Field(0.005, ge=0)


class ABConfig(StrictModel):
    #: the arm that is "control" (the champion); default: the experiment's first arm
    control: str | None = None
    #: the metric the decision is made on
    primary: str = Field("ctr", pattern="^(" + "|".join(OUTCOME_METRICS) + ")$")
    #: CTR@n: a request counts as clicked when an item at position < n was clicked
    ctr_top_n: int = Field(10, ge=1, le=500)
    #: error rate of the sequential test and level of the confidence intervals
    alpha: float = Field(0.05, gt=0, lt=0.5)
    #: mSPRT mixture sd as a share of the control's value of the metric (the relative effect the test is tuned to)
    tau_rel: float = Field(0.1, gt=0)
    #: SRM p-value below this flags the experiment as broken (strict: SRM is looked at every day)
    srm_threshold: float = Field(0.001, gt=0, lt=1)
    #: a winner needs at least this many users per arm (the CLT behind the intervals)
    min_users_per_arm: int = Field(100, ge=2)
    #: feedback without a matching request_id is joined to the user's latest answer at most this old
    join_window_s: int = Field(1800, ge=0)
    guardrails: Guardrails = Field(default_factory=Guardrails)
