"""The fraud consumer on the real broker: crafted result streams give exactly the expected alerts,
none from an aborted transaction; a consumer SIGKILLed and restarted, and a second one joining
mid-stream, neither repeat nor lose an alert; SIGTERM stops it on time."""

from __future__ import annotations

import math
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Collection
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from pipeline import topics
from pipeline.consumers.app import EX_SHUTDOWN_TIMED_OUT
from pipeline.contract import result_record
from pipeline.local.probe import consumer_config
from pipeline.local.stack import free_port
from tests.conftest import metric

pytestmark = pytest.mark.integration

WINDOW_S = 600  # the default window of repeated_high_scores; velocity's (60 s) divides it
SENTINEL_ACCOUNTS = 12_000  # and up: the sentinels' accounts, none of the streams'


def _result(event_id: str, account: int, score: float) -> bytes:
    record = result_record(
        event_id=event_id,
        model="fraud_scorer",
        model_version="1",
        score=score,
        threshold=0.5,
        latency_ms=1.0,
        entity={"account_id": account},
    )
    return orjson.dumps(record)


class Results:
    """Results published as the worker publishes them: in transactions, to the partition numbered like
    the request's (here: the account's modulo 12), at record times chosen within one window."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.base_ms = math.floor(time.time() / WINDOW_S) * WINDOW_S * 1000 + 1000
        self.producer = Producer(
            {"bootstrap.servers": settings.kafka.bootstrap_servers, "transactional.id": f"results-{uuid.uuid4().hex}"}
        )
        self.producer.init_transactions(30)
        self.sent = 0
        self.sentinel_rounds = 0

    def publish(self, rows: list[tuple[str, int, float]], commit: bool = True) -> None:
        self.producer.begin_transaction()
        for event_id, account, score in rows:
            self.producer.produce(
                self.settings.topics.results,
                _result(event_id, account, score),
                event_id.encode(),
                partition=account % 12,
                timestamp=self.base_ms + self.sent * 10,
            )
            self.sent += 1
        if commit:
            self.producer.commit_transaction(30)
        else:
            self.producer.flush(30)
            self.producer.abort_transaction(30)

    def sentinels(self) -> set[str]:
        """A score over the hard threshold on every results partition, after the results published
        before: the consumer reads each partition in order and publishes the alerts of its results in
        order to the alerts partition numbered like it, so once each one's high_score alert is read,
        any alert of the results before it is too. Their event_ids."""
        self.sentinel_rounds += 1
        accounts = SENTINEL_ACCOUNTS + 12 * self.sentinel_rounds
        rows = [(f"sentinel-{self.sentinel_rounds}-{p}", accounts + p, 0.99) for p in range(12)]
        self.publish(rows)
        return {event_id for event_id, _, _ in rows}


def _alerts(settings, expected: int, sentinels: Collection[str] = (), timeout_s: float = 90) -> list[dict[str, Any]]:
    """Every alert on the alerts topic, once `expected` are there and the alert of every sentinel
    (`Results.sentinels`) is read; the sentinels' own alerts left out."""
    consumer = Consumer(consumer_config(settings) | {"group.id": f"probe-{uuid.uuid4().hex}"})
    consumer.assign([TopicPartition(settings.topics.alerts, p, 0) for p in range(12)])
    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while len(found) < expected or not seen >= set(sentinels):
            assert time.monotonic() < deadline, f"{len(found)} of {expected} alerts, {len(seen)} sentinels': {found}"
            for message in consumer.consume(num_messages=100, timeout=0.2):
                if message.error() is None:
                    alert = orjson.loads(message.value()) | {"_key": message.key().decode()}
                    if alert["account_id"] >= SENTINEL_ACCOUNTS:
                        seen.update(alert["event_ids"])
                    else:
                        found.append(alert)
        return found
    finally:
        consumer.close()


def _stream(prefix: str) -> list[tuple[str, int, float]]:
    """Account 1: one score over the hard threshold. Account 2: four scores at or above 0.7 (three make
    the rule, the fourth is in the window that alerted). Account 3: two high scores, not enough.
    Account 4: twelve low scores within a minute (velocity). Accounts 5..40: ordinary traffic."""
    rows = [(f"{prefix}a1", 1, 0.97)]
    rows += [(f"{prefix}a2-{i}", 2, s) for i, s in enumerate((0.71, 0.8, 0.75, 0.9))]
    rows += [(f"{prefix}a3-{i}", 3, 0.8) for i in range(2)]
    rows += [(f"{prefix}a4-{i}", 4, 0.1) for i in range(12)]
    rows += [(f"{prefix}n{i}", 5 + i % 36, 0.05 + (i % 10) / 20) for i in range(200)]  # at most 0.5
    return rows


EXPECTED = Counter({("high_score", 1): 1, ("repeated_high_scores", 2): 1, ("velocity", 4): 1})


def _decisions(alerts: list[dict[str, Any]]) -> Counter:
    return Counter((a["rule"], a["account_id"]) for a in alerts)


def _start(processes, settings, name: str, *options: str) -> subprocess.Popen[bytes]:
    """A fraud consumer with its metrics on a port of its own (`process.metrics_port`)."""
    port = free_port()
    settings = settings.updated(consumers={"metrics_port": port})
    process = processes.stack.start_consumer(settings, "fraud", name, "--from-beginning", *options)
    process.metrics_port = port  # type: ignore[attr-defined]
    processes.started.append(process)
    return process


