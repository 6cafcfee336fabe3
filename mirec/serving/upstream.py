"""The API's client for TorchServe's inference API (the one network hop behind `/recommend`).

    server = TorchServeClient("http://127.0.0.1:8080", token=None, timeout_s=1.0)
    await server.start()
    reply = await server.predict("mirec_a", b'{"history": [...], "n": 50}', request_id="...")
    reply.status, reply.body      # TorchServe's status and JSON bytes, passed on as they are

Why aiohttp and raw bytes: on the 2-core reference machine httpx's AsyncClient cost ~1.5 ms of Python per
call and was the largest single item in the API's profile (py-spy); aiohttp's keep-alive pool costs a
fraction of that. The request body the client sent is forwarded unchanged when the API did not add a
history, and the answer is parsed once (by the API's schema), so no JSON is encoded or decoded twice.

`protocol` (ApiSettings.upstream_protocol): `torchserve` (POST /predictions/<model>), `kserve-v1` (POST
/v1/models/<model>:predict, {"instances": [request]} -> {"predictions": [answer]}) or `kserve-v2` (POST
/v2/models/<model>/infer, Open Inference Protocol); `mirec.serving.kserve` wraps the request and unwraps the answer,
so `predict` returns the handler's answer bytes in all three (KServe adds one small JSON decode/encode per call).

One connection pool per model (arm): a model whose worker is restarting holds its own connections until the
deadline, and another arm's requests do not wait behind them for a free connection. Health calls (ping,
management) use a pool of their own.

`ModelServer` is the interface the API needs; `mirec.serving.testing.InProcessTorchServe` implements it
in-process for tests that drive the API without the Java process.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import orjson

from mirec.serving import kserve


class UpstreamUnavailable(Exception):
    """TorchServe could not be reached or did not answer in time (-> 503 from the API)."""


class UpstreamTimeout(UpstreamUnavailable):
    """TorchServe did not answer within the API's deadline (-> 504 from the API)."""


@dataclass(frozen=True)
class UpstreamReply:
    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class ModelServer(Protocol):
    token: str | None

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def predict(self, model: str, body: bytes, request_id: str) -> UpstreamReply: ...

    async def ping(self) -> UpstreamReply: ...


class TorchServeClient:
    """Keep-alive connection pools (aiohttp) to TorchServe: one per model + one for health calls.

    `management_url`/`management_token`: the management API, for `describe` (readiness)."""

    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 1.0, max_connections: int = 64,
                 management_url: str | None = None, management_token: str | None = None,
                 protocol: str = "torchserve"):
        if protocol not in kserve.PROTOCOLS:
            raise ValueError(f"unknown upstream protocol {protocol!r}; expected one of {', '.join(kserve.PROTOCOLS)}")
        self.base_url = base_url.rstrip("/")
        self.protocol = protocol
        self.token = token
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.management_url = management_url.rstrip("/") if management_url else None
        self.management_token = management_token
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._started = False

    def _session(self, pool: str) -> aiohttp.ClientSession:
        s = self._sessions.get(pool)
        if s is None:
            connector = aiohttp.TCPConnector(limit=self.max_connections if pool != "_health" else 4,
                                             keepalive_timeout=60.0)
            s = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                                      skip_auto_headers=("User-Agent",))
            self._sessions[pool] = s
        return s

    async def start(self, models: list[str] | None = None) -> None:
        self._started = True
        for m in models or []:
            self._session(m)
        self._session("_health")

    async def close(self) -> None:
        self._started = False
        sessions, self._sessions = list(self._sessions.values()), {}
        for s in sessions:
            await s.close()

    def _headers(self, extra: dict[str, str] | None = None, token: str | None = None) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if token:
            h["Authorization"] = f"Bearer {token}"
        return {**h, **(extra or {})}

    async def _call(self, pool: str, method: str, url: str, body: bytes | None = None, headers: dict | None = None,
                    timeout_s: float | None = None) -> UpstreamReply:
        if not self._started:
            raise UpstreamUnavailable("client not started")
        limit = timeout_s or self.timeout_s
        kw = {"timeout": aiohttp.ClientTimeout(total=timeout_s)} if timeout_s else {}
        try:
            async with self._session(pool).request(method, url, data=body, headers=headers, **kw) as r:
                return UpstreamReply(r.status, await r.read())
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"no answer from {url} within {limit * 1000:.0f} ms") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamUnavailable(f"{type(exc).__name__}: {exc or 'connection failed'} ({url})") from exc

    async def predict(self, model: str, body: bytes, request_id: str) -> UpstreamReply:
        """One prediction; `body` is the request JSON object. In a KServe protocol it is wrapped for the predictor
        and the answer unwrapped (`mirec.serving.kserve`), so the reply holds the handler's answer either way."""
        p = self.protocol
        r = await self._call(model, "POST", self.base_url + kserve.predict_path(p, model),
                             kserve.wrap_request(p, body, request_id),
                             self._headers({"X-Request-Id": request_id}, self.token))
        if p == "torchserve":
            return r
        return UpstreamReply(*kserve.unwrap_reply(p, r.status, r.body))

    async def model_ready(self, model: str) -> dict | None:
        """KServe protocols: the predictor's per-model readiness (v1 GET /v1/models/<m> -> {"ready": true}, v2
        GET /v2/models/<m>/ready -> 200), as /readyz's arm state; None when the predictor does not serve that path
        (TorchServe 0.12 itself answers neither on its inference port: 404) or in the torchserve protocol, and
        then the caller asks /ping."""
        path = kserve.ready_path(self.protocol, model)
        if path is None:
            return None
        r = await self._call("_health", "GET", self.base_url + path, headers=self._headers(token=self.token),
                             timeout_s=2.0)
        if r.status in (404, 405, 501):
            return None
        try:
            doc = orjson.loads(r.body) if r.body else {}
        except ValueError:
            doc = {}
        # v1 answers {"name", "ready": bool}; v2 200 = ready (KServe's server adds {"ready": bool} too)
        flag = doc.get("ready", self.protocol == "kserve-v2") if isinstance(doc, dict) else False
        ready = r.status == 200 and flag is True
        return {"ready": ready, "kserve": f"{path}: HTTP {r.status}"}

    async def ping(self) -> UpstreamReply:
        return await self._call("_health", "GET", f"{self.base_url}/ping", headers=self._headers(token=self.token),
                                timeout_s=2.0)

    async def describe(self, model: str) -> UpstreamReply:
        """GET <management>/models/<model> (workers and their status); UpstreamUnavailable without a management URL."""
        if not self.management_url:
            raise UpstreamUnavailable("no management URL configured")
        return await self._call("_health", "GET", f"{self.management_url}/models/{model}",
                                headers=self._headers(token=self.management_token), timeout_s=2.0)
