"""The scoring path on the real broker, Triton and Feast: counts, values, dedup, dead letters."""

from __future__ import annotations

import dataclasses
import signal
import time

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline.local import probe, traffic
from tests.integration.reference import reference_scores

pytestmark = pytest.mark.integration


def _run(settings, messages, *, results: int, dead_letters: int = 0, start=None, timeout_s: float = 120):
    start = start or probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    probe.publish(settings, messages)
    # Sentinels after the stream: once they are scored, a late second result or dead letter would
    # have been read too (`probe.collect`).
    return probe.collect(
        settings,
        start,
        lambda c: c.distinct_results >= results and len(c.dead_letters) >= dead_letters,
        timeout_s=timeout_s,
        sentinels=probe.publish_sentinels(settings),
    )


def test_every_distinct_event_scored_once_with_the_models_score(pipeline_settings, start_worker):
    settings = pipeline_settings()
    start_worker(settings)
    requests = traffic.valid_requests(600, prefix="exact-")
    collected = _run(settings, [traffic.message_for(r) for r in requests], results=len(requests))

    assert collected.distinct_results == len(requests)
    assert collected.repeated_results == 0
    assert collected.dead_letters == []
    expected = reference_scores(settings, requests)
    got = np.array([collected.results[r["event_id"]][0]["score"] for r in requests])
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    first = collected.results[requests[0]["event_id"]][0]
    assert first["model"] == "fraud_scorer" and first["model_version"] == "1"
    assert {res[0]["label"] for res in collected.results.values()} <= {"fraud", "legit"}
    assert all((res[0]["label"] == "fraud") == (res[0]["score"] >= 0.5) for res in collected.results.values())
    assert all(collected.results[r["event_id"]][0]["entity"] == r["entity"] for r in requests), "the request's entity"


def test_two_models_on_one_topic_are_each_scored_by_their_own_model(pipeline_settings, start_worker):
    settings = pipeline_settings()
    start_worker(settings)
    cards = traffic.valid_requests(400, prefix="two-models-card-")
    readings = traffic.telemetry_requests(400, prefix="two-models-device-")
    mixed = [request for pair in zip(cards, readings, strict=True) for request in pair]  # interleaved
    collected = _run(settings, [traffic.message_for(r) for r in mixed], results=len(mixed))

    assert collected.distinct_results == len(mixed) and collected.repeated_results == 0
    assert collected.dead_letters == []
    for model, requests, (below, above) in (
        ("fraud_scorer", cards, ("legit", "fraud")),
        ("anomaly_detector", readings, ("normal", "anomaly")),
    ):
        expected = reference_scores(settings, requests, model)
        results = [collected.results[r["event_id"]][0] for r in requests]
        np.testing.assert_allclose([r["score"] for r in results], expected, atol=1e-5, rtol=0, err_msg=model)
        assert {(r["model"], r["model_version"]) for r in results} == {(model, "1")}
        assert {r["label"] for r in results} == {below, above}, f"{model}: both labels among 400 results"
        assert all(r["label"] == (above if r["score"] >= 0.5 else below) for r in results), model
        assert [r["entity"] for r in results] == [r["entity"] for r in requests]
    echoed = ("temperature", "vibration", "pressure", "rpm", "load")  # the anomaly alerts' readings
    for request in readings:
        assert collected.results[request["event_id"]][0]["features"] == {k: request["features"][k] for k in echoed}
    assert all("features" not in collected.results[r["event_id"]][0] for r in cards), "fraud results echo nothing"


def test_bad_telemetry_is_dead_lettered_with_the_contracts_codes(pipeline_settings, start_worker):
    settings = pipeline_settings()
    start_worker(settings)
    good = traffic.telemetry_requests(10, prefix="bad-telemetry-")
    base = good[0]
    features = dict(base["features"])
    bad = {
        "unknown_device": (base | {"event_id": "bad-t-1", "entity": {"device_id": 9_999_999}}, "missing_features"),
        "missing_reading": (
            base | {"event_id": "bad-t-2", "features": {k: v for k, v in features.items() if k != "vibration"}},
            "invalid_request",
        ),
        "not_a_number": (base | {"event_id": "bad-t-3", "features": features | {"rpm": "fast"}}, "invalid_request"),
        "outside_domain": (base | {"event_id": "bad-t-4", "features": features | {"load": 1.7}}, "invalid_request"),
    }
    stream = [traffic.message_for(r) for r in good] + [traffic.message_for(r) for r, _ in bad.values()]
    collected = _run(settings, stream, results=len(good), dead_letters=len(bad))

    letters = {letter["event_id"]: letter["error"] for letter in collected.dead_letters}
    assert {e: letters[r["event_id"]]["code"] for e, (r, _) in bad.items()} == {e: c for e, (_, c) in bad.items()}
    assert "features.vibration: required by model anomaly_detector" in letters["bad-t-2"]["message"]
    assert "features.load: 1.7 is outside its domain [0, 1]" in letters["bad-t-4"]["message"]
    assert "device_id=9999999" in letters["bad-t-1"]["message"]
    assert collected.distinct_results == len(good)


