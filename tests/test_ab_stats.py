"""Statistics of mirec.ab: delta-method intervals cover, the always-valid test keeps its error rate under daily
peeking (where a fixed-horizon test peeked at daily does not), SRM flags a 45/55 skew; the report end to end on
generated logs (winner, A/A, SRM, guardrail veto, bad lines), promotion and its refusals, the offline
champion/challenger gate and the CLI."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from mirec.ab.config import ABConfig
from mirec.ab.gate import CollapseGuard, GateRule, champion_challenger_decision, read_champion_metrics
from mirec.ab.promote import PromotionRefused, promotion_plan, write_promotion
from mirec.ab.report import build_report, load_report, write_report
from mirec.ab.stats import compare, ratio_estimate, srm_check


# ---- estimators ------------------------------------------------------------------------------------------------
def test_ratio_estimate_is_the_mean_and_its_variance_for_unit_denominators():
    x = np.array([1.0, 2.0, 4.0, 7.0])
    e = ratio_estimate(x, np.ones(4))
    assert e.value == pytest.approx(x.mean()) and e.variance == pytest.approx(x.var(ddof=1) / 4)
    assert ratio_estimate(np.zeros(0), np.zeros(0)).value is None


def test_delta_method_interval_covers_over_users_not_requests():
    # users with 1..20 requests and a per-user click propensity: requests of one user are correlated
    rng = np.random.default_rng(0)
    z = 1.959964
    hits_user = hits_naive = 0
    truth = None
    reps = 400
    for _ in range(reps):
        n = 300
        reqs = rng.integers(1, 21, n).astype(float)
        p = rng.beta(1, 6, n)
        clicks = rng.binomial(reqs.astype(int), p).astype(float)
        truth = 1 / 7  # E[p] = 1/7, independent of reqs
        e = ratio_estimate(clicks, reqs)
        hits_user += abs(e.value - truth) <= z * e.se
        naive_se = np.sqrt(e.value * (1 - e.value) / reqs.sum())  # as if every request were independent
        hits_naive += abs(e.value - truth) <= z * naive_se
    assert 0.92 <= hits_user / reps <= 0.98, hits_user / reps
    assert hits_naive / reps < 0.9  # the request-level interval is too narrow: the test can tell


def test_always_valid_p_keeps_alpha_under_daily_peeking_and_fixed_p_does_not():
    rng = np.random.default_rng(1)
    sims, days, per_day = 300, 8, 60
    fp_seq = fp_fixed = 0
    for _ in range(sims):
        a = rng.exponential(1.0, (days, per_day))
        b = rng.exponential(1.0, (days, per_day))
        running, fixed_hit = 1.0, False
        for d in range(1, days + 1):
            ea, eb = ratio_estimate(a[:d].ravel(), np.ones(d * per_day)), ratio_estimate(b[:d].ravel(), np.ones(d * per_day))
            c = compare(ea, eb, alpha=0.05, tau=0.1)
            running = min(running, c.always_valid_p)
            fixed_hit |= c.p_value <= 0.05
        fp_seq += running <= 0.05
        fp_fixed += fixed_hit
    assert fp_seq / sims <= 0.05, fp_seq / sims
    assert fp_fixed / sims > 0.1, fp_fixed / sims  # naive daily peeking inflates the error


def test_sequential_test_detects_a_real_effect_and_its_sequence_holds_the_truth():
    rng = np.random.default_rng(2)
    a, b = rng.exponential(1.0, 4000), rng.exponential(1.15, 4000)
    c = compare(ratio_estimate(a, np.ones(4000)), ratio_estimate(b, np.ones(4000)), alpha=0.05, tau=0.1)
    assert c.always_valid_p < 0.05 and c.cs_low < 0.15 < c.cs_high and c.ci_low > 0
    assert (c.cs_high - c.cs_low) > (c.ci_high - c.ci_low)  # always valid costs width


def test_srm():
    assert not srm_check({"A": 900, "B": 1100}, {"A": 0.5, "B": 0.5}).ok  # 45/55 of 2000 users
    assert srm_check({"A": 990, "B": 1010}, {"A": 0.5, "B": 0.5}).ok
    assert srm_check({"A": 900, "B": 1100}, {"A": 0.45, "B": 0.55}).ok
    small = srm_check({"A": 3, "B": 9}, {"A": 0.5, "B": 0.5})
    assert small.ok and not small.tested


# ---- the report end to end on generated logs -------------------------------------------------------------------
def write_logs(d: Path, *, users=800, days=3, p=(0.10, 0.10), share_a=0.5, latency=(5.0, 5.0), seed=0,
               bad_lines=0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    t0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
    arm_of = {u: ("A" if rng.random() < share_a else "B") for u in range(users)}
    with open(d / "served.jsonl", "w") as fs, open(d / "feedback.jsonl", "w") as ff:
        for day in range(days):
            for u in range(users):
                arm = arm_of[u]
                i = 0 if arm == "A" else 1
                rid = f"r{day}-{u}"
                ts = t0 + timedelta(days=day, seconds=int(rng.integers(0, 80_000)))
                items = [{"item_id": f"i{rng.integers(0, 300)}", "score": 0.1, "interest": int(rng.integers(0, 4)),
                          "category": f"c{rng.integers(0, 6)}"} for _ in range(10)]
                fs.write(json.dumps({"ts": ts.isoformat(), "request_id": rid, "user_id": f"u{u}", "arm": arm,
                                     "model": f"model_{arm}", "version": "1", "n": 10, "items": items,
                                     "latency_ms": float(rng.gamma(2, latency[i] / 2)), "fallback": None}) + "\n")
                for pos, it in enumerate(items):
                    if rng.random() < p[i] / (1 + 0.3 * pos):
                        ff.write(json.dumps({"ts": (ts + timedelta(seconds=9)).isoformat(), "request_id": rid,
                                             "user_id": f"u{u}", "item_id": it["item_id"], "type": "click"}) + "\n")
        for _ in range(bad_lines):
            ff.write("{not json\n")
    return d / "served.jsonl", d / "feedback.jsonl"


ARMS = {"A": 0.5, "B": 0.5}


def test_report_names_the_better_arm_writes_json_and_html_and_promotes(tmp_path):
    s, f = write_logs(tmp_path / "logs", p=(0.08, 0.11), bad_lines=2)
    rep = build_report(s, f, ARMS, ABConfig())
    assert rep.decision.status == "winner" and rep.decision.winner == "B", rep.decision
    assert rep.data["feedback"]["bad_lines"] == 2 and rep.data["join"]["unmatched"] == 0
    assert len(rep.daily) == len(rep.cumulative) == 3
    last = rep.cumulative[-1]
    assert last.arms["A"].users + last.arms["B"].users == 800
    c = last.comparisons["B"]["ctr"]
    assert c["ci_low"] > 0 and c["always_valid_p_running"] <= 0.05
    paths = write_report(rep, tmp_path / "out")
    html = Path(paths["html"]).read_text()
    assert "Decision" in html
    # the plots: inline SVG from the per-day aggregates (one chart per metric + difference + sequential test)
    import xml.etree.ElementTree as ET

    svgs = re.findall(r"<svg .*?</svg>", html)
    assert len(svgs) == 6 and all(ET.fromstring(x).tag.endswith("svg") for x in svgs)
    assert "ctr (cumulative, 95% CI)" in html and "<polygon" in svgs[0] and "ctr: sequential test" in html
    again = load_report(tmp_path / "out")
    assert again.decision == rep.decision
    plan = promotion_plan(again, [0.5, 1.0])
    assert plan.winner == "B" and plan.step == 1.0  # B had 0.5 already: the next step is 1.0
    out = write_promotion(plan, tmp_path / "release")
    import yaml

    arms = yaml.safe_load(Path(out["values"]).read_text())["api"]["settings"]["experiment"]["arms"]
    assert arms == [{"name": "B", "model": "model_B", "weight": 1.0}]


def test_aa_has_no_winner_and_promotion_is_refused(tmp_path):
    s, f = write_logs(tmp_path / "logs", p=(0.1, 0.1), seed=3)
    rep = build_report(s, f, ARMS, ABConfig())
    assert rep.decision.status == "no_winner" and rep.decision.winner is None
    with pytest.raises(PromotionRefused, match="no winner"):
        promotion_plan(rep)


def test_skewed_assignment_is_flagged_and_blocks_a_winner(tmp_path):
    s, f = write_logs(tmp_path / "logs", p=(0.08, 0.11), share_a=0.45, users=2000, days=2, seed=4)
    rep = build_report(s, f, ARMS, ABConfig())
    assert rep.decision.status == "srm" and rep.decision.winner is None
    with pytest.raises(PromotionRefused, match="SRM"):
        promotion_plan(rep)


def test_latency_guardrail_vetoes_a_winner(tmp_path):
    s, f = write_logs(tmp_path / "logs", p=(0.08, 0.11), latency=(5.0, 30.0), seed=5)
    rep = build_report(s, f, ARMS, ABConfig())
    assert rep.decision.status == "vetoed", rep.decision
    assert any(g.name == "latency_p99_ms" and not g.ok for g in rep.guardrails)
    with pytest.raises(PromotionRefused, match="guardrail"):
        promotion_plan(rep)


def test_cli_report_and_promote(tmp_path):
    from typer.testing import CliRunner

    from mirec.cli import app

    s, f = write_logs(tmp_path / "logs", p=(0.08, 0.11), days=2, seed=6)
    run = CliRunner().invoke
    r = run(app, ["ab", "report", "--served", str(s), "--feedback", str(f), "--arms", "A=0.5,B=0.5",
                  "--out", str(tmp_path / "rep"), "--no-plots"])
    assert r.exit_code == 0, r.output
    assert "decision: winner -> B" in r.output
    r = run(app, ["ab", "promote", "--report", str(tmp_path / "rep"), "--out", str(tmp_path / "rel"), "--ramp", "0.9,1"])
    assert r.exit_code == 0 and "B=0.9" in r.output, r.output
    r = run(app, ["ab", "report", "--served", str(tmp_path / "missing.jsonl"), "--feedback", str(f), "--arms", "A,B",
                  "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "no log files found" in str(r.exception or r.output)


# ---- offline champion/challenger gate ------------------------------------------------------------------------
GOOD = {"recall@50": 0.20, "interest_cos": 0.3, "effective_interests": 2.5}
BASELINES = {"itemknn": {"recall@50": 0.15}, "popularity": {"recall@50": 0.05}}


def test_gate_needs_to_beat_the_best_baseline_and_the_champion_by_the_margin():
    rule = GateRule(metric="recall@50", margin=0.05)
    d = champion_challenger_decision(GOOD, BASELINES, {"recall@50": 0.18}, rule, "mirec_a")
    assert d.promote and d.best_baseline == "itemknn" and d.champion == 0.18
    d = champion_challenger_decision(GOOD, BASELINES, {"recall@50": 0.195}, rule)  # 0.20 < 0.195 * 1.05
    assert not d.promote and any("FAIL beats champion" in r for r in d.reasons)
    # against the baselines: at least equal by default (baseline_margin 0), or a margin of its own / `margin`
    assert champion_challenger_decision(GOOD, {"itemknn": {"recall@50": 0.199}}, None, rule).promote
    d = champion_challenger_decision(GOOD, {"itemknn": {"recall@50": 0.2001}}, None, rule)
    assert not d.promote and any("FAIL beats baselines" in r for r in d.reasons)
    d = champion_challenger_decision(GOOD, {"itemknn": {"recall@50": 0.199}}, None,
                                     rule.model_copy(update={"baseline_margin": None}))  # 0.20 < 0.199 * 1.05
    assert not d.promote and any("FAIL beats baselines" in r and "margin 0.05" in r for r in d.reasons)
    d = champion_challenger_decision(GOOD, BASELINES, None, rule)
    assert d.promote  # first release: no champion yet
    assert not champion_challenger_decision(GOOD, BASELINES, None, rule.model_copy(update={"allow_no_champion": False})).promote


def test_gate_collapse_guards():
    collapsed = {**GOOD, "interest_cos": 0.97}  # the evaluate step's name for the mean pairwise cosine
    d = champion_challenger_decision(collapsed, BASELINES, None, GateRule())
    assert not d.promote and any("FAIL collapse interest_cos" in r for r in d.reasons)
    rule = GateRule(collapse_guards=[CollapseGuard(metric="effective_interests", op=">=", bound=3.0)])
    assert not champion_challenger_decision(GOOD, BASELINES, None, rule).promote


def test_gate_compares_only_on_the_same_split():
    rule = GateRule(margin=0.05)
    cand = {**GOOD, "split_id": "s1"}
    base = {n: {**b, "split_id": "s1"} for n, b in BASELINES.items()}
    assert champion_challenger_decision(cand, base, {"recall@50": 0.1, "split_id": "s1"}, rule).promote
    d = champion_challenger_decision(cand, base, {"recall@50": 0.1, "split_id": "s0"}, rule, "mirec_a")
    assert not d.promote and any(r.startswith("FAIL champion on the same split") and "mirec_a on s0" in r
                                 for r in d.reasons)
    d = champion_challenger_decision(cand, {**base, "itemknn": BASELINES["itemknn"]}, None, rule)  # unknown split
    assert not d.promote and any("itemknn on an unknown split" in r for r in d.reasons)
    warn = rule.model_copy(update={"on_split_mismatch": "warn"})
    assert champion_challenger_decision(cand, base, {"recall@50": 0.1, "split_id": "s0"}, warn).promote


def test_champion_metrics_flattened_from_the_packaged_evaluation():
    from mirec.ab.gate import flat_metrics

    packaged = {"model": "mind", "split": "test", "split_id": "ab12", "n_users": 200, "metrics": {"recall@50": 0.3}}
    assert flat_metrics(packaged) == {"recall@50": 0.3, "split": "test", "split_id": "ab12", "n_users": 200}
    assert flat_metrics({"recall@50": 0.3}) == {"recall@50": 0.3}


def test_champion_metrics_from_a_release_directory(tmp_path):
    rel = tmp_path / "mirec" / "v7"
    rel.mkdir(parents=True)
    (rel / "package.json").write_text(json.dumps({"candidates": [
        {"name": "mirec_a", "version": "7", "metrics": {"recall@50": 0.17}},
        {"name": "mirec_b", "version": "7", "metrics": {"recall@50": 0.19}}]}))
    (rel / "values-release.yaml").write_text(
        "api:\n  settings:\n    experiment:\n      arms:\n      - {name: A, model: mirec_a, weight: 0.1}\n"
        "      - {name: B, model: mirec_b, weight: 0.9}\n")
    assert read_champion_metrics(f"file://{rel}") == ("mirec_b", {"recall@50": 0.19})
    assert read_champion_metrics(rel, name="mirec_a") == ("mirec_a", {"recall@50": 0.17})
    assert read_champion_metrics(tmp_path / "nothing-deployed") is None


def test_error_rates_from_the_api_metrics_text():
    from mirec.ab.report import error_rates

    text = ('# TYPE mirec_api_requests_total counter\n'
            'mirec_api_requests_total{arm="A",status="200"} 990\nmirec_api_requests_total{arm="A",status="502"} 10\n'
            'mirec_api_requests_total{arm="B",status="200"} 1000\nmirec_api_requests_total{arm="none",status="422"} 5\n')
    assert error_rates(text) == {"A": 0.01, "B": 0.0}
    assert error_rates(None) == {}


def test_champion_metrics_from_a_published_release(tmp_path):
    from mirec.release.store import build_manifest, publish_release, write_manifest

    local = tmp_path / "staged"
    local.mkdir()
    (local / "package.json").write_text(json.dumps({"candidates": [
        {"name": "mirec_a", "version": "3", "metrics": {"recall@50": 0.21}}]}))
    write_manifest(local, build_manifest(local, "mirec", "3", "2026-01-01T00:00:00Z"))
    uri = f"file://{tmp_path / 'store' / 'mirec' / '3'}"
    publish_release(local, uri)
    assert read_champion_metrics(uri) == ("mirec_a", {"recall@50": 0.21})
    assert read_champion_metrics(f"file://{tmp_path / 'store' / 'mirec' / '4'}") is None  # nothing published there
    (tmp_path / "store" / "mirec" / "3" / "package.json").write_text("{}")  # tampered: refused, not read
    from mirec.release.store import ReleaseError

    with pytest.raises(ReleaseError, match="checksum"):
        read_champion_metrics(uri)


def test_champion_challenger_as_an_extra_rule_of_the_pipeline_gate():
    gate = pytest.importorskip("mirec.gate")  # issue 16's gate module (pure decide())
    from mirec.ab.gate import candidate_rule

    rule = candidate_rule(
        BASELINES, {"recall@50": 0.195}, GateRule(margin=0.05), "mirec_b")
    cands = {"A": gate.CandidateEvaluation(name="A", metrics=GOOD),
             "B": gate.CandidateEvaluation(name="B", metrics={**GOOD, "recall@50": 0.25})}
    d = gate.decide(cands, "recall@50", [], [rule])
    assert d["passed"] == ["B"] and d["winner"] == "B"
    assert any("FAIL beats champion" in r for r in d["candidates"]["A"]["reasons"])


def test_a_logs_path_means_the_file_and_every_file_rotated_from_it(tmp_path):
    """`mirec ab report --feedback logs/feedback.jsonl`: the hourly files (and size splits, single-layout stamps)
    rotated from it are read too, also before the current hour's file exists; other files are not."""
    from mirec.ab.events import expand_paths

    rotated = ["feedback.jsonl.2026-01-01T10", "feedback.jsonl.2026-01-01T10.1", "feedback.jsonl.2026-01-01T11",
               "feedback.jsonl.20260101T120000.123456Z"]
    for name in [*rotated, "feedback.jsonl.bak", "feedback.jsonl2", "served.jsonl.2026-01-01T10"]:
        (tmp_path / name).write_text("{}\n")
    assert [p.name for p in expand_paths(tmp_path / "feedback.jsonl")] == sorted(rotated)
    (tmp_path / "feedback.jsonl").write_text("{}\n")
    assert [p.name for p in expand_paths(str(tmp_path / "feedback.jsonl"))] == sorted(["feedback.jsonl", *rotated])
    assert [p.name for p in expand_paths(tmp_path / "feedback.jsonl.2026-01-01T11")] == ["feedback.jsonl.2026-01-01T11"]
