"""Publish requests and read back what the pipeline wrote, with Kafka timestamps.

Used by the demo, the tests and the benchmarks to count outcomes the way a user would:
a `read_committed` consumer over the results and dead-letter topics.

Waiting for something to arrive is waiting for a condition. Showing that nothing more arrives (no
second result, no extra dead letter) takes a positive marker, never a pause: sentinel requests
published after the stream (`publish_sentinels`), whose outcomes end the read (`collect`, `read`).
A read that does not get what it waits for in time raises `NotCollected`, saying what it saw.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka.partitioner import murmur2
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from pipeline import topics
from pipeline.errors import ConfigurationError, PipelineError
from pipeline.kafka import clients
from pipeline.kafka.offsets import watermarks
from pipeline.local import traffic
from pipeline.local.traffic import Message
from pipeline.settings import Settings

# The event_id of every sentinel request starts so: their outcomes are never counted as the stream's.
SENTINEL_PREFIX = "probe-sentinel-"


class NotCollected(PipelineError):
    """A read did not get what it waited for in time; the message says what it saw."""


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


@dataclass(frozen=True)
class Sentinels:
    """Marker requests published after a stream to `topic`: one per partition, each keyed onto it.
    `event_ids`: each partition's sentinel."""

    topic: str
    event_ids: dict[int, str]

    def unread(self, read: Collection[str]) -> list[int]:
        """The partitions whose sentinel has no outcome among `read`."""
        return sorted(p for p, event_id in self.event_ids.items() if event_id not in read)


def is_sentinel(record: Any) -> bool:
    """Whether a JSON record (request, result or dead letter) is a sentinel's."""
    return isinstance(record, dict) and str(record.get("event_id") or "").startswith(SENTINEL_PREFIX)


def end_offsets(settings: Settings, topics: Iterable[str]) -> dict[TopicPartition, int]:
    """Current end of every partition: read from here to see only what comes next."""
    consumer = new_consumer(settings)
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


def _high_watermark(consumer: Consumer, tp: TopicPartition, timeout_s: float = 30.0) -> int:
    # A partition created a moment ago may not have taken up its leadership yet: asked again.
    return watermarks(consumer, tp, timeout_s)[1]


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
                producer.produce(
                    target, message.value, key=message.key, timestamp=now_ms, headers=list(message.headers) or None
                )
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


def sentinel_requests(partitions: int, accounts: int, tag: str) -> dict[int, dict[str, object]]:
    """Pure: a valid request (the default model's) per partition, for the first account (1..`accounts`,
    those the feature store holds) whose key murmur2 places on that partition, as every producer of
    the requests topic places keys (contract.REQUESTS_PARTITIONER)."""
    chosen: dict[int, int] = {}
    for account in range(1, accounts + 1):
        chosen.setdefault(_partition_of(str(account).encode(), partitions), account)
        if len(chosen) == partitions:
            break
    if len(chosen) < partitions:
        raise ConfigurationError(f"accounts 1..{accounts} reach {len(chosen)} of {partitions} partitions")
    features = _sentinel_features()
    return {
        partition: {
            "event_id": f"{SENTINEL_PREFIX}{tag}-{partition}",
            "entity": {"account_id": account},
            "features": dict(features),
        }
        for partition, account in sorted(chosen.items())
    }


