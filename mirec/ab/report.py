"""`mirec ab report`: served log + feedback log -> per-arm outcomes, differences with CIs over users, an
always-valid sequential test looked at every day, SRM, guardrails and a decision; report.json + report.html.

    report = build_report(served="logs/served.jsonl*", feedback="logs/feedback.jsonl*",
                          arms={"A": 0.5, "B": 0.5}, cfg=ABConfig())
    write_report(report, "artifacts/ab/2026-01-08")

The decision (`decide`): the experiment is void while SRM fails on any day; otherwise, for each treatment arm
against the control, the first day on which the primary metric's always-valid p-value (running minimum over the
daily looks, Bonferroni over treatments) is <= alpha with at least `min_users_per_arm` users per arm decides the
direction; a guardrail breach of that winner on that day vetoes it.
"""

from __future__ import annotations

import html
import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, Field

from mirec.ab.config import OUTCOME_METRICS, ABConfig
from mirec.ab.events import LogRead, explode_items, read_feedback, read_served
from mirec.ab.join import join_feedback
from mirec.ab.metrics import UserFrames, metric_columns, service_stats
from mirec.ab.stats import Difference, RatioEstimate, SRMResult, compare, ratio_estimate, srm_check
from mirec.errors import DataError

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
SCHEMA_VERSION = 1


class ArmDay(BaseModel):
    users: int
    requests: int
    metrics: dict[str, dict]  # metric -> {value, ci_low, ci_high, users}
    service: dict  # latency_p50_ms, latency_p99_ms, fallback_rate, error_rate


class DayResult(BaseModel):
    day: int
    date: str
    arms: dict[str, ArmDay]
    #: cumulative results only: treatment arm -> metric -> Difference (+ running always-valid p)
    comparisons: dict[str, dict[str, dict]] = Field(default_factory=dict)
    srm: SRMResult | None = None


class Guardrail(BaseModel):
    name: str
    arm: str
    versus: str
    value: float | None
    other: float | None
    #: the largest value allowed for `arm`; latency: compared with the lower end of the winner's p99 95% interval
    #: and computed from the upper end of the other arm's (a breach must be more than noise)
    limit: float | None
    ok: bool
    tested: bool


class Decision(BaseModel):
    status: str  # "winner" | "no_winner" | "srm" | "vetoed" | "insufficient_data"
    winner: str | None
    day: int | None  # the look (day index) the decision was made at
    primary: str
    reasons: list[str]


class ABReport(BaseModel):
    schema_version: int = SCHEMA_VERSION
    generated: str
    config: ABConfig
    arms: dict[str, float]  # configured shares
    control: str
    data: dict
    daily: list[DayResult]  # each day on its own
    cumulative: list[DayResult]  # days 0..d together: what a look on day d sees
    guardrails: list[Guardrail]
    decision: Decision
    seconds: float


# ---- error rates from the API's Prometheus text (optional) ---------------------------------------------------
def error_rates(metrics_text: str | None) -> dict[str, float]:
    """Per arm: share of /recommend requests answered 5xx, from `mirec_api_requests_total{arm,status}`."""
    if not metrics_text:
        return {}
    from prometheus_client.parser import text_string_to_metric_families

    tot: dict[str, float] = {}
    err: dict[str, float] = {}
    for fam in text_string_to_metric_families(metrics_text):
        if fam.name not in ("mirec_api_requests", "mirec_api_requests_total"):
            continue
        for s in fam.samples:
            if not s.name.endswith("_total"):
                continue
            arm, status = s.labels.get("arm"), s.labels.get("status", "")
            if not arm or arm == "none":
                continue
            tot[arm] = tot.get(arm, 0.0) + s.value
            if status.startswith("5"):
                err[arm] = err.get(arm, 0.0) + s.value
    return {a: err.get(a, 0.0) / t for a, t in tot.items() if t > 0}


