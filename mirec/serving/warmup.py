"""Warm the model server up before the API reports ready.

A freshly started TorchServe answers its first thousands of requests slowly: its Java frontend runs interpreted
until the JIT has compiled the request path, and the compiler threads take CPU from the worker meanwhile. Measured
on the 2-core reference machine at 10^6 items, c=1 (`benchmarks/serving.py --api-warmup A`, docs/serving.md
"Warm-up"): cold, the stack's p99 was 12.2–18.3 ms with the Java frontend at 2.0–2.9 ms CPU per request; after
5,000 warm-up calls 10.0–11.5 ms at 1.2–1.5 ms. A pod that joined a Service cold would serve its first minutes at
the slow figures.

So the API, once started, sends `requests` warm-up calls to every arm's model (through the same upstream client
and connection pools as /recommend, so the API's own client path warms too) and /readyz stays 503 until they are
done. The calls are not client traffic: they are not written to the served log and not counted in
`mirec_api_requests_total` (TorchServe's own metrics do count them).

The histories: the first call has an empty history (the handler answers its popularity fallback); every later one
is a random sample of the item ids answered so far, so the calls run the full interest + index search path with
ids the model knows, whatever the catalogue. Any answer counts as a call (a 4xx/5xx answer is counted as an
error, not retried: warm-up must never keep an API unready because of a model's answers); until the model's first
200 an unreachable server, a 404 (not registered yet) or a 503 (no worker ready) is waited for, up to `wait_s`;
then the state is "gave up" and readiness goes by the arms' workers alone.
"""

from __future__ import annotations

import asyncio
import random
import time

import orjson
from pydantic import Field, ValidationError

from mirec.config import StrictModel
from mirec.serving.schema import HandlerAnswer
from mirec.serving.upstream import ModelServer, UpstreamTimeout, UpstreamUnavailable

POOL_MAX = 20_000  # item ids kept to draw histories from


class WarmupSettings(StrictModel):
    #: warm-up calls per model before /readyz says ready (0 = off). `mirec serve` and the Helm chart set 5,000
    requests: int = Field(0, ge=0)
    #: stop a model's warm-up after this long, from its first answer, even if calls are left
    max_s: float = Field(60.0, gt=0)
    #: how long to wait for the model server to answer at all (it may start after the API)
    wait_s: float = Field(600.0, ge=0)
    history_len: tuple[int, int] = (5, 50)  # the sampled history's length range
    n: int = Field(50, ge=1)  # items asked for per call


async def warm_up(server: ModelServer, model: str, cfg: WarmupSettings, seed: int = 0) -> dict:
    """Send up to `cfg.requests` calls to `model`. -> {"state": "done"|"gave up", "calls", "errors", "seconds",
    "detail"} (the state /readyz reports)."""
    rng = random.Random(seed)
    pool: list[str] = []
    seen: set[str] = set()
    calls = errors = 0
    first_answer: float | None = None
    t0 = time.monotonic()

    def result(state: str, detail: str = "") -> dict:
        return {"state": state, "calls": calls, "errors": errors, "seconds": round(time.monotonic() - t0, 2),
                "detail": detail}

    while calls < cfg.requests:
        if first_answer is not None and time.monotonic() - first_answer > cfg.max_s:
            return result("done", f"stopped after max_s {cfg.max_s:g} s")
        hist = rng.sample(pool, min(rng.randint(*cfg.history_len), len(pool))) if pool else []
        body = orjson.dumps({"user_id": "__mirec_warmup__", "history": hist, "n": cfg.n})
        not_up = None  # why the model cannot answer yet: waited for until its first answer
        try:
            r = await server.predict(model, body, f"warmup-{calls}")
        except UpstreamTimeout:  # an answer too slow for the deadline still warmed the path
            r = None
        except UpstreamUnavailable as exc:
            not_up = f"model server unreachable: {exc}"
        else:  # not loaded yet (404) or no worker ready (503) before the first answer: wait as well
            if r.status != 200 and first_answer is None:
                not_up = f"HTTP {r.status} before any answer"
        if not_up is not None:
            if first_answer is not None or time.monotonic() - t0 > cfg.wait_s:
                errors += 1
                return result("gave up", not_up)
            await asyncio.sleep(1.0)
            continue
        first_answer = first_answer or time.monotonic()
        calls += 1
        if r is None or r.status != 200:
            errors += 1
            continue
        if len(pool) < POOL_MAX:
            try:
                items = HandlerAnswer.model_validate_json(r.body).items  # as /recommend parses it
            except ValidationError:
                errors += 1
                continue
            for it in items:
                if it.item_id not in seen:
                    seen.add(it.item_id)
                    pool.append(it.item_id)
    return result("done")