def _partition_of(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@functools.cache
def _sentinel_features() -> dict[str, object]:
    features = traffic.valid_requests(1, prefix=SENTINEL_PREFIX)[0]["features"]
    assert isinstance(features, dict)
    return dict(features)


def publish_sentinels(settings: Settings, topic: str | None = None, timeout_s: float = 30.0) -> Sentinels:
    """A sentinel request on every partition of `topic` (the requests topic by default), to publish
    once the stream before it is acknowledged (`publish` has returned); what reading their outcomes
    proves: `collect`. Raises if one is not acknowledged, or landed on another partition than its own."""
    target = topic or settings.topics.requests
    requests = sentinel_requests(topics.partition_count(settings, target), settings.feast.accounts, uuid.uuid4().hex)
    landed: dict[int, int | str] = {}

    def delivered(partition: int) -> Callable[[KafkaError | None, Any], None]:
        return lambda error, message: landed.__setitem__(partition, str(error) if error else message.partition())

    producer = topics.requests_producer(settings)  # one message a partition: nothing to reorder
    for partition, request in requests.items():
        message = traffic.message_for(request)
        producer.produce(target, message.value, key=message.key, on_delivery=delivered(partition))
    left = producer.flush(timeout_s)
    wrong = {p: where for p, where in landed.items() if where != p}
    if left or wrong:
        reason = f"sentinels on {target}: {left} unacknowledged after {timeout_s:g} s; misplaced or failed: {wrong}"
        raise KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT if left else KafkaError._FAIL, reason))
    return Sentinels(target, {p: str(r["event_id"]) for p, r in requests.items()})


def collect(
    settings: Settings,
    start: dict[TopicPartition, int],
    done: Callable[[Collected], bool] | None = None,
    timeout_s: float = 120.0,
    settle_s: float | None = None,
    *,
    sentinels: Sentinels | None = None,
    expect: Iterable[str] | None = None,
) -> Collected:
    """Results and dead letters from `start` until `done` holds and every event_id of `expect` has a
    result; with `sentinels`, also until every sentinel's outcome is read and then every partition of
    `start` up to its end at that moment. Raises `NotCollected` past `timeout_s`, with the counts of
    what came (distinct results, repeats, dead letters by code, the expected event_ids missing, the
    partitions whose sentinel is unread).

    Without sentinels, `settle_s` (1 s) more is read once the condition holds: whatever comes then is
    counted, but nothing shows that nothing would come later. To show that (no second result, no extra
    dead letter), publish sentinels after the stream (`publish_sentinels`, once `publish` has
    returned) and pass them. The reasoning: a sentinel is the last record of its requests partition,
    and each partition is processed in order and committed in order (a transaction carries a batch's
    results, dead letters and input offsets; a lane commits one transaction at a time; a zombie's late
    transaction is fenced). So once a sentinel's outcome (its result, or its dead letter) is read,
    everything its partition's earlier records produced, late repeats' results included, is committed:
    in the same transaction or an earlier one. Results go to the results partition numbered like the
    request's, so they were read before the sentinel's; dead letters go to any dead-letter partition,
    so each partition is then read to the end it had at that moment, past every record written before.
    That end is its high watermark, not its last stable offset: a commit's markers reach the
    transaction's partitions one by one, so a transaction whose result is read can still be open on a
    dead-letter partition for a moment (the read waits until it is decided there; an abandoned one, until
    the broker aborts it). Sentinels' own outcomes are never counted. With sentinels the read also fails
    at once when they are all read and the condition does not hold: nothing more of the stream can come."""
    wanted = None if expect is None else set(expect)
    if done is None and wanted is None and sentinels is None:
        raise ValueError("collect needs something to wait for: done, expect or sentinels")
    if sentinels is not None and settle_s is not None:
        raise ValueError("collect: the sentinels end the read; settle_s would add nothing")
    collected = Collected()

    def holds() -> bool:
        return (done is None or done(collected)) and (wanted is None or wanted <= collected.results.keys())

    read(
        settings,
        start,
        lambda message, value: _record(settings, collected, message, value),
        until=holds,
        sentinels=sentinels,
        timeout_s=timeout_s,
        settle_s=1.0 if settle_s is None else settle_s,
        report=lambda: _report(collected, wanted),
    )
    return collected


