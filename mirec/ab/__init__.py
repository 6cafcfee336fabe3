"""A/B testing that decides: feedback joined to served answers, per-arm outcomes over users, an always-valid
sequential test, SRM, guardrails, the decision and its promotion; the offline champion/challenger gate.

Modules: `events` (read the logs), `join` (feedback -> answers), `metrics` (per-user outcomes), `stats`
(delta method, mSPRT, SRM), `report` (`build_report`, `write_report`), `promote` (report -> next release's
split), `gate` (offline champion/challenger decision). See docs/ab.md.
"""

from mirec.ab.config import ABConfig, Guardrails

__all__ = ["ABConfig", "Guardrails"]
