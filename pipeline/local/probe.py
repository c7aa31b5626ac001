"""Publish requests and read back what the pipeline wrote, with Kafka timestamps.

Used by the demo, the tests and the benchmarks to count outcomes the way a user would:
a `read_committed` consumer over the results and dead-letter topics.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from pipeline import topics
from pipeline.local.traffic import Message
from pipeline.settings import Settings


@dataclass
class Collected:
    results: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    result_times_ms: dict[str, int] = field(default_factory=dict)  # first result's Kafka timestamp
    dead_letters: list[dict[str, Any]] = field(default_factory=list)

    @property
    def distinct_results(self) -> int:
        return len(self.results)

    @property
    def repeated_results(self) -> int:
        return sum(len(v) - 1 for v in self.results.values())

    def dead_letter_codes(self) -> Counter[str]:
        return Counter(d["error"]["code"] for d in self.dead_letters)


def end_offsets(settings: Settings, topics: Iterable[str]) -> dict[TopicPartition, int]:
    """Current end of every partition: read from here to see only what comes next."""
    consumer = Consumer(consumer_config(settings))
    try:
        offsets = {}
        for topic in topics:
            metadata = consumer.list_topics(topic, timeout=10).topics[topic]
            for partition in metadata.partitions:
                tp = TopicPartition(topic, partition)
                offsets[tp] = _high_watermark(consumer, tp)
        return offsets
    finally:
        consumer.close()


_NOT_READY = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
}


def _high_watermark(consumer: Consumer, tp: TopicPartition, timeout_s: float = 30.0) -> int:
    # A partition created a moment ago may not have taken up its leadership yet: retry that.
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return int(consumer.get_watermark_offsets(tp, timeout=10)[1])
        except KafkaException as e:
            error = e.args[0]
            if (error.code() not in _NOT_READY and not error.retriable()) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def publish(
    settings: Settings,
    messages: Iterable[Message],
    topic: str | None = None,
    rate: float | None = None,
    flush_s: float = 120.0,
) -> dict[str, int]:
    """Produce in order, at most `rate` messages a second if given; returns each event_id's first
    produce time (epoch ms). Returns once every message is acknowledged (through a broker outage
    too, for up to `flush_s`); raises if any was not."""
    failed: list[str] = []

    def delivered(error: KafkaError | None, _: object) -> None:
        if error is not None:
            failed.append(str(error))

    producer = topics.requests_producer(
        settings, {"linger.ms": 5, "enable.idempotence": True, "on_delivery": delivered}
    )
    sent_at: dict[str, int] = {}
    target = topic or settings.topics.requests
    began = time.monotonic()
    for index, message in enumerate(messages):
        if rate is not None and (ahead_s := began + index / rate - time.monotonic()) > 0:
            producer.poll(ahead_s)
        now_ms = int(time.time() * 1000)
        while True:
            try:
                producer.produce(target, message.value, key=message.key, timestamp=now_ms)
                break
            except BufferError:
                producer.poll(0.05)
        if message.event_id is not None:
            sent_at.setdefault(message.event_id, now_ms)
        producer.poll(0)
    if (left := producer.flush(flush_s)) or failed:
        reason = f"{left} messages unacknowledged after {flush_s:g} s, {len(failed)} failed: {failed[:3]}"
        raise KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT, reason))
    return sent_at


def collect(
    settings: Settings,
    start: dict[TopicPartition, int],
    done: Callable[[Collected], bool],
    timeout_s: float = 120.0,
    settle_s: float = 1.0,
) -> Collected:
    """Read results and dead letters from `start` until `done` holds (then `settle_s` more), or timeout."""
    consumer = Consumer(consumer_config(settings))
    consumer.assign([TopicPartition(tp.topic, tp.partition, offset) for tp, offset in start.items()])
    collected = Collected()
    deadline = time.monotonic() + timeout_s
    settle_until: float | None = None
    try:
        while time.monotonic() < deadline and (settle_until is None or time.monotonic() < settle_until):
            for message in consumer.consume(num_messages=1000, timeout=0.2):
                if message.error() is not None:
                    continue
                _record(settings, collected, message)
            if settle_until is None and done(collected):
                settle_until = time.monotonic() + settle_s
        return collected
    finally:
        consumer.close()


def read_json(
    settings: Settings,
    start: dict[TopicPartition, int],
    done: Callable[[list[dict[str, Any]]], bool],
    timeout_s: float = 60.0,
    settle_s: float = 1.0,
) -> list[dict[str, Any]]:
    """The JSON values committed on the topics of `start` from those offsets, once `done` holds (then
    `settle_s` more) or at the timeout."""
    consumer = Consumer(consumer_config(settings))
    consumer.assign([TopicPartition(tp.topic, tp.partition, offset) for tp, offset in start.items()])
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    settle_until: float | None = None
    try:
        while time.monotonic() < deadline and (settle_until is None or time.monotonic() < settle_until):
            for message in consumer.consume(num_messages=1000, timeout=0.2):
                if message.error() is None and message.value() is not None:
                    found.append(orjson.loads(message.value()))
            if settle_until is None and done(found):
                settle_until = time.monotonic() + settle_s
        return found
    finally:
        consumer.close()


def _record(settings: Settings, collected: Collected, message: Any) -> None:
    value = orjson.loads(message.value())
    if message.topic() == settings.topics.dlq:
        collected.dead_letters.append(value)
        return
    event_id = value["event_id"]
    collected.results[event_id].append(value)
    collected.result_times_ms.setdefault(event_id, message.timestamp()[1])


def consumer_config(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.kafka.bootstrap_servers,
        "group.id": "pipeline-probe",  # never commits; assign() takes explicit offsets
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    }
