"""A consumer group's lag on a topic, per partition, in records that are work.

Lag is the last stable offset (the end a `read_committed` reader sees: no open transaction's
records, and a transaction's commit marker counted as read once the records before it are) less the
group's committed offset. Against the high watermark instead, every transactional partition would
show one record of lag for ever, its last commit marker (kedacore/keda#5675). A partition with no
committed offset lags from its first offset. A lag that cannot be read is an error, never zero.

The offsets are read through a consumer that names the group but never joins it (`OffsetReader`),
not librdkafka's admin API: an admin request to the group coordinator whose connection drops (a
broker restart) can end the whole process in librdkafka (`Assertion 'eonce->refcnt > 0'`, or a
segfault; confluentinc/librdkafka#4605, #3663), which no Python handler can catch. Measured with
broker restarts, the consumer's reads came through where `list_consumer_group_offsets` ended its
process (docs/scaling.md#lag-readers).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from pipeline.errors import PipelineError
from pipeline.kafka import clients
from pipeline.kafka.acls import lag_probe_group


class LagUnreadable(PipelineError):
    """The broker did not answer for the group's offsets or the topic's ends."""

    code = "lag_unreadable"
    retriable = True


@dataclass(frozen=True)
class Offsets:
    """A partition's offsets: its first, its last stable, and the group's committed (-1: none)."""

    first: int
    stable: int
    committed: int

    @property
    def position(self) -> int:
        return max(self.committed, self.first)

    @property
    def lag(self) -> int:
        return lag(self.stable, self.committed, self.first)


class OffsetReader:
    """A group's committed offsets and a topic's first and last stable offsets (see the module).

    Its consumer names the group (`committed` asks the group's coordinator for the group's offsets)
    but never subscribes, so it never joins the group nor commits; `read_committed`, so that the end
    it reads for a partition is the last stable offset."""

    def __init__(self, consumer_config: dict[str, Any], group: str, topic: str) -> None:
        """`consumer_config`: the connection, as `kafka.clients.config` makes it."""
        self.group, self.topic = group, topic
        self._config = {
            **consumer_config,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
        self._consumer: Consumer | None = None

    def read(self, partitions: Iterable[int], timeout_s: float = 5.0) -> dict[int, Offsets]:
        """Raises LagUnreadable; the next reading is then a new consumer's (one that lost its
        coordinator in a broker restart can keep timing out where a new one reads at once)."""
        try:
            return self._read([TopicPartition(self.topic, p) for p in partitions], timeout_s)
        except LagUnreadable:
            self.close()
            raise

    def _read(self, tps: list[TopicPartition], timeout_s: float) -> dict[int, Offsets]:
        if self._consumer is None:
            self._consumer = clients.consumer_of(self._config)
        deadline = time.monotonic() + timeout_s
        try:
            committed = self._consumer.committed(tps, timeout=timeout_s)
            ends = {tp.partition: self._watermarks(self._consumer, tp, deadline) for tp in tps}
        except KafkaException as e:
            raise LagUnreadable(f"lag of {self.group} on {self.topic} could not be read: {e}") from e
        if failed := [tp for tp in committed if tp.error is not None]:
            raise LagUnreadable(f"committed offsets of {self.group} could not be read: {failed[0].error}")
        offsets = {tp.partition: tp.offset for tp in committed}
        return {p: Offsets(first, stable, offsets.get(p, -1)) for p, (first, stable) in ends.items()}

    def _watermarks(self, consumer: Consumer, tp: TopicPartition, deadline: float) -> tuple[int, int]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise LagUnreadable(f"lag of {self.group} on {self.topic}: no answer in time")
        found = consumer.get_watermark_offsets(tp, timeout=left, cached=False)
        if found is None:
            raise LagUnreadable(f"lag of {self.group} on {self.topic}: no answer within {left:g} s")
        return found

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def records_lag(reader: OffsetReader, partitions: Iterable[int], timeout_s: float = 5.0) -> dict[int, int]:
    """Each partition's lag in records (see the module)."""
    return {p: o.lag for p, o in reader.read(partitions, timeout_s).items()}


