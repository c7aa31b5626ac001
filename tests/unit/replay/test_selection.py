from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from pipeline.errors import ConfigurationError
from pipeline.replay.selection import judge, parse_filter

REQUEST = {
    "event_id": "e-1",
    "entity": {"account_id": 42},
    "features": {"amount": 10.0},
    "event_time": "2026-11-25T10:00:00Z",
}


def verdict(filters: list[str], request: dict | None = None):
    return judge(orjson.dumps(request or REQUEST), [parse_filter(f) for f in filters], "fraud_scorer")


def test_a_valid_request_with_no_filter_is_published():
    found = verdict([])
    assert found.request is not None and found.request.event_id == "e-1" and found.selected


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
def test_filters_on_model_entity_keys_and_event_time(filters, selected):
    assert verdict(filters).selected is selected


def test_a_request_without_event_time_is_outside_any_time_filter():
    request = {k: v for k, v in REQUEST.items() if k != "event_time"}
    assert verdict(["event_time>=2020-01-01T00:00:00Z"], request).selected is False


def test_invalid_rows_are_rejected_with_the_contracts_code():
    assert judge(b"{not json", [], "m").reason.startswith("invalid_json: ")
    bad = judge(orjson.dumps(REQUEST | {"features": {"amount": "ten"}}), [], "m")
    assert bad.request is None and bad.reason == "invalid_request: features.amount: not a number"


@pytest.mark.parametrize(
    ("text", "problem"),
    [("account_id", "expected FIELD=VALUE"), ("=5", "expected FIELD=VALUE"), ("event_time>=noon", "RFC 3339"),
     ("account_id>=5", "only = and !=")],
)  # fmt: skip
def test_a_malformed_filter_is_a_one_line_error(text, problem):
    with pytest.raises(ConfigurationError, match=problem):
        parse_filter(text)


def test_filter_values_are_typed():
    assert parse_filter("account_id=42").value == 42
    assert parse_filter("merchant=abc").value == "abc"
    assert parse_filter("event_time<2026-11-25T10:00:00").value == datetime(2026, 11, 25, 10, tzinfo=UTC)
