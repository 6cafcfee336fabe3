"""The offline gate: which trained candidates may ship.

    rules = parse_thresholds({"primary": "recall@50", "min_recall@50": 0.02, "max_interest_cos": 0.95})
    decision = decide({"A": CandidateEvaluation(...), "B": ...}, *rules)

`decide` is the whole decision, a pure function of typed inputs: every threshold rule must hold (a metric that
is missing fails its rule), then every extra `CandidateRule` (e.g. a champion/challenger comparison against the
deployed release: a callable that sees the candidate and returns its verdicts) must hold too. The winner is the
passing candidate with the best primary metric ("none" if none passes). `gate` is the pipeline step around it:
it reads the evaluation step records, writes decision.json and the comparison report (mirec.reports).

The pipeline's champion/challenger rule (mirec.ab.gate) is one such extra rule: `gate(..., baselines_dir=...,
release_store=..., champion_release=...)` reads the baselines' evaluations (steps.evaluate_baselines, same split)
and the deployed champion's offline metrics from the release store, and every candidate must beat the best
baseline and the champion by `thresholds["champion_challenger"]["margin"]` with its collapse guards
(`champion_challenger: false` or null switches it off; without a champion -- a first release -- it decides on the
baselines alone and decision.json / the report say so).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, NamedTuple, Sequence

from pydantic import BaseModel, Field

from mirec.errors import ConfigError, MirecError
from mirec.reports import _plot_accuracy_diversity, comparison_table, render_html, render_markdown
from mirec.stepio import DECISION_FILE, fresh_dir, now_utc, num, read_step, write_step

#: default gate: quality floors and collapse ceilings (flat keys: min_<metric> / max_<metric>)
DEFAULT_THRESHOLDS: dict[str, Any] = {
    "primary": "recall@50",        # the winner = the passing candidate with the highest primary metric
    "min_recall@50": 0.02,
    "min_ndcg@50": 0.005,
    "max_interest_cos": 0.95,      # mean pairwise cosine between one user's K interests (1 = collapsed)
    "max_single_interest_share": 0.9,  # share of users whose whole list came from one interest
}


#: the thresholds key of the champion/challenger rule: mirec.ab.gate.GateRule's fields ({} = its defaults), or None
CHAMPION_KEY = "champion_challenger"


class GateRule(NamedTuple):
    """One threshold: `metric op bound` (op ">=" for min_ keys, "<=" for max_ keys)."""
    metric: str
    op: Literal[">=", "<="]
    bound: float


class RuleResult(NamedTuple):
    passed: bool
    reason: str  # "PASS ..." / "FAIL ..." (shown in the report)


class CandidateEvaluation(BaseModel):
    """What the gate knows about one candidate: its offline metrics (the evaluate step's record)."""
    name: str
    model: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    tradeoff: list[dict] = Field(default_factory=list)
    split_id: str | None = None  # the evaluated split's fingerprint (mirec.evaluate.split_fingerprint)


#: an extra rule: candidate -> verdicts (e.g. "beats the deployed champion by a margin")
CandidateRule = Callable[[CandidateEvaluation], Sequence[RuleResult]]


class CandidateVerdict(BaseModel):
    passed: bool
    model: str | None
    reasons: list[str]
    primary: float | None


def parse_thresholds(thresholds: Mapping[str, Any] | None) -> tuple[str, list[GateRule]]:
    """DEFAULT_THRESHOLDS overlaid with `thresholds`; a key set to None disables that default rule.
    (`champion_challenger` is not a threshold: `gate` reads it.)"""
    th = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    th.pop(CHAMPION_KEY, None)
    primary = str(th.pop("primary", DEFAULT_THRESHOLDS["primary"]))
    rules = []
    for key, val in th.items():
        if val is None:
            continue
        if key.startswith("min_"):
            rules.append(GateRule(key[4:], ">=", float(val)))
        elif key.startswith("max_"):
            rules.append(GateRule(key[4:], "<=", float(val)))
        else:
            raise ConfigError(f"threshold key {key!r} must start with min_ or max_ (or be 'primary')")
    return primary, rules


def check_rule(rule: GateRule, metrics: Mapping[str, Any]) -> RuleResult:
    v = num(metrics.get(rule.metric))
    ok = v is not None and (v >= rule.bound if rule.op == ">=" else v <= rule.bound)
    shown = "missing" if v is None else f"{v:.4f}"
    return RuleResult(ok, f"{'PASS' if ok else 'FAIL'} {rule.metric} = {shown} (needs {rule.op} {rule.bound:g})")


def judge(candidate: CandidateEvaluation, primary: str, rules: Sequence[GateRule],
          extra_rules: Sequence[CandidateRule] = ()) -> CandidateVerdict:
    results = [check_rule(r, candidate.metrics) for r in rules]
    for extra in extra_rules:
        results.extend(extra(candidate))
    return CandidateVerdict(passed=all(r.passed for r in results), model=candidate.model,
                            reasons=[r.reason for r in results], primary=num(candidate.metrics.get(primary)))


def decide(candidates: Mapping[str, CandidateEvaluation], primary: str, rules: Sequence[GateRule],
           extra_rules: Sequence[CandidateRule] = ()) -> dict:
    """The gate decision (a JSON-able dict, the content of decision.json)."""
    verdicts = {n: judge(c, primary, rules, extra_rules) for n, c in candidates.items()}
    passing = [n for n, v in verdicts.items() if v.passed]
    winner = max(passing, key=lambda n: verdicts[n].primary or -1.0) if passing else "none"
    return {"winner": winner, "primary": primary, "passed": passing,
            "rejected": [n for n in verdicts if n not in passing],
            "thresholds": [{"metric": r.metric, "op": r.op, "bound": r.bound} for r in rules],
            "candidates": {n: v.model_dump() for n, v in verdicts.items()},
            "metrics": {n: c.metrics for n, c in candidates.items()},
            "tradeoff": {n: c.tradeoff for n, c in candidates.items()},
            "decided": now_utc()}


def read_evaluations(eval_dirs: Mapping[str, str | Path]) -> dict[str, CandidateEvaluation]:
    out = {}
    for name, d in eval_dirs.items():
        st = read_step(d)
        if st.get("status") != "ok":
            raise MirecError(f"gate: no evaluation for candidate {name} in {d}")
        out[name] = CandidateEvaluation(name=name, model=st.get("model"), metrics=st["metrics"],
                                        tradeoff=st.get("tradeoff") or [], split_id=st.get("split_id"))
    return out


def read_baselines(baselines_dir: str | Path | None) -> dict[str, dict]:
    """name -> metrics (+ split_id) of the baselines step's evaluations ({} when it evaluated none)."""
    if baselines_dir is None:
        return {}
    st = read_step(baselines_dir)
    if st.get("status") not in ("ok", "skipped"):
        raise MirecError(f"gate: no baselines evaluation in {baselines_dir}")
    return {n: {**b.get("metrics", {}), "split_id": b.get("split_id")} for n, b in (st.get("baselines") or {}).items()}


def champion_challenger_rule(rule_config: Mapping[str, Any] | None, baselines_dir: str | Path | None,
                             release_store: str = "", release_name: str = "mirec",
                             champion_release: str = "") -> tuple[CandidateRule, dict]:
    """The champion/challenger extra rule (mirec.ab.gate.candidate_rule) and what it compared against (for
    decision.json): the baselines' numbers, the champion (name, release URI, metric, split) or why there is none."""
    from mirec.ab.gate import GateRule as ChampionRule
    from mirec.ab.gate import candidate_rule, resolve_champion

    try:
        rule = ChampionRule.model_validate(dict(rule_config or {}))
    except Exception as exc:
        raise ConfigError(f"invalid thresholds.{CHAMPION_KEY}: {' '.join(str(exc).split())[:400]}") from None
    baselines = read_baselines(baselines_dir)
    champ = resolve_champion(release_store, release_name, champion_release)
    m = rule.metric
    scored = {n: num(b.get(m)) for n, b in baselines.items() if num(b.get(m)) is not None}
    best = max(scored, key=scored.get) if scored else None
    summary = {"rule": rule.model_dump(), "metric": m,
               "baselines": {n: {m: num(b.get(m)), "split_id": b.get("split_id")} for n, b in baselines.items()},
               "best_baseline": best, "best_baseline_value": scored.get(best) if best else None,
               "champion": None if champ is None else {
                   "name": champ["name"], "uri": champ["uri"], m: num(champ["metrics"].get(m)),
                   "split_id": champ["metrics"].get("split_id")},
               "first_release": champ is None}
    if champ is None:
        where = champion_release or (f"{release_store.rstrip('/')}/{release_name}/" if release_store else "")
        why = (" (champion_release: none)" if where.strip().lower() == "none" else
               f" (nothing published at {where})" if where else " (no release store given)")
        summary["note"] = ("no champion deployed" + why + ": first release, decided on the baselines rule alone"
                           + ("" if rule.allow_no_champion else "; allow_no_champion is false: refused"))
    return candidate_rule(baselines, champ["metrics"] if champ else None, rule, champ["name"] if champ else None), \
        summary


def gate(eval_dirs: Mapping[str, str | Path], thresholds: Mapping[str, Any] | None, out_dir: str | Path,
         report_md: str | Path | None = None, report_html: str | Path | None = None,
         extra_rules: Sequence[CandidateRule] = (), baselines_dir: str | Path | None = None,
         release_store: str = "", release_name: str = "mirec", champion_release: str = "") -> dict:
    """The pipeline step: decide, then write decision.json (+ reasons), the comparison table (Markdown) and an
    HTML report with the accuracy-diversity plot.

    The champion/challenger rule applies when thresholds has `champion_challenger` (a mapping; false or None =
    off: kfp cannot pass a None inside a dict parameter, so pipelines say false), or,
    when that key is absent, whenever baselines_dir is given (the pipeline's gate: a thresholds override cannot
    drop it by leaving the key out). Its comparison lands in decision.json's `champion_challenger` and every
    candidate's reasons."""
    primary, rules = parse_thresholds(thresholds)
    th = dict(thresholds or {})
    cc_config = th.get(CHAMPION_KEY, {} if baselines_dir is not None else None)
    extra, cc = list(extra_rules), None
    if cc_config is not None and cc_config is not False:
        if not isinstance(cc_config, Mapping):
            raise ConfigError(f"thresholds.{CHAMPION_KEY} must be a mapping (mirec.ab.gate.GateRule), false or null")
        rule, cc = champion_challenger_rule(cc_config, baselines_dir, release_store, release_name, champion_release)
        extra.append(rule)
    out = fresh_dir(out_dir)
    decision = decide(read_evaluations(eval_dirs), primary, rules, extra)
    decision["champion_challenger"] = cc or {"enabled": False}
    if cc is not None:
        cc["enabled"] = True
    (out / DECISION_FILE).write_text(json.dumps(decision, indent=2))
    table = comparison_table(decision)
    md = render_markdown(decision, table)
    (out / "report.md").write_text(md)
    plot_png = out / "accuracy_diversity.png"
    plot_ok = _plot_accuracy_diversity(decision, plot_png)
    html = render_html(decision, table, plot_png if plot_ok else None)
    (out / "report.html").write_text(html)
    for path, text in ((report_md, md), (report_html, html)):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
    cc_step = None if cc is None else {"best_baseline": cc["best_baseline"], "first_release": cc["first_release"],
                                       "champion": (cc["champion"] or {}).get("name"),
                                       "champion_uri": (cc["champion"] or {}).get("uri")}
    write_step(out, "gate", {"status": "ok", "winner": decision["winner"], "passed": decision["passed"],
                             "rejected": decision["rejected"], "primary": primary, "champion_challenger": cc_step})
    return decision


def gate_passed(decision_dir: str | Path, name: str) -> bool:
    d = json.loads((Path(decision_dir) / DECISION_FILE).read_text())
    return bool(d["candidates"].get(name, {}).get("passed", False))
