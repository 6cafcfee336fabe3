"""Tiny stand-in candidates for serving tests and benchmarks: random-init models of the registry and a
hand-made item table (no dataset or training needed)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

from mirec.serving.upstream import UpstreamReply, UpstreamUnavailable

N_ITEMS = 400
N_CATS = 8


def items_frame(n: int = N_ITEMS) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    cat = np.arange(n) % N_CATS
    return pd.DataFrame({"item_idx": np.arange(n), "item_id": [f"item-{i}" for i in range(n)],
                         "category": [f"cat{c}" for c in cat], "category_idx": cat,
                         "popularity": rng.integers(0, 1000, n)})


def tiny_model(name: str = "comirec_sa", n: int = N_ITEMS, seed: int = 0):
    from mirec.models import ModelConfig, build

    torch.manual_seed(seed)
    cfg = ModelConfig(name=name, n_items=n, dim=16, K=4, max_len=20)
    return build(cfg).eval(), cfg


def random_histories(count: int, seed: int = 1, n: int = N_ITEMS, max_len: int = 30) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [[f"item-{i}" for i in rng.integers(0, n, rng.integers(1, max_len))] for _ in range(count)]


def assert_same_answer(served: list[dict], offline: list[tuple[str, float, int]], atol: float = 1e-4) -> None:
    """Same items in the same order with the same scores and interests; items whose scores tie within
    `atol` may swap places (float summation order differs between batch shapes)."""
    assert len(served) == len(offline), (len(served), len(offline))
    s_scores = np.array([x["score"] for x in served])
    o_scores = np.array([x[1] for x in offline])
    np.testing.assert_allclose(s_scores, o_scores, atol=atol, rtol=0)
    for i, (a, b) in enumerate(zip(served, offline)):
        if a["item_id"] != b[0]:
            assert abs(a["score"] - b[1]) < atol and any(
                abs(o[1] - a["score"]) < atol and o[0] == a["item_id"] for o in offline), (i, a, b)
        else:
            assert a["interest"] == b[2] or abs(a["score"] - b[1]) < atol, (i, a, b)


class InProcessTorchServe:
    """Stands in for TorchServe's inference API (tests only; implements `mirec.serving.upstream.ModelServer`):
    `predict(model, ...)` goes straight to that model's `RecommendService.handle_batch`, so the API can be
    driven without the Java process. `ping` answers healthy; `refuse=True` behaves like a TorchServe that is
    down (every call raises `UpstreamUnavailable`). `delay_s` makes every prediction take that long (overload
    tests); `workers_ready` ({model: n}, default 1 each) is what `describe` (the management API) reports."""

    def __init__(self, service_by_model: dict, refuse: bool = False, delay_s: float = 0.0,
                 workers_ready: dict[str, int] | None = None):
        self.services = service_by_model
        self.refuse = refuse
        self.delay_s = delay_s
        self.workers_ready = workers_ready
        self.token: str | None = None
        self.calls = 0

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def _check(self):
        if self.refuse:
            raise UpstreamUnavailable("ClientConnectorError: connection refused (InProcessTorchServe refuse=True)")

    async def predict(self, model: str, body: bytes, request_id: str):
        self._check()
        self.calls += 1
        if self.delay_s:
            import asyncio

            await asyncio.sleep(self.delay_s)
        if model not in self.services:
            return UpstreamReply(404, json.dumps({"code": 404, "message": f"Model not found: {model}"}).encode())
        status, payload = self.services[model].handle_batch([body])[0]
        return UpstreamReply(status, json.dumps(payload).encode())

    async def ping(self):
        self._check()
        return UpstreamReply(200, b'{"status": "Healthy"}')

    async def describe(self, model: str):
        """Like TorchServe's GET /models/<model> (management API): the model's workers and their status."""
        self._check()
        if model not in self.services:
            return UpstreamReply(404, json.dumps({"code": 404, "message": f"Model not found: {model}"}).encode())
        n = 1 if self.workers_ready is None else self.workers_ready.get(model, 0)
        workers = [{"id": str(9000 + i), "status": "READY"} for i in range(n)] or [{"id": "9000", "status": "UNLOADING"}]
        return UpstreamReply(200, json.dumps([{"modelName": model, "workers": workers}]).encode())
