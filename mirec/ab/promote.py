"""`mirec ab promote`: a decided A/B report -> the next release's traffic split (Helm values), or a refusal.

    plan = promotion_plan(load_report("artifacts/ab/latest"), ramp=[0.5, 1.0])
    write_promotion(plan, "artifacts/release-next")      # values-release.yaml + promotion.json

Refused (PromotionRefused, exit 1 in the CLI) unless the report's decision is a winner, SRM held on every day
and every guardrail held: a split can only move on evidence the experiment was sound. The winner's share moves
to the next step of `ramp` above its current share (default [1.0]: straight to 100/0); the other arms share the
rest in proportion to their current weights (0 at the last step).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel

from mirec.ab.report import ABReport
from mirec.errors import MirecError


class PromotionRefused(MirecError):
    """The report does not justify moving traffic (no winner, SRM, guardrail)."""


class PromotionPlan(BaseModel):
    winner: str
    winner_model: str
    previous: dict[str, float]
    arms: list[dict]  # [{name, model, weight}] for api.settings.experiment.arms
    step: float
    final: bool  # the winner gets all traffic
    reasons: list[str]


def _model_of(report: ABReport, arm: str) -> str:
    models = report.data.get("arm_models", {}).get(arm) or []
    names = sorted({m.split(":")[0] for m in models})
    if len(names) != 1:
        raise PromotionRefused(f"arm {arm} was served by {names or 'no'} model(s); cannot tell which to promote")
    return names[0]


def promotion_plan(report: ABReport, ramp: list[float] | None = None) -> PromotionPlan:
    ramp = sorted(ramp or [1.0])
    if not ramp or ramp[0] <= 0 or ramp[-1] != 1.0 or any(r > 1 for r in ramp):
        raise PromotionRefused(f"ramp must be increasing shares in (0, 1] ending at 1.0, got {ramp}")
    d = report.decision
    bad_srm = [c.day for c in report.cumulative if c.srm is not None and c.srm.tested and not c.srm.ok]
    if bad_srm:
        raise PromotionRefused(f"SRM failed on day(s) {bad_srm}: the arms are not comparable; fix the assignment "
                               "or logging and rerun the experiment")
    broken = [g for g in report.guardrails if not g.ok]
    if broken:
        raise PromotionRefused("guardrail breach: " + "; ".join(
            f"{g.name} of {g.arm} = {g.value} > {g.limit}" for g in broken))
    if d.status != "winner" or not d.winner:
        raise PromotionRefused(f"no winner to promote (decision: {d.status}; {' '.join(d.reasons)[:300]})")
    prev = dict(report.arms)
    share = prev.get(d.winner, 0.0)
    step = next((r for r in ramp if r > share + 1e-9), 1.0)
    others = {a: w for a, w in prev.items() if a != d.winner}
    rest = sum(others.values())
    arms = [{"name": d.winner, "model": _model_of(report, d.winner), "weight": round(step, 6)}]
    for a, w in others.items():
        weight = 0.0 if step >= 1.0 else (1.0 - step) * (w / rest if rest > 0 else 1.0 / len(others))
        arms.append({"name": a, "model": _model_of(report, a), "weight": round(weight, 6)})
    return PromotionPlan(winner=d.winner, winner_model=arms[0]["model"], previous=prev, arms=arms, step=step,
                         final=step >= 1.0, reasons=list(d.reasons))


def write_promotion(plan: PromotionPlan, out_dir: str | Path) -> dict[str, str]:
    """values-release.yaml (api.settings.experiment.arms, as the training pipeline's deploy step writes it) and
    promotion.json. An arm with weight 0 is left out of the values (the API refuses weight 0)."""
    import yaml

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arms = [a for a in plan.arms if a["weight"] > 0]
    values = {"api": {"settings": {"experiment": {"arms": arms}}}}
    (out / "values-release.yaml").write_text(
        "# Written by `mirec ab promote` from an A/B report: the next traffic split.\n"
        "# helm upgrade mirec charts/mirec -f values.yaml -f values-release.yaml\n"
        + yaml.safe_dump(values, sort_keys=False))
    (out / "promotion.json").write_text(json.dumps({**plan.model_dump(), "written": datetime.now(timezone.utc)
                                                    .isoformat()}, indent=2))
    return {"values": str(out / "values-release.yaml"), "plan": str(out / "promotion.json")}
