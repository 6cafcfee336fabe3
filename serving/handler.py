"""TorchServe handler for mirec: a thin adapter around `mirec.serving.service.RecommendService`.

Request body (JSON): {"user_id": ..., "history": [item ids], "n": 50, "diversity": null|0..1, "exclude_seen": true}
Response: {"items": [{"item_id", "score", "interest", "category"}], "model", "version", "fallback", ...}
KServe: the same handler answers `POST /v1/models/<m>:predict` ({"instances": [...]} -> {"predictions": [...]}) and
`POST /v2/models/<m>/infer` (Open Inference Protocol, BYTES tensor "request" -> "recommendation"); the body says which
(`mirec.serving.kserve`, inside `RecommendService.handle_batch`). Do not configure TorchServe's `service_envelope`.

Batching: TorchServe hands `handle` a list of requests; exactly one response per request is returned,
in order. A bad request gets its own 4xx status through `context.set_response_status(code, phrase, idx)`
(TorchServe 0.12 sends a per-request status code to the frontend, see ts/protocol/otf_message_handler.py);
the other requests of the batch are answered normally and the worker keeps serving.
"""

from __future__ import annotations

import logging
import os
import sys

import orjson
from ts.torch_handler.base_handler import BaseHandler

logger = logging.getLogger(__name__)


class DropPerRequestBackendLog(logging.Filter):
    """TorchServe's worker logs "Backend received inference at: <time>" at INFO on the root logger for every
    request, and the Java frontend reads and re-logs every line the worker prints. It says nothing the
    frontend's access log does not; drop it. Everything else stays, incl. the [METRICS] lines the frontend
    turns into Prometheus metrics."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith("Backend received inference"))


class MirecHandler(BaseHandler):
    def __init__(self):
        super().__init__()
        self.service = None

    def initialize(self, context):
        props = context.system_properties
        model_dir = props.get("model_dir")
        if model_dir and model_dir not in sys.path:
            sys.path.insert(0, model_dir)  # the `mirec` code packaged in the MAR
        from mirec.serving.service import RecommendService, configure_threads, freeze_loaded_objects

        threads = configure_threads()
        gpu = props.get("gpu_id")
        import torch

        device = f"cuda:{gpu}" if (gpu is not None and torch.cuda.is_available()) else "cpu"
        history_client = None
        repo = os.environ.get("MIREC_FEAST_REPO")
        if repo:  # optional: the API normally resolves histories; a handler-side store is opt-in
            from mirec.features.online import OnlineHistoryClient

            history_client = OnlineHistoryClient(repo, timeout_ms=int(os.environ.get("MIREC_FEAST_TIMEOUT_MS", "50"))
                                                 ).recent_items
        self.service = RecommendService.load(model_dir, model_name=context.model_name, device=device,
                                             history_client=history_client)
        import mirec

        logger.info("mirec handler ready: model=%s version=%s device=%s threads=%d code=%s",
                    self.service.model_name, self.service.version, device, threads, mirec.__file__)
        logging.getLogger().addFilter(DropPerRequestBackendLog())
        freeze_loaded_objects()
        self.initialized = True

    def handle(self, data, context):
        """One response per request, in order. Nothing one request holds fails its batch mates: the service
        isolates parsing and answering per request, and if even that raised, or a payload could not be encoded,
        only the requests concerned get a 500 JSON of their own."""
        bodies = [_body(row) for row in data]
        if len(bodies) > 1:
            logger.info("mirec batch of %d requests", len(bodies))
        try:
            results = self.service.handle_batch(bodies)
        except Exception as exc:  # noqa: BLE001 - handle_batch isolates per request; this is a last resort
            logger.exception("handle_batch raised for a batch of %d", len(bodies))
            results = [(500, {"error": f"internal error: {type(exc).__name__}", "code": 500})] * len(bodies)
        out = []
        for idx, (status, payload) in enumerate(results):
            try:
                blob = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
            except Exception as exc:  # noqa: BLE001 - e.g. a lone surrogate in a message
                logger.exception("response %d of a batch of %d could not be encoded", idx, len(bodies))
                status, payload = 500, {"error": f"internal error: response not encodable ({type(exc).__name__})",
                                        "code": 500}
                blob = orjson.dumps(payload)
            if status != 200:
                context.set_response_status(status, reason_phrase(payload.get("error", "error")), idx)
            context.set_response_content_type(idx, "application/json")
            out.append(blob)
        return out


def _body(row):
    """The request body of one batch row (TorchServe puts it under "body" or "data"; None if neither)."""
    if not isinstance(row, dict):
        return row
    body = row.get("body")
    return body if body is not None else row.get("data")


def reason_phrase(message) -> str:
    """An HTTP reason phrase from an error message: printable ASCII only (it goes into the status line), short."""
    text = ascii(str(message))[1:-1]
    return "".join(c if " " <= c <= "~" else " " for c in text)[:200] or "error"


_service = MirecHandler()


def handle(data, context):
    """Module-level entry point (TorchServe calls this when the handler file defines it)."""
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