def read(
    settings: Settings,
    start: dict[TopicPartition, int],
    record: Callable[[Any, Any], None],
    *,
    until: Callable[[], bool] | None = None,
    sentinels: Sentinels | None = None,
    timeout_s: float = 120.0,
    settle_s: float = 0.0,
    report: Callable[[], str] = lambda: "",
) -> None:
    """Each committed record from `start`, as (message, JSON value), to `record`, sentinels' outcomes
    set aside, until `until()` holds; with `sentinels`, as `collect` reads them (then to every
    partition's end at that moment, and failing at once if `until()` does not hold then); without,
    `settle_s` more. Raises `NotCollected` past `timeout_s`, with `report()`."""
    reader = _Reader(settings, start)
    holds = until or (lambda: True)
    pump = functools.partial(_pump, reader, record, time.monotonic() + timeout_s, timeout_s, report)
    try:
        if sentinels is None:
            pump(lambda: None if holds() else "not done")
            settle_until = time.monotonic() + settle_s
            while time.monotonic() < settle_until:
                for message, value in reader.poll():
                    record(message, value)
            return
        pump(lambda: _unread(sentinels, reader.sentinels_read))
        ends = reader.ends()
        pump(lambda: _behind(reader, ends))
        if not holds():
            raise NotCollected(f"not done, and every sentinel's outcome is read, so all the stream's: {report()}")
    finally:
        reader.close()


def read_to_end(settings: Settings, start: dict[TopicPartition, int], timeout_s: float = 60.0) -> list[Any]:
    """The JSON values of the committed records from `start` up to where each partition ends now (once
    the transactions open there now are decided), sentinels' aside."""
    found: list[Any] = []
    reader = _Reader(settings, start)
    try:
        ends = reader.ends()
        _pump(
            reader,
            lambda _, value: found.append(value),
            time.monotonic() + timeout_s,
            timeout_s,
            lambda: f"{len(found)} records read",
            lambda: _behind(reader, ends),
        )
        return found
    finally:
        reader.close()


def until_committed(settings: Settings, group: str, ends: dict[TopicPartition, int], timeout_s: float = 120.0) -> None:
    """Until `group` has committed, on every partition of `ends`, at least its offset there: a
    consumer acknowledges what a record caused (state, alerts) before it commits past the record.
    Raises `NotCollected` with the partitions still behind past `timeout_s`."""
    reader = clients.reader(settings, group)
    deadline = time.monotonic() + timeout_s
    try:
        while behind := {
            f"{tp.topic}[{tp.partition}]": (tp.offset, ends[tp])
            for tp in reader.committed(list(ends), timeout=10)
            if tp.offset < ends[tp]
        }:
            if time.monotonic() > deadline:
                raise NotCollected(f"{group}'s commits behind within {timeout_s:g} s (committed, wanted): {behind}")
            time.sleep(0.5)
    finally:
        reader.close()


def _pump(
    reader: _Reader,
    record: Callable[[Any, Any], None],
    deadline: float,
    timeout_s: float,
    report: Callable[[], str],
    waiting: Callable[[], str | None],
) -> None:
    """Read while `waiting()` says what is awaited; past `deadline`, raise with it and `report()`."""
    while (awaited := waiting()) is not None:
        if time.monotonic() > deadline:
            raise NotCollected(f"{awaited} within {timeout_s:g} s: {report()}")
        for message, value in reader.poll():
            record(message, value)


def _unread(sentinels: Sentinels, read: Collection[str]) -> str | None:
    unread = sentinels.unread(read)
    if not unread:
        return None
    return f"the sentinels of {sentinels.topic} partitions {unread} (of {len(sentinels.event_ids)}) unread"


def _behind(reader: _Reader, ends: dict[tuple[str, int], int]) -> str | None:
    behind = [
        f"{topic}[{p}] at {reader.reached[topic, p]} of {end}"
        for (topic, p), end in ends.items()
        if reader.reached[topic, p] < end
    ]
    return f"not read to their end: {', '.join(behind)}" if behind else None


def _report(collected: Collected, expect: set[str] | None) -> str:
    seen = (
        f"{collected.distinct_results:,} distinct results ({collected.repeated_results:,} repeats), "
        f"{len(collected.dead_letters):,} dead letters {dict(collected.dead_letter_codes())}"
    )
    if expect is None:
        return seen
    missing = sorted(expect - collected.results.keys())
    dead = sum(1 for letter in collected.dead_letters if letter.get("event_id") in expect)
    absent = f"{len(missing):,} of {len(expect):,} expected without a result ({dead} dead-lettered)"
    return f"{seen}; {absent}, e.g. {missing[:5]}"


