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

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest

from mirec.serving.ab import assign
from mirec.serving.logwriter import ServedLogWriter
from mirec.serving.schema import InterestStats, RecommendResponse, ServedLog
from mirec.serving.service import BadRequest, error_body, parse_request
from mirec.serving.settings import ApiSettings

log = logging.getLogger(__name__)

HistoryClient = Callable[[list[str]], dict[str, list[str]]]


def is_token_rejection(status: int, text: str) -> bool:
    """TorchServe 0.12 answers a wrong/expired key with 400 (401 elsewhere) "Token Authorization failed"."""
    t = text.lower()
    return status in (400, 401) and "token" in t and ("authoriz" in t or "invalid" in t or "key" in t)


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
               transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """Build the app. `history_client` overrides the Feast client (tests); `transport` the HTTP transport."""
    metrics = Metrics()
    writer = ServedLogWriter(settings.log_path)
    state: dict = {"history": history_client}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        token = settings.inference_token()
        state["token"] = token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        state["http"] = httpx.AsyncClient(base_url=settings.torchserve_url, headers=headers, transport=transport,
                                          timeout=settings.timeout_ms / 1000.0, limits=limits)
        if state["history"] is None and settings.feast.repo_path:
            from mirec.features.online import OnlineHistoryClient  # Feast is heavy: only when configured

            state["history"] = OnlineHistoryClient(settings.feast.repo_path,
                                                   timeout_ms=settings.feast.timeout_ms).recent_items
        yield
        await state["http"].aclose()
        writer.close()

    app = FastAPI(title="mirec recommendation API", lifespan=lifespan)
    app.state.metrics = metrics
    app.state.settings = settings

    async def _predict(model: str, body: dict, request_id: str) -> httpx.Response:
        used = state.get("token")
        r = await state["http"].post(f"/predictions/{model}", json=body, headers={"X-Request-Id": request_id})
        if settings.torchserve_token_file and is_token_rejection(r.status_code, r.text):
            # TorchServe restarted with a new key: read the key file again, retry once if the key changed
            try:
                new = settings.inference_token()
            except Exception as exc:  # noqa: BLE001 - unreadable now: answer with TorchServe's rejection
                log.warning("TorchServe rejected the token and the key file is unreadable: %s", exc)
                return r
            if new and new != used:
                if new != state.get("token"):
                    log.warning("TorchServe rejected the inference token; using the new key from %s",
                                settings.torchserve_token_file)
                state["token"] = new
                state["http"].headers["Authorization"] = f"Bearer {new}"
                r = await state["http"].post(f"/predictions/{model}", json=body,
                                             headers={"X-Request-Id": request_id})
        return r

    async def _lookup_history(user_id: str) -> list[str]:
        fn = state["history"]
        timeout = settings.feast.timeout_ms / 1000.0 * 2 + 0.05  # the client has its own deadline; this is a backstop
        res = await asyncio.wait_for(asyncio.to_thread(fn, [user_id]), timeout)
        return list(res.get(user_id) or [])

    @app.post("/recommend")
    async def recommend(request: Request):
        t0 = time.perf_counter()
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        try:
            req = parse_request(await request.body())
        except BadRequest as exc:
            metrics.requests.labels("none", str(exc.status)).inc()
            return JSONResponse(error_body(exc.message, exc.status), status_code=exc.status)
        arm = assign(req.user_id, settings.experiment)
        history_source, feast_fallback = None, False
        if req.history is None and req.user_id is not None and state["history"] is not None:
            try:
                req.history = await _lookup_history(req.user_id)
                history_source = "feast" if req.history else "none"  # the resolve_history rule
            except Exception as exc:  # FeatureStoreUnavailable, timeout, anything: serve without it, flagged
                feast_fallback = True
                metrics.feast_fallback.inc()
                log.warning("feast lookup failed for %s: %s", req.user_id, exc)
        body = req.model_dump(mode="json", exclude_none=True)
        try:
            r = await _predict(arm.model, body, request_id)
        except httpx.HTTPError as exc:
            metrics.upstream_errors.labels(arm.name).inc()
            metrics.requests.labels(arm.name, "503").inc()
            return JSONResponse(error_body(f"model server unavailable: {type(exc).__name__}: {exc}", 503),
                                status_code=503)
        if r.status_code != 200:
            try:
                payload = r.json()
                msg = payload.get("error") or payload.get("message") or r.text
            except ValueError:
                msg = r.text
            status = r.status_code if 400 <= r.status_code < 500 else 502
            if status == 502:
                metrics.upstream_errors.labels(arm.name).inc()
            metrics.requests.labels(arm.name, str(status)).inc()
            return JSONResponse(error_body(str(msg), status), status_code=status)
        out = r.json()
        source = history_source or out.get("history_source", "request")
        resp = RecommendResponse.model_validate({  # one validation call for the whole answer
            "items": out["items"], "model": out["model"], "version": out["version"], "fallback": out.get("fallback"),
            "arm": arm.name, "request_id": request_id, "unknown_items": out.get("unknown_items", 0),
            "history_source": source})
        items = resp.items
        latency_ms = (time.perf_counter() - t0) * 1000.0
        writer.write(ServedLog(
            request_id=request_id, user_id=req.user_id, arm=arm.name, model=resp.model, version=resp.version,
            n=req.n, diversity=req.diversity, history_len=out.get("history_len", 0),
            unknown_items=resp.unknown_items, history_source=source, fallback=resp.fallback,
            feast_fallback=feast_fallback, items=items,
            interest_stats=InterestStats(**(out.get("interest_stats") or {})),
            history_categories=out.get("history_categories") or {}, latency_ms=round(latency_ms, 3)))
        metrics.requests.labels(arm.name, "200").inc()
        metrics.latency.labels(arm.name).observe(latency_ms / 1000.0)
        if resp.fallback:
            metrics.fallback.labels(arm.name, resp.fallback).inc()
        if resp.unknown_items:
            metrics.unknown_items.inc(resp.unknown_items)
        return Response(resp.model_dump_json(), media_type="application/json")

    @app.get("/healthz")
    async def healthz():
        try:
            r = await state["http"].get("/ping", timeout=2.0)
            ok = r.status_code == 200 and r.json().get("status") == "Healthy"
            detail = r.json()
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