def lag(last_stable: int, committed: int, first: int) -> int:
    """Pure: records from the committed offset (or the partition's first, without one) to the end."""
    position = committed if committed >= 0 else first
    return max(0, last_stable - max(position, first))


@dataclass(frozen=True)
class Backlog:
    """One reading of a group's backlog on a topic."""

    at: float  # epoch seconds
    offsets: dict[int, Offsets]
    records: dict[int, int]  # lag in records per partition, transaction markers left out
    ages_s: dict[int, float]  # per lagging partition: the age of its oldest unconsumed record

    @property
    def lag(self) -> int:
        return sum(self.records.values())

    @property
    def lag_s(self) -> float:
        return max(self.ages_s.values(), default=0.0)

    @property
    def stable_total(self) -> int:
        return sum(o.stable for o in self.offsets.values())

    @property
    def consumed_total(self) -> int:
        return sum(o.position for o in self.offsets.values())


def backlog_of(at: float, offsets: dict[int, Offsets], oldest: dict[int, tuple[int, float] | None]) -> Backlog:
    """Pure: the backlog from the offsets and, per lagging partition probed, the first record found
    at the committed offset (offset, timestamp in epoch s), or None where only markers were left."""
    records, ages = {}, {}
    for partition, o in offsets.items():
        if partition not in oldest or o.lag == 0:
            records[partition] = o.lag
        elif (first := oldest[partition]) is None:
            records[partition] = 0
        else:
            records[partition] = max(0, o.stable - first[0])
            ages[partition] = max(0.0, at - first[1])
    return Backlog(at, offsets, records, ages)


class BacklogReader:
    """Reads a group's backlog (records and seconds) on a topic: its offsets, and a probe that reads
    the oldest record waiting in each lagging partition."""

    def __init__(self, consumer_config: dict[str, Any], group: str, topic: str) -> None:
        self.group, self.topic = group, topic
        self.offsets = OffsetReader(consumer_config, group, topic)
        self._probe = clients.consumer_of(
            {
                **consumer_config,
                "group.id": lag_probe_group(group),  # never subscribes or commits: needed by librdkafka only
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",  # a position retention removed meanwhile: its first record
                "max.partition.fetch.bytes": 65_536,
            }
        )

    def read(self, partitions: Iterable[int], timeout_s: float = 5.0) -> Backlog:
        offsets = self.offsets.read(partitions, timeout_s)
        lagging = {p: o.position for p, o in offsets.items() if o.lag > 0}
        return backlog_of(time.time(), offsets, self._oldest(lagging, timeout_s))

    def _oldest(self, positions: dict[int, int], timeout_s: float) -> dict[int, tuple[int, float] | None]:
        """The first record at each position (None: the end came first); partitions it did not get
        to within `timeout_s` are left out (their lag stays the offsets' own)."""
        if not positions:
            return {}
        found: dict[int, tuple[int, float] | None] = {}
        self._probe.assign([TopicPartition(self.topic, p, o) for p, o in positions.items()])
        deadline = time.monotonic() + timeout_s
        try:
            while len(found) < len(positions) and (left := deadline - time.monotonic()) > 0:
                for message in self._probe.consume(len(positions), min(left, 0.5)):
                    partition, offset = message.partition(), message.offset()
                    if partition is None or partition in found:
                        continue
                    if (error := message.error()) is None:
                        if offset is not None:
                            found[partition] = (offset, message.timestamp()[1] / 1000)
                    elif error.code() == KafkaError._PARTITION_EOF:
                        found[partition] = None
        except KafkaException as e:
            raise LagUnreadable(f"oldest requests of {self.group} on {self.topic} could not be read: {e}") from e
        finally:
            self._probe.unassign()
        return found

    def close(self) -> None:
        self._probe.close()
        self.offsets.close()
