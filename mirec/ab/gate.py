"""The offline champion/challenger gate: a candidate may ship only if, on the same offline split, it beats the
strongest baseline AND the deployed champion by a margin, and its collapse guards hold.

    champion = read_champion_metrics("file:///releases/mirec/current")      # or None: nothing deployed yet
    d = champion_challenger_decision(candidate_metrics, baseline_metrics, champion, GateRule(metric="recall@50"))
    d.promote, d.reasons   # -> the gate report

Inputs are metric dicts as `mirec evaluate` writes them (e.g. {"recall@50": 0.12, "interest_cos": 0.3,
"effective_interests": 2.8}), optionally with the evaluation's `split_id` (mirec.evaluate.split_fingerprint). The
champion's metrics come from the release it was shipped in (`package.json` of `mirec package`, whose candidates
carry their evaluation); numbers are compared only on the same offline split: when the candidate has a split_id,
a baseline or champion evaluated on another split (or on an unknown one) fails its check (`on_split_mismatch:
warn` compares anyway and says so) -- re-evaluate the champion on this split.

In the training pipeline this is the gate step's extra rule (`mirec.gate.gate(..., baselines_dir=...,
release_store=...)`, which builds it in `mirec.gate.champion_challenger_rule`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, NamedTuple
from urllib.parse import urlparse

from pydantic import BaseModel, Field

from mirec.config import StrictModel
from mirec.errors import DataError


class CollapseGuard(StrictModel):
    metric: str
    op: str = Field(pattern="^(<=|>=)$")
    bound: float


#: the evaluate step's names: interest_cos = mean pairwise cosine between a user's K interests (1 = collapsed), with
#: the pipeline gate's own bound (mirec.gate.DEFAULT_THRESHOLDS max_interest_cos: 0.95; MIND at the main job's
#: defaults sits at ~0.91)
DEFAULT_GUARDS = [CollapseGuard(metric="interest_cos", op="<=", bound=0.95),
                  CollapseGuard(metric="effective_interests", op=">=", bound=1.2)]


class GateRule(StrictModel):
    metric: str = "recall@50"
    #: required improvement over the deployed champion
    margin: float = Field(0.02, ge=0)
    #: required improvement over the best baseline (None = `margin`). 0 by default = at least equal: the
    #: baselines are re-fitted on the very same split every run (no noise between them and the candidate), and
    #: on data where item-kNN sits near the Bayes ceiling (the embedded synthetic set: 0.55 against a ceiling of
    #: 0.58, benchmarks/synth_ceiling.py) a 2% margin would refuse every model -- the champion's margin is what
    #: keeps a release from being replaced by noise
    baseline_margin: float | None = Field(0.0, ge=0)
    #: "relative" (candidate >= other * (1 + margin)) or "absolute" (candidate >= other + margin)
    margin_kind: str = Field("relative", pattern="^(relative|absolute)$")
    collapse_guards: list[CollapseGuard] = Field(default_factory=lambda: list(DEFAULT_GUARDS))
    #: a missing champion (first release) passes the champion check; set False to require one
    allow_no_champion: bool = True
    #: a baseline / champion evaluated on another offline split than the candidate: fail its check, or warn
    on_split_mismatch: str = Field("fail", pattern="^(fail|warn)$")


class Check(BaseModel):
    name: str
    ok: bool
    value: float | None
    needs: str
    detail: str


class GateDecision(BaseModel):
    promote: bool
    metric: str
    candidate: float | None
    best_baseline: str | None
    baseline: float | None
    champion: float | None
    champion_name: str | None
    checks: list[Check]
    reasons: list[str]


def _needed(other: float, rule: GateRule, margin: float | None = None) -> float:
    margin = rule.margin if margin is None else margin
    return other * (1 + margin) if rule.margin_kind == "relative" else other + margin


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else f


def _split_check(what: str, cand_split: str | None, others: dict[str, str | None], rule: GateRule) -> Check | None:
    """Same offline split as the candidate? None when the candidate's split is unknown (ad-hoc callers)."""
    if not cand_split or not others:
        return None
    bad = {n: v for n, v in others.items() if v != cand_split}
    detail = (f"split {cand_split}" if not bad else "candidate split " + cand_split + "; " + ", ".join(
        f"{n} on {v or 'an unknown split'}" for n, v in bad.items()) + (
        ": re-evaluate on this split" if rule.on_split_mismatch == "fail" else ": compared anyway (warn)"))
    return Check(name=f"{what} on the same split", ok=not bad or rule.on_split_mismatch == "warn", value=None,
                 needs="the candidate's split", detail=detail)