def test_crafted_results_raise_exactly_the_expected_alerts_and_none_from_an_aborted_transaction(
    pipeline_settings, processes
):
    settings = pipeline_settings()
    results = Results(settings)
    results.publish([("aborted-1", 6, 0.99)], commit=False)  # read_committed: never seen
    _start(processes, settings, f"fraud-{uuid.uuid4().hex[:6]}")
    results.publish(_stream("s-"))

    alerts = _alerts(settings, expected=3, sentinels=results.sentinels())

    assert _decisions(alerts) == EXPECTED
    by_rule = {a["rule"]: a for a in alerts}
    assert by_rule["repeated_high_scores"]["event_ids"] == ["s-a2-0", "s-a2-1", "s-a2-2"]
    assert by_rule["repeated_high_scores"]["scores"] == [0.71, 0.8, 0.75]
    assert by_rule["high_score"]["event_ids"] == ["s-a1"] and by_rule["high_score"]["model_version"] == "1"
    assert len(by_rule["velocity"]["event_ids"]) == 10
    for alert in alerts:
        assert alert["_key"] == alert["alert_id"] and alert["kind"] == "fraud" and alert["reason"]
        assert alert["model"] == "fraud_scorer" and alert["created_at"].endswith("Z")
    assert {"start", "end"} <= by_rule["velocity"]["window"].keys()


def test_a_consumer_killed_and_restarted_publishes_no_alert_twice(pipeline_settings, processes):
    # Offsets never committed within the test (Faust commits each interval from its start, and a slow
    # start must not reach it): the restarted consumer reads again what the killed one had decided.
    settings = pipeline_settings().updated(consumers={"commit_interval_s": 3600.0})
    results = Results(settings)
    group = f"fraud-{uuid.uuid4().hex[:6]}"
    first = _start(processes, settings, f"{group}-1", "--group-id", group)
    stream = _stream("k-")
    results.publish(stream[:10])  # account 1's and account 2's alerts
    assert _decisions(_alerts(settings, expected=2, sentinels=results.sentinels())) == Counter(
        {("high_score", 1): 1, ("repeated_high_scores", 2): 1}
    )
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)

    restarted = _start(processes, settings, f"{group}-2", "--group-id", group)
    results.publish(stream[10:])

    alerts = _alerts(settings, expected=3, sentinels=results.sentinels())
    assert _decisions(alerts) == EXPECTED, "each decision published once"
    assert len({a["alert_id"] for a in alerts}) == len(alerts)
    # account 1's high score decided again and found on the alerts topic (account 2's window came back
    # from its changelog marked as alerted, so it was not decided again); partitions are read in no
    # set order, so the count is awaited rather than read once
    deadline = time.monotonic() + 30
    while (repeated := metric(restarted.metrics_port, "pipeline_alerts_repeated_total", kind="fraud")) < 1:
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert repeated >= 1, _not_decided_again(settings, group, restarted.metrics_port)


def _not_decided_again(settings, group: str, port: int) -> str:
    """A failure's message: what the restarted consumer read, and the group's committed offsets."""
    read = metric(port, "pipeline_consumer_results_total", consumer="fraud", outcome="read")
    results = settings.topics.results
    reader = Consumer(consumer_config(settings) | {"group.id": group})
    try:
        partitions = [TopicPartition(results, p) for p in range(topics.partition_count(settings, results))]
        found = reader.committed(partitions, timeout=10)
        committed = ", ".join(f"{tp.partition}:{tp.offset}" for tp in found if tp.offset >= 0)
        return f"account 1's result not decided again: {read:g} results read; committed offsets {committed}"
    finally:
        reader.close()


def test_a_second_consumer_joining_mid_stream_neither_repeats_nor_loses_an_alert(pipeline_settings, processes):
    settings = pipeline_settings().updated(consumers={"commit_interval_s": 3600.0})
    results = Results(settings)
    group = f"fraud-{uuid.uuid4().hex[:6]}"
    _start(processes, settings, f"{group}-1", "--group-id", group)
    stream = _stream("j-")
    results.publish(stream[:10])
    _alerts(settings, expected=2)
    _start(processes, settings, f"{group}-2", "--group-id", group)
    results.publish(stream[10:])

    alerts = _alerts(settings, expected=3, sentinels=results.sentinels())
    assert _decisions(alerts) == EXPECTED
    assert len({a["alert_id"] for a in alerts}) == len(alerts)


def test_sigterm_stops_a_consumer_with_exit_0_and_on_time_when_its_broker_is_gone(stack, pipeline_settings, processes):
    settings = pipeline_settings().updated(consumers={"shutdown_timeout_s": 5.0})
    process = _start(processes, settings, f"fraud-{uuid.uuid4().hex[:6]}")
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert time.monotonic() - began < 5.0

    orphan = _start(processes, settings, f"fraud-{uuid.uuid4().hex[:6]}")
    stack.stop_kafka()
    try:
        began = time.monotonic()
        orphan.send_signal(signal.SIGTERM)
        code = orphan.wait(timeout=30)
        assert time.monotonic() - began < 5.0 + 3, "stopped within its shutdown timeout, give or take a poll"
        assert code in (0, EX_SHUTDOWN_TIMED_OUT), "0 when it could commit, else it says it could not"
    finally:
        stack.start_kafka()
