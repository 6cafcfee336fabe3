"""Request handling that does not depend on TorchServe: parse + validate, map ids, recommend, fall back.

`RecommendService` wraps the one `mirec.retrieval.Recommender` (the object offline evaluation calls),
so a served answer equals offline retrieval for the same history. `serving/handler.py` is a thin
TorchServe adapter around `RecommendService.handle_batch`.

Flow for one request:
  history (request, or a history client such as the Feast online store when only `user_id` is given)
  -> external item ids -> item_idx (unknown ids ignored and counted)
  -> Recommender.recommend(histories, n, exclude_seen, diversity) (interests -> per-interest FAISS
     top-M -> aggregator from the registry)
  -> {"items": [{item_id, score, interest, category}], "model", "version", "fallback", ...}
Cold start (no usable history) -> popularity list, `fallback: "popularity"`, interest -1.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from pydantic import ValidationError

from mirec.data.schema import IdMap
from mirec.metrics import head_mask, history_popularity
from mirec.serving import kserve
from mirec.serving.schema import MAX_HISTORY, MAX_N, RecommendRequest

log = logging.getLogger(__name__)

META_FILE = "meta.json"
MODEL_CONFIG_FILE = "model_config.json"
WEIGHTS_FILE = "weights.pt"
INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.parquet"


class BadRequest(Exception):
    """A request the service cannot answer because of its content (-> HTTP 4xx, message for the client)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


def error_body(message: str, status: int) -> dict:
    return {"error": safe_text(message), "code": status}


def safe_text(text: str, limit: int = 500) -> str:
    """`text` cut to `limit` characters and made encodable: a lone surrogate (JSON allows "\\ud800") becomes its
    escape, so the message can always be sent as UTF-8 JSON (and as an HTTP reason phrase once ASCII-fied)."""
    text = str(text)
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text)} characters)"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _where(loc: tuple) -> str:
    """A pydantic error location as a short, printable path: the field, then list positions (the member
    tags of a union, `str` / `int`, are dropped). A field name comes from the client: cut and ASCII-fied."""
    if not loc:
        return "<body>"
    head = str(loc[0])
    head = head if len(head) <= 40 else head[:40] + "..."
    parts = [head] + [str(p) for p in loc[1:] if isinstance(p, int)]
    return ascii(".".join(parts))[1:-1]


