from __future__ import annotations

import base64

import orjson
import pytest

from pipeline.contract import (
    PredictBody,
    Source,
    dead_letter_record,
    parse_reply_to,
    parse_request,
    request_key,
    result_record,
)
from pipeline.errors import InvalidJson, InvalidRequest

VALID = {
    "event_id": "txn-1",
    "entity": {"account_id": 42},
    "features": {"amount": 129.99, "merchant_category": 5411, "hour_of_day": 23},
    "event_time": "2026-11-25T10:00:00Z",
    "unknown_field": "ignored",
}


def test_a_valid_request_parses_and_ignores_unknown_fields():
    request = parse_request(orjson.dumps(VALID))
    assert request.event_id == "txn-1"
    assert request.features["merchant_category"] == 5411.0
    assert request.model is None
    assert not hasattr(request, "unknown_field")


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b"", None])
def test_unreadable_values_are_invalid_json(raw):
    with pytest.raises(InvalidJson):
        parse_request(raw)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"event_id": None}, "event_id: "),
        ({"event_id": ""}, "event_id: "),
        ({"event_id": "x" * 129}, "event_id: "),
        ({"features": {"amount": "12"}}, "features.amount: not a number"),
        ({"features": {"amount": True}}, "features.amount: not a number"),
        ({"entity": {}}, "entity: "),
        ({"entity": {"account_id": 1.5}}, "entity.account_id: must be a 64-bit integer or a string"),
        ({"model": 7}, "model: "),
    ],
)
def test_invalid_requests_name_the_field(change, message):
    body = {k: v for k, v in (VALID | change).items() if v is not None}
    with pytest.raises(InvalidRequest) as caught:
        parse_request(orjson.dumps(body))
    assert caught.value.message.startswith(message)
    assert caught.value.code == "invalid_request"


def test_invalid_request_keeps_a_readable_event_id():
    with pytest.raises(InvalidRequest) as caught:
        parse_request(orjson.dumps(VALID | {"features": {"amount": "x"}}))
    assert caught.value.event_id == "txn-1"


def test_http_body_may_leave_out_the_event_id():
    body = PredictBody.model_validate({k: v for k, v in VALID.items() if k != "event_id"})
    assert body.event_id is None


def test_requests_are_keyed_by_their_entity():
    assert request_key(parse_request(orjson.dumps(VALID))) == b"42"
    two = parse_request(orjson.dumps(VALID | {"entity": {"b": "x", "a": 1}}))
    assert request_key(two) == b"a=1|b=x"


def test_result_label_follows_the_threshold():
    common = {"event_id": "e", "model": "m", "model_version": "1", "latency_ms": 1.0}
    assert result_record(score=0.5, threshold=0.5, **common)["label"] == "fraud"
    assert result_record(score=0.4999, threshold=0.5, **common)["label"] == "legit"
    assert result_record(score=0.1, threshold=0.5, **common)["scored_at"].endswith("Z")


def test_dead_letters_keep_the_payload_as_text_or_base64():
    source = Source("inference.requests", 3, 1834)
    error = InvalidJson("bad")
    text = dead_letter_record(error, b"{oops", source)
    assert text["payload"] == "{oops"
    assert text["error"] == {"code": "invalid_json", "message": "bad"}
    assert text["source"] == {"topic": "inference.requests", "partition": 3, "offset": 1834}
    binary = dead_letter_record(error, b"\xff\xfe", source, attempts=3)
    assert base64.b64decode(binary["payload"]) == b"\xff\xfe"
    assert binary["attempts"] == 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [("inference.replies:3", ("inference.replies", 3)), ("replies", ("replies", None)), ("x:y", None), ("", None)],
)
def test_reply_addresses(value, expected):
    assert parse_reply_to(value) == expected


def test_a_result_carries_the_requests_entity_when_given():
    common = {"event_id": "e", "model": "m", "model_version": "1", "score": 0.1, "threshold": 0.5, "latency_ms": 1.0}
    assert result_record(**common, entity={"account_id": 42})["entity"] == {"account_id": 42}
    assert "entity" not in result_record(**common)


def test_a_result_carries_the_features_its_model_echoes():
    common = {"event_id": "e", "model": "m", "model_version": "1", "score": 0.1, "threshold": 0.5, "latency_ms": 1.0}
    assert result_record(**common, features={"rpm": 1500.0})["features"] == {"rpm": 1500.0}
    assert "features" not in result_record(**common, features={})
