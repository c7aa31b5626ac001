"""Effectively-once under faults, on the real broker, Triton and Feast.

Each test streams 20,000 requests (20% repeats of earlier event_ids, some far apart; 10% poison),
injects one fault mid-stream, and reads everything back with a read_committed consumer: every
distinct valid event_id has exactly one result, every poison message exactly one dead letter.
"""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest

from pipeline.local import probe, traffic
from pipeline.local.probe import Collected

pytestmark = pytest.mark.integration

STREAM = 20_000


def _stream(prefix: str) -> traffic.Traffic:
    return traffic.mixed(STREAM, prefix=prefix, duplicate_rate=0.2, malformed_rate=0.1)


def _complete(mix: traffic.Traffic):
    expected_dead = sum(mix.expected_dead_letters.values())
    return lambda c: c.distinct_results >= len(mix.requests) and len(c.dead_letters) >= expected_dead


def _wait_for_results(settings, start, count: int, timeout_s: float = 120) -> None:
    probe.collect(settings, start, lambda c: c.distinct_results >= count, timeout_s=timeout_s, settle_s=0)


def assert_exactly_once(mix: traffic.Traffic, collected: Collected) -> None:
    missing = set(mix.requests) - set(collected.results)
    assert not missing, f"{len(missing)} events never got a result, e.g. {sorted(missing)[:3]}"
    doubled = {e: len(r) for e, r in collected.results.items() if len(r) > 1}
    assert not doubled, f"{len(doubled)} events got more than one result, e.g. {list(doubled.items())[:3]}"
    assert set(collected.results) == set(mix.requests)
    poison = Counter(m.value.decode() for m in mix.messages if m.kind not in ("valid", "duplicate"))
    dead = Counter(letter["payload"] for letter in collected.dead_letters)
    assert dead == poison, "every poison message has exactly one dead letter"
    assert collected.dead_letter_codes() == mix.expected_dead_letters


def test_a_worker_killed_mid_stream_and_restarted_loses_and_doubles_nothing(pipeline_settings, start_worker):
    settings = pipeline_settings()
    mix = _stream("kill-")
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    worker = start_worker(settings)
    probe.publish(settings, mix.messages)
    _wait_for_results(settings, start, len(mix.requests) // 4)

    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    start_worker(settings)

    collected = probe.collect(settings, start, _complete(mix), timeout_s=300, settle_s=3)
    assert_exactly_once(mix, collected)


def test_one_of_two_workers_killed_mid_stream_the_other_carries_on(pipeline_settings, start_worker):
    settings = pipeline_settings()
    mix = _stream("pair-")
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    first = start_worker(settings)
    start_worker(settings)
    probe.publish(settings, mix.messages)
    _wait_for_results(settings, start, len(mix.requests) // 4)

    first.send_signal(signal.SIGKILL)  # its partitions move to the survivor after the session timeout

    collected = probe.collect(settings, start, _complete(mix), timeout_s=300, settle_s=3)
    assert_exactly_once(mix, collected)


def _outage_mid_stream(settings, start_worker, prefix: str, stop, start, down_s: float) -> Collected:
    """Stream the mix, take a service away once a quarter is scored, bring it back, collect."""
    mix = _stream(prefix)
    begin = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    start_worker(settings)
    probe.publish(settings, mix.messages)
    _wait_for_results(settings, begin, len(mix.requests) // 4)
    stop()
    time.sleep(down_s)
    start()
    collected = probe.collect(settings, begin, _complete(mix), timeout_s=300, settle_s=3)
    assert_exactly_once(mix, collected)
    return collected


def test_triton_down_for_ten_seconds_is_retried_not_dead_lettered(stack, pipeline_settings, start_worker):
    settings = pipeline_settings()
    collected = _outage_mid_stream(settings, start_worker, "triton-", stack.stop_triton, stack.start_triton, 10)
    assert "inference_failed" not in collected.dead_letter_codes()


def test_the_broker_restarted_mid_stream_loses_and_doubles_nothing(stack, pipeline_settings, start_worker):
    settings = pipeline_settings()
    _outage_mid_stream(settings, start_worker, "broker-", stack.stop_kafka, stack.start_kafka, 3)


def test_requests_whose_retries_run_out_are_dead_lettered_with_their_attempts(pipeline_settings, start_worker):
    settings = pipeline_settings(retry_budget_s=2.0, retry_initial_ms=100, retry_max_ms=500)
    # Triton "down for longer than the budget": nothing listens on this address.
    settings = settings.model_copy(update={"triton": settings.triton.model_copy(update={"grpc_url": "127.0.0.1:1"})})
    start_worker(settings)
    requests = traffic.valid_requests(30, prefix="exhausted-")
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    probe.publish(settings, [traffic.message_for(r) for r in requests])

    collected = probe.collect(settings, start, lambda c: len(c.dead_letters) >= 30, timeout_s=120, settle_s=1)

    assert collected.distinct_results == 0
    assert {d["event_id"] for d in collected.dead_letters} == {r["event_id"] for r in requests}
    assert all(d["error"]["code"] == "inference_failed" and d["attempts"] >= 3 for d in collected.dead_letters)


def test_feature_store_down_for_ten_seconds_is_retried_not_dead_lettered(
    stack, redis_feature_repo, pipeline_settings, start_worker
):
    from tests.conftest import REDIS_PORT

    settings = pipeline_settings()
    settings = settings.updated(feast={"repo_path": redis_feature_repo})
    # Redis keeps an append-only file: the features come back with it.
    collected = _outage_mid_stream(
        settings,
        start_worker,
        "feast-",
        lambda: stack.stop_redis(REDIS_PORT),
        lambda: stack.start_redis(REDIS_PORT),
        10,
    )
    assert "inference_failed" not in collected.dead_letter_codes()