# ---- building --------------------------------------------------------------------------------------------------
def _estimates(frames: UserFrames, arms: list[str], cfg: ABConfig, until_day: int | None = None,
               only_day: int | None = None) -> tuple[dict[str, dict[str, RatioEstimate]], dict[str, pd.DataFrame]]:
    users = frames.users(until_day=until_day, only_day=only_day)
    est, per_arm = {}, {}
    for a in arms:
        u = users[users["arm"] == a]
        per_arm[a] = u
        est[a] = {m: ratio_estimate(num, den) for m, (num, den) in metric_columns(u).items()}
    return est, per_arm


def _arm_day(est: dict[str, RatioEstimate], u: pd.DataFrame, service: dict, alpha: float) -> ArmDay:
    from scipy import stats

    z = float(stats.norm.ppf(1 - alpha / 2))
    metrics = {}
    for m, e in est.items():
        lo = hi = None
        if e.value is not None and e.se is not None:
            lo, hi = e.value - z * e.se, e.value + z * e.se
        metrics[m] = {"value": e.value, "ci_low": lo, "ci_high": hi, "users": e.users}
    return ArmDay(users=int(len(u)), requests=int(u["requests"].sum()) if len(u) else 0, metrics=metrics,
                  service=service)


def _date(start: pd.Timestamp, day: int) -> str:
    return (start.floor("D") + pd.Timedelta(days=day)).date().isoformat()


def build_report(served, feedback, arms: dict[str, float], cfg: ABConfig | None = None,
                 metrics_text: str | None = None) -> ABReport:
    """`served` / `feedback`: log file, folder or glob (or a LogRead already made); `arms`: name -> configured
    share (the experiment's weights); `metrics_text`: the API's /metrics text, for error rates (optional)."""
    t0 = time.perf_counter()
    cfg = cfg or ABConfig()
    if len(arms) < 2:
        raise DataError(f"an A/B report needs at least two arms, got {list(arms)}")
    total = sum(arms.values())
    shares = {a: w / total for a, w in arms.items()}
    control = cfg.control or next(iter(arms))
    if control not in arms:
        raise DataError(f"control arm {control!r} is not one of the experiment's arms {list(arms)}")
    treatments = [a for a in arms if a != control]
    s_read: LogRead = served if isinstance(served, LogRead) else read_served(served)
    f_read: LogRead = feedback if isinstance(feedback, LogRead) else read_feedback(feedback)
    s = s_read.table
    if not len(s):
        raise DataError(f"the served log has no readable answers ({s_read.lines} lines, {s_read.bad_lines} bad)")
    unknown_arms = sorted(set(s["arm"].dropna()) - set(arms))
    # answers without a user id cannot be attributed to a randomised unit (the API serves them by the first arm)
    anonymous = int(s["user_id"].isna().sum())
    keep = (s["arm"].isin(list(arms)) & s["user_id"].notna()).to_numpy()
    s_in = s if keep.all() else s[keep].reset_index(drop=True)
    items_in = s_read.items if keep.all() else s_read.items.filter(pa.array(keep))
    joined = join_feedback(s_in, items_in, f_read.table, cfg.join_window_s, exploded=explode_items(items_in))
    frames = UserFrames(s_in, joined, cfg)
    errs = error_rates(metrics_text)
    alpha_each = cfg.alpha / max(len(treatments), 1)  # Bonferroni over the treatments compared with the control

    def service(a: str, until=None, only=None) -> dict:
        st = service_stats(frames.latency, a, until_day=until, only_day=only)
        st["error_rate"] = errs.get(a)  # a counter: the whole run, not per day
        return st

    daily, cumulative = [], []
    running_p: dict[tuple[str, str], float] = {}
    for d in range(frames.n_days):
        est, per_arm = _estimates(frames, list(arms), cfg, only_day=d)
        daily.append(DayResult(day=d, date=_date(frames.start, d),
                               arms={a: _arm_day(est[a], per_arm[a], service(a, only=d), cfg.alpha) for a in arms}))
        est, per_arm = _estimates(frames, list(arms), cfg, until_day=d)
        comps: dict[str, dict[str, dict]] = {}
        for t in treatments:
            comps[t] = {}
            for m in OUTCOME_METRICS:
                base = est[control][m].value
                tau = cfg.tau_rel * abs(base) if base else cfg.tau_rel
                diff: Difference = compare(est[control][m], est[t][m], alpha_each, tau)
                key = (t, m)
                if diff.always_valid_p is not None:
                    running_p[key] = min(running_p.get(key, 1.0), diff.always_valid_p)
                comps[t][m] = {**diff.model_dump(), "always_valid_p_running": running_p.get(key)}
        srm = srm_check({a: int(len(per_arm[a])) for a in arms}, shares, cfg.srm_threshold)
        cumulative.append(DayResult(day=d, date=_date(frames.start, d),
                                    arms={a: _arm_day(est[a], per_arm[a], service(a, until=d), cfg.alpha)
                                          for a in arms}, comparisons=comps, srm=srm))
    join_counts = dict(zip(*np.unique(joined["join"].to_numpy(dtype=str), return_counts=True)))
    data = {
        "served": {"files": s_read.files, "lines": s_read.lines, "bad_lines": s_read.bad_lines,
                   "bad_examples": s_read.bad_examples, "answers": int(len(s_in)),
                   "answers_without_user": anonymous, "other_arms": unknown_arms,
                   "answers_of_other_arms": int((~s["arm"].isin(list(arms))).sum())},
        "feedback": {"files": f_read.files, "lines": f_read.lines, "bad_lines": f_read.bad_lines,
                     "bad_examples": f_read.bad_examples, "events": int(len(joined)),
                     "by_type": {str(k): int(v) for k, v in zip(*np.unique(joined["type"].to_numpy(dtype=str),
                                                                            return_counts=True))}},
        "join": {"request_id": int(join_counts.get("request_id", 0)), "user_time": int(join_counts.get("user_time", 0)),
                 "unmatched": int(join_counts.get("unmatched", 0)),
                 "matched_not_in_list": int(((joined["join"] != "unmatched") & ~joined["in_list"]).sum()),
                 "window_s": cfg.join_window_s},
        "start": s_in["ts"].min().isoformat() if len(s_in) else None,
        "end": s_in["ts"].max().isoformat() if len(s_in) else None,
        "days": frames.n_days,
        "arm_models": {str(a): sorted({f"{m}:{v}" for m, v in zip(g["model"], g["version"])})
                       for a, g in s_in.groupby("arm")},
        "error_rates_from_metrics": bool(errs),
    }
    report = ABReport(generated=datetime.now(timezone.utc).isoformat(), config=cfg, arms=shares, control=control,
                      data=data, daily=daily, cumulative=cumulative, guardrails=[],
                      decision=Decision(status="insufficient_data", winner=None, day=None, primary=cfg.primary,
                                        reasons=[]), seconds=0.0)
    report.decision, report.guardrails = decide(report, alpha_each)
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


