"""The recommendation API: a thin FastAPI service in front of TorchServe (`mirec api --settings FILE`).

It owns what a real deployment keeps outside the model server:
  - A/B assignment: arm = hash(experiment salt, user_id) against the configured split (sticky per user);
    each arm is its own TorchServe model name; the arm is returned in the response.
  - History resolution: a request with only `user_id` gets its recent items from the Feast online store
    (`mirec.features.online.OnlineHistoryClient`) when the settings name a repo; if the store is
    unavailable the request is served anyway (popularity), flagged `feast_fallback` in the log and
    counted in `mirec_api_feast_fallback_total`.
  - The served log: one `ServedLog` JSON line per answered request (what monitoring reads), rotated by size/age.
  - /metrics (Prometheus), /healthz (liveness: this process answers) and /readyz (readiness: every arm's model
    has a READY worker in TorchServe and, with `warmup.requests` > 0, has been warmed up by that many calls,
    `mirec.serving.warmup`; Feast's state reported).
  - TorchServe token auth: the inference key is read from `torchserve_token_file` at startup; when TorchServe
    rejects it (400/401 "Token Authorization failed", e.g. after a TorchServe restart made a new key) the
    file is read again and the request retried once with the new key.
  - Hardening (`Guard`, one pure-ASGI layer around the app): a body limit checked before the body is read whole
    (Content-Length, then counted while streaming), X-Request-Id checks, load shedding (429 + Retry-After beyond
    `limits.max_in_flight` concurrent /recommend requests), optional API keys and a per-client rate limit, and
    the one handler of unexpected exceptions (500 JSON, logged with the request id, counted).
Every error is JSON `{"error": "<what is wrong>", "code": <status>}`. TorchServe 4xx answers (bad requests) are
passed on with their status and message; TorchServe unreachable -> 503, no answer within `timeout_ms` -> 504,
TorchServe 5xx -> 502.

Endpoints: POST /recommend (body = RecommendRequest JSON), POST /feedback (mirec/serving/feedback.py), GET /healthz,
GET /readyz, GET /metrics (and /docs, /redoc, /openapi.json when `docs: true`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import uuid
from contextlib import asynccontextmanager
from typing import Callable

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mirec.serving.ab import assign
from mirec.serving.feedback import add_feedback_route
from mirec.serving.logwriter import ServedLogWriter
from mirec.serving.schema import HandlerAnswer, RecommendResponse, ServedLog
from mirec.serving.service import BadRequest, error_body, freeze_loaded_objects, parse_request
from mirec.serving.settings import ApiSettings, AuthSettings
from mirec.serving.upstream import ModelServer, TorchServeClient, UpstreamReply, UpstreamTimeout, UpstreamUnavailable
from mirec.serving.warmup import warm_up

log = logging.getLogger(__name__)

HistoryClient = Callable[[list[str]], dict[str, list[str]]]
RECOMMEND = "/recommend"
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # no API key needed (probes, Prometheus)
_REQUEST_ID = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces
KEYS_RECHECK_S = 5.0  # how often the API-keys file is checked for a change (a rotated Secret)


def is_token_rejection(status: int, text: str) -> bool:
    """TorchServe 0.12 answers a wrong/expired key with 400 (401 elsewhere) "Token Authorization failed"."""
    t = text.lower()
    return status in (400, 401) and "token" in t and ("authoriz" in t or "invalid" in t or "key" in t)


def upstream_error_message(reply: UpstreamReply) -> str:
    """TorchServe's error body is JSON ({"code", "type", "message"}) or the handler's {"error"}; else text.
    An empty one (TorchServe's own 413 says nothing) is replaced by what the status means."""
    msg = ""
    try:
        payload = orjson.loads(reply.body)
        msg = str(payload.get("error") or payload.get("message") or "")
    except (ValueError, AttributeError):
        msg = reply.text
    if not msg.strip():
        msg = {413: "request too large for the model server"}.get(reply.status, f"model server answered HTTP {reply.status}")
    return msg


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("mirec_api_requests_total", "/recommend requests by arm and HTTP status "
                                "(arm 'none': refused before an arm was assigned)", ["arm", "status"], registry=r)
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
        self.upstream_errors = Counter("mirec_api_upstream_errors_total", "TorchServe errors (5xx, unreachable, "
                                       "deadline)", ["arm"], registry=r)
        self.shed = Counter("mirec_api_shed_total", "Requests refused with 429", ["reason"], registry=r)
        self.in_flight = Gauge("mirec_api_in_flight", "/recommend requests being handled", registry=r)
        self.log_errors = Counter("mirec_api_served_log_errors_total", "Answers whose served-log line could not be "
                                  "written (the answer was still sent)", registry=r)


# ---- the guard: limits, load shedding, access control, the one exception handler --------------------------------
class BodyTooLarge(Exception):
    pass


def _json_bytes(status: int, message: str) -> bytes:
    return orjson.dumps(error_body(message, status))


class Guard:
    """Pure ASGI middleware around the whole app (cheaper per request than Starlette's BaseHTTPMiddleware)."""

    def __init__(self, app, settings: ApiSettings, metrics: Metrics):
        self.app = app
        self.settings = settings
        self.limits = settings.limits
        self.metrics = metrics
        self.in_flight = 0
        self.auth = settings.auth
        self._keys: dict[str, str] = self.auth.load_keys()
        self._keys_mtime = self._mtime()
        self._keys_checked = time.monotonic()
        self._buckets: dict[str, list[float]] = {}

    def _mtime(self) -> float | None:
        try:
            return os.stat(self.auth.api_keys_file).st_mtime if self.auth.api_keys_file else None
        except OSError:
            return None

    def _current_keys(self) -> dict[str, str]:
        """The API keys, re-read when the file changed (a rotated Secret), checked at most every 5 s."""
        now = time.monotonic()
        if self.auth.api_keys_file and now - self._keys_checked >= KEYS_RECHECK_S:
            self._keys_checked = now
            m = self._mtime()
            if m != self._keys_mtime:
                try:
                    self._keys, self._keys_mtime = self.auth.load_keys(), m
                    log.warning("API keys reloaded from %s", self.auth.api_keys_file)
                except Exception as exc:  # noqa: BLE001 - keep the old keys, say why
                    log.error("API keys not reloaded: %s", exc)
        return self._keys

    def _rate_ok(self, client: str) -> bool:
        """Token bucket per client: `rate_limit_burst` tokens, refilled at `rate_limit_per_s`."""
        rate, burst = self.auth.rate_limit_per_s, float(self.auth.rate_limit_burst)
        now = time.monotonic()
        b = self._buckets.get(client)
        if b is None:
            if len(self._buckets) > 10_000:  # bound the table: forget the longest-idle clients
                for k in sorted(self._buckets, key=lambda k: self._buckets[k][1])[:5_000]:
                    del self._buckets[k]
            b = self._buckets[client] = [burst, now]
        b[0] = min(burst, b[0] + (now - b[1]) * rate)
        b[1] = now
        if b[0] < 1.0:
            return False
        b[0] -= 1.0
        return True

    async def _send_error(self, send, status: int, message: str, path: str, headers: list | None = None,
                          arm: str = "none") -> None:
        body = _json_bytes(status, message)
        if path == RECOMMEND:
            self.metrics.requests.labels(arm, str(status)).inc()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *(headers or [])]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        headers = {}
        for k, v in scope.get("headers") or ():
            headers.setdefault(k, v)
        state = scope.setdefault("state", {})
        # request id: the client's X-Request-Id if it is short printable ASCII, else a 400; none -> a uuid4
        rid_raw = headers.get(b"x-request-id")
        if rid_raw is not None:
            rid = rid_raw.decode("latin-1")
            if len(rid) > self.limits.max_request_id_len or not _REQUEST_ID.match(rid):
                return await self._send_error(send, 400, f"X-Request-Id must be 1..{self.limits.max_request_id_len} "
                                              "printable ASCII characters without spaces", path)
        else:
            rid = uuid.uuid4().hex
        state["request_id"] = rid
        # access control
        client = (scope.get("client") or ("?", 0))[0]
        keys = self._current_keys() if self.auth.api_keys_file else None
        if keys is not None and path not in OPEN_PATHS:
            presented = headers.get(b"x-api-key")
            auth = headers.get(b"authorization")
            if presented is None and auth is not None and auth[:7].lower() == b"bearer ":
                presented = auth[7:].strip()
            name = AuthSettings.match(keys, presented.decode("latin-1") if presented else None)
            if name is None:
                return await self._send_error(send, 401, "missing or unknown API key (send 'Authorization: Bearer "
                                              "<key>' or 'X-API-Key: <key>')", path,
                                              [(b"www-authenticate", b'Bearer realm="mirec"')])
            client = name
            state["client"] = name
        if self.auth.rate_limit_per_s and path not in OPEN_PATHS and not self._rate_ok(client):
            self.metrics.shed.labels("rate_limit").inc()
            return await self._send_error(send, 429, f"rate limit of {self.auth.rate_limit_per_s:g} requests/s "
                                          f"exceeded for client {client}", path,
                                          [(b"retry-after", str(max(1, int(1 / self.auth.rate_limit_per_s))).encode())])
        # body limit: Content-Length first (nothing read), then counted while streaming (chunked bodies)
        limit = self.limits.max_body_bytes
        cl = headers.get(b"content-length")
        if cl is not None:
            try:
                declared = int(cl)
            except ValueError:
                return await self._send_error(send, 400, "invalid Content-Length", path)
            if declared > limit:
                return await self._send_error(send, 413, f"request body of {declared} bytes is larger than the "
                                              f"limit of {limit} bytes", path)
        # load shedding: beyond max_in_flight concurrent /recommend requests, 429 at once
        shed = path == RECOMMEND
        if shed:
            if self.in_flight >= self.limits.max_in_flight:
                self.metrics.shed.labels("overload").inc()
                return await self._send_error(send, 429, f"overloaded: {self.in_flight} requests in flight (limit "
                                              f"{self.limits.max_in_flight}); retry later", path,
                                              [(b"retry-after", str(self.limits.retry_after_s).encode())])
            self.in_flight += 1
            self.metrics.in_flight.set(self.in_flight)
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge()
            return msg

        async def tracked_send(msg):
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await self._send_error(send, 413, f"request body is larger than the limit of {limit} bytes", path,
                                       arm=state.get("arm", "none"))
        except Exception as exc:  # noqa: BLE001 - the one handler of unexpected errors: JSON, logged, counted
            log.exception("request %s %s failed (request id %s): %s", scope.get("method"), path, rid, exc)
            if not started:
                await self._send_error(send, 500, f"internal error ({type(exc).__name__}); request id {rid}", path,
                                       arm=state.get("arm", "none"))
        finally:
            if shed:
                self.in_flight -= 1
                self.metrics.in_flight.set(self.in_flight)