def parse_request(body: Any) -> RecommendRequest:
    """bytes | str | dict -> RecommendRequest, or BadRequest with a message that says what is wrong.

    400: not UTF-8, empty, not JSON (incl. nesting too deep for the parser, an integer with more digits than
    Python converts), not an object; 413: a history longer than MAX_HISTORY; 422: a field of the wrong type
    (strict: no bool -> int/str coercion), out of range, too long, or unknown."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("request body is not UTF-8 text") from None
    if isinstance(body, str):
        if not body.strip():
            raise BadRequest("empty request body; send a JSON object such as {\"user_id\": \"u1\", \"history\": [...]}")
        try:
            body = json.loads(body)
        except json.JSONDecodeError as exc:
            raise BadRequest(f"invalid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})") from None
        except RecursionError:
            raise BadRequest("invalid JSON: nested too deeply") from None
        except ValueError as exc:  # an integer of more than sys.get_int_max_str_digits() (4300) digits
            what = "a number has too many digits" if "digits" in str(exc) else safe_text(exc, 200)
            raise BadRequest(f"invalid JSON: {what}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"request must be a JSON object, got {type(body).__name__}")
    hist = body.get("history")
    if isinstance(hist, list) and len(hist) > MAX_HISTORY:
        raise BadRequest(f"history has {len(hist)} items; at most {MAX_HISTORY} are accepted", 413)
    try:
        return RecommendRequest.model_validate(body, strict=True)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        where = _where(errors[0]["loc"])
        # a union (`str | int` ids) reports one error per member: say them together
        same = [e for e in errors[:4] if _where(e["loc"]) == where]
        kinds = {e["type"] for e in same}
        if len(same) > 1 and kinds <= {"string_type", "int_type"}:
            msg = "must be a string or an integer (strict: true/false, numbers with a fraction, lists are refused)"
        else:
            msg = safe_text(same[0]["msg"], 300)
        if where == "n":
            msg += f" (n must be an integer in 1..{MAX_N})"
        raise BadRequest(f"invalid field '{where}': {msg}", 422) from None
    except RecursionError:  # a deeply nested value in a field (a dict body decoded by the caller)
        raise BadRequest("request nested too deeply", 400) from None


HistoryClient = Callable[[list[str]], dict[str, list[str]]]


@dataclass
class Answer:
    """What the service returns per request: the response + the fields the served log needs."""

    items: list[dict]
    model: str
    version: str
    fallback: str | None
    unknown_items: int
    history_source: str
    history_len: int
    interest_stats: dict
    history_categories: dict[str, int] = field(default_factory=dict)
    feast_fallback: bool = False
    #: {"head_share", "mean_log_pop"} of the known history (mirec.monitoring.popularity), for the input-drift check
    history_popularity: dict[str, float] | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class RecommendService:
    """Recommender + id map + item categories + name/version of the packaged candidate."""

    def __init__(self, recommender, item_ids: IdMap, categories: np.ndarray, model_name: str, version: str,
                 meta: dict | None = None, history_client: HistoryClient | None = None):
        self.recommender = recommender
        self.item_ids = item_ids
        self.categories = np.asarray(categories, dtype=object)  # category name per item_idx
        self.model_name = model_name
        self.version = version
        self.meta = meta or {}
        self.history_client = history_client
        # the monitor's "more popular histories" check compares this with the reference, which measures the
        # same items.parquet popularity with the same function
        pop = getattr(recommender, "item_popularity", None)
        self.item_popularity = None if pop is None else np.asarray(pop, np.float64)
        self.head_items = None if pop is None else head_mask(self.item_popularity)

    # ---- loading a packaged model directory (the unpacked MAR) ---------------------------------
    @classmethod
    def load(cls, model_dir: str | Path, model_name: str | None = None, device: str | None = None,
             history_client: HistoryClient | None = None) -> "RecommendService":
        import torch

        from mirec.models import ModelConfig, build
        from mirec.retrieval import ItemIndex
        from mirec.retrieval.index import GPU_KINDS
        from mirec.retrieval.recommender import Recommender

        model_dir = Path(model_dir)
        meta = json.loads((model_dir / META_FILE).read_text())
        cfg = ModelConfig.model_validate(json.loads((model_dir / MODEL_CONFIG_FILE).read_text()))
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = build(cfg)
        state = torch.load(model_dir / WEIGHTS_FILE, map_location=device, weights_only=True)
        model.load_state_dict(state)
        model.to(device).eval()
        index = ItemIndex.load(model_dir / INDEX_FILE)
        if device.startswith("cuda") and index.kind in GPU_KINDS:
            try:
                import faiss
                if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
                    index.index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index.index)
                    index.params["gpu"] = True
            except Exception as exc:  # a CPU index still answers the same
                log.warning("FAISS GPU unavailable, index stays on CPU: %s", exc)
        items = pd.read_parquet(model_dir / ITEMS_FILE).sort_values("item_idx").reset_index(drop=True)
        rec = Recommender(model, index=index, items=items, item_popularity=items["popularity"].to_numpy(),
                          aggregator=meta.get("aggregator", "merge"),
                          aggregator_params=meta.get("aggregator_params") or {})
        return cls(rec, IdMap(items["item_id"].to_numpy()), items["category"].to_numpy(),
                   model_name or meta.get("name", model_dir.name), str(meta.get("version", "0")), meta,
                   history_client)

    # ---- answering ------------------------------------------------------------------------------
    def _history(self, req: RecommendRequest) -> tuple[np.ndarray, int, str, bool]:
        """-> (item_idx history, unknown count, history_source, feast_fallback)."""
        feast_fallback = False
        raw: list[str] | None = req.history
        source = "request"
        if raw is None and req.user_id is not None and self.history_client is not None:
            try:
                raw = self.history_client([req.user_id]).get(req.user_id) or []
                source = "feast"
            except Exception as exc:  # FeatureStoreUnavailable or anything else: serve, flagged
                log.warning("history lookup failed for user %s: %s", req.user_id, exc)
                feast_fallback, raw = True, None
        if raw is None:
            return np.empty(0, np.int64), 0, "none", feast_fallback
        idx = self.item_ids.to_index(raw)
        known = idx[idx >= 0]
        return known, int((idx < 0).sum()), source, feast_fallback

    def answer(self, reqs: list[RecommendRequest]) -> list[Answer]:
        """Answer a batch; requests with the same (n, exclude_seen, diversity) share one Recommender call."""
        if _OMP_THREADS is not None:  # per-thread OpenMP setting (see configure_threads)
            import faiss

            faiss.omp_set_num_threads(_OMP_THREADS)
        hist = [self._history(r) for r in reqs]
        out: list[Answer | None] = [None] * len(reqs)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(reqs):
            groups.setdefault((r.n, r.exclude_seen, r.diversity), []).append(i)
        for (n, exclude_seen, diversity), idx in groups.items():
            lists, details = self.recommender.recommend([hist[i][0] for i in idx], n=n, exclude_seen=exclude_seen,
                                                        diversity=diversity, return_details=True)
            for j, i in enumerate(idx):
                out[i] = self._build(hist[i], lists[j], details[j])
        return out  # type: ignore[return-value]

    def _build(self, hist, recs, det) -> Answer:
        h, unknown, source, feast_fallback = hist
        fallback = det.get("fallback")
        ids = self.item_ids.to_external([r.item_idx for r in recs])
        items = [{"item_id": iid, "score": float(r.score), "interest": -1 if fallback else int(r.interest),
                  "category": str(self.categories[r.item_idx])} for iid, r in zip(ids, recs)]
        stats = det.get("stats") or {"k": 0, "mean_pairwise_cos": None, "interest_norms": []}
        cats = Counter(str(self.categories[i]) for i in h)
        return Answer(items=items, model=self.model_name, version=self.version, fallback=fallback,
                      unknown_items=unknown, history_source=source, history_len=int(len(h)),
                      interest_stats=stats, history_categories=dict(cats), feast_fallback=feast_fallback,
                      history_popularity=None if self.item_popularity is None
                      else history_popularity(h, self.item_popularity, self.head_items))

    def handle_batch(self, bodies: list[Any]) -> list[tuple[int, dict]]:
        """One (status, JSON body) per request, in order, whatever the requests hold.

        A body may be a plain TorchServe request or a KServe v1 (`{"instances": [...]}`) / v2 (Open Inference
        Protocol) call (`mirec.serving.kserve`): a KServe call's instances are answered together with the other
        requests of the batch and wrapped back into one KServe answer (or that call's own 4xx/5xx
        `{"error": ...}`), so batching and per-request isolation hold across the three protocols."""
        calls, flat = kserve.expand(bodies)
        if all(c.protocol == "torchserve" for c in calls):
            return self._handle_requests(flat)
        return kserve.collapse(calls, self._handle_requests(flat), self.model_name, self.version)

    def _handle_requests(self, bodies: list[Any]) -> list[tuple[int, dict]]:
        """One (status, JSON body) per plain request, in order, whatever the requests hold.

        Per-request isolation: a request that cannot be parsed gets its own 4xx (`BadRequest`); any other
        exception while parsing one request is that request's 500; if answering the valid requests together
        raises, each is retried alone, so only the one that fails gets a 500. Nothing a request holds makes
        this method raise or fail its batch mates."""
        results: list[tuple[int, dict] | None] = [None] * len(bodies)
        ok: list[tuple[int, RecommendRequest]] = []
        for i, b in enumerate(bodies):
            try:
                ok.append((i, parse_request(b)))
            except BadRequest as exc:
                results[i] = (exc.status, error_body(exc.message, exc.status))
            except Exception as exc:  # noqa: BLE001 - a parser fault must stay this request's own answer
                log.exception("request %d of a batch of %d could not be parsed", i, len(bodies))
                results[i] = (500, error_body(f"internal error while parsing the request: {type(exc).__name__}", 500))
        if ok:
            try:
                answers = self.answer([r for _, r in ok])
                for (i, _), a in zip(ok, answers):
                    results[i] = (200, a.as_dict())
            except Exception as exc:  # noqa: BLE001 - one failing request must not take the batch down
                log.exception("batch failed, answering one by one: %s", exc)
                for i, r in ok:
                    try:
                        results[i] = (200, self.answer([r])[0].as_dict())
                    except Exception as exc1:  # noqa: BLE001
                        log.exception("request %d of a batch of %d failed", i, len(bodies))
                        results[i] = (500, error_body(f"internal error: {type(exc1).__name__}: {exc1}", 500))
        return results  # type: ignore[return-value]


_OMP_THREADS: int | None = None


def freeze_loaded_objects() -> None:
    """Move everything loaded so far (model, id map, item table) out of the cyclic GC's reach.

    A serving process holds ~10^5-10^6 long-lived objects after loading; one full (generation 2) collection
    then takes ~90 ms at 10^6 items (measured), and it lands on whichever request happens to trigger it.
    Those objects live as long as the process, so there is nothing to collect among them."""
    import gc

    gc.collect()
    gc.freeze()


def configure_threads(n: int | None = None) -> int:
    """Intra-op threads for torch and FAISS (MIREC_THREADS, default 1: workers scale by process).

    OpenMP's thread count is a per-thread setting: a thread that did not call omp_set_num_threads
    searches with every core. `RecommendService.answer` therefore re-applies it in the calling thread."""
    import faiss
    import torch

    global _OMP_THREADS
    n = int(n or os.environ.get("MIREC_THREADS", "1"))
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    _OMP_THREADS = n
    return n
