"""The recommendation API: a thin FastAPI service in front of TorchServe (`mirec api --settings FILE`).

It owns what a real deployment keeps outside the model server:
  - A/B assignment: arm = hash(experiment salt, user_id) against the configured split (sticky per user);
    each arm is its own TorchServe model name; the arm is returned in the response.
  - History resolution: a request with only `user_id` gets its recent items from the Feast online store
    (`mirec.features.online.OnlineHistoryClient`) when the settings name a repo; if the store is
    unavailable the request is served anyway (popularity), flagged `feast_fallback` in the log and
    counted in `mirec_api_feast_fallback_total`.
  - The served log: one `ServedLog` JSON line per answered request (what monitoring reads).
  - /metrics (Prometheus) and /healthz (TorchServe /ping).
  - TorchServe token auth: the inference key is read from `torchserve_token_file` at startup; when TorchServe
    rejects it (400/401 "Token Authorization failed", e.g. after a TorchServe restart made a new key) the
    file is read again and the request retried once with the new key.
TorchServe 4xx answers (bad requests) are passed on with their status and message.

Endpoints: POST /recommend (body = RecommendRequest JSON), GET /healthz, GET /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Callable

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import ValidationError

from mirec.serving.ab import assign
from mirec.serving.logwriter import ServedLogWriter
from mirec.serving.schema import HandlerAnswer, RecommendResponse, ServedLog
from mirec.serving.service import BadRequest, error_body, freeze_loaded_objects, parse_request
from mirec.serving.settings import ApiSettings
from mirec.serving.upstream import ModelServer, TorchServeClient, UpstreamReply, UpstreamUnavailable

log = logging.getLogger(__name__)

HistoryClient = Callable[[list[str]], dict[str, list[str]]]


def is_token_rejection(status: int, text: str) -> bool:
    """TorchServe 0.12 answers a wrong/expired key with 400 (401 elsewhere) "Token Authorization failed"."""
    t = text.lower()
    return status in (400, 401) and "token" in t and ("authoriz" in t or "invalid" in t or "key" in t)


def upstream_error_message(reply: UpstreamReply) -> str:
    """TorchServe's error body is JSON ({"code", "type", "message"}) or the handler's {"error"}; else text."""
    try:
        payload = orjson.loads(reply.body)
        return str(payload.get("error") or payload.get("message") or reply.text)
    except (ValueError, AttributeError):
        return reply.text


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("mirec_api_requests_total", "Answered /recommend requests", ["arm", "status"],
                                registry=r)
        self.latency = Histogram("mirec_api_latency_seconds", "/recommend latency (API in to API out)", ["arm"],
                                 buckets=(.001, .002, .004, .006, .008, .01, .015, .02, .03, .05, .1, .25, .5, 1, 2.5),
                                 registry=r)
        self.fallback = Counter("mirec_api_fallback_total", "Answers served by a fallback", ["arm", "kind"],
                                registry=r)
        self.feast_fallback = Counter("mirec_api_feast_fallback_total",
                                      "Requests whose Feast history lookup failed (served without it)",
                                      registry=r)
        self.unknown_items = Counter("mirec_api_unknown_items_total", "Unknown item ids in request histories",
                                     registry=r)
        self.upstream_errors = Counter("mirec_api_upstream_errors_total", "TorchServe errors (5xx, unreachable)",
                                       ["arm"], registry=r)


def create_app(settings: ApiSettings, *, history_client: HistoryClient | None = None,
               upstream: ModelServer | None = None) -> FastAPI:
    """Build the app. `history_client` overrides the Feast client (tests); `upstream` the TorchServe client
    (tests pass `mirec.serving.testing.InProcessTorchServe`)."""
    metrics = Metrics()
    writer = ServedLogWriter(settings.log_path)
    state: dict = {"history": history_client}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server = upstream or TorchServeClient(settings.torchserve_url, timeout_s=settings.timeout_ms / 1000.0)
        server.token = settings.inference_token()
        await server.start()
        state["server"] = server
        if state["history"] is None and settings.feast.repo_path:
            from mirec.features.online import OnlineHistoryClient  # Feast is heavy: only when configured

            state["history"] = OnlineHistoryClient(settings.feast.repo_path,
                                                   timeout_ms=settings.feast.timeout_ms).recent_items
        freeze_loaded_objects()  # modules, app and clients live as long as the process: keep them out of GC passes
        yield
        await server.close()
        writer.close()

    app = FastAPI(title="mirec recommendation API", lifespan=lifespan)
    app.state.metrics = metrics
    app.state.settings = settings

    async def _predict(model: str, body: bytes, request_id: str) -> UpstreamReply:
        server: ModelServer = state["server"]
        used = server.token
        r = await server.predict(model, body, request_id)
        if settings.torchserve_token_file and is_token_rejection(r.status, r.text):
            # TorchServe restarted with a new key: read the key file again, retry once if the key changed
            try:
                new = settings.inference_token()
            except Exception as exc:  # noqa: BLE001 - unreadable now: answer with TorchServe's rejection
                log.warning("TorchServe rejected the token and the key file is unreadable: %s", exc)
                return r
            if new and new != used:
                if new != server.token:
                    log.warning("TorchServe rejected the inference token; using the new key from %s",
                                settings.torchserve_token_file)
                server.token = new
                r = await server.predict(model, body, request_id)
        return r

    async def _lookup_history(user_id: str) -> list[str]:
        fn = state["history"]
        timeout = settings.feast.timeout_ms / 1000.0 * 2 + 0.05  # the client has its own deadline; this is a backstop
        res = await asyncio.wait_for(asyncio.to_thread(fn, [user_id]), timeout)
        return list(res.get(user_id) or [])

    def _error(status: int, message: str, arm: str = "none") -> Response:
        metrics.requests.labels(arm, str(status)).inc()
        return Response(orjson.dumps(error_body(message, status)), status_code=status, media_type="application/json")

    @app.post("/recommend")
    async def recommend(request: Request):
        t0 = time.perf_counter()
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        raw = await request.body()
        try:
            req = parse_request(raw)
        except BadRequest as exc:
            return _error(exc.status, exc.message)
        arm = assign(req.user_id, settings.experiment)
        history_source, feast_fallback = None, False
        forward = raw  # the client's request goes to TorchServe as it came unless a history is added here
        if req.history is None and req.user_id is not None and state["history"] is not None:
            try:
                req.history = await _lookup_history(req.user_id)
                history_source = "feast" if req.history else "none"  # the resolve_history rule
            except Exception as exc:  # FeatureStoreUnavailable, timeout, anything: serve without it, flagged
                feast_fallback = True
                metrics.feast_fallback.inc()
                log.warning("feast lookup failed for %s: %s", req.user_id, exc)
            forward = orjson.dumps(req.model_dump(mode="json", exclude_none=True))
        try:
            r = await _predict(arm.model, forward, request_id)
        except UpstreamUnavailable as exc:
            metrics.upstream_errors.labels(arm.name).inc()
            return _error(503, f"model server unavailable: {exc}", arm.name)
        if r.status != 200:
            status = r.status if 400 <= r.status < 500 else 502
            if status == 502:
                metrics.upstream_errors.labels(arm.name).inc()
            return _error(status, upstream_error_message(r), arm.name)
        try:
            out = HandlerAnswer.model_validate_json(r.body)
        except ValidationError as exc:  # a handler that breaks the contract is a server fault, not the client's
            metrics.upstream_errors.labels(arm.name).inc()
            return _error(502, f"model server answered outside the contract: {exc.errors()[0]['msg']}", arm.name)
        source = history_source or out.history_source
        resp = RecommendResponse(items=out.items, model=out.model, version=out.version, fallback=out.fallback,
                                 arm=arm.name, request_id=request_id, unknown_items=out.unknown_items,
                                 history_source=source)
        latency_ms = (time.perf_counter() - t0) * 1000.0
        writer.write(ServedLog(
            request_id=request_id, user_id=req.user_id, arm=arm.name, model=out.model, version=out.version,
            n=req.n, diversity=req.diversity, history_len=out.history_len, unknown_items=out.unknown_items,
            history_source=source, fallback=out.fallback, feast_fallback=feast_fallback, items=out.items,
            interest_stats=out.interest_stats, history_categories=out.history_categories,
            latency_ms=round(latency_ms, 3)))
        metrics.requests.labels(arm.name, "200").inc()
        metrics.latency.labels(arm.name).observe(latency_ms / 1000.0)
        if out.fallback:
            metrics.fallback.labels(arm.name, out.fallback).inc()
        if out.unknown_items:
            metrics.unknown_items.inc(out.unknown_items)
        return Response(resp.model_dump_json(), media_type="application/json")

    @app.get("/healthz")
    async def healthz():
        try:
            r = await state["server"].ping()
            detail = orjson.loads(r.body)
            ok = r.status == 200 and detail.get("status") == "Healthy"
        except Exception as exc:
            ok, detail = False, {"error": f"{type(exc).__name__}: {exc}"}
        return JSONResponse({"status": "ok" if ok else "unavailable", "torchserve": detail,
                             "arms": [a.model_dump() for a in settings.experiment.arms]},
                            status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prom():
        # this app's metrics + the process-wide registry (process_*, and the Feast client's
        # mirec_feast_fallbacks_total{reason} when it is in use)
        return Response(generate_latest(metrics.registry) + generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app


def run_api(settings: ApiSettings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> None:
    import uvicorn

    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level, access_log=False)


