"""KServe's inference protocols, both ends: the handler side (unwrap a KServe body into its instances, wrap the
answers back) and the API side (wrap one `/recommend` request for the predictor, unwrap its reply).

TorchServe 0.12's frontend routes `POST /v1/models/<model>:predict` (KServe v1) and `POST /v2/models/<model>/infer`
(KServe v2 = Open Inference Protocol) to the model's handler with the body unchanged, like `/predictions/<model>`.
TorchServe's own `service_envelope=kserve|kservev2` is NOT used (its envelopes read only the first request of a
TorchServe batch and answer one response per batch, which breaks batching and per-request isolation): the handler
recognises the body itself (`RecommendService.handle_batch` -> `expand` / `collapse`), so a predictor started with the
kserve profile answers all three protocols on one port.

v1 (KServe V1, TF-Serving row format)                          POST /v1/models/<model>:predict
  request   {"instances": [<RecommendRequest object>, ...]}    (1..MAX_INSTANCES; no other key)
  answer    {"predictions": [<handler answer object>, ...]}    (same order; docs/serving.md "The handler")
  error     HTTP 4xx/5xx {"error": "instance 2: invalid field 'n': ..."}

v2 (Open Inference Protocol, BYTES tensors)                    POST /v2/models/<model>/infer
  request   {"id"?: str, "parameters"?: {...},
             "inputs": [{"name": "request", "datatype": "BYTES", "shape": [n],
                         "data": ["<RecommendRequest JSON>", ...]}],          one element per request
             "outputs"?: [{"name": "recommendation"}]}
  answer    {"model_name": <model>, "model_version": <version>, "id": <the request's id, when it sent one>,
             "outputs": [{"name": "recommendation", "datatype": "BYTES", "shape": [n],
                          "data": ["<handler answer JSON>", ...]}]}
  error     HTTP 4xx/5xx {"error": "..."}
  Exactly one input tensor, named `request`, datatype BYTES, shape [n] (or [n, 1]) with n = len(data); each element
  is one request as a JSON string (a JSON object is accepted as well); `parameters` is accepted and ignored.

Which protocol a body speaks is read from the body: a top-level object with `instances` is v1, one with `inputs` is
v2, anything else is a plain TorchServe request. Neither key is a field of `RecommendRequest` (unknown fields are
refused), so no plain request is ambiguous.

Isolation: one KServe call (one HTTP request) is one unit. Its instances are answered together with the other
requests of the TorchServe batch (one Recommender call per (n, exclude_seen, diversity) group); if any instance is
bad, that call gets the instance's status (the first 4xx, else the first 5xx) and an `{"error": "instance j: ..."}`
body, and every other request of the batch is answered as usual.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

Protocol = Literal["torchserve", "kserve-v1", "kserve-v2"]
PROTOCOLS: tuple[str, ...] = ("torchserve", "kserve-v1", "kserve-v2")

#: instances of one KServe call (more -> 413). The body limit (1 MiB) bounds them too; this bounds the work.
MAX_INSTANCES = 128
V2_INPUT = "request"
V2_OUTPUT = "recommendation"
V2_DATATYPE = "BYTES"
_V2_KEYS = {"id", "parameters", "inputs", "outputs"}


class KServeError(Exception):
    """A KServe envelope the handler cannot unwrap (-> that call's 4xx)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


# ---- handler side ---------------------------------------------------------------------------------------------------
@dataclass
class Call:
    """One body of a TorchServe batch: a plain request (`protocol="torchserve"`, `bodies` = [the body]) or a KServe
    call with its instances (`bodies`), or an envelope error (`error` = (status, message))."""

    protocol: str
    bodies: list = field(default_factory=list)
    id: str | None = None
    error: tuple[int, str] | None = None


def _decode(body: Any) -> Any:
    """The JSON document of a body that may be KServe-shaped; the body itself when it is not JSON-looking or not
    decodable (the plain path then reports why, with its own message)."""
    if isinstance(body, dict):
        return body
    if isinstance(body, (bytes, bytearray, memoryview)):
        raw = bytes(body)
        if b'"instances"' not in raw and b'"inputs"' not in raw:
            return body  # the fast path: a plain request is never decoded here
        try:
            return json.loads(raw.decode("utf-8"))
        except Exception:  # noqa: BLE001 - bad JSON is the plain path's 400 (same message as without KServe)
            return body
    if isinstance(body, str):
        if '"instances"' not in body and '"inputs"' not in body:
            return body
        try:
            return json.loads(body)
        except Exception:  # noqa: BLE001
            return body
    return body


def classify(body: Any) -> Call:
    """Which protocol `body` speaks, and its instances. Never raises: an envelope error is the call's own answer."""
    doc = _decode(body)
    if not isinstance(doc, dict):
        return Call("torchserve", [body])
    if "instances" in doc:
        return _call(_v1_instances, doc, "kserve-v1")
    if "inputs" in doc:
        return _call(_v2_instances, doc, "kserve-v2")
    return Call("torchserve", [doc])


def _call(fn, doc: dict, protocol: str) -> Call:
    try:
        instances, rid = fn(doc)
        return Call(protocol, instances, rid)
    except KServeError as exc:
        return Call(protocol, [], None, (exc.status, exc.message))
    except Exception as exc:  # noqa: BLE001 - nothing an envelope holds may escape into its batch mates
        return Call(protocol, [], None, (400, f"unreadable KServe request ({type(exc).__name__})"))


def _count(n: int, what: str) -> None:
    if n == 0:
        raise KServeError(f"{what} is empty; send at least one request")
    if n > MAX_INSTANCES:
        raise KServeError(f"{what} has {n} requests; at most {MAX_INSTANCES} are accepted per call", 413)


def _short(key: Any) -> str:
    text = str(key)
    return ascii(text if len(text) <= 40 else text[:40] + "...")[1:-1]


def _v1_instances(doc: dict) -> tuple[list, None]:
    extra = [k for k in doc if k != "instances"]
    if extra:
        raise KServeError(f"KServe v1 request: unknown key '{_short(extra[0])}' (send {{\"instances\": [...]}})", 422)
    inst = doc["instances"]
    if not isinstance(inst, list):
        raise KServeError(f"KServe v1 request: 'instances' must be a list of request objects, got {type(inst).__name__}",
                          422)
    _count(len(inst), "'instances'")
    return inst, None


def _v2_instances(doc: dict) -> tuple[list, str | None]:
    extra = [k for k in doc if k not in _V2_KEYS]
    if extra:
        raise KServeError(f"KServe v2 request: unknown key '{_short(extra[0])}' (allowed: id, parameters, inputs, "
                          "outputs)", 422)
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise KServeError("KServe v2 request: 'id' must be a string", 422)
    if rid is not None and len(rid) > 256:
        raise KServeError("KServe v2 request: 'id' is longer than 256 characters", 422)
    if not isinstance(doc.get("parameters", {}), dict):
        raise KServeError("KServe v2 request: 'parameters' must be an object", 422)
    outputs = doc.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) and o.get("name") == V2_OUTPUT for o in outputs):
            raise KServeError(f"KServe v2 request: 'outputs' may only ask for the output tensor '{V2_OUTPUT}'", 422)
    inputs = doc["inputs"]
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise KServeError(f"KServe v2 request: 'inputs' must hold exactly one tensor, named '{V2_INPUT}' "
                          f"(datatype {V2_DATATYPE}, one JSON request per element)", 422)
    t = inputs[0]
    if t.get("name") != V2_INPUT:
        raise KServeError(f"KServe v2 request: the input tensor must be named '{V2_INPUT}', got "
                          f"'{_short(t.get('name'))}'", 422)
    if t.get("datatype") != V2_DATATYPE:
        raise KServeError(f"KServe v2 request: input '{V2_INPUT}' must have datatype {V2_DATATYPE} (one JSON request "
                          f"per element), got '{_short(t.get('datatype'))}'", 422)
    data = t.get("data")
    if not isinstance(data, list):
        raise KServeError(f"KServe v2 request: input '{V2_INPUT}' needs 'data', a list of JSON request strings", 422)
    shape = t.get("shape")
    if (not isinstance(shape, list) or not shape or len(shape) > 2
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
            or shape[0] != len(data) or (len(shape) == 2 and shape[1] != 1)):
        raise KServeError(f"KServe v2 request: input '{V2_INPUT}' has shape {_short(shape)} but {len(data)} elements "
                          f"(expected [{len(data)}])", 422)
    _count(len(data), f"input '{V2_INPUT}'")
    for j, x in enumerate(data):
        if not isinstance(x, (str, dict)):
            raise KServeError(f"instance {j}: a {V2_DATATYPE} element must be a JSON request string, got "
                              f"{type(x).__name__}", 422)
    return data, rid