def test_repeats_get_no_second_result_even_after_a_worker_restart(pipeline_settings, start_worker):
    settings = pipeline_settings()
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    first = start_worker(settings)
    originals = traffic.valid_requests(200, prefix="restart-")
    # Repeats inside the first stream too, near their originals.
    stream = [traffic.message_for(r) for r in originals] + [traffic.message_for(r) for r in originals[:50]]
    collected = _run(settings, stream, results=200, start=start)
    assert collected.distinct_results == 200 and collected.repeated_results == 0

    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) is not None
    start_worker(settings)  # same app id: recovers the dedup table from its changelog

    # Every original again, then a fresh event per account: a fresh result proves the repeats
    # before it (same key, same partition) were already handled.
    fresh = [dict(r, event_id=r["event_id"].replace("restart-", "after-")) for r in originals]
    stream = [traffic.message_for(r) for r in originals] + [traffic.message_for(r) for r in fresh]
    collected = _run(settings, stream, results=400, start=start)
    assert collected.distinct_results == 400
    assert collected.repeated_results == 0, "a repeat after restart produced a second result"


def _requests_on_topic(settings, count: int) -> dict[bytes, tuple[int, int, bytes]]:
    """Every message of the (test's own) requests topic by value: (partition, offset, key); the
    sentinels `_run` published after them aside."""
    consumer = Consumer(probe.consumer_config(settings))
    partitions = consumer.list_topics(settings.topics.requests, timeout=10).topics[settings.topics.requests].partitions
    consumer.assign([TopicPartition(settings.topics.requests, p, 0) for p in partitions])
    found: dict[bytes, tuple[int, int, bytes]] = {}
    deadline = time.monotonic() + 60
    try:
        while len(found) < count and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.2):
                if message.error() is None and probe.SENTINEL_PREFIX.encode() not in message.value():
                    found[message.value()] = (message.partition(), message.offset(), message.key())
    finally:
        consumer.close()
    assert len(found) == count, f"read back {len(found)} of the {count} requests published"
    return found


def test_each_kind_of_bad_input_is_dead_lettered_with_its_code(pipeline_settings, start_worker):
    settings = pipeline_settings()
    worker = start_worker(settings)
    good = traffic.valid_requests(20, prefix="dlq-")
    # Each with a key of its own (spread over partitions), so that a dead letter's key and source are its own.
    bad = [
        dataclasses.replace(traffic.malformed(kind, good[0], f"dlq-bad-{i}"), key=f"bad-key-{i}".encode())
        for i, (kind, _) in enumerate(traffic.MALFORMED_KINDS)
    ]
    stream = [traffic.message_for(r) for r in good[:10]] + bad + [traffic.message_for(r) for r in good[10:]]
    collected = _run(settings, stream, results=20, dead_letters=len(bad))

    by_payload = {letter["payload"]: letter for letter in collected.dead_letters}
    assert len(collected.dead_letters) == len(bad)
    # Where each bad message actually is on the requests topic, read back from it.
    published = _requests_on_topic(settings, len(stream))
    for message, (kind, code) in zip(bad, traffic.MALFORMED_KINDS, strict=True):
        letter = by_payload[message.value.decode()]
        assert letter["error"]["code"] == code, kind
        assert letter["event_id"] == message.event_id
        partition, offset, key = published[message.value]
        assert letter["source"] == {"topic": settings.topics.requests, "partition": partition, "offset": offset}, kind
        assert letter["key"] == key.decode(), kind
    assert collected.distinct_results == 20, "valid requests after the bad ones were still scored"
    assert worker.poll() is None, "the worker kept running"