def create_app(settings: ApiSettings, *, history_client: HistoryClient | None = None,
               upstream: ModelServer | None = None) -> FastAPI:
    """Build the app. `history_client` overrides the Feast client (tests); `upstream` the TorchServe client
    (tests pass `mirec.serving.testing.InProcessTorchServe`)."""
    metrics = Metrics()
    settings.auth.load_keys()  # an unreadable or malformed keys file is a configuration error now, not at first use
    writer = ServedLogWriter.from_settings(settings)
    state: dict = {"history": history_client, "ready": None, "warmup": {}}
    models = list(dict.fromkeys(a.model for a in settings.experiment.arms))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server = upstream or TorchServeClient(settings.torchserve_url, timeout_s=settings.timeout_ms / 1000.0,
                                              management_url=settings.torchserve_management_url,
                                              management_token=settings.management_token(),
                                              protocol=settings.upstream_protocol)
        server.token = settings.inference_token()
        if isinstance(server, TorchServeClient):
            await server.start(models)
        else:
            await server.start()
        state["server"] = server
        if state["history"] is None and settings.feast.repo_path:
            from mirec.features.online import OnlineHistoryClient  # Feast is heavy: only when configured

            state["history"] = OnlineHistoryClient(settings.feast.repo_path,
                                                   timeout_ms=settings.feast.timeout_ms).recent_items
        await feedback.start()  # POST /feedback (mirec/serving/feedback.py): opens the Feast pusher if configured
        freeze_loaded_objects()  # modules, app and clients live as long as the process: keep them out of GC passes
        warming = None
        if settings.warmup.requests > 0:  # in the background: /healthz answers meanwhile, /readyz waits for it
            state["warmup"] = {m: {"state": "running"} for m in models}
            warming = asyncio.create_task(_warm_up_all(server))
        yield
        if warming is not None:
            warming.cancel()
        await server.close()
        writer.close()
        feedback.close()

    docs = settings.docs
    app = FastAPI(title="mirec recommendation API", lifespan=lifespan, docs_url="/docs" if docs else None,
                  redoc_url="/redoc" if docs else None, openapi_url="/openapi.json" if docs else None)
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.writer = writer
    feedback = app.state.feedback = add_feedback_route(app, settings, metrics.registry)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):  # 404 / 405 in the same JSON shape
        return JSONResponse(error_body(str(exc.detail), exc.status_code), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    app.add_middleware(Guard, settings=settings, metrics=metrics)

    async def _warm_up_all(server: ModelServer) -> None:
        for i, m in enumerate(models):  # one model at a time: on a small node they share the cores
            try:
                st = await warm_up(server, m, settings.warmup, seed=i)
            except Exception as exc:  # noqa: BLE001 - warm-up must never keep the API unready
                st = {"state": "gave up", "detail": f"{type(exc).__name__}: {exc}"[:300]}
            state["warmup"][m] = st
            state["ready"] = None  # readiness changes now, not after the cache expires
            (log.info if st["state"] == "done" else log.warning)("warm-up of %s: %s", m, st)

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

    def _error(status: int, message: str, arm: str = "none", headers: dict | None = None) -> Response:
        metrics.requests.labels(arm, str(status)).inc()
        return Response(orjson.dumps(error_body(message, status)), status_code=status, media_type="application/json",
                        headers=headers)

    @app.post(RECOMMEND)
    async def recommend(request: Request):
        t0 = time.perf_counter()
        request_id = request.state.request_id  # set (and checked) by the Guard
        raw = await request.body()
        try:
            req = parse_request(raw)
        except BadRequest as exc:
            return _error(exc.status, exc.message)
        arm = assign(req.user_id, settings.experiment)
        request.state.arm = arm.name
        history_source, feast_fallback = None, False
        forward = raw  # the client's request goes to TorchServe as it came unless a history is added here
        if req.history is None and req.user_id is not None and state["history"] is not None:
            try:
                req.history = await _lookup_history(req.user_id)
                history_source = "feast" if req.history else "none"  # the resolve_history rule
            except Exception as exc:  # FeatureStoreUnavailable, timeout, anything: serve without it, flagged
                feast_fallback = True
                metrics.feast_fallback.inc()
                log.warning("feast lookup failed for %r: %s", req.user_id, exc)
            forward = orjson.dumps(req.model_dump(mode="json", exclude_none=True))
        try:
            r = await _predict(arm.model, forward, request_id)
        except UpstreamTimeout as exc:
            metrics.upstream_errors.labels(arm.name).inc()
            return _error(504, f"model {arm.model} did not answer within the deadline of {settings.timeout_ms} ms "
                          f"({exc})", arm.name)
        except UpstreamUnavailable as exc:
            metrics.upstream_errors.labels(arm.name).inc()
            return _error(503, f"model server unavailable for model {arm.model}: {exc}", arm.name)
        if r.status == 503:
            # TorchServe's own overload answer (job queue full, no worker ready): pass it on as 503 + Retry-After, so
            # clients back off as they do on our 429, instead of a 502 that reads as a broken server
            metrics.upstream_errors.labels(arm.name).inc()
            return _error(503, f"model server overloaded or restarting for model {arm.model}: "
                          f"{upstream_error_message(r)}", arm.name,
                          {"Retry-After": str(settings.limits.retry_after_s)})
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
        # the answer exists: from here on nothing fails the request (the writer escapes and never raises)
        if not writer.write(ServedLog(
                request_id=request_id, user_id=req.user_id, arm=arm.name, model=out.model, version=out.version,
                n=req.n, diversity=req.diversity, history_len=out.history_len, unknown_items=out.unknown_items,
                history_source=source, fallback=out.fallback, feast_fallback=feast_fallback, items=out.items,
                interest_stats=out.interest_stats, history_categories=out.history_categories,
                history_popularity=out.history_popularity, latency_ms=round(latency_ms, 3))):
            metrics.log_errors.inc()
        metrics.requests.labels(arm.name, "200").inc()
        metrics.latency.labels(arm.name).observe(latency_ms / 1000.0)
        if out.fallback:
            metrics.fallback.labels(arm.name, out.fallback).inc()
        if out.unknown_items:
            metrics.unknown_items.inc(out.unknown_items)
        return Response(resp.model_dump_json(), media_type="application/json")

    @app.get("/healthz")
    async def healthz():
        """Liveness: this process answers (TorchServe's state is /readyz's business: restarting the API
        would not bring a model worker back)."""
        return JSONResponse({"status": "ok"})

    async def _arm_state(server, model: str) -> dict:
        describe = getattr(server, "describe", None)
        if describe is not None and (settings.torchserve_management_url or not isinstance(server, TorchServeClient)):
            r = await describe(model)
            if r.status != 200:
                return {"ready": False, "error": f"management API: HTTP {r.status} {upstream_error_message(r)[:200]}"}
            workers = orjson.loads(r.body)[0].get("workers", [])
            ready = sum(w.get("status") == "READY" for w in workers)
            return {"ready": ready >= 1, "workers_ready": ready, "workers": len(workers)}
        model_ready = getattr(server, "model_ready", None)  # KServe protocols: the predictor's per-model readiness
        st = await model_ready(model) if model_ready is not None else None
        if st is not None:
            return st
        r = await server.ping()  # no management API (KServe): TorchServe's own health of all its models
        status = (orjson.loads(r.body) or {}).get("status") if r.body else None
        return {"ready": r.status == 200 and status == "Healthy", "ping": status or f"HTTP {r.status}"}

    async def _readiness() -> tuple[bool, dict]:
        server = state["server"]
        arms, ok = {}, True
        for arm in settings.experiment.arms:
            try:
                st = await _arm_state(server, arm.model)
            except Exception as exc:  # noqa: BLE001 - unreachable, timeout, a bad answer: not ready, say why
                st = {"ready": False, "error": f"{type(exc).__name__}: {exc}"}
            arms[arm.name] = {"model": arm.model, **st}
            ok = ok and st["ready"]
        if state["history"] is None:
            feast = {"enabled": False}
        else:
            try:
                await _lookup_history("__mirec_readiness_probe__")
                feast = {"enabled": True, "ok": True}
            except Exception as exc:  # noqa: BLE001 - reported, not fatal: requests are served without history
                feast = {"enabled": True, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        warm = state["warmup"]
        if any(w["state"] == "running" for w in warm.values()):
            ok = False
        return ok, {"status": "ready" if ok else "not ready", "arms": arms, "feast": feast, "warmup": warm}

    @app.get("/readyz")
    async def readyz():
        """Readiness: every arm's model has at least one READY worker (TorchServe management API, cached for
        `readiness_cache_ms`). Feast's state is reported but does not make the API unready (requests are then
        served without history, flagged)."""
        now = time.monotonic()
        cached = state["ready"]
        if cached is None or now - cached[0] > settings.readiness_cache_ms / 1000.0:
            ok, body = await _readiness()
            cached = state["ready"] = (now, ok, body)
        _, ok, body = cached
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prom():
        # this app's metrics + the process-wide registry (process_*, and the Feast client's
        # mirec_feast_fallbacks_total{reason} when it is in use)
        return Response(generate_latest(metrics.registry) + generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app


def run_api(settings: ApiSettings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> None:
    import uvicorn

    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level, access_log=False)