# ---- deciding --------------------------------------------------------------------------------------------------
def guardrails(day: DayResult, arm: str, other: str, cfg: ABConfig) -> list[Guardrail]:
    """The winner `arm` against `other` on one (cumulative) day: latency p99, fallback rate, error rate."""
    g = cfg.guardrails
    a, o = day.arms[arm].service, day.arms[other].service
    out = []
    # a p99 from a few hundred answers is noisy: the breach must hold beyond the quantiles' 95% intervals
    # (the winner's lower bound above the limit computed from the other arm's upper bound)
    la, lo_ = a.get("latency_p99_ms"), o.get("latency_p99_ms")
    la_ci, lo_ci = a.get("latency_p99_ci"), o.get("latency_p99_ci")
    lim = None if lo_ci is None else lo_ci[1] + max(g.latency_p99_max_rel_increase * lo_ci[1], g.latency_p99_min_abs_ms)
    tested = la_ci is not None and lim is not None
    out.append(Guardrail(name="latency_p99_ms", arm=arm, versus=other, value=la, other=lo_, limit=lim,
                         ok=not tested or la_ci[0] <= lim, tested=tested))
    for name, inc in (("fallback_rate", g.fallback_rate_max_increase), ("error_rate", g.error_rate_max_increase)):
        va, vo = a.get(name), o.get(name)
        lim = None if vo is None else vo + inc
        out.append(Guardrail(name=name, arm=arm, versus=other, value=va, other=vo, limit=lim,
                             ok=va is None or lim is None or va <= lim, tested=va is not None and lim is not None))
    return out


