"""The anomaly consumer on the real broker: a crafted stream of the anomaly detector's results gives
one alert per device episode with its follow-up count, none for normal devices or other models' results;
SIGKILLed and restarted, it publishes no alert twice and counts no reading twice."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Collection
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from pipeline.contract import result_record
from pipeline.local.probe import consumer_config
from pipeline.local.stack import free_port

pytestmark = pytest.mark.integration

SENTINEL_DEVICES = 12_000  # and up: the sentinels' devices, none of the streams'


class Results:
    """The anomaly detector's results as the worker publishes them: in transactions, to the partition
    numbered like the device's (here: its id modulo 12), record times 10 s apart from a fixed start."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.base_ms = int(time.time() * 1000) - 3_600_000
        self.producer = Producer(
            {"bootstrap.servers": settings.kafka.bootstrap_servers, "transactional.id": f"results-{uuid.uuid4().hex}"}
        )
        self.producer.init_transactions(30)
        self.sentinel_rounds = 0

    def publish(self, rows: list[tuple[str, int, float, int, str]]) -> None:
        """Rows of (event_id, device, score, seconds after the start, model)."""
        self.producer.begin_transaction()
        for event_id, device, score, at_s, model in rows:
            record = result_record(
                event_id=event_id,
                model=model,
                model_version="1",
                score=score,
                threshold=0.5,
                latency_ms=1.0,
                entity={"device_id": device} if model == "anomaly_detector" else {"account_id": device},
                labels=("normal", "anomaly"),
                features={"temperature": 60.0 + at_s / 10} if model == "anomaly_detector" else None,
            )
            self.producer.produce(
                self.settings.topics.results,
                orjson.dumps(record),
                event_id.encode(),
                partition=device % 12,
                timestamp=self.base_ms + at_s * 1000,
            )
        self.producer.commit_transaction(30)

    def sentinels(self) -> set[str]:
        """An anomalous reading of a device of its own on every results partition, after the results
        published before: the consumer reads each partition in order and publishes the alerts of its
        results in order to the alerts partition numbered like it, so once each one's opening alert is
        read, any alert of the results before it is too. Their event_ids."""
        self.sentinel_rounds += 1
        devices = SENTINEL_DEVICES + 12 * self.sentinel_rounds
        rows = [(f"sentinel-{self.sentinel_rounds}-{p}", devices + p, 0.9, 240, "anomaly_detector") for p in range(12)]
        self.publish(rows)
        return {row[0] for row in rows}


def _stream(prefix: str) -> list[tuple[str, int, float, int, str]]:
    """Device 1: anomalous every 10 s for three minutes (one alert, then follow-ups). Device 2:
    one spike. Device 3: normal throughout. Account 1 of the fraud scorer scored 0.99: not a device.
    Device 4: two episodes 15 minutes apart."""
    rows = [(f"{prefix}d1-{i}", 1, 0.9, 10 * i, "anomaly_detector") for i in range(18)]
    rows += [(f"{prefix}d2", 2, 0.97, 30, "anomaly_detector")]
    rows += [(f"{prefix}d3-{i}", 3, 0.1, 10 * i, "anomaly_detector") for i in range(18)]
    rows += [(f"{prefix}fraud", 1, 0.99, 40, "fraud_scorer")]
    rows += [(f"{prefix}d4-a", 4, 0.8, 0, "anomaly_detector"), (f"{prefix}d4-b", 4, 0.8, 900, "anomaly_detector")]
    return sorted(rows, key=lambda r: r[3])


def _alerts(settings, until, sentinels: Collection[str] = (), timeout_s: float = 90) -> list[dict[str, Any]]:
    """Every message on the anomaly alerts topic, in order, once `until` holds and the opening alert of
    every sentinel (`Results.sentinels`) is read; the sentinels' own alerts left out."""
    consumer = Consumer(consumer_config(settings) | {"group.id": f"probe-{uuid.uuid4().hex}"})
    consumer.assign([TopicPartition(settings.topics.anomaly_alerts, p, 0) for p in range(12)])
    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while not until(found) or not seen >= set(sentinels):
            assert time.monotonic() < deadline, f"{len(seen)} sentinels' alerts; until not met by {found}"
            for message in consumer.consume(num_messages=100, timeout=0.2):
                if message.error() is None:
                    alert = orjson.loads(message.value()) | {"_key": message.key().decode()}
                    if alert["device_id"] >= SENTINEL_DEVICES:
                        seen.add(alert["event_id"])
                    else:
                        found.append(alert)
        return found
    finally:
        consumer.close()


