"""The API's client for TorchServe's inference API (the one network hop behind `/recommend`).

    server = TorchServeClient("http://127.0.0.1:8080", token=None, timeout_s=1.0)
    await server.start()
    reply = await server.predict("mirec_a", b'{"history": [...], "n": 50}', request_id="...")
    reply.status, reply.body      # TorchServe's status and JSON bytes, passed on as they are

Why aiohttp and raw bytes: on the 2-core reference machine httpx's AsyncClient cost ~1.5 ms of Python per
call and was the largest single item in the API's profile (py-spy); aiohttp's keep-alive pool costs a
fraction of that. The request body the client sent is forwarded unchanged when the API did not add a
history, and the answer is parsed once (by the API's schema), so no JSON is encoded or decoded twice.

`ModelServer` is the interface the API needs; `mirec.serving.testing.InProcessTorchServe` implements it
in-process for tests that drive the API without the Java process.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

import aiohttp


class UpstreamUnavailable(Exception):
    """TorchServe could not be reached or did not answer in time (-> 503 from the API)."""


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
    """Keep-alive connection pool to TorchServe's inference address (aiohttp)."""

    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 1.0, max_connections: int = 64):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self._session = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=60.0)
        self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                                              skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return {**h, **(extra or {})}

    async def _call(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                    timeout_s: float | None = None) -> UpstreamReply:
        if self._session is None:
            raise UpstreamUnavailable("client not started")
        kw = {"timeout": aiohttp.ClientTimeout(total=timeout_s)} if timeout_s else {}
        try:
            async with self._session.request(method, self.base_url + path, data=body, headers=self._headers(headers),
                                             **kw) as r:
                return UpstreamReply(r.status, await r.read())
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise UpstreamUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def predict(self, model: str, body: bytes, request_id: str) -> UpstreamReply:
        return await self._call("POST", f"/predictions/{model}", body, {"X-Request-Id": request_id})

    async def ping(self) -> UpstreamReply:
        return await self._call("GET", "/ping", timeout_s=2.0)