def decide(report: ABReport, alpha_each: float) -> tuple[Decision, list[Guardrail]]:
    cfg, control, m = report.config, report.control, report.config.primary
    days = report.cumulative
    if not days:
        return Decision(status="insufficient_data", winner=None, day=None, primary=m, reasons=["no data"]), []
    bad_srm = [d for d in days if d.srm is not None and d.srm.tested and not d.srm.ok]
    if bad_srm:
        d = bad_srm[0]
        return Decision(status="srm", winner=None, day=d.day, primary=m, reasons=[
            f"sample ratio mismatch on day {d.day}: users {d.srm.observed} vs shares {d.srm.expected_share} "
            f"(chi2 {d.srm.chi2:.1f}, p = {d.srm.p_value:.2e} < {d.srm.threshold:g}); the arms are not comparable"]), \
            guardrails(days[-1], next(a for a in report.arms if a != control), control, cfg)
    reasons: list[str] = []
    candidates = []
    for t in [a for a in report.arms if a != control]:
        for d in days:
            c = d.comparisons[t][m]
            enough = min(d.arms[control].users, d.arms[t].users) >= cfg.min_users_per_arm
            if enough and c["always_valid_p_running"] is not None and c["always_valid_p_running"] <= alpha_each:
                winner, loser = (t, control) if c["diff"] > 0 else (control, t)
                candidates.append((d, t, winner, loser, c))
                break
        else:
            c = days[-1].comparisons[t][m]
            p = c["always_valid_p_running"]
            reasons.append(f"{t} vs {control}: no decision after {len(days)} day(s): always-valid p = "
                           f"{'n/a' if p is None else f'{p:.3g}'} > {alpha_each:g} "
                           f"(diff {_fmt(c['diff'])}, 95% CS [{_fmt(c['cs_low'])}, {_fmt(c['cs_high'])}])")
    if not candidates:
        return Decision(status="no_winner", winner=None, day=None, primary=m, reasons=reasons), \
            guardrails(days[-1], next(a for a in report.arms if a != control), control, cfg)
    # several treatments decided: the best winner by the primary metric on its decision day
    d, t, winner, loser, c = max(candidates, key=lambda x: x[0].arms[x[2]].metrics[m]["value"] or -math.inf)
    rails = guardrails(d, winner, loser, cfg)
    reasons.append(f"day {d.day}: {winner} beats {loser} on {m}: {_fmt(d.arms[winner].metrics[m]['value'])} vs "
                   f"{_fmt(d.arms[loser].metrics[m]['value'])} (treatment - control {_fmt(c['diff'])}, "
                   f"95% CI [{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}], always-valid p {c['always_valid_p_running']:.3g})")
    broken = [g for g in rails if not g.ok]
    if broken:
        reasons += [f"guardrail {g.name} vetoes {winner}: {_fmt(g.value)} > limit {_fmt(g.limit)} ({loser}: "
                    f"{_fmt(g.other)})" for g in broken]
        return Decision(status="vetoed", winner=None, day=d.day, primary=m, reasons=reasons), rails
    return Decision(status="winner", winner=winner, day=d.day, primary=m, reasons=reasons), rails


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:+.2f}%"


# ---- writing ---------------------------------------------------------------------------------------------------
# The plots are inline SVG drawn from the per-day aggregates (report.cumulative: a few points per arm and metric),
# not with matplotlib: importing it and rasterising PNGs took most of the report's writing time (17 s of the
# 73 s at 10^6 events on 2 busy cores), whatever the number of events.
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
_W, _H, _L, _R, _T, _B = 380, 230, 52, 10, 22, 34  # size and margins (left, right, top, bottom)


