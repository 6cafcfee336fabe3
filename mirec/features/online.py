"""Online history lookup for serving, with a hard deadline.

    client = OnlineHistoryClient("feature_repo", timeout_ms=50)
    try:
        hist = client.recent_items(["u1", "u2"])      # {"u1": ["i9", "i4", ...], "u2": []}
    except FeatureStoreUnavailable:
        ...  # fall back (history from the request, else popularity) and say so in the response

Every lookup runs in one of `max_inflight` persistent daemon worker threads and is abandoned after `timeout_ms`: a hung or slow store
(locked SQLite file, unreachable Redis, stuck registry) never holds the request. At most `max_inflight`
abandoned lookups may still be running; beyond that the client answers FeatureStoreUnavailable at once
instead of piling up threads. Each failure is counted (`client.fallbacks`, and the Prometheus counter
`mirec_feast_fallbacks_total{reason}` when prometheus_client is installed).
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from mirec.features.config import FeaturesConfig

log = logging.getLogger(__name__)

SERVING_SERVICE = "mirec_serving"
ITEMS_FEATURE = "recent_item_ids"

try:  # optional metric, shared by every client in the process
    from prometheus_client import Counter

    FALLBACKS_METRIC = Counter("mirec_feast_fallbacks_total",
                               "Feast online lookups that failed or timed out (caller fell back)", ["reason"])
except Exception:  # pragma: no cover - prometheus_client missing or metric already registered
    FALLBACKS_METRIC = None


class FeatureStoreUnavailable(RuntimeError):
    """The online store could not answer in time (timeout, connection/config error, missing registry...)."""

    def __init__(self, message: str, reason: str = "error"):
        super().__init__(message)
        self.reason = reason  # "timeout" | "busy" | "error"


class OnlineHistoryClient:
    """Recent items per user from the Feast online store (external item ids, oldest -> newest)."""

    def __init__(self, repo_path: str, timeout_ms: float = 50, *, profile: str | None = None,
                 store_dir: str | None = None, max_inflight: int = 4, warmup: bool = True,
                 warmup_timeout_ms: float = 10_000):
        # a missing repo, bad profile or wrong store type is a configuration error: raised now as
        # mirec.errors.ConfigError. Store *availability* problems only ever raise FeatureStoreUnavailable.
        self.cfg = FeaturesConfig(repo_path=repo_path, profile=profile, store_dir=store_dir).resolved()
        from mirec.features.store import repo_config

        repo_config(self.cfg)  # wrong store type / missing variable / missing store extra: ConfigError now
        self.timeout_s = float(timeout_ms) / 1000.0
        self.max_inflight = max_inflight
        self._store = None
        self._service = None
        self._open_lock = threading.Lock()
        self._lock = threading.Lock()
        self._inflight = 0
        self._workers = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.calls = 0
        self.fallbacks = 0
        self.fallback_reasons: dict[str, int] = {}
        self.last_error: str | None = None
        if warmup:
            try:  # open the registry and the connection once, so that the first request is not the slow one
                self._call(lambda: self._lookup(["__warmup__"]), warmup_timeout_ms / 1000.0, count=False)
            except FeatureStoreUnavailable as exc:
                log.warning("feast online store not ready at startup (%s); will retry per request", exc)

    # -- internals -------------------------------------------------------------------------------------
    def _open(self):
        with self._open_lock:
            if self._store is None:
                from mirec.features.store import open_store

                store = open_store(self.cfg)
                self._service = store.get_feature_service(SERVING_SERVICE)
                self._store = store
        return self._store

    def _lookup(self, user_ids: list[str]) -> dict[str, list[str]]:
        store = self._store or self._open()
        resp = store.get_online_features(features=self._service,
                                         entity_rows=[{"user_id": str(u)} for u in user_ids]).to_dict()
        items = resp[ITEMS_FEATURE]
        return {str(u): (list(v) if v is not None else []) for u, v in zip(resp["user_id"], items)}

    def _fail(self, reason: str, message: str, count: bool) -> FeatureStoreUnavailable:
        if count:
            with self._lock:
                self.fallbacks += 1
                self.fallback_reasons[reason] = self.fallback_reasons.get(reason, 0) + 1
                self.last_error = message
            if FALLBACKS_METRIC is not None:
                FALLBACKS_METRIC.labels(reason=reason).inc()
        return FeatureStoreUnavailable(message, reason)

    def _worker(self) -> None:
        while True:
            fn, box, done = self._queue.get()
            try:
                box["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 - everything becomes FeatureStoreUnavailable
                box["error"] = exc
            finally:
                with self._lock:
                    self._inflight -= 1
                done.set()

    def _call(self, fn, timeout_s: float, count: bool = True):
        with self._lock:
            busy = self._inflight >= self.max_inflight
            if not busy:
                self._inflight += 1
                if self._workers < self.max_inflight and self._workers < self._inflight:
                    # persistent daemon workers (a thread per call costs ms at p99 on a loaded machine)
                    threading.Thread(target=self._worker, name="feast-online-lookup", daemon=True).start()
                    self._workers += 1
        if busy:
            raise self._fail("busy", f"feature store busy: {self.max_inflight} lookups still pending", count)
        box: dict = {}
        done = threading.Event()
        self._queue.put((fn, box, done))
        if not done.wait(timeout_s):
            raise self._fail("timeout", f"feature store did not answer within {timeout_s * 1000:.0f} ms", count)
        if "error" in box:
            exc = box["error"]
            msg = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            raise self._fail("error", f"feature store error: {msg}", count) from None
        return box["value"]

    # -- public API ------------------------------------------------------------------------------------
    def recent_items(self, user_ids: list[str]) -> dict[str, list[str]]:
        """{user_id: [external item ids, oldest -> newest]} for each id; [] for users the store does not know.
        Raises FeatureStoreUnavailable on any store error or after timeout_ms."""
        with self._lock:
            self.calls += 1
        if not user_ids:
            return {}
        t0 = time.perf_counter()
        out = self._call(lambda: self._lookup(list(user_ids)), self.timeout_s)
        log.debug("feast lookup of %d users in %.2f ms", len(user_ids), (time.perf_counter() - t0) * 1e3)
        return {str(u): out.get(str(u), []) for u in user_ids}

    def metrics(self) -> dict:
        with self._lock:
            return {"calls": self.calls, "fallbacks": self.fallbacks, "reasons": dict(self.fallback_reasons),
                    "inflight": self._inflight, "last_error": self.last_error}


class HistoryResolution:
    """Which history a request is served from, in the words of the serving log (docs/CONTRACTS.md)."""

    __slots__ = ("items", "source", "feast_fallback", "feast_error")

    def __init__(self, items: list[str], source: str, feast_fallback: bool = False, feast_error: str | None = None):
        self.items = items
        self.source = source  # "request" | "feast" | "none"
        self.feast_fallback = feast_fallback  # the store was asked and failed (timeout/error/busy)
        self.feast_error = feast_error

    @property
    def fallback(self) -> str | None:
        """'popularity' when there is no history to recommend from."""
        return None if self.items else "popularity"

    def __repr__(self) -> str:
        return (f"HistoryResolution(source={self.source!r}, n={len(self.items)}, "
                f"feast_fallback={self.feast_fallback}, fallback={self.fallback!r})")


def resolve_history(user_id: str | None, request_items: list[str] | None,
                    client: OnlineHistoryClient | None) -> HistoryResolution:
    """The serving rule: a request's own history wins; with only a user_id, ask the Feast online store;
    if the store fails or is slow, fall back to the request's history (if any), else to popularity.
    Never raises for store problems and never waits longer than the client's timeout."""
    if request_items:
        return HistoryResolution(list(request_items), "request")
    if not user_id or client is None:
        return HistoryResolution([], "none")
    try:
        items = client.recent_items([user_id]).get(str(user_id), [])
    except FeatureStoreUnavailable as exc:
        return HistoryResolution([], "none", feast_fallback=True, feast_error=str(exc))
    return HistoryResolution(items, "feast" if items else "none")
