"""Request, response and served-log schemas (pydantic). The log is what monitoring reads.

Served log: one JSON line per answered request (`ServedLog`). The monitoring reference is made
of the same records produced offline for the test users, so both sides compare like with like.
"""

from __future__ import annotations

import math
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
    #: mirec.monitoring.popularity.history_popularity, computed by the handler (RecommendService) from the MAR's
    #: items.parquet popularity; None for an empty history or a writer that does not compute it (the monitor then
    #: reports the history-popularity test as not tested). Optional: schema version stays 1.
    history_popularity: dict[str, float] | None = None


# ---- feedback events (POST /feedback; docs/CONTRACTS.md "Feedback log") ------------------------------------------
MAX_FEEDBACK_BATCH = 1000  # events per POST /feedback
MAX_REQUEST_ID_LEN = 128  # the API's X-Request-Id limit (ApiSettings.limits.max_request_id_len default)
FEEDBACK_TYPES = ("impression", "click", "add_to_cart", "purchase", "custom")
#: the types that mean "the user engaged with the item": they update the user's recent-items history (Feast push)
HISTORY_TYPES = frozenset({"click", "add_to_cart", "purchase"})
FEEDBACK_SCHEMA_VERSION = 1


class FeedbackEvent(BaseModel):
    """One thing a user did with a served item, as the client sends it.

    `{"request_id": "...", "user_id": "u1", "item_id": "i9", "type": "click", "ts": "2026-01-01T12:00:00Z",
      "value": 12.5, "name": null}` -- validated strictly like RecommendRequest (ids are strings or ints, no
    bool/float coercion). `ts` is an ISO-8601 string or unix seconds (a naive time is UTC); omitted = the time the
    API received it. `value` (optional, finite) is e.g. a purchase amount; `name` is required for type "custom"
    and refused for the others. `request_id` is the id of the /recommend answer the item came from (its
    X-Request-Id or the `request_id` of the response); null when unknown (the join then uses user + time)."""

    model_config = ConfigDict(extra="forbid")

    request_id: str | None = Field(None, min_length=1, max_length=MAX_REQUEST_ID_LEN)
    user_id: str | int
    item_id: str | int
    type: Literal["impression", "click", "add_to_cart", "purchase", "custom"]
    ts: datetime | None = None  # ISO-8601 string or unix seconds on the wire (see _parse_ts)
    value: float | None = Field(None, allow_inf_nan=False)
    name: str | None = Field(None, min_length=1, max_length=64)

    @field_validator("user_id", "item_id")
    @classmethod
    def _id_str(cls, v, info):
        s = str(v)
        if not s or len(s) > MAX_ID_LEN:
            raise ValueError(f"{info.field_name} must have 1..{MAX_ID_LEN} characters, got {len(s)}")
        return s

    @field_validator("ts", mode="before")
    @classmethod
    def _parse_ts(cls, v):
        # strict mode takes only datetime objects; JSON has none, so the two wire forms are parsed here
        if v is None or isinstance(v, datetime):
            return v
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise ValueError("ts must be an ISO-8601 string or unix seconds")
        if isinstance(v, str):
            try:
                return datetime.fromisoformat(v)
            except ValueError:
                raise ValueError("ts is not an ISO-8601 date-time (e.g. 2026-01-01T12:00:00Z)") from None
        if not math.isfinite(v) or not 0 <= v < 1e11:
            raise ValueError("ts as unix seconds must be a finite number in 0..1e11")
        return datetime.fromtimestamp(v, tz=timezone.utc)

    @field_validator("ts")
    @classmethod
    def _utc(cls, v):
        if v is None:
            return None
        v = v.replace(tzinfo=timezone.utc) if v.tzinfo is None else v.astimezone(timezone.utc)
        if v.year < 2000:
            raise ValueError("ts is before the year 2000 (milliseconds sent as seconds?)")
        return v

    @field_validator("name")
    @classmethod
    def _name_only_for_custom(cls, v, info):
        if v is not None and info.data.get("type") not in (None, "custom"):
            raise ValueError("name is only allowed for type 'custom'")
        return v

    def model_post_init(self, __context) -> None:
        if self.type == "custom" and self.name is None:
            raise ValueError("type 'custom' needs a name")


class FeedbackBatch(BaseModel):
    """The body of POST /feedback when it carries several events: `{"events": [event, ...]}` (1..1000)."""

    model_config = ConfigDict(extra="forbid")

    events: list[FeedbackEvent] = Field(min_length=1, max_length=MAX_FEEDBACK_BATCH)


class FeedbackLog(BaseModel):
    """One line of the feedback log: the event as validated, when the API received it, and the arm the
    experiment assigns to the user at that time (the join to the served log gives the arm that actually served
    the item; a difference means the split changed). Schema version 1; changes are documented in
    docs/CONTRACTS.md."""

    schema_version: int = FEEDBACK_SCHEMA_VERSION
    received_ts: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    ts: datetime  # event time (the client's ts, else received_ts)
    request_id: str | None = None
    user_id: str
    item_id: str
    type: Literal["impression", "click", "add_to_cart", "purchase", "custom"]
    value: float | None = None
    name: str | None = None
    assigned_arm: str | None = None