def _episodes(alerts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each alert's latest state, as a compacted topic keeps it."""
    latest: dict[str, dict[str, Any]] = {}
    for alert in alerts:
        latest[alert["alert_id"]] = alert
    return latest


def _start(processes, settings, name: str, *options: str):
    settings = settings.updated(consumers={"metrics_port": free_port()})
    process = processes.stack.start_consumer(settings, "anomaly", name, "--from-beginning", *options)
    processes.started.append(process)
    return process


def test_one_alert_per_device_episode_with_a_running_follow_up_count(pipeline_settings, processes):
    settings = pipeline_settings()  # follow-ups at most a minute apart by default, besides powers of two
    results = Results(settings)
    results.publish(_stream("s-"))
    # A reading a minute after the last follow-up publishes the running count again (18).
    results.publish([("s-d1-late", 1, 0.9, 230, "anomaly_detector")])
    sentinels = results.sentinels()
    _start(processes, settings, f"anomaly-{uuid.uuid4().hex[:6]}")

    alerts = _alerts(settings, lambda found: any(a["follow_up"]["count"] == 18 for a in found), sentinels)

    latest = _episodes(alerts)
    assert sorted(a["device_id"] for a in latest.values()) == [1, 2, 4, 4]
    assert len([a for a in alerts if a["follow_up"]["count"] == 0]) == 4
    device_1 = [a for a in alerts if a["device_id"] == 1]
    # Counts 1, 2, 4, 8, 16 at once; 14 and 18 a minute after the publication before.
    assert [a["follow_up"]["count"] for a in device_1] == [0, 1, 2, 4, 8, 14, 16, 18]
    assert device_1[0]["event_id"] == "s-d1-0" and device_1[-1]["follow_up"]["last"]["event_id"] == "s-d1-late"
    assert device_1[-1]["readings"] == {"temperature": 60.0}, "the opening reading's values"
    assert device_1[-1]["follow_up"]["last"]["readings"] == {"temperature": 83.0}, "and the latest one's"
    assert all(a["_key"] == a["alert_id"] and a["kind"] == "anomaly" for a in alerts)
    assert all(a["model"] == "anomaly_detector" for a in alerts), "the fraud scorer's result is not a device's"


def test_a_consumer_killed_and_restarted_publishes_no_alert_twice_nor_counts_a_reading_twice(
    pipeline_settings, processes
):
    # Offsets never committed within the test (Faust commits each interval from its start, and a slow
    # start must not reach it): the restarted consumer reads again what the killed one had decided.
    settings = pipeline_settings().updated(consumers={"commit_interval_s": 3600.0})
    results = Results(settings)
    stream = _stream("k-")
    group = f"anomaly-{uuid.uuid4().hex[:6]}"
    first = _start(processes, settings, f"{group}-1", "--group-id", group)
    half = len(stream) // 2
    results.publish(stream[:half])
    _alerts(settings, lambda found: len(_episodes(found)) >= 2)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)

    _start(processes, settings, f"{group}-2", "--group-id", group)
    results.publish([*stream[half:], ("k-d1-late", 1, 0.9, 230, "anomaly_detector")])

    alerts = _alerts(settings, lambda found: any(a["follow_up"]["count"] >= 18 for a in found), results.sentinels())
    latest = _episodes(alerts)
    assert sorted(a["device_id"] for a in latest.values()) == [1, 2, 4, 4]
    assert len([a for a in alerts if a["follow_up"]["count"] == 0]) == 4, "no first publication twice"
    device_1 = latest[next(a["alert_id"] for a in alerts if a["device_id"] == 1)]
    assert device_1["follow_up"]["count"] == 18, "each of device 1's further readings counted once"