def expand(bodies: list) -> tuple[list[Call], list]:
    """A TorchServe batch -> (one Call per body, the flat list of request bodies to answer: plain requests and
    every KServe instance, in order)."""
    calls = [classify(b) for b in bodies]
    flat = [x for c in calls for x in c.bodies]
    return calls, flat


def _encode(payload: dict) -> str:
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY).decode("utf-8")


def collapse(calls: list[Call], results: list[tuple[int, dict]], model_name: str,
             version: str) -> list[tuple[int, dict]]:
    """The flat results (one (status, payload) per body of `expand`'s list) -> one (status, payload) per Call."""
    out: list[tuple[int, dict]] = []
    pos = 0
    for c in calls:
        mine = results[pos:pos + len(c.bodies)]
        pos += len(c.bodies)
        if c.protocol == "torchserve":
            out.append(mine[0])
            continue
        if c.error is not None:
            out.append((c.error[0], {"error": c.error[1]}))
            continue
        bad = [(j, s, p) for j, (s, p) in enumerate(mine) if s != 200]
        if bad:
            j, status, payload = next((b for b in bad if 400 <= b[1] < 500), bad[0])
            msg = payload.get("error") if isinstance(payload, dict) else None
            out.append((status, {"error": f"instance {j}: {msg or f'HTTP {status}'}"}))
            continue
        try:
            if c.protocol == "kserve-v1":
                out.append((200, {"predictions": [p for _, p in mine]}))
            else:
                body: dict = {"model_name": model_name, "model_version": version}
                if c.id is not None:
                    body["id"] = c.id
                body["outputs"] = [{"name": V2_OUTPUT, "datatype": V2_DATATYPE, "shape": [len(mine)],
                                    "data": [_encode(p) for _, p in mine]}]
                out.append((200, body))
        except Exception as exc:  # noqa: BLE001 - an answer orjson cannot encode: this call's 500 only
            out.append((500, {"error": f"internal error: answer not encodable ({type(exc).__name__})"}))
    return out


