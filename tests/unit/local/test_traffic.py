from __future__ import annotations

import orjson

from pipeline.contract import parse_request
from pipeline.local import traffic


def test_mixed_traffic_has_the_asked_shares_and_repeats_follow_their_originals():
    mix = traffic.mixed(2000, prefix="t-")
    assert len(mix.messages) == 2000
    assert mix.duplicates == 100
    assert sum(mix.expected_dead_letters.values()) == 20
    assert len(mix.requests) == 1880
    seen: set[str] = set()
    for message in mix.messages:
        if message.kind == "duplicate":
            assert message.event_id in seen
        if message.event_id:
            seen.add(message.event_id)


def test_valid_requests_parse_and_are_keyed_by_account():
    for request in traffic.valid_requests(50, prefix="v-"):
        message = traffic.message_for(request)
        parsed = parse_request(message.value)
        assert message.key == str(parsed.entity["account_id"]).encode()


def test_every_malformed_kind_is_built():
    base = traffic.valid_requests(1, prefix="b-")[0]
    built = {kind: traffic.malformed(kind, base, "b-bad-1") for kind, _ in traffic.MALFORMED_KINDS}
    assert built["missing_event_id"].event_id is None
    assert b"event_id" not in built["missing_event_id"].value
    assert orjson.loads(built["unknown_model"].value)["model"] == "no_such_model"
