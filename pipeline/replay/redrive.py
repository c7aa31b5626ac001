"""`pipeline dlq redrive`: re-publish dead letters to the requests topic after a fix.

Events that did get scored in the meantime are not scored twice: the worker's dedup state answers
a redriven repeat with no second result (within the dedup window).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

import orjson
from confluent_kafka import TopicPartition

from pipeline import topics
from pipeline.contract import payload_bytes
from pipeline.errors import ConfigurationError
from pipeline.kafka import clients
from pipeline.kafka.acls import READERS
from pipeline.kafka.offsets import watermarks
from pipeline.settings import Settings


@dataclass(frozen=True)
class DeadLetter:
    record: dict[str, object]
    timestamp_ms: int


@dataclass(frozen=True)
class Selection:
    codes: frozenset[str] = frozenset()  # empty: every code
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, letter: DeadLetter) -> bool:
        error = letter.record.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        if self.codes and code not in self.codes:
            return False
        if self.since is not None and letter.timestamp_ms < self.since.timestamp() * 1000:
            return False
        return not (self.until is not None and letter.timestamp_ms >= self.until.timestamp() * 1000)


def select(letters: Iterable[DeadLetter], selection: Selection) -> Iterator[tuple[bytes | None, bytes]]:
    """Pure: (key, original value) of each matching dead letter that kept its payload."""
    for letter in letters:
        if not selection.matches(letter):
            continue
        value = payload_bytes(letter.record)
        if value is None:
            continue
        key = letter.record.get("key")
        yield (str(key).encode() if key is not None else None), value


def read_dead_letters(settings: Settings, timeout_s: float = 120.0) -> list[DeadLetter]:
    """Every committed dead letter, from the beginning of the topic to its current end."""
    consumer = clients.reader(settings, READERS["redrive"])
    try:
        topic = settings.topics.dlq
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: watermarks(consumer, TopicPartition(topic, p)) for p in partitions}
        assigned = [TopicPartition(topic, p, low) for p, (low, high) in ends.items() if high > low]
        consumer.assign(assigned)
        letters: list[DeadLetter] = []
        deadline = time.monotonic() + timeout_s
        # Done when every partition's position reaches its end (transaction markers included).
        while assigned and any(tp.offset < ends[tp.partition][1] for tp in consumer.position(assigned)):
            if time.monotonic() > deadline:
                raise ConfigurationError(f"could not read {topic} to its end within {timeout_s:g} s")
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                if message.error() is None:
                    value = message.value()
                    if value is None:  # a dead letter always has a value: this is no dead letter
                        where = f"{topic} partition {message.partition()} offset {message.offset()}"
                        raise ConfigurationError(f"{where}: a record without a value, not a dead letter")
                    letters.append(DeadLetter(orjson.loads(value), message.timestamp()[1]))
        return letters
    finally:
        consumer.close()


def redrive(settings: Settings, selection: Selection, dry_run: bool = False) -> int:
    messages = list(select(read_dead_letters(settings), selection))
    if dry_run or not messages:
        return len(messages)
    producer = topics.requests_producer(settings, {"enable.idempotence": True})
    for key, value in messages:
        producer.produce(settings.topics.requests, value, key=key)
        producer.poll(0)
    if producer.flush(30) != 0:
        raise ConfigurationError("not every redriven request was acknowledged by the broker")
    return len(messages)