# ---- API side -------------------------------------------------------------------------------------------------------
def predict_path(protocol: str, model: str) -> str:
    """The predictor's path for one prediction of `model` in `protocol`."""
    if protocol == "kserve-v1":
        return f"/v1/models/{model}:predict"
    if protocol == "kserve-v2":
        return f"/v2/models/{model}/infer"
    return f"/predictions/{model}"


def ready_path(protocol: str, model: str) -> str | None:
    """KServe's per-model readiness path (answered by a KServe model server, e.g. the runtime image's wrapper;
    TorchServe 0.12 itself answers neither on its inference port: the API then falls back to /ping)."""
    if protocol == "kserve-v1":
        return f"/v1/models/{model}"
    if protocol == "kserve-v2":
        return f"/v2/models/{model}/ready"
    return None


def wrap_request(protocol: str, body: bytes, request_id: str) -> bytes:
    """One /recommend request (JSON object bytes, already validated by the API) -> the predictor's request body."""
    if protocol == "kserve-v1":
        return b'{"instances":[' + bytes(body) + b"]}"  # valid JSON object bytes: spliced, not re-encoded
    if protocol == "kserve-v2":
        return orjson.dumps({"id": request_id, "inputs": [{"name": V2_INPUT, "datatype": V2_DATATYPE, "shape": [1],
                                                           "data": [bytes(body).decode("utf-8")]}]})
    return body


def _outside(protocol: str, what: str) -> tuple[int, bytes]:
    return 502, orjson.dumps({"error": f"model server answered outside the KServe {protocol[-2:]} protocol: {what}"})


def unwrap_reply(protocol: str, status: int, body: bytes) -> tuple[int, bytes]:
    """The predictor's reply to one wrapped request -> (status, handler answer JSON bytes). Error replies pass
    unchanged (their `{"error"}` / TorchServe's `{"message"}` is what the API reports); a 200 that does not hold
    exactly one answer becomes a 502 with a message."""
    if protocol not in ("kserve-v1", "kserve-v2") or status != 200:
        return status, body
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _outside(protocol, "the body is not JSON")
    if not isinstance(doc, dict):
        return _outside(protocol, "the body is not an object")
    if protocol == "kserve-v1":
        preds = doc.get("predictions")
        if not isinstance(preds, list) or len(preds) != 1 or not isinstance(preds[0], dict):
            return _outside(protocol, "expected {\"predictions\": [<one answer object>]}")
        return 200, orjson.dumps(preds[0])
    outputs = doc.get("outputs")
    tensor = next((o for o in outputs if isinstance(o, dict) and o.get("name") == V2_OUTPUT), None) \
        if isinstance(outputs, list) else None
    data = tensor.get("data") if tensor else None
    if not isinstance(data, list) or len(data) != 1:
        return _outside(protocol, f"expected an output tensor '{V2_OUTPUT}' with one element")
    x = data[0]
    if isinstance(x, str):
        return 200, x.encode("utf-8")
    if isinstance(x, dict):
        return 200, orjson.dumps(x)
    return _outside(protocol, f"output '{V2_OUTPUT}' element is a {type(x).__name__}, not a JSON answer")