def champion_challenger_decision(candidate: dict, baselines: dict[str, dict], champion: dict | None,
                                 rule: GateRule | None = None, champion_name: str | None = None) -> GateDecision:
    """Decide with numbers. `baselines`: name -> metrics (item-kNN, popularity, single-interest...); every dict
    may carry its evaluation's `split_id`."""
    rule = rule or GateRule()
    m = rule.metric
    cand = _num(candidate.get(m))
    cand_split = candidate.get("split_id")
    checks: list[Check] = []
    if cand is None:
        checks.append(Check(name=f"candidate {m}", ok=False, value=None, needs="present",
                            detail=f"the candidate has no {m}"))
    same = _split_check("baselines", cand_split, {n: b.get("split_id") for n, b in baselines.items()}, rule)
    if same is not None:
        checks.append(same)
    scored = {n: _num(b.get(m)) for n, b in baselines.items()}
    scored = {n: v for n, v in scored.items() if v is not None}
    best = max(scored, key=scored.get) if scored else None
    if best is None:
        checks.append(Check(name="beats baselines", ok=False, value=cand, needs="a baseline",
                            detail=f"no baseline has {m}: the gate cannot tell the candidate is any good"))
    else:
        bmargin = rule.margin if rule.baseline_margin is None else rule.baseline_margin
        need = _needed(scored[best], rule, bmargin)
        checks.append(Check(name="beats baselines", ok=cand is not None and cand >= need, value=cand,
                            needs=f">= {need:.4f}", detail=f"best baseline {best} {m} = {scored[best]:.4f}, margin "
                            f"{bmargin:g} ({rule.margin_kind})"))
    champ = _num((champion or {}).get(m))
    if champion is None or champ is None:
        checks.append(Check(name="beats champion", ok=rule.allow_no_champion, value=cand, needs="a champion",
                            detail=("no champion deployed (first release): decided on the baselines alone"
                                    if rule.allow_no_champion else "no champion deployed and allow_no_champion "
                                    "is false") if champion is None else f"the champion's metrics have no {m}"))
    else:
        same = _split_check("champion", cand_split, {champion_name or "champion": champion.get("split_id")}, rule)
        if same is not None:
            checks.append(same)
        need = _needed(champ, rule)
        checks.append(Check(name="beats champion", ok=cand is not None and cand >= need, value=cand,
                            needs=f">= {need:.4f}", detail=f"champion {champion_name or ''} {m} = {champ:.4f}, "
                            f"margin {rule.margin:g} ({rule.margin_kind})"))
    for g in rule.collapse_guards:
        v = _num(candidate.get(g.metric))
        ok = v is not None and (v <= g.bound if g.op == "<=" else v >= g.bound)
        checks.append(Check(name=f"collapse {g.metric}", ok=ok, value=v, needs=f"{g.op} {g.bound:g}",
                            detail="missing" if v is None else f"{g.metric} = {v:.4f}"))
    reasons = [f"{'PASS' if c.ok else 'FAIL'} {c.name}: {'n/a' if c.value is None else f'{c.value:.4f}'} "
               f"(needs {c.needs}; {c.detail})" for c in checks]
    return GateDecision(promote=all(c.ok for c in checks), metric=m, candidate=cand, best_baseline=best,
                        baseline=scored.get(best) if best else None, champion=champ, champion_name=champion_name,
                        checks=checks, reasons=reasons)


