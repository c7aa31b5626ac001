from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from pipeline.contract import parse_request
from pipeline.errors import ConfigurationError, PipelineError
from pipeline.replay.selection import Verdict, judge, parse_filter, plain_entity

REQUEST = {
    "event_id": "e-1",
    "entity": {"account_id": 42},
    "features": {"amount": 10.0},
    "event_time": "2026-11-25T10:00:00Z",
}


def verdict(filters: list[str], request: dict[str, Any] | None = None) -> Verdict:
    return judge(orjson.dumps(request or REQUEST), [parse_filter(f) for f in filters], "fraud_scorer")


def test_a_valid_request_with_no_filter_is_published() -> None:
    found = verdict([])
    assert found.entity == {"account_id": 42} and found.selected


@pytest.mark.parametrize(
    ("filters", "selected"),
    [
        (["model=fraud_scorer"], True),  # the default model, not written in the request
        (["model=anomaly_detector"], False),
        (["account_id=42"], True),
        (["account_id=43"], False),
        (["device_id=42"], False),  # the request names no device
        (["event_time>=2026-11-25T10:00:00Z"], True),
        (["event_time<2026-11-25T10:00:00Z"], False),
        (["event_time>2026-11-25T09:00:00+00:00", "event_time<2026-11-25T11:00:00"], True),
        (["account_id!=42"], False),
    ],
)
def test_filters_on_model_entity_keys_and_event_time(filters: list[str], selected: bool) -> None:
    assert verdict(filters).selected is selected


def test_a_request_without_event_time_is_outside_any_time_filter() -> None:
    request = {k: v for k, v in REQUEST.items() if k != "event_time"}
    assert verdict(["event_time>=2020-01-01T00:00:00Z"], request).selected is False


def test_invalid_rows_are_rejected_with_the_contracts_code() -> None:
    assert (judge(b"{not json", [], "m").reason or "").startswith("invalid_json: ")
    bad = judge(orjson.dumps(REQUEST | {"features": {"amount": "ten"}}), [], "m")
    assert bad.entity is None and bad.reason == "invalid_request: features.amount: not a number"


@pytest.mark.parametrize(
    ("text", "problem"),
    [("account_id", "expected FIELD=VALUE"), ("=5", "expected FIELD=VALUE"), ("event_time>=noon", "RFC 3339"),
     ("account_id>=5", "only = and !=")],
)  # fmt: skip
def test_a_malformed_filter_is_a_one_line_error(text: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        parse_filter(text)


def test_filter_values_are_typed() -> None:
    assert parse_filter("account_id=42").value == 42
    assert parse_filter("merchant=abc").value == "abc"
    assert parse_filter("event_time<2026-11-25T10:00:00").value == datetime(2026, 11, 25, 10, tzinfo=UTC)


VARIANTS = [
    REQUEST,
    REQUEST | {"features": {"amount": 10}},  # an integer feature: pydantic decides
    REQUEST | {"features": {"amount": True}},
    REQUEST | {"features": {}},
    REQUEST | {"entity": {}},
    REQUEST | {"entity": {"account_id": 2**63}},
    REQUEST | {"entity": {"account_id": "acct-9"}},
    REQUEST | {"entity": {"account_id": 1.5}},
    REQUEST | {"event_id": ""},
    REQUEST | {"event_id": "x" * 129},
    REQUEST | {"event_id": 7},
    REQUEST | {"model": ""},
    REQUEST | {"model": "anomaly_detector", "extra": [1, 2]},
    REQUEST | {"event_time": "2026-02-30T10:00:00Z"},  # no such day
    REQUEST | {"event_time": "2026-11-25T10:00:00.123456+02:00"},
    REQUEST | {"event_time": "2026-11-25"},
    REQUEST | {"event_time": "yesterday"},
    REQUEST | {"event_time": None},
    REQUEST | {"event_time": 1764064800},
    REQUEST | {"event_time": "2026-11-25T10:00:00.1234567Z"},
    REQUEST | {"event_id": "e\x00-1"},
    REQUEST | {"event_id": "é-1"},
    [REQUEST],
    "text",
]


@pytest.mark.parametrize("request_", VARIANTS, ids=range(len(VARIANTS)))
def test_a_rows_verdict_is_the_contracts_on_either_path(request_: Any) -> None:
    value = orjson.dumps(request_)
    try:
        parse_request(value)
        valid = True
    except PipelineError:
        valid = False
    if plain_entity(value) is not None:
        assert valid, "published on the fast path, so the contract accepts it"
    assert (judge(value, [], "fraud_scorer").entity is not None) is valid


def test_filters_read_a_request_that_only_pydantic_takes() -> None:
    epoch = REQUEST | {"event_time": 1764064800}  # 2025-11-25T10:00:00Z, in epoch seconds
    assert plain_entity(orjson.dumps(epoch)) is None
    assert verdict(["event_time>=2025-11-25T10:00:00Z"], epoch).selected
    assert not verdict(["event_time<2025-11-25T10:00:00Z"], epoch).selected


def test_an_unprintable_event_id_is_rejected_with_the_contracts_reason() -> None:
    found = judge(orjson.dumps(REQUEST | {"event_id": "e\n1"}), [], "m")
    assert found.entity is None
    assert found.reason == "invalid_request: event_id: must be printable characters (no control characters)"
