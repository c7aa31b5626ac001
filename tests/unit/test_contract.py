from __future__ import annotations

import base64
import math
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from pipeline.contract import (
    InferenceRequest,
    PredictBody,
    Source,
    _parse_fully,
    dead_letter_record,
    describe_validation_error,
    parse_reply_to,
    parse_request,
    plain_request,
    request_key,
    result_record,
)
from pipeline.errors import InvalidJson, InvalidRequest, PipelineError

VALID = {
    "event_id": "txn-1",
    "entity": {"account_id": 42},
    "features": {"amount": 129.99, "merchant_category": 5411, "hour_of_day": 23},
    "event_time": "2026-11-25T10:00:00Z",
    "unknown_field": "ignored",
}


def test_a_valid_request_parses_and_ignores_unknown_fields() -> None:
    request = parse_request(orjson.dumps(VALID))
    assert request.event_id == "txn-1"
    assert request.features["merchant_category"] == 5411.0
    assert request.model is None
    assert not hasattr(request, "unknown_field")


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b"", None])
def test_unreadable_values_are_invalid_json(raw: bytes | None) -> None:
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
def test_invalid_requests_name_the_field(change: dict[str, Any], message: str) -> None:
    body = {k: v for k, v in (VALID | change).items() if v is not None}
    with pytest.raises(InvalidRequest) as caught:
        parse_request(orjson.dumps(body))
    assert caught.value.message.startswith(message)
    assert caught.value.code == "invalid_request"


def test_invalid_request_keeps_a_readable_event_id() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(orjson.dumps(VALID | {"features": {"amount": "x"}}))
    assert caught.value.event_id == "txn-1"


def test_http_body_may_leave_out_the_event_id() -> None:
    body = PredictBody.model_validate({k: v for k, v in VALID.items() if k != "event_id"})
    assert body.event_id is None


def test_requests_are_keyed_by_their_entity() -> None:
    assert request_key(parse_request(orjson.dumps(VALID))) == b"42"
    two = parse_request(orjson.dumps(VALID | {"entity": {"b": "x", "a": 1}}))
    assert request_key(two) == b"a=1|b=x"


def test_result_label_follows_the_threshold() -> None:
    common: dict[str, Any] = {"event_id": "e", "model": "m", "model_version": "1", "latency_ms": 1.0}
    assert result_record(score=0.5, threshold=0.5, **common)["label"] == "fraud"
    assert result_record(score=0.4999, threshold=0.5, **common)["label"] == "legit"
    assert result_record(score=0.1, threshold=0.5, **common)["scored_at"].endswith("Z")


def test_dead_letters_keep_the_payload_as_text_or_base64() -> None:
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
def test_reply_addresses(value: str, expected: tuple[str, int | None] | None) -> None:
    assert parse_reply_to(value) == expected


def test_a_result_carries_the_requests_entity_when_given() -> None:
    common: dict[str, Any] = {
        "event_id": "e",
        "model": "m",
        "model_version": "1",
        "score": 0.1,
        "threshold": 0.5,
        "latency_ms": 1.0,
    }
    assert result_record(**common, entity={"account_id": 42})["entity"] == {"account_id": 42}
    assert "entity" not in result_record(**common)


def test_a_result_carries_the_features_its_model_echoes() -> None:
    common: dict[str, Any] = {
        "event_id": "e",
        "model": "m",
        "model_version": "1",
        "score": 0.1,
        "threshold": 0.5,
        "latency_ms": 1.0,
    }
    assert result_record(**common, features={"rpm": 1500.0})["features"] == {"rpm": 1500.0}
    assert "features" not in result_record(**common, features={})


# The fast path (msgspec) against pydantic's verdict, on what a producer might send. Raw JSON text where
# orjson cannot write it (big integers, duplicate keys, escapes, malformed input).
CARD = {
    "event_id": "txn-0000042",
    "entity": {"account_id": 8116},
    "features": {
        "amount": 161.02,
        "merchant_category": 4829.0,
        "hour_of_day": 7.0,
        "is_foreign": 0.0,
        "card_present": 1.0,
        "distance_from_home_km": 1.7,
    },
}
READING = {
    "event_id": "dev-0000042",
    "model": "anomaly_detector",
    "entity": {"device_id": 17},
    "features": {"temperature": 68.72, "vibration": 1.838, "pressure": 3.722, "rpm": 1853.025, "load": 0.274},
}
BASE = '{"event_id":"e-1","entity":{"account_id":42},"features":{"amount":10.5}'


def changed(**fields: Any) -> bytes:
    return orjson.dumps(CARD | fields)


def text(tail: str) -> bytes:
    """`BASE` with more fields (or a replaced one: in JSON the last of two keys counts)."""
    return (BASE + tail + "}").encode("utf-8", "surrogatepass")


def time_text(value: str) -> bytes:
    return text(f',"event_time":{value}')


def feature_text(value: str) -> bytes:
    return text(f',"features":{{"amount":{value}}}')


def entity_text(value: str) -> bytes:
    return text(f',"entity":{{"account_id":{value}}}')


