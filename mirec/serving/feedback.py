"""POST /feedback: what users did with the answers (impression | click | add_to_cart | purchase | custom).

    POST /feedback  {"request_id": "r1", "user_id": "u1", "item_id": "i9", "type": "click"}
    POST /feedback  {"events": [{...}, {...}]}                    # 1..1000 events, all or nothing
    -> 200 {"accepted": 2, "history": {"users_updated": 1}}

Validation is `/recommend`'s: 400 unreadable (not UTF-8, not JSON, not an object), 413 more than
MAX_FEEDBACK_BATCH events, 422 a field of the wrong type / out of range / unknown (strict: no coercion), with
`{"error": "invalid field 'events.3.type': ...", "code": 422}`. A batch with one bad event is refused whole
(nothing silently dropped: the client knows exactly what was recorded).

Every accepted event is one `FeedbackLog` line in the feedback log (the served log's folder, `feedback.jsonl`,
written by the served log's writer with its settings: hourly files `feedback.jsonl.<YYYY-MM-DDTHH>` by default,
each line filed by its event `ts` and flushed when written). A log write that fails answers 503 so
the client retries: unlike a served-log line, a lost feedback line is a lost outcome.
Clicks, add-to-carts and purchases then update the user's recent-items history in the Feast online store
(`mirec.features.push.HistoryPusher`, when the settings name a Feast repo), so the user's next /recommend sees
them; a store that fails or is slow does not fail the request (the event is logged; `history.error` says why,
`mirec_api_feedback_history_push_total{result}` counts it).
Prometheus: `mirec_api_feedback_events_total{type}`, `mirec_api_feedback_requests_total{status}`,
`mirec_api_feedback_log_errors_total`, `mirec_api_feedback_history_push_total{result}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter
from pydantic import ValidationError

from mirec.serving.ab import assign
from mirec.serving.logwriter import JsonLinesLog
from mirec.serving.schema import (HISTORY_TYPES, MAX_FEEDBACK_BATCH, FeedbackBatch, FeedbackEvent, FeedbackLog)
from mirec.serving.service import BadRequest, error_body, safe_text

log = logging.getLogger(__name__)

FEEDBACK = "/feedback"
FEEDBACK_LOG_NAME = "feedback.jsonl"
MAX_CLOCK_SKEW = timedelta(hours=1)  # an event time further in the future than this is a client bug: 422
PUSH_TIMEOUT_S = 1.0  # the history update's deadline inside the request (it goes on in the background after it)


def feedback_log_path(served_log_path: str | Path | None) -> Path | None:
    """The feedback log lives beside the served log (same volume, same layout and rotation): <dir>/feedback.jsonl
    (+ its rotated files, hourly: feedback.jsonl.<YYYY-MM-DDTHH>)."""
    return Path(served_log_path).with_name(FEEDBACK_LOG_NAME) if served_log_path else None


def _decode(body: bytes | str) -> object:
    if isinstance(body, (bytes, bytearray)):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("request body is not UTF-8 text") from None
    if not body.strip():
        raise BadRequest('empty request body; send an event {"user_id", "item_id", "type", ...} or {"events": [...]}')
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise BadRequest("invalid JSON: nested too deeply") from None
    except ValueError as exc:  # an integer with more digits than Python converts
        raise BadRequest(f"invalid JSON: {'a number has too many digits' if 'digits' in str(exc) else safe_text(exc, 200)}") from None


def _where(loc: tuple) -> str:
    """A pydantic error location as `events.3.item_id`: field names and list positions, without the member
    tags of a union (`str` / `int`); a client's field name is cut to 40 characters and made ASCII."""
    if not loc:
        return "<body>"
    parts = [str(loc[0])] + [str(p) for p in loc[1:] if isinstance(p, int) or p not in ("str", "int")]
    parts = [p if len(p) <= 40 else p[:40] + "..." for p in parts]
    return ascii(".".join(parts))[1:-1]


