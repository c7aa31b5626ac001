"""The dedup state on local disk, across restarts: a worker killed and restarted on its state directory
restores only the changelog's tail (warm); one restarted without it rebuilds from the window's start
(cold). Either way every distinct event has exactly one result, and a repeat carrying a reply address
is answered with the original result."""

from __future__ import annotations

import shutil
import signal
import time
import uuid

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline import topics
from pipeline.contract import CORRELATION_ID, REPLY_TO
from pipeline.local import probe, traffic
from tests.conftest import free_port, metric

pytestmark = pytest.mark.integration

STREAM = 20_000


def _replies(settings, count: int, timeout_s: float = 60) -> dict[str, bytes]:
    """Answers on partition 0 of the replies topic, by correlation id."""
    consumer = Consumer(probe.consumer_config(settings))
    consumer.assign([TopicPartition(settings.topics.replies, 0, 0)])
    found: dict[str, bytes] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(found) < count and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.2):
                if message.error() is None:
                    headers = dict(message.headers() or [])
                    found[headers[CORRELATION_ID].decode()] = message.value()
    finally:
        consumer.close()
    return found


def _ask_again(settings, requests: list[dict[str, object]]) -> dict[str, str]:
    """Publish repeats of `requests` with a reply address; returns event_id by correlation id."""
    producer = topics.requests_producer(settings)
    asked = {}
    for request in requests:
        correlation = uuid.uuid4().hex
        message = traffic.message_for(request)
        reply_to = f"{settings.topics.replies}:0".encode()
        producer.produce(
            settings.topics.requests,
            message.value,
            message.key,
            headers=[(REPLY_TO, reply_to), (CORRELATION_ID, correlation.encode())],
        )
        asked[correlation] = str(request["event_id"])
    producer.flush(30)
    return asked


def _restart_mid_stream(pipeline_settings, start_worker, tmp_path, prefix: str, keep_state: bool):
    state_dir = tmp_path / "state"
    settings = pipeline_settings(state_dir=state_dir, metrics_port=free_port())
    mix = traffic.mixed(STREAM, prefix=prefix, duplicate_rate=0.2, malformed_rate=0.1)
    half = len(mix.messages) // 2
    first_ids = {m.event_id for m in mix.messages[:half] if m.kind == "valid"}
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    worker = start_worker(settings)
    probe.publish(settings, mix.messages[:half])
    before = probe.collect(settings, start, expect=first_ids, timeout_s=120, settle_s=0)

    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    if not keep_state:
        shutil.rmtree(state_dir)
    restarted = settings.updated(worker={"metrics_port": free_port()})
    start_worker(restarted)
    probe.publish(settings, mix.messages[half:])  # with repeats of events scored before the kill
    expected_dead = sum(mix.expected_dead_letters.values())
    collected = probe.collect(
        settings,
        start,
        lambda c: c.distinct_results >= len(mix.requests) and len(c.dead_letters) >= expected_dead,
        timeout_s=300,
        # once the sentinels are scored, a late second result would have been read too
        sentinels=probe.publish_sentinels(settings),
    )

    assert set(collected.results) == set(mix.requests), "every distinct event has a result"
    doubled = {e: len(r) for e, r in collected.results.items() if len(r) > 1}
    assert not doubled, f"{len(doubled)} events got more than one result, e.g. {list(doubled.items())[:3]}"
    assert collected.dead_letter_codes() == mix.expected_dead_letters

    # Repeats of events scored before the kill, with a reply address: the original result comes back.
    originals = [mix.requests[e] for e in sorted(first_ids)[:50]]
    asked = _ask_again(settings, originals)
    answers = _replies(settings, len(asked))
    assert len(answers) == len(asked)
    for correlation, event_id in asked.items():
        assert orjson.loads(answers[correlation]) == collected.results[event_id][0], "the original result"
    return restarted.worker.metrics_port, len(before.results)


def test_a_worker_killed_and_restarted_on_its_state_directory_reads_only_the_tail(
    pipeline_settings, start_worker, tmp_path
):
    port, scored_before = _restart_mid_stream(pipeline_settings, start_worker, tmp_path, "warm-", keep_state=True)

    assert metric(port, "pipeline_state_restores_total", mode="warm") == 12
    assert metric(port, "pipeline_state_restores_total", mode="cold") == 0
    tail = metric(port, "pipeline_state_restored_entries_total", mode="warm")
    assert tail < scored_before / 10, f"read back {tail:g} entries of {scored_before} in the store"


def test_a_worker_restarted_without_its_state_directory_rebuilds_it_from_the_changelog(
    pipeline_settings, start_worker, tmp_path
):
    port, scored_before = _restart_mid_stream(pipeline_settings, start_worker, tmp_path, "cold-", keep_state=False)

    assert metric(port, "pipeline_state_restores_total", mode="cold") == 12
    rebuilt = metric(port, "pipeline_state_restored_entries_total", mode="cold")
    assert rebuilt >= scored_before, f"rebuilt {rebuilt:g} entries; {scored_before} events were scored before"