def _read_release_dir(root: Path, name: str | None) -> tuple[str, dict] | None:
    pkg = root / "package.json"
    if not pkg.is_file():
        return None
    try:
        cands = json.loads(pkg.read_text()).get("candidates") or []
    except json.JSONDecodeError as exc:
        raise DataError(f"{pkg} is not JSON: {exc}") from None
    by_name = {c.get("name"): c for c in cands}
    if name is None:
        values = root / "values-release.yaml"
        if values.is_file():
            import yaml

            arms = ((yaml.safe_load(values.read_text()) or {}).get("api", {}).get("settings", {})
                    .get("experiment", {}).get("arms") or [])
            if arms:
                name = max(arms, key=lambda a: float(a.get("weight", 0))).get("model")
        if name is None and len(cands) == 1:
            name = cands[0].get("name")
    if name not in by_name:
        raise DataError(f"release {root}: champion {name!r} not among the packaged candidates {list(by_name)}")
    return name, flat_metrics(by_name[name].get("metrics") or {})


def flat_metrics(m: dict) -> dict:
    """A candidate's metrics as package.json carries them -- the evaluation's metrics.json ({"split", "split_id",
    "n_users", "metrics": {...}}) or an already flat dict -- as one flat dict (metrics + split, split_id,
    n_users)."""
    if isinstance(m.get("metrics"), dict):
        return {**m["metrics"], **{k: m[k] for k in ("split", "split_id", "n_users") if k in m}}
    return dict(m)


def read_champion_metrics(release_uri: str | Path, name: str | None = None) -> tuple[str, dict] | None:
    """(champion name, its offline metrics) from the deployed release, or None when nothing is deployed there.

    A published release (`mirec.release.store`: release.json manifest, any fsspec URI: s3://, gs://, file://) is
    read through `fetch_release` (package.json + values-release.yaml, sha256-verified); a plain local folder with
    package.json (an unpublished deploy step output) is read as it is. The champion is `name`, else the model of
    the arm with the largest weight in values-release.yaml, else the only packaged candidate."""
    import tempfile

    from mirec.release.store import MANIFEST, ReleaseError, fetch_release, read_manifest

    s = str(release_uri)
    local = Path(urlparse(s).path) if s.startswith("file://") else (None if "://" in s else Path(s))
    if local is not None and not (local / MANIFEST).is_file():
        return _read_release_dir(local, name) if local.is_dir() else None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            listed = {f.path for f in read_manifest(s).files}
        except ReleaseError as exc:
            if "not found" in str(exc):
                return None  # no release published there yet: no champion
            raise
        parts = [p for p in ("package.json", "values-release.yaml") if p in listed]
        if not parts:
            return None
        fetch_release(s, tmp, parts=parts)
        return _read_release_dir(Path(tmp), name)


def resolve_champion(release_store: str = "", release_name: str = "mirec", champion_release: str = "",
                     name: str | None = None) -> dict | None:
    """The deployed champion: {"name", "uri", "metrics"} or None (nothing deployed: a first release).

    `champion_release`: the deployed release's URI (what the chart's `release.uri` points at); "none" = no
    champion; "" = the newest release published under <release_store>/<release_name>/ (mirec.release.store.
    latest_release; no store or nothing published = None)."""
    uri = (champion_release or "").strip()
    if uri.lower() == "none":
        return None
    if not uri:
        if not release_store:
            return None
        from mirec.release.store import latest_release

        uri = latest_release(release_store, release_name) or ""
        if not uri:
            return None
    got = read_champion_metrics(uri, name)
    if got is None:
        return None
    return {"name": got[0], "uri": uri, "metrics": got[1]}


class RuleVerdict(NamedTuple):
    """One check's verdict, shaped like the pipeline gate's RuleResult (passed, reason)."""

    passed: bool
    reason: str


def candidate_rule(baselines: dict[str, dict], champion: dict | None, rule: GateRule | None = None,
                   champion_name: str | None = None) -> Callable[[Any], list[RuleVerdict]]:
    """The champion/challenger decision as an extra rule of the pipeline gate (`mirec.gate.gate(...,
    extra_rules=[candidate_rule(...)])`): called with a candidate that has `.metrics`, it returns one
    (passed, reason) per check, so the gate report shows every number."""

    def check(candidate: Any) -> list[RuleVerdict]:
        metrics = {**dict(candidate.metrics), "split_id": getattr(candidate, "split_id", None)}
        d = champion_challenger_decision(metrics, baselines, champion, rule, champion_name)
        return [RuleVerdict(c.ok, r) for c, r in zip(d.checks, d.reasons)]

    return check