def _validation_message(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    where = _where(errors[0]["loc"])
    same = [e for e in errors[:4] if _where(e["loc"]) == where]
    if len(same) > 1 and {e["type"] for e in same} <= {"string_type", "int_type"}:
        msg = "must be a string or an integer (strict: true/false, numbers with a fraction, lists are refused)"
    else:
        msg = safe_text(same[0]["msg"], 300)
    return f"invalid field '{where}': {msg}"


def parse_feedback(body: bytes | str | dict | list, now: datetime | None = None) -> list[FeedbackEvent]:
    """A POST /feedback body -> its events (ts filled with `now` when absent), or BadRequest (400/413/422)."""
    data = body if isinstance(body, (dict, list)) else _decode(body)
    if not isinstance(data, dict):
        raise BadRequest(f"request must be a JSON object (one event, or {{\"events\": [...]}}), got {type(data).__name__}")
    batch = "events" in data
    if batch and isinstance(data["events"], list) and len(data["events"]) > MAX_FEEDBACK_BATCH:
        raise BadRequest(f"{len(data['events'])} events in one request; at most {MAX_FEEDBACK_BATCH} are accepted", 413)
    try:
        events = FeedbackBatch.model_validate(data, strict=True).events if batch else [
            FeedbackEvent.model_validate(data, strict=True)]
    except ValidationError as exc:
        raise BadRequest(_validation_message(exc), 422) from None
    except RecursionError:
        raise BadRequest("request nested too deeply", 400) from None
    now = now or datetime.now(timezone.utc)
    for i, ev in enumerate(events):
        if ev.ts is not None and ev.ts > now + MAX_CLOCK_SKEW:
            where = f"events.{i}.ts" if batch else "ts"
            raise BadRequest(f"invalid field '{where}': {ev.ts.isoformat()} is more than "
                             f"{MAX_CLOCK_SKEW} in the future", 422)
    return events


def encode_feedback(record: FeedbackLog) -> str:
    """One JSON line; a lone surrogate in an id (valid JSON, not UTF-8) is written as its \\uXXXX escape, so the
    line reads back as the same string."""
    try:
        return record.model_dump_json()
    except Exception:  # noqa: BLE001 - PydanticSerializationError on a surrogate
        return json.dumps(record.model_dump(mode="json"), ensure_ascii=True, separators=(",", ":"))


class FeedbackLogWriter(JsonLinesLog):
    """The feedback log: the served log's writer (mirec.serving.logwriter.JsonLinesLog: same layout, rotation,
    retention; hourly by default, each line filed by the hour of its event `ts`). Raises on failure: the route
    turns that into a 503 (the client keeps the events and retries)."""

    channel = "mirec.feedback"

    def write_many(self, records: list[FeedbackLog]) -> None:
        self.append([(encode_feedback(r), r.ts) for r in records])


class FeedbackMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.events = Counter("mirec_api_feedback_events_total", "Feedback events accepted, by type", ["type"],
                              registry=registry)
        self.requests = Counter("mirec_api_feedback_requests_total", "POST /feedback requests by HTTP status",
                                ["status"], registry=registry)
        self.log_errors = Counter("mirec_api_feedback_log_errors_total",
                                  "POST /feedback requests refused (503) because the feedback log write failed",
                                  registry=registry)
        self.history_push = Counter("mirec_api_feedback_history_push_total",
                                    "History updates in the Feast online store, by result (ok|error|timeout)",
                                    ["result"], registry=registry)


class FeedbackRoute:
    """The /feedback endpoint's state: log writer, optional Feast pusher, metrics."""

    def __init__(self, settings, registry: CollectorRegistry, pusher=None):
        self.settings = settings
        self.writer = FeedbackLogWriter.from_settings(settings, feedback_log_path(settings.log_path))
        self.metrics = FeedbackMetrics(registry)
        self._pusher = pusher
        self._pusher_error: str | None = None
        self._open_lock = threading.Lock()

    def _get_pusher(self):
        """The Feast pusher, opened on first use (Feast is heavy; only when the settings name a repo)."""
        if self._pusher is None and self.settings.feast.repo_path:
            with self._open_lock:
                if self._pusher is None:
                    from mirec.features.config import FeaturesConfig
                    from mirec.features.push import HistoryPusher

                    self._pusher = HistoryPusher(FeaturesConfig(repo_path=self.settings.feast.repo_path))
        return self._pusher

    async def start(self) -> None:
        if self.settings.feast.repo_path:
            try:  # open the store now, so that the first click is not the slow one
                await asyncio.to_thread(self._get_pusher)
            except Exception as exc:  # noqa: BLE001 - opened again per request; reported in the answers
                log.warning("feedback history pusher not ready at startup: %s", exc)

    def close(self) -> None:
        if self._pusher is not None:
            self._pusher.close()  # flushes the buffered offline snapshots
        self.writer.close()

    def _respond(self, status: int, body: dict) -> Response:
        self.metrics.requests.labels(str(status)).inc()
        return Response(orjson.dumps(body), status_code=status, media_type="application/json")

    async def _push(self, events: list[FeedbackEvent]) -> dict:
        engaged = [(e.user_id, e.item_id, e.ts) for e in events if e.type in HISTORY_TYPES]
        if not engaged or not self.settings.feast.repo_path:
            return {"users_updated": 0}

        def work() -> int:
            return self._get_pusher().push(engaged)

        try:
            n = await asyncio.wait_for(asyncio.shield(asyncio.to_thread(work)), PUSH_TIMEOUT_S)
        except asyncio.TimeoutError:
            self.metrics.history_push.labels("timeout").inc()
            return {"users_updated": 0, "error": f"history update still running after {PUSH_TIMEOUT_S:g} s"}
        except Exception as exc:  # noqa: BLE001 - the events are logged; the history catches up at materialization
            self.metrics.history_push.labels("error").inc()
            log.warning("feedback history push failed: %s: %s", type(exc).__name__, exc)
            return {"users_updated": 0, "error": safe_text(f"{type(exc).__name__}: {exc}", 300)}
        self.metrics.history_push.labels("ok").inc()
        return {"users_updated": n}

    async def handle(self, request: Request) -> Response:
        raw = await request.body()
        now = datetime.now(timezone.utc)
        try:
            events = parse_feedback(raw, now)
        except BadRequest as exc:
            return self._respond(exc.status, error_body(exc.message, exc.status))
        for e in events:
            if e.ts is None:
                e.ts = now
        experiment = self.settings.experiment
        records = [FeedbackLog(received_ts=now, ts=e.ts, request_id=e.request_id, user_id=e.user_id,
                               item_id=e.item_id, type=e.type, value=e.value, name=e.name,
                               assigned_arm=assign(e.user_id, experiment).name) for e in events]
        try:
            await asyncio.to_thread(self.writer.write_many, records)
        except Exception as exc:  # noqa: BLE001 - not recorded: tell the client to retry
            self.metrics.log_errors.inc()
            log.error("feedback log write failed (%d events): %s: %s", len(records), type(exc).__name__, exc)
            return self._respond(503, error_body(f"feedback not recorded ({type(exc).__name__}); retry", 503))
        for e in events:
            self.metrics.events.labels(e.type).inc()
        history = await self._push(events)
        return self._respond(200, {"accepted": len(events), "history": history})


def add_feedback_route(app: FastAPI, settings, registry: CollectorRegistry, pusher=None) -> FeedbackRoute:
    """Register POST /feedback on the API app; the caller starts/closes the returned route in its lifespan."""
    route = FeedbackRoute(settings, registry, pusher)
    app.add_api_route(FEEDBACK, route.handle, methods=["POST"], summary="Record feedback events")
    return route