EDGE_CASES: list[bytes] = [
    orjson.dumps(CARD),
    orjson.dumps(READING),
    orjson.dumps(VALID),
    changed(event_time="2026-11-25T10:00:00.123Z", model="fraud_scorer"),
    # event_id: bounds in characters (not bytes), types, escapes, control characters
    changed(event_id=""),
    changed(event_id="x" * 128),
    changed(event_id="x" * 129),
    changed(event_id="\U0001f600" * 128),
    changed(event_id="\U0001f600" * 129),
    changed(event_id="e\u0301" * 64),
    changed(event_id="événement-1"),
    changed(event_id="a b"),
    changed(event_id="a\x00b"),
    changed(event_id="a\nb"),
    changed(event_id="\t"),
    changed(event_id="a\x7f"),
    changed(event_id="a\x85"),
    changed(event_id="a\u2028"),
    changed(event_id="a\u200b"),
    changed(event_id="a\u00a0b"),
    changed(event_id=7),
    changed(event_id=None),
    changed(event_id=["e"]),
    orjson.dumps({k: v for k, v in CARD.items() if k != "event_id"}),
    text(',"event_id":"e\\u0000"'),
    text(',"event_id":"\\ud800"'),
    b'{"event\\u005fid":"e-2","entity":{"a":1},"features":{"x":1}}',
    text(',"event_id":"e-2"'),  # a repeated key: the last counts
    # model
    changed(model=None),
    changed(model=""),
    changed(model="m" * 128),
    changed(model="m" * 129),
    changed(model=7),
    text(',"mod\\u0065l":"anomaly_detector"'),
    # entity: 64-bit integers or strings, one at least
    changed(entity={}),
    changed(entity={"account_id": "acct-9"}),
    changed(entity={"account_id": ""}),
    changed(entity={"": 1}),
    changed(entity={"b": "x", "a": 1}),
    changed(entity={"account_id": 1.5}),
    changed(entity={"account_id": 1.0}),
    changed(entity={"account_id": True}),
    changed(entity={"account_id": None}),
    changed(entity={"account_id": {"id": 1}}),
    changed(entity={"account_id": [1]}),
    changed(entity=[["account_id", 1]]),
    changed(entity="42"),
    entity_text(str(2**63 - 1)),
    entity_text(str(2**63)),
    entity_text(str(-(2**63))),
    entity_text(str(-(2**63) - 1)),
    entity_text(str(2**64)),
    entity_text(str(10**40)),
    entity_text("1e2"),
    entity_text("-0"),
    text(',"entity":{"account_id":1,"account_id":"z"}'),
    # features: numbers, as floats
    changed(features={}),
    changed(features={"amount": 10}),
    changed(features={"amount": True}),
    changed(features={"amount": "12"}),
    changed(features={"amount": None}),
    changed(features={"amount": [1.0]}),
    changed(features={"": 1.0}),
    changed(features=None),
    changed(features=[1.0]),
    feature_text("-0"),
    feature_text("-0.0"),
    feature_text("1E2"),
    feature_text("1.0e+2"),
    feature_text("4.9e-324"),
    feature_text("1.5e-400"),
    feature_text("1.7976931348623157e308"),
    feature_text("1e309"),
    feature_text("-1e400"),
    feature_text("9007199254740993"),
    feature_text(str(2**64)),
    feature_text("1" + "0" * 308),
    feature_text("1" + "0" * 309),
    feature_text("0." + "0" * 400 + "1"),
    feature_text("1." + "1" * 400),
    feature_text("NaN"),
    feature_text("Infinity"),
    feature_text("01"),
    feature_text(".5"),
    feature_text("+1"),
    # event_time: what pydantic's parser reads, a number of epoch seconds included
    *[
        time_text(f'"{value}"')
        for value in (
            "2026-11-25T10:00:00Z",
            "2026-11-25t10:00:00z",
            "2026-11-25 10:00:00Z",
            "2026-11-25T10:00:00",
            "2026-11-25T10:00:00.1Z",
            "2026-11-25T10:00:00.123+02:00",
            "2026-11-25T10:00:00.123456-05:30",
            "2026-11-25T10:00:00.1234567Z",
            "2026-11-25T23:59:59.9999999Z",
            "2026-11-25T10:00:00,5Z",
            "2026-11-25T10:00:00+0200",
            "2026-11-25T10:00:00+23:59",
            "2026-11-25T10:00:00+24:00",
            "2026-11-25T10:00:00-00:00",
            "2026-11-25T10:00Z",
            "2026-11-25T10Z",
            "2026-11-25",
            "2026-02-30T10:00:00Z",
            "2026-11-25T24:00:00Z",
            "2026-11-25T23:59:60Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59-05:00",
            "1764064800",
            "yesterday",
            "",
            "2026-11-25T10:00:00\\u005a",
        )
    ],
    time_text("null"),
    time_text("1764064800"),
    time_text("1764064800.5"),
    time_text("-1"),
    time_text("1e400"),
    time_text("true"),
    time_text("[]"),
    # fields the contract ignores
    text(',"unknown":[1,{"a":null}]'),
    text(',"unknown":NaN'),
    text(',"unknown":1e999'),
    text(f',"unknown":{10**40}'),
    text(',"unknown":"\\ud800"'),
    text(',"unknown":' + "[" * 300 + "]" * 300),
    text(',"unknown":' + "[" * 3000 + "]" * 3000),
    text(',"unknown":' + '{"a":' * 3000 + "1" + "}" * 3000),
    # not a JSON object
    orjson.dumps([CARD]),
    b'"text"',
    b"42",
    b"null",
    b"true",
    b"{}",
    b"",
    b"not json",
    BASE.encode(),
    BASE.encode() + b"}x",
    BASE.encode() + b",}",
    b" \n" + BASE.encode() + b"} \n",
    "\ufeff".encode() + BASE.encode() + b"}",
    # text that is not UTF-8, or not JSON, where the contract's fields are not
    BASE.encode() + b',"unknown":"\xff"}',
    BASE.encode() + b',"unknown":"\xc0\xaf"}',
    BASE.encode() + b',"unknown":"\xed\xa0\x80"}',
    BASE.encode() + b',"unknown":"\xf4\x90\x80\x80"}',
    BASE.encode() + b',"unknown\xff":1}',
    BASE.encode() + b',"unknown":"\xc3\xa9t\xc3\xa9"}',
    BASE.encode() + b',"entity":{"account_id":"\xff"}}',
    BASE.encode() + b',"unknown":"a\tb"}',
    BASE.encode() + b',"unknown":[1,,2]}',
    BASE.encode() + b',"unknown":{"a":1,}}',
    BASE.encode() + b',"unknown":"\\x"}',
    BASE.encode() + b"}\x00",
]


