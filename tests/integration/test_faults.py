"""Effectively-once under faults, on the real broker, Triton and Feast.

Each mid-stream test publishes 20,000 requests (half card transactions for fraud_scorer, half machine
readings for anomaly_detector; 20% repeats of earlier event_ids, some far apart; 10% poison of both)
in the background at 2,000 a second, injects one fault once an eighth of the distinct events are
scored, and reads everything back with a read_committed consumer. It shows that the fault met the
stream (by the results' Kafka timestamps, at least half of the events were unscored when it was in
place), that the worker felt it (its own metrics: retries, Kafka errors, partitions taken over, events
scored), and that every distinct valid event_id has exactly one result, by its own model, with the
score the exported model gives in the test, and every poison message exactly one dead letter.
Requests whose retries run out against an unreachable Triton are dead-lettered.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from confluent_kafka import TopicPartition

from pipeline import topics
from pipeline.local import probe, traffic
from pipeline.local.probe import Collected
from pipeline.settings import Settings
from tests.conftest import REDIS_PORT, free_port, metric, scrape
from tests.integration.reference import reference_scores

pytestmark = pytest.mark.integration

STREAM = 20_000
# Requests a second: the stream takes 10 s to publish, so a fault injected once an eighth is scored
# meets most of it not yet published (a worker alone scores ~15-25k a second here).
RATE = 2_000
# The fault comes once 1/FAULT_AT of the distinct events are scored: early enough that the work which
# goes on while a service is being stopped (Redis saves its data first) leaves over half unscored.
FAULT_AT = 8

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _stream(prefix: str) -> traffic.Traffic:
    return traffic.mixed(STREAM, prefix=prefix, duplicate_rate=0.2, malformed_rate=0.1, telemetry_share=0.5)


def _complete(mix: traffic.Traffic):
    expected_dead = sum(mix.expected_dead_letters.values())
    return lambda c: c.distinct_results >= len(mix.requests) and len(c.dead_letters) >= expected_dead


def _collect_all(settings: Settings, start: dict[TopicPartition, int], mix: traffic.Traffic) -> Collected:
    """All the stream produced: read until sentinels published after it are scored, so that a late
    second result or dead letter would have been read too (`probe.collect`)."""
    return probe.collect(settings, start, _complete(mix), timeout_s=300, sentinels=probe.publish_sentinels(settings))


def _wait_until_fault_is_due(settings: Settings, start: dict[TopicPartition, int], mix: traffic.Traffic) -> None:
    due = len(mix.requests) // FAULT_AT
    probe.collect(settings, start, lambda c: c.distinct_results >= due, timeout_s=120, settle_s=0)


def assert_exactly_once(settings: Settings, mix: traffic.Traffic, collected: Collected) -> None:
    """One result per distinct event, by its own model with the exported model's score; one dead
    letter per poison message, with its code."""
    missing = set(mix.requests) - set(collected.results)
    assert not missing, f"{len(missing)} events never got a result, e.g. {sorted(missing)[:3]}"
    doubled = {e: len(r) for e, r in collected.results.items() if len(r) > 1}
    assert not doubled, f"{len(doubled)} events got more than one result, e.g. {list(doubled.items())[:3]}"
    assert set(collected.results) == set(mix.requests)
    poison = Counter(m.value.decode() for m in mix.messages if m.kind not in ("valid", "duplicate"))
    dead = Counter(letter["payload"] for letter in collected.dead_letters)
    assert dead == poison, "every poison message has exactly one dead letter"
    assert collected.dead_letter_codes() == mix.expected_dead_letters
    for model in ("fraud_scorer", "anomaly_detector"):
        requests = [r for r in mix.requests.values() if r.get("model", "fraud_scorer") == model]
        assert len(requests) >= len(mix.requests) // 3, f"{model}: a share of the stream"
        got = [collected.results[str(r["event_id"])][0] for r in requests]
        assert {result["model"] for result in got} == {model}
        np.testing.assert_allclose(
            [result["score"] for result in got], reference_scores(settings, requests, model), atol=1e-5, rtol=0
        )


def assert_fault_met_the_stream(mix: traffic.Traffic, collected: Collected, fault_ms: int) -> int:
    """How many distinct events had no result yet when the fault was in place (epoch ms `fault_ms`),
    by their results' Kafka timestamps (set when the worker produced them, after scoring them): at
    least half, or the fault met little of the stream."""
    distinct = len(mix.requests)
    written = sum(1 for produced_ms in collected.result_times_ms.values() if produced_ms <= fault_ms)
    assert written <= distinct // 2, f"{written} of {distinct} events had a result before the fault: it came too late"
    assert written >= distinct // FAULT_AT, f"only {written} of {distinct} events had a result before the fault"
    return distinct - written


class _Publisher:
    """The stream published on a thread at RATE, so that it keeps coming through the fault (librdkafka
    buffers and retries while the broker is down)."""

    def __init__(self, settings: Settings, mix: traffic.Traffic) -> None:
        self._settings, self._mix = settings, mix
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._publish, name="publisher", daemon=True)
        self._thread.start()

    def _publish(self) -> None:
        try:
            probe.publish(self._settings, self._mix.messages, rate=RATE)
        except BaseException as e:  # noqa: BLE001 -- re-raised by join()
            self._error = e

    def join(self, timeout_s: float = 120) -> None:
        """Once the whole stream is on the requests topic (a fresh topic: its end offsets count it)."""
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"the stream was still being published after {timeout_s:g} s"
        if self._error is not None:
            raise self._error
        published = sum(probe.end_offsets(self._settings, [self._settings.topics.requests]).values())
        assert published == len(self._mix.messages), f"{published} of {len(self._mix.messages)} requests published"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _total(samples: Samples, name: str, **labels: str) -> float:
    """Like conftest's `metric`, over a scrape taken earlier."""
    wanted = set(labels.items())
    return sum(value for (sample, have), value in samples.items() if sample == name and wanted <= have)


