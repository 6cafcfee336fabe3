"""Statistics of an A/B test over users: ratio estimates with the delta method, differences with confidence
intervals, an always-valid sequential test (mSPRT) and the sample-ratio-mismatch check.

The unit of randomisation is the user (sticky assignment), so every metric is a ratio of per-user sums,
R = sum_u Y_u / sum_u X_u, and its variance comes from the users (Deng, Knoblich, Lu 2018, "Applying the delta
method in metric analytics"), never from requests or events: a user's requests are correlated, and treating them
as independent understates the variance. Distributions come from scipy.

mSPRT (Johari, Pekelis, Walsh 2017, "Always valid inference"): for an estimate D ~ N(theta, s^2) of the
difference and a normal mixture theta ~ N(0, tau^2) over the alternative, the likelihood ratio against theta = 0 is
    Lambda = sqrt(s^2 / (s^2 + tau^2)) * exp(tau^2 D^2 / (2 s^2 (s^2 + tau^2))).
The always-valid p-value is the running minimum of 1 / Lambda over every look; rejecting when it drops below alpha
keeps the type-I error at most alpha however often (e.g. daily) the test is looked at. Inverting it gives the
always-valid confidence sequence D +- sqrt((s^2 (s^2 + tau^2) / tau^2) * (2 log(1/alpha) + log((s^2 + tau^2)/s^2))).
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel
from scipy import stats


class RatioEstimate(BaseModel):
    """sum(num) / sum(den) over the users of one arm, with the variance of that ratio (delta method)."""

    value: float | None
    variance: float | None  # of the estimate (not of a user's value)
    users: int  # users with den > 0

    @property
    def se(self) -> float | None:
        return None if self.variance is None else math.sqrt(max(self.variance, 0.0))


def ratio_estimate(num: np.ndarray, den: np.ndarray) -> RatioEstimate:
    """Delta-method ratio over units (users): Var(Ybar/Xbar) ~ (s_y^2 - 2 R s_xy + R^2 s_x^2) / (n Xbar^2)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    n = int(len(num))
    users = int((den > 0).sum())
    if n == 0 or den.sum() <= 0:
        return RatioEstimate(value=None, variance=None, users=users)
    mx, my = den.mean(), num.mean()
    r = my / mx
    if n < 2:
        return RatioEstimate(value=float(r), variance=None, users=users)
    c = np.cov(num, den, ddof=1)
    var = (c[0, 0] - 2 * r * c[0, 1] + r * r * c[1, 1]) / (n * mx * mx)
    return RatioEstimate(value=float(r), variance=float(max(var, 0.0)), users=users)


class Difference(BaseModel):
    """treatment - control, with a fixed-horizon CI and p-value and the always-valid (mSPRT) ones."""

    control: float | None
    treatment: float | None
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    rel_lift: float | None  # treatment / control - 1
    rel_ci_low: float | None
    rel_ci_high: float | None
    p_value: float | None  # fixed horizon: valid only at a horizon fixed in advance
    msprt_lambda: float | None
    always_valid_p: float | None  # 1 / Lambda at this look (the report keeps the running minimum)
    cs_low: float | None  # always-valid confidence sequence
    cs_high: float | None


def _none_difference(a: RatioEstimate, b: RatioEstimate) -> Difference:
    return Difference(control=a.value, treatment=b.value, diff=None, ci_low=None, ci_high=None, rel_lift=None,
                      rel_ci_low=None, rel_ci_high=None, p_value=None, msprt_lambda=None, always_valid_p=None,
                      cs_low=None, cs_high=None)


def msprt(diff: float, var: float, tau2: float) -> float:
    """The normal-mixture sequential likelihood ratio Lambda for an estimate `diff` with variance `var`."""
    if var <= 0:
        return math.inf if diff != 0 else 1.0
    log_lambda = 0.5 * math.log(var / (var + tau2)) + tau2 * diff * diff / (2 * var * (var + tau2))
    return math.exp(min(log_lambda, 700.0))


def confidence_sequence(diff: float, var: float, tau2: float, alpha: float) -> tuple[float, float]:
    """{theta : Lambda(theta) < 1/alpha}: the always-valid (1 - alpha) interval for the difference."""
    if var <= 0:
        return diff, diff
    half = math.sqrt(var * (var + tau2) / tau2 * (2 * math.log(1 / alpha) + math.log((var + tau2) / var)))
    return diff - half, diff + half


def compare(control: RatioEstimate, treatment: RatioEstimate, alpha: float, tau: float) -> Difference:
    """Difference of two independent arms' ratio estimates. `tau`: the mixture's standard deviation of the effect
    (in the metric's units): the effect size the sequential test is most sensitive to."""
    a, b = control, treatment
    if a.value is None or b.value is None or a.variance is None or b.variance is None:
        return _none_difference(a, b)
    d = b.value - a.value
    var = a.variance + b.variance
    z = stats.norm.ppf(1 - alpha / 2)
    se = math.sqrt(var)
    p = float(2 * stats.norm.sf(abs(d) / se)) if se > 0 else (0.0 if d != 0 else 1.0)
    rel = rel_lo = rel_hi = None
    if a.value > 0:
        rel = b.value / a.value - 1
        # delta method for the ratio of two independent estimates
        rel_var = b.variance / a.value**2 + b.value**2 * a.variance / a.value**4
        rel_lo, rel_hi = rel - z * math.sqrt(rel_var), rel + z * math.sqrt(rel_var)
    tau2 = max(tau, 1e-12) ** 2
    lam = msprt(d, var, tau2)
    lo, hi = confidence_sequence(d, var, tau2, alpha)
    return Difference(control=a.value, treatment=b.value, diff=d, ci_low=d - z * se, ci_high=d + z * se,
                      rel_lift=rel, rel_ci_low=rel_lo, rel_ci_high=rel_hi, p_value=p, msprt_lambda=lam,
                      always_valid_p=min(1.0, 1.0 / lam) if lam > 0 else 1.0, cs_low=lo, cs_high=hi)


class SRMResult(BaseModel):
    """Sample-ratio mismatch: users per arm against the configured split (chi-square goodness of fit)."""

    observed: dict[str, int]
    expected_share: dict[str, float]
    chi2: float | None
    p_value: float | None
    threshold: float
    ok: bool  # p >= threshold (True when there are too few users to test: see `tested`)
    tested: bool


def srm_check(users_per_arm: dict[str, int], expected_share: dict[str, float], threshold: float = 0.001,
              min_users: int = 20) -> SRMResult:
    """A low p-value means the assignment (or the logging) is broken: the arms are then not comparable."""
    arms = list(expected_share)
    obs = np.array([users_per_arm.get(a, 0) for a in arms], dtype=np.float64)
    total = obs.sum()
    if total < min_users or len(arms) < 2:
        return SRMResult(observed={a: int(o) for a, o in zip(arms, obs)}, expected_share=expected_share, chi2=None,
                         p_value=None, threshold=threshold, ok=True, tested=False)
    share = np.array([expected_share[a] for a in arms], dtype=np.float64)
    res = stats.chisquare(obs, f_exp=share / share.sum() * total)
    p = float(res.pvalue)
    return SRMResult(observed={a: int(o) for a, o in zip(arms, obs)}, expected_share=expected_share,
                     chi2=float(res.statistic), p_value=p, threshold=threshold, ok=p >= threshold, tested=True)
