"""Request, response and served-log schemas (pydantic). The log is what monitoring reads.

Served log: one JSON line per answered request (`ServedLog`). The monitoring reference is made
of the same records produced offline for the test users, so both sides compare like with like.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_N = 500
MAX_HISTORY = 1000


class RecommendRequest(BaseModel):
    """`{"user_id": ..., "history": [item ids], "n": 50, "diversity": null|0..1, "exclude_seen": true}`."""

    model_config = ConfigDict(extra="forbid")

    user_id: str | int | None = None
    history: list[str | int] | None = Field(None, max_length=MAX_HISTORY)
    n: int = Field(50, ge=1, le=MAX_N)
    diversity: float | None = Field(None, ge=0.0, le=1.0)
    exclude_seen: bool = True

    @field_validator("user_id")
    @classmethod
    def _user_id_str(cls, v):
        return None if v is None else str(v)

    @field_validator("history")
    @classmethod
    def _history_str(cls, v):
        return None if v is None else [str(x) for x in v]


class ServedItem(BaseModel):
    item_id: str
    score: float
    interest: int  # -1 for fallback items (no interest supplied them)
    category: str | None = None


class RecommendResponse(BaseModel):
    items: list[ServedItem]
    model: str
    version: str
    fallback: Literal["popularity"] | None = None
    arm: str | None = None
    request_id: str | None = None
    unknown_items: int = 0
    history_source: Literal["request", "feast", "none"] = "request"


class InterestStats(BaseModel):
    k: int = 0
    mean_pairwise_cos: float | None = None
    interest_norms: list[float] = Field(default_factory=list)


class HandlerAnswer(BaseModel):
    """The TorchServe handler's 200 body (`RecommendService` -> `Answer`): the response fields plus
    what the served log needs. The API parses it once, from bytes, with this model."""

    items: list[ServedItem]
    model: str
    version: str
    fallback: Literal["popularity"] | None = None
    unknown_items: int = 0
    history_source: Literal["request", "feast", "none"] = "request"
    history_len: int = 0
    interest_stats: InterestStats = Field(default_factory=InterestStats)
    history_categories: dict[str, int] = Field(default_factory=dict)
    feast_fallback: bool = False


class ServedLog(BaseModel):
    """One served answer. Schema version 1; document changes in docs/serving.md."""

    schema_version: int = 1
    ts: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    request_id: str
    user_id: str | None
    arm: str | None = None
    model: str
    version: str
    n: int
    diversity: float | None = None
    history_len: int = 0
    unknown_items: int = 0
    history_source: Literal["request", "feast", "none"] = "request"
    fallback: Literal["popularity"] | None = None
    feast_fallback: bool = False
    items: list[ServedItem] = Field(default_factory=list)
    interest_stats: InterestStats = Field(default_factory=InterestStats)
    history_categories: dict[str, int] = Field(default_factory=dict)
    latency_ms: float = 0.0
