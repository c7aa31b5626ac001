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


def test_a_model_mix_shares_its_distinct_requests_and_its_poison_between_both_models():
    mix = traffic.mixed(2000, prefix="m-", duplicate_rate=0.2, malformed_rate=0.1, telemetry_share=0.5)
    assert len(mix.messages) == 2000 and len(mix.requests) == 1400
    models = [parse_request(orjson.dumps(r)).model for r in mix.requests.values()]
    assert models.count("anomaly_detector") == 700 and models.count(None) + models.count("fraud_scorer") == 700
    first_half = [r.get("model") for r in list(mix.requests.values())[:700]]
    assert 250 < first_half.count("anomaly_detector") < 450, "the models are shuffled through the stream"
    poison = [orjson.loads(m.value) for m in mix.messages if m.kind not in ("valid", "duplicate", "not_json")]
    entity_keys = {next(iter(p["entity"])) for p in poison}
    assert entity_keys == {"account_id", "device_id"}, "poison of both models"
    numeric = [p for p in poison if any(v == "twelve" for v in p["features"].values())]
    assert {next(iter(p["entity"])) for p in numeric} == {"account_id", "device_id"}


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