def _finite(v) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def svg_chart(title: str, days: list[int], series: list[dict], log: bool = False,
              hlines: tuple[tuple[float, str, str], ...] = ()) -> str:
    """A line chart as inline SVG. series: {"label", "y": [...], "lo"/"hi": [...] (optional band), "color",
    "dash" (bool), "band_opacity"}; None / NaN values leave gaps. log: log10 y axis (values <= 0 dropped).
    hlines: (y, color, label) reference lines."""
    e = html.escape
    tf = (lambda v: math.log10(v) if v is not None and v > 0 else None) if log else (lambda v: v)
    vals = [tf(_finite(v)) for sr in series for k in ("y", "lo", "hi") for v in sr.get(k) or []]
    vals += [tf(_finite(y)) for y, _, _ in hlines]
    vals = [v for v in vals if v is not None]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - (abs(lo) * 0.1 or 0.5), hi + (abs(hi) * 0.1 or 0.5)
    pad = (hi - lo) * 0.05
    lo, hi = lo - pad, hi + pad
    d0, d1 = (min(days), max(days)) if days else (0, 1)
    d1 = d1 if d1 > d0 else d0 + 1
    pw, ph = _W - _L - _R, _H - _T - _B
    X = lambda d: _L + (d - d0) / (d1 - d0) * pw  # noqa: E731
    Y = lambda v: _T + (hi - v) / (hi - lo) * ph  # noqa: E731
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{_W}' height='{_H}' font-family='sans-serif' "
           f"font-size='10'><title>{e(title)}</title>",
           f"<text x='{_W / 2:.0f}' y='13' text-anchor='middle' font-size='11'>{e(title)}</text>",
           f"<rect x='{_L}' y='{_T}' width='{pw}' height='{ph}' fill='none' stroke='#999'/>"]
    if log:
        yt = [float(t) for t in range(math.ceil(lo), math.floor(hi) + 1)] or [lo]
        label = lambda t: f"1e{int(t)}" if t == int(t) else f"{10 ** t:.2g}"  # noqa: E731
    else:
        yt, label = _ticks(lo, hi), (lambda t: f"{t:.4g}")
    for t in yt:
        out.append(f"<line x1='{_L - 3}' x2='{_L}' y1='{Y(t):.1f}' y2='{Y(t):.1f}' stroke='#999'/>"
                   f"<text x='{_L - 5}' y='{Y(t) + 3:.1f}' text-anchor='end'>{e(label(t))}</text>")
    step = max(1, math.ceil(len(days) / 12))
    for d in days[::step]:
        out.append(f"<text x='{X(d):.1f}' y='{_T + ph + 12}' text-anchor='middle'>{d}</text>")
    out.append(f"<text x='{_L + pw / 2:.0f}' y='{_H - 4}' text-anchor='middle'>day</text>")
    for y, color, _ in hlines:
        v = tf(_finite(y))
        if v is not None and lo <= v <= hi:
            out.append(f"<line x1='{_L}' x2='{_L + pw}' y1='{Y(v):.1f}' y2='{Y(v):.1f}' stroke='{color}' "
                       "stroke-width='0.8'/>")

    def runs(points):  # consecutive finite points (gaps at None)
        cur: list = []
        for p in points:
            if p is None:
                if cur:
                    yield cur
                cur = []
            else:
                cur.append(p)
        if cur:
            yield cur

    for i, sr in enumerate(series):
        color = sr.get("color") or _COLORS[i % len(_COLORS)]
        if sr.get("lo") is not None and sr.get("hi") is not None:
            band = [(d, tf(_finite(a)), tf(_finite(b))) for d, a, b in zip(days, sr["lo"], sr["hi"])]
            for seg in runs([(d, a, b) if a is not None and b is not None else None for d, a, b in band]):
                pts = [f"{X(d):.1f},{Y(b):.1f}" for d, _, b in seg] + [f"{X(d):.1f},{Y(a):.1f}" for d, a, _ in
                                                                         reversed(seg)]
                out.append(f"<polygon points='{' '.join(pts)}' fill='{color}' "
                           f"fill-opacity='{sr.get('band_opacity', 0.2)}' stroke='none'/>")
        line = [(d, tf(_finite(v))) for d, v in zip(days, sr.get("y") or [])]
        dash = " stroke-dasharray='3,3'" if sr.get("dash") else ""
        for seg in runs([(d, v) if v is not None else None for d, v in line]):
            pts = " ".join(f"{X(d):.1f},{Y(v):.1f}" for d, v in seg)
            out.append(f"<polyline points='{pts}' fill='none' stroke='{color}' stroke-width='1.6'{dash}/>")
            out += [f"<circle cx='{X(d):.1f}' cy='{Y(v):.1f}' r='2.2' fill='{color}'/>" for d, v in seg]
    legend = [(sr.get("label", ""), sr.get("color") or _COLORS[i % len(_COLORS)]) for i, sr in enumerate(series)]
    legend += [(lab, c) for _, c, lab in hlines if lab]
    for j, (lab, color) in enumerate(legend):
        y = _T + 10 + 11 * j
        out.append(f"<rect x='{_L + 6}' y='{y - 6}' width='9' height='3' fill='{color}'/>"
                   f"<text x='{_L + 19}' y='{y}'>{e(str(lab))}</text>")
    out.append("</svg>")
    return "".join(out)


