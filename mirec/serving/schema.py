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
MAX_ID_LEN = 256  # characters of a user id or an item id (an int id counts its decimal digits)


class RecommendRequest(BaseModel):
    """`{"user_id": ..., "history": [item ids], "n": 50, "diversity": null|0..1, "exclude_seen": true}`.

    Requests from clients are validated strictly (`mirec.serving.service.parse_request` calls
    `model_validate(body, strict=True)`): no coercion (`n: true`, `user_id: true`, `exclude_seen: "yes"`,
    `history: [true]` are errors; an int `diversity` such as 0 or 1 is a number and accepted). Python callers that
    build one directly (offline reference, benchmarks) keep the lax mode (e.g. numpy ints). Ids are strings or ints,
    at most MAX_ID_LEN characters (ints are turned into their decimal string: 123 and "123" are the same id)."""

    model_config = ConfigDict(extra="forbid")

    user_id: str | int | None = None
    history: list[str | int] | None = Field(None, max_length=MAX_HISTORY)
    n: int = Field(50, ge=1, le=MAX_N)
    diversity: float | None = Field(None, ge=0.0, le=1.0)
    exclude_seen: bool = True

    @field_validator("user_id")
    @classmethod
    def _user_id_str(cls, v):
        if v is None:
            return None
        s = str(v)
        if len(s) > MAX_ID_LEN:
            raise ValueError(f"user_id has {len(s)} characters; at most {MAX_ID_LEN} are accepted")
        return s

    @field_validator("history")
    @classmethod
    def _history_str(cls, v):
        if v is None:
            return None
        out = [str(x) for x in v]
        for i, s in enumerate(out):
            if len(s) > MAX_ID_LEN:
                raise ValueError(f"history[{i}] has {len(s)} characters; at most {MAX_ID_LEN} are accepted")
        return out


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
    history_popularity: dict[str, float] | None = None


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
    #: popularity of the request's known history items: {"head_share": share of them in the catalogue's head
    #: (top 10% of items by popularity), "mean_log_pop": mean log1p(popularity)}, from
    #: mirec.monitoring.popularity.history_popularity; None when the writer does not compute it (the monitor
    #: then reports the history-popularity test as not tested). Optional: schema version stays 1.
    history_popularity: dict[str, float] | None = None