def outcome(parse: Any, raw: bytes) -> tuple[Any, ...]:
    """What a parse made of `raw`: the request, all of it that can tell two apart; or the refusal."""
    try:
        request = parse(raw)
    except PipelineError as e:
        return (type(e), e.code, e.message, e.event_id)
    when = request.event_time
    return (
        type(request),
        list(request.__dict__.items()),
        [(k, type(v)) for k, v in request.entity.items()],
        [(k, type(v), math.copysign(1.0, v)) for k, v in request.features.items()],
        (type(when), type(when.tzinfo) if when else None, when.utcoffset() if when else None),
        request.model_fields_set,
        request.__pydantic_extra__,
        request.__pydantic_private__,
        repr(request),
    )


@pytest.mark.parametrize("raw", EDGE_CASES, ids=range(len(EDGE_CASES)))
def test_the_fast_path_gives_pydantics_verdict_and_request(raw: bytes) -> None:
    assert outcome(parse_request, raw) == outcome(_parse_fully, raw)
    if plain_request(raw) is not None:  # what msgspec takes, pydantic takes
        assert outcome(_parse_fully, raw)[0] is InferenceRequest


@pytest.mark.parametrize("request_", [CARD, READING, VALID, CARD | {"event_time": "2026-11-25T10:00:00.123Z"}])
def test_typical_requests_take_the_fast_path(request_: dict[str, Any]) -> None:
    assert plain_request(orjson.dumps(request_)) is not None


def test_the_edge_cases_try_both_paths() -> None:
    fast = [raw for raw in EDGE_CASES if plain_request(raw) is not None]
    valid = [raw for raw in EDGE_CASES if outcome(_parse_fully, raw)[0] is InferenceRequest]
    assert 30 < len(fast) < len(valid) < len(EDGE_CASES) - 30


CONTROL = ["a\x00b", "line\n", "tab\there", "\r", "del\x7f", "esc\x1b[0m", "nel\x85", "sep\u2028", "\x00"]


@pytest.mark.parametrize("event_id", CONTROL)
def test_an_event_id_with_a_control_character_is_refused_without_it(event_id: str) -> None:
    raw = orjson.dumps(CARD | {"event_id": event_id})
    assert plain_request(raw) is None
    for parse in (parse_request, _parse_fully):
        with pytest.raises(InvalidRequest) as caught:
            parse(raw)
        assert caught.value.code == "invalid_request"
        assert caught.value.message == "event_id: must be printable characters (no control characters)"
        assert caught.value.event_id is None


def test_an_unprintable_event_id_is_not_carried_whatever_else_is_wrong() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(orjson.dumps(CARD | {"event_id": "a\nb", "features": {"amount": "x"}}))
    assert caught.value.event_id is None


@pytest.mark.parametrize("event_id", ["événement-1", "注文-42", "\U0001f600-1", "a b", "x" * 128])
def test_printable_unicode_event_ids_are_accepted_by_the_fast_path(event_id: str) -> None:
    raw = orjson.dumps(CARD | {"event_id": event_id})
    assert plain_request(raw) is not None
    assert parse_request(raw).event_id == event_id


def test_the_http_body_refuses_an_unprintable_event_id_too() -> None:
    with pytest.raises(ValidationError) as caught:
        PredictBody.model_validate(CARD | {"event_id": "a\x00b"})
    assert describe_validation_error(caught.value) == "event_id: must be printable characters (no control characters)"