def plots(report: ABReport, metrics: tuple[str, ...] | None = None) -> list[tuple[str, list[str]]]:
    """(title, [SVG charts]) from the per-day aggregates: each metric per arm over days (cumulative, 95% CI band),
    and per treatment the primary's difference with its fixed-horizon CI and always-valid confidence sequence,
    and the always-valid p over days (log scale)."""
    days = [d.day for d in report.cumulative]
    metrics = metrics or (report.config.primary, "clicks_per_user", "purchase_rate", "next_hit_rate")
    charts = []
    for m in metrics:
        series = []
        for i, a in enumerate(report.arms):
            ms = [d.arms[a].metrics[m] for d in report.cumulative]
            series.append({"label": a, "y": [x["value"] for x in ms], "lo": [x["ci_low"] for x in ms],
                           "hi": [x["ci_high"] for x in ms], "color": _COLORS[i % len(_COLORS)]})
        charts.append(svg_chart(f"{m} (cumulative, 95% CI)", days, series))
    out = [("Metrics per arm over time", charts)]
    m = report.config.primary
    for t in [a for a in report.arms if a != report.control]:
        comps = [d.comparisons[t][m] for d in report.cumulative]
        col = lambda k: [c[k] for c in comps]  # noqa: E731
        diff = svg_chart(f"{m}: difference", days, [
            {"label": "always-valid CS", "y": [], "lo": col("cs_low"), "hi": col("cs_high"), "color": "#2ca02c",
             "band_opacity": 0.15},
            {"label": f"{t} - {report.control} (95% CI, fixed horizon)", "y": col("diff"), "lo": col("ci_low"),
             "hi": col("ci_high"), "color": "#333333", "band_opacity": 0.3}], hlines=((0.0, "#999999", ""),))
        seq = svg_chart(f"{m}: sequential test", days, [
            {"label": "always-valid p (running min)", "y": col("always_valid_p_running"), "color": "#1f77b4"},
            {"label": "fixed-horizon p (not for peeking)", "y": col("p_value"), "color": "#ff7f0e", "dash": True}],
            log=True, hlines=((report.config.alpha, "#d62728", "alpha"),))
        out.append((f"{t} vs {report.control}: {m}", [diff, seq]))
    return out