def _partitions_held(samples: Samples) -> float:
    return _total(samples, "pipeline_rebalances_total", change="assigned") - _total(
        samples, "pipeline_rebalances_total", change="revoked"
    )


def test_a_worker_killed_mid_stream_and_restarted_loses_and_doubles_nothing(pipeline_settings, start_worker):
    settings = pipeline_settings(metrics_port=free_port())
    mix = _stream("kill-")
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    worker = start_worker(settings)
    publisher = _Publisher(settings, mix)
    _wait_until_fault_is_due(settings, start, mix)

    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    killed_ms = _now_ms()
    restarted = settings.updated(worker={"metrics_port": free_port()})
    start_worker(restarted)
    publisher.join()

    collected = _collect_all(settings, start, mix)
    assert_exactly_once(settings, mix, collected)
    unscored = assert_fault_met_the_stream(mix, collected, killed_ms)
    port = restarted.worker.metrics_port
    assert _partitions_held(scrape(port)) == topics.partition_count(settings, settings.topics.requests), (
        "the restarted worker holds every partition"
    )
    # Every event without a result at the kill got it from the restarted worker, the only one alive since.
    scored = metric(port, "pipeline_events_total", outcome="scored")
    assert scored >= unscored, f"the restarted worker scored {scored:g} events; {unscored} had no result at the kill"


def test_one_of_two_workers_killed_mid_stream_the_other_carries_on(pipeline_settings, start_worker):
    settings = pipeline_settings()
    mix = _stream("pair-")
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    first_port = free_port()
    first = start_worker(settings.updated(worker={"metrics_port": first_port}))
    survivor_port = free_port()  # drawn once the first worker holds its own
    start_worker(settings.updated(worker={"metrics_port": survivor_port}))
    publisher = _Publisher(settings, mix)
    _wait_until_fault_is_due(settings, start, mix)

    first_before, survivor_before = scrape(first_port), scrape(survivor_port)
    first.send_signal(signal.SIGKILL)  # its partitions move to the survivor after the session timeout
    first.wait(timeout=30)
    killed_ms = _now_ms()
    held_by_first = _partitions_held(first_before)
    assert held_by_first > 0 and _partitions_held(survivor_before) > 0, "both workers held partitions"
    publisher.join()

    collected = _collect_all(settings, start, mix)
    assert_exactly_once(settings, mix, collected)
    unscored = assert_fault_met_the_stream(mix, collected, killed_ms)
    survivor = scrape(survivor_port)
    taken = _total(survivor, "pipeline_rebalances_total", change="assigned") - _total(
        survivor_before, "pipeline_rebalances_total", change="assigned"
    )
    assert taken >= held_by_first, f"the survivor took {taken:g} partitions; the killed worker held {held_by_first:g}"
    assert _partitions_held(survivor) == topics.partition_count(settings, settings.topics.requests)
    # Every event without a result at the kill got it from the survivor, the only worker alive since.
    scored = _total(survivor, "pipeline_events_total", outcome="scored")
    assert scored >= unscored, f"the survivor scored {scored:g} events; {unscored} had no result at the kill"


@dataclass
class Outage:
    collected: Collected
    before: Samples  # the worker's metrics right before the fault
    after: Samples  # and once the stream was complete

    def grew(self, name: str, **labels: str) -> float:
        return _total(self.after, name, **labels) - _total(self.before, name, **labels)