class _Reader:
    """A read_committed consumer of the topics of `start` from those offsets, that knows how far it has
    read each partition: past its last record, or to the end it reported (a transaction's commit
    marker takes an offset that no record has). Sentinels' outcomes are noted, not passed on."""

    def __init__(self, settings: Settings, start: dict[TopicPartition, int]) -> None:
        self._settings, self._options = settings, {"enable.partition.eof": True}
        self._consumer = new_consumer(settings, self._options)
        self._consumer.assign([TopicPartition(tp.topic, tp.partition, offset) for tp, offset in start.items()])
        self.reached = {(tp.topic, tp.partition): max(0, offset) for tp, offset in start.items()}
        self.sentinels_read: set[str] = set()

    def poll(self) -> Iterator[tuple[Any, Any]]:
        for message in self._consumer.consume(num_messages=1000, timeout=0.2):
            self._advance(message)
            raw = message.value() if message.error() is None else None
            if raw is None:
                continue
            value = orjson.loads(raw)
            if is_sentinel(value):
                self.sentinels_read.add(value["event_id"])
            else:
                yield message, value

    def _advance(self, message: Any) -> None:
        error = message.error()
        if error is None:
            reached = message.offset() + 1
        elif error.code() == KafkaError._PARTITION_EOF:
            reached = message.offset()  # the end, past any commit marker
        else:
            return
        at = (message.topic(), message.partition())
        self.reached[at] = max(self.reached[at], reached)

    def ends(self) -> dict[tuple[str, int], int]:
        """Where each partition ends now, records of transactions not yet decided there included (its
        high watermark): a read_committed reader gets there once they are."""
        uncommitted = new_consumer(self._settings, self._options | {"isolation.level": "read_uncommitted"})
        try:
            return {at: _high_watermark(uncommitted, TopicPartition(*at)) for at in self.reached}
        finally:
            uncommitted.close()

    def close(self) -> None:
        self._consumer.close()


def read_json(
    settings: Settings,
    start: dict[TopicPartition, int],
    done: Callable[[list[dict[str, Any]]], bool],
    timeout_s: float = 60.0,
    settle_s: float = 1.0,
) -> list[dict[str, Any]]:
    """The JSON values committed on the topics of `start` from those offsets, once `done` holds (then
    `settle_s` more) or at the timeout."""
    consumer = new_consumer(settings)
    consumer.assign([TopicPartition(tp.topic, tp.partition, offset) for tp, offset in start.items()])
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    settle_until: float | None = None
    try:
        while time.monotonic() < deadline and (settle_until is None or time.monotonic() < settle_until):
            for message in consumer.consume(num_messages=1000, timeout=0.2):
                if message.error() is None and (value := message.value()) is not None:
                    found.append(orjson.loads(value))
            if settle_until is None and done(found):
                settle_until = time.monotonic() + settle_s
        return found
    finally:
        consumer.close()


def _record(settings: Settings, collected: Collected, message: Any, value: Any) -> None:
    if message.topic() == settings.topics.dlq:
        collected.dead_letters.append(value)
        return
    event_id = value["event_id"]
    collected.results[event_id].append(value)
    collected.result_times_ms.setdefault(event_id, message.timestamp()[1])


_GROUP = "pipeline-probe"  # never commits; assign() takes explicit offsets


def new_consumer(settings: Settings, options: clients.Options | None = None) -> Consumer:
    """A read_committed consumer that is only ever assigned partitions; `options` are further properties."""
    return clients.reader(settings, _GROUP, options)


def consumer_config(settings: Settings) -> dict[str, Any]:
    """The properties of `new_consumer(settings)`, for a consumer of a test's own making."""
    return clients.config(settings, clients.reading(_GROUP))
