"""POST /feedback on the real FastAPI app (TestClient; TorchServe = the in-process stand-in, the one mock):
validation like /recommend (strict, 4xx with a message, never a 5xx for client errors, the server keeps serving),
the feedback log (versioned schema, durable lines, 503 when it cannot be written), Prometheus counters, and the
join of events to served answers by request_id and by user + time."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")  # before anything imports feast (see tests/test_serving_feast.py)

from fastapi.testclient import TestClient  # noqa: E402

from mirec.serving.ab import Arm, Experiment  # noqa: E402
from mirec.serving.schema import MAX_FEEDBACK_BATCH, FeedbackLog  # noqa: E402
from mirec.serving.settings import ApiSettings  # noqa: E402
from mirec.serving.testing import InProcessTorchServe, items_frame, tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def upstream():
    from mirec.data.schema import IdMap
    from mirec.retrieval.recommender import Recommender
    from mirec.serving.service import RecommendService

    model, _ = tiny_model()
    items = items_frame()
    rec = Recommender(model, items=items, item_popularity=items["popularity"].to_numpy())
    ids, cats = IdMap(items["item_id"].to_numpy()), items["category"].to_numpy()
    return {"mirec_a": RecommendService(rec, ids, cats, "mirec_a", "1.0"),
            "mirec_b": RecommendService(rec, ids, cats, "mirec_b", "2.0")}


def _settings(tmp_path) -> ApiSettings:
    return ApiSettings(torchserve_url="http://ts", log_path=str(tmp_path / "served.jsonl"),
                       experiment=Experiment(salt="fb", arms=[Arm(name="A", model="mirec_a"),
                                                              Arm(name="B", model="mirec_b")]))


@pytest.fixture()
def client(tmp_path, upstream):
    from mirec.serving.api import create_app

    with TestClient(create_app(_settings(tmp_path), upstream=InProcessTorchServe(upstream))) as c:
        yield c


def _counter(c, name: str, labels: str = "") -> float:
    m = re.search(rf"^{name}{re.escape(labels)} (\S+)$", c.get("/metrics").text, re.M)
    return float(m.group(1)) if m else 0.0


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def test_feedback_logged_counted_and_joined(client, tmp_path):
    r = client.post("/recommend", json={"user_id": "u1", "history": ["item-1", "item-2"], "n": 5},
                    headers={"X-Request-Id": "req-1"})
    assert r.status_code == 200
    served = r.json()
    third = served["items"][2]["item_id"]
    # one event (request_id echoed) and a batch (one without request_id: joined by user + time)
    r = client.post("/feedback", json={"request_id": "req-1", "user_id": "u1", "item_id": third, "type": "click"})
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    later = (datetime.now(timezone.utc) + timedelta(seconds=1)).isoformat()
    r = client.post("/feedback", json={"events": [
        {"user_id": "u1", "item_id": third, "type": "purchase", "value": 12.5, "ts": later},
        {"request_id": "req-1", "user_id": "u1", "item_id": "item-399", "type": "custom", "name": "share"},
        {"request_id": "nope", "user_id": "u-never-served", "item_id": 7, "type": "impression"}]})
    assert r.status_code == 200 and r.json()["accepted"] == 3, r.text
    log = _lines(tmp_path / "feedback.jsonl")
    assert [e["type"] for e in log] == ["click", "purchase", "custom", "impression"]
    for e in log:
        FeedbackLog.model_validate(e)  # the documented schema, version 1
        assert e["schema_version"] == 1
    assert log[3]["item_id"] == "7" and log[1]["value"] == 12.5 and log[2]["name"] == "share"
    assert log[0]["assigned_arm"] == served["arm"]
    assert _counter(client, "mirec_api_feedback_events_total", '{type="click"}') == 1
    assert _counter(client, "mirec_api_feedback_requests_total", '{status="200"}') == 2

    from mirec.ab.events import read_feedback, read_served
    from mirec.ab.join import join_feedback

    served_log = read_served(tmp_path / "served.jsonl")
    j = join_feedback(served_log.table, served_log.items, read_feedback(tmp_path / "feedback.jsonl").table)
    assert list(j["join"]) == ["request_id", "user_time", "request_id", "unmatched"]
    assert list(j["arm"][:3]) == [served["arm"]] * 3 and j["arm"][3] is None
    assert list(j["position"][:2]) == [2, 2] and j["in_list"][2] == (  # the custom event's item may not be served
        "item-399" in [x["item_id"] for x in served["items"]])
    assert j["version"][0] == ("1.0" if served["arm"] == "A" else "2.0")
    assert j["interest"][0] == served["items"][2]["interest"]


BAD = [
    (b"", 400, "empty request body"),
    (b"\xff\xfe", 400, "not UTF-8"),
    (b"{", 400, "invalid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "invalid JSON"),
    (json.dumps({"events": [{"user_id": "u", "item_id": "i", "type": "click"}] * (MAX_FEEDBACK_BATCH + 1)}).encode(),
     413, "at most"),
    (b'{"user_id": "u", "item_id": "i"}', 422, "'type'"),
    (b'{"user_id": "u", "item_id": "i", "type": "clack"}', 422, "'type'"),
    (b'{"user_id": true, "item_id": "i", "type": "click"}', 422, "'user_id'"),
    (b'{"user_id": "u", "item_id": 1.5, "type": "click"}', 422, "'item_id'"),
    (b'{"user_id": "u", "item_id": "i", "type": "click", "value": "3"}', 422, "'value'"),
    (b'{"user_id": "u", "item_id": "i", "type": "click", "value": NaN}', 422, "'value'"),
    (b'{"user_id": "u", "item_id": "i", "type": "click", "ts": "yesterday"}', 422, "'ts'"),
    (b'{"user_id": "u", "item_id": "i", "type": "click", "ts": 1700000000000}', 422, "'ts'"),
    (b'{"user_id": "u", "item_id": "i", "type": "click", "ts": "2999-01-01T00:00:00Z"}', 422, "future"),
    (b'{"user_id": "u", "item_id": "i", "type": "custom"}', 422, "needs a name"),
    (b'{"user_id": "u", "item_id": "i", "type": "click", "name": "x"}', 422, "only allowed"),
    (b'{"user_id": "u", "item_id": "i", "type": "click", "extra": 1}', 422, "'extra'"),
    (('{"user_id": "' + "u" * 300 + '", "item_id": "i", "type": "click"}').encode(), 422, "'user_id'"),
    (b'{"events": []}', 422, "'events'"),
    (b'{"events": [{"user_id": "u", "item_id": "i", "type": "click"}, {"user_id": "u", "type": "click"}]}', 422,
     "'events.1.item_id'"),
]


@pytest.mark.parametrize("body,status,fragment", BAD, ids=[f"{i}-{b[:30]!r}" for i, (b, _, _) in enumerate(BAD)])
def test_bad_feedback_is_a_4xx_with_a_message_and_nothing_is_logged(client, tmp_path, body, status, fragment):
    r = client.post("/feedback", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["code"] == status and fragment in r.json()["error"], r.json()
    assert _lines(tmp_path / "feedback.jsonl") == []  # a refused batch is refused whole
    # the server keeps serving
    ok = client.post("/feedback", json={"user_id": "u", "item_id": "i", "type": "impression"})
    assert ok.status_code == 200 and len(_lines(tmp_path / "feedback.jsonl")) == 1


def test_unwritable_feedback_log_is_a_503_and_counted(client, tmp_path):
    route = client.app.state.feedback

    def broken(records):
        raise OSError(28, "No space left on device")

    route.writer.write_many = broken
    r = client.post("/feedback", json={"user_id": "u", "item_id": "i", "type": "click"})
    assert r.status_code == 503 and "retry" in r.json()["error"]
    assert _counter(client, "mirec_api_feedback_log_errors_total") == 1
    assert client.get("/healthz").status_code == 200


def test_feedback_log_is_hourly_with_the_served_logs_writer(client, tmp_path):
    """The feedback log is written by the served log's writer (one class, one layout): one file per UTC hour of the
    events' ts, a late event appended to its own hour's file; `mirec ab report` given the log's path reads every
    hourly file of it."""
    from mirec.ab.events import expand_paths, read_feedback
    from mirec.serving.logwriter import JsonLinesLog, utc_hour

    route, served = client.app.state.feedback, client.app.state.writer
    assert isinstance(route.writer, JsonLinesLog) and isinstance(served, JsonLinesLog)
    assert type(route.writer._handler) is type(served._handler) and route.writer._handler.hourly
    now = datetime.now(timezone.utc)
    if now.minute == 59 and now.second > 50:  # keep "now" inside one hour for the whole test
        import time

        time.sleep(11)
        now = datetime.now(timezone.utc)
    h = utc_hour(now)
    r = client.post("/recommend", json={"user_id": "u1", "history": ["item-1"], "n": 5}, headers={"X-Request-Id": "q"})
    item = r.json()["items"][0]["item_id"]
    ev = {"request_id": "q", "user_id": "u1", "item_id": item, "type": "click"}
    for ts in (h - timedelta(hours=2, minutes=-5), now, h - timedelta(minutes=30)):  # the last one: late
        assert client.post("/feedback", json={**ev, "ts": ts.isoformat()}).status_code == 200
    names = {p.name: _lines(p) for p in sorted(tmp_path.glob("feedback.jsonl*"))}
    stamp = lambda t: utc_hour(t).strftime("%Y-%m-%dT%H")  # noqa: E731
    assert set(names) == {"feedback.jsonl", f"feedback.jsonl.{stamp(h - timedelta(hours=2))}",
                          f"feedback.jsonl.{stamp(h - timedelta(hours=1))}"}
    for name, lines in names.items():  # every file holds exactly its hour's events
        hour = stamp(now) if name == "feedback.jsonl" else name.rsplit(".", 1)[1]
        assert len(lines) == 1 and stamp(datetime.fromisoformat(lines[0]["ts"])) == hour, name
    # the log's own path means all of it (the report's --feedback logs/feedback.jsonl)
    assert len(expand_paths(tmp_path / "feedback.jsonl")) == 3
    assert len(read_feedback(tmp_path / "feedback.jsonl").table) == 3
    from mirec.ab.events import read_served
    from mirec.ab.join import join_feedback

    sv = read_served(tmp_path / "served.jsonl")
    j = join_feedback(sv.table, sv.items, read_feedback(tmp_path / "feedback.jsonl").table)
    assert list(j["join"]) == ["request_id"] * 3