def _outage_mid_stream(
    settings: Settings,
    start_worker: Callable[[Settings], subprocess.Popen[bytes]],
    prefix: str,
    stop: Callable[[], object],
    start: Callable[[], object],
    down_s: float,
) -> Outage:
    """Publish the mix in the background, take a service away once the fault is due, bring it back
    after `down_s`, collect. One worker throughout: it must survive the outage and score the rest."""
    port = settings.worker.metrics_port
    mix = _stream(prefix)
    begin = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    worker = start_worker(settings)
    publisher = _Publisher(settings, mix)
    _wait_until_fault_is_due(settings, begin, mix)
    before = scrape(port)
    stop()
    fault_ms = _now_ms()
    time.sleep(down_s)
    start()
    publisher.join()
    collected = _collect_all(settings, begin, mix)
    assert_exactly_once(settings, mix, collected)
    assert_fault_met_the_stream(mix, collected, fault_ms)
    assert worker.poll() is None, f"the worker exited ({worker.returncode}) during the outage"
    after = scrape(port)
    scored = _total(after, "pipeline_events_total", outcome="scored")
    assert scored >= len(mix.requests), f"the one worker scored {scored:g} of {len(mix.requests)} events"
    return Outage(collected, before, after)


def test_triton_down_for_ten_seconds_is_retried_not_dead_lettered(stack, pipeline_settings, start_worker):
    settings = pipeline_settings(metrics_port=free_port())
    outage = _outage_mid_stream(settings, start_worker, "triton-", stack.stop_triton, stack.start_triton, 10)
    assert "inference_failed" not in outage.collected.dead_letter_codes()
    assert outage.grew("pipeline_retries_total", stage="inference") > 0, "the worker retried Triton"


def test_the_broker_restarted_mid_stream_loses_and_doubles_nothing(stack, pipeline_settings, start_worker):
    settings = pipeline_settings(metrics_port=free_port())
    outage = _outage_mid_stream(settings, start_worker, "broker-", stack.stop_kafka, stack.start_kafka, 3)
    # librdkafka's error_cb: the worker's clients lost their broker (and that same worker finished the stream).
    assert outage.grew("pipeline_kafka_errors_total") > 0, "the worker's Kafka clients saw the broker go away"


def test_requests_whose_retries_run_out_are_dead_lettered_with_their_attempts(pipeline_settings, start_worker):
    settings = pipeline_settings(retry_budget_s=2.0, retry_initial_ms=100, retry_max_ms=500, metrics_port=free_port())
    # Triton "down for longer than the budget": nothing listens on this address.
    settings = settings.model_copy(update={"triton": settings.triton.model_copy(update={"grpc_url": "127.0.0.1:1"})})
    start_worker(settings)
    requests = traffic.valid_requests(30, prefix="exhausted-")
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    probe.publish(settings, [traffic.message_for(r) for r in requests])

    # The sentinels are dead-lettered too, after the requests (`probe.collect`).
    sentinels = probe.publish_sentinels(settings)
    collected = probe.collect(settings, start, lambda c: len(c.dead_letters) >= 30, sentinels=sentinels)

    assert collected.distinct_results == 0
    assert {d["event_id"] for d in collected.dead_letters} == {r["event_id"] for r in requests}
    assert all(d["error"]["code"] == "inference_failed" and d["attempts"] >= 3 for d in collected.dead_letters)
    # Each batch retried attempts - 1 times before giving up.
    port = settings.worker.metrics_port
    retries = metric(port, "pipeline_retries_total", stage="inference")
    assert retries >= max(d["attempts"] for d in collected.dead_letters) - 1
    assert metric(port, "pipeline_dead_letters_total", code="inference_failed") == 30 + len(sentinels.event_ids)


def test_feature_store_down_for_ten_seconds_is_retried_not_dead_lettered(
    stack, redis_feature_repo, pipeline_settings, start_worker
):
    settings = pipeline_settings(metrics_port=free_port())
    # No feature cache: every batch reads the store, so none is scored from cached rows through the outage.
    settings = settings.updated(feast={"repo_path": redis_feature_repo, "cache_ttl_s": 0.0})
    # Redis keeps an append-only file: the features come back with it.
    outage = _outage_mid_stream(
        settings,
        start_worker,
        "feast-",
        lambda: stack.stop_redis(REDIS_PORT),
        lambda: stack.start_redis(REDIS_PORT),
        10,
    )
    assert "inference_failed" not in outage.collected.dead_letter_codes()
    assert outage.grew("pipeline_retries_total", stage="features") > 0, "the worker retried Feast"