def render_html(report: ABReport, with_plots: bool = True) -> str:
    e = html.escape
    dec = report.decision
    last = report.cumulative[-1] if report.cumulative else None
    parts = [f"<html><head><meta charset='utf-8'><title>A/B report</title><style>body{{font-family:sans-serif;"
             "margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 7px;"
             "text-align:right}}.bad{{color:#b00}}.ok{{color:#070}}</style></head><body>",
             f"<h1>A/B report: {e(' vs '.join(report.arms))}</h1>",
             f"<p>{e(str(report.data.get('start')))} .. {e(str(report.data.get('end')))}, {report.data['days']} day(s); "
             f"control {e(report.control)}; primary metric <b>{e(dec.primary)}</b>; generated {e(report.generated)}</p>",
             f"<h2>Decision: <span class='{'ok' if dec.status == 'winner' else 'bad'}'>{e(dec.status)}"
             f"{' - ' + e(dec.winner) if dec.winner else ''}</span></h2><ul>"
             + "".join(f"<li>{e(r)}</li>" for r in dec.reasons) + "</ul>"]
    if last is not None:
        srm = last.srm
        parts.append(f"<h2>Sample ratio</h2><p class='{'ok' if srm.ok else 'bad'}'>users {e(str(srm.observed))} vs "
                     f"shares {e(str({k: round(v, 4) for k, v in srm.expected_share.items()}))}: "
                     f"p = {_fmt(srm.p_value)} (threshold {srm.threshold:g}){'' if srm.tested else ' (not tested: too few users)'}</p>")
        parts.append("<h2>Guardrails</h2><table><tr><th>guardrail</th><th>arm</th><th>value</th><th>other arm</th>"
                     "<th>limit</th><th>ok</th></tr>" + "".join(
                         f"<tr><td>{e(g.name)}</td><td>{e(g.arm)}</td><td>{_fmt(g.value)}</td><td>{_fmt(g.other)}</td>"
                         f"<td>{_fmt(g.limit)}</td><td class='{'ok' if g.ok else 'bad'}'>"
                         f"{'ok' if g.ok else 'BREACH'}{'' if g.tested else ' (not tested)'}</td></tr>"
                         for g in report.guardrails) + "</table>")
        for t, comps in last.comparisons.items():
            parts.append(f"<h2>{e(t)} vs {e(report.control)} (all days)</h2><table><tr><th>metric</th><th>"
                         f"{e(report.control)}</th><th>{e(t)}</th><th>diff</th><th>95% CI</th><th>rel. lift</th>"
                         "<th>always-valid CS</th><th>always-valid p</th><th>fixed p</th></tr>")
            for m, c in comps.items():
                parts.append(f"<tr><td>{e(m)}</td><td>{_fmt(c['control'])}</td><td>{_fmt(c['treatment'])}</td>"
                             f"<td>{_fmt(c['diff'])}</td><td>[{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}]</td>"
                             f"<td>{_pct(c['rel_lift'])}</td>"
                             f"<td>[{_fmt(c['cs_low'])}, {_fmt(c['cs_high'])}]</td>"
                             f"<td>{_fmt(c['always_valid_p_running'])}</td><td>{_fmt(c['p_value'])}</td></tr>")
            parts.append("</table>")
    parts.append("<h2>Per day and arm (each day on its own)</h2><table><tr><th>day</th><th>arm</th><th>users</th>"
                 "<th>requests</th>" + "".join(f"<th>{e(m)}</th>" for m in OUTCOME_METRICS)
                 + "<th>p50 ms</th><th>p99 ms</th><th>fallback</th></tr>")
    for d in report.daily:
        for a, r in d.arms.items():
            parts.append(f"<tr><td>{d.date}</td><td>{e(a)}</td><td>{r.users}</td><td>{r.requests}</td>"
                         + "".join(f"<td>{_fmt(r.metrics[m]['value'])}</td>" for m in OUTCOME_METRICS)
                         + f"<td>{_fmt(r.service['latency_p50_ms'])}</td><td>{_fmt(r.service['latency_p99_ms'])}</td>"
                           f"<td>{_fmt(r.service['fallback_rate'])}</td></tr>")
    parts.append("</table>")
    if with_plots and report.cumulative:
        for title, charts in plots(report):
            parts.append(f"<h3>{e(title)}</h3><div>{''.join(charts)}</div>")
    parts.append(f"<h2>Data</h2><pre>{e(json.dumps(report.data, indent=1))}</pre></body></html>")
    return "".join(parts)


def write_report(report: ABReport, out_dir: str | Path, with_plots: bool = True) -> dict[str, str]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_JSON).write_text(report.model_dump_json(indent=1))
    (out / REPORT_HTML).write_text(render_html(report, with_plots))
    return {"json": str(out / REPORT_JSON), "html": str(out / REPORT_HTML)}


def load_report(path: str | Path) -> ABReport:
    p = Path(path)
    p = p / REPORT_JSON if p.is_dir() else p
    if not p.is_file():
        raise DataError(f"no A/B report at {path}")
    try:
        return ABReport.model_validate_json(p.read_text())
    except Exception as exc:  # noqa: BLE001 - a file that is not a report
        raise DataError(f"{p} is not an A/B report: {str(exc)[:200]}") from None
