"""The dedup changelog is the results topic itself, read back on assignment.

A result is written to the results partition numbered like the input partition its request came
from, inside the transaction that commits that request's offset. So results partition `p` holds,
committed, exactly the events of input partition `p` that were scored, keyed by `event_id`, with the
result a repeat must get back: the dedup state of `p` is what that partition holds within the dedup
window (the store keeps where each result is; `result_reader` reads it back for a repeat). No second
copy of every result is written (the broker's work per event, and the partitions each transaction
spans, are halved), and entries expire by the records' time rather than by tombstones. (Kafka
Streams reuses a source topic as a table's changelog in the same way.)
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.contract import REPLAY_ID, dedup_key
from pipeline.errors import ConfigurationError
from pipeline.kafka import clients
from pipeline.settings import Settings
from pipeline.worker.store import StateStore

_CHUNK = 10_000  # records of one partition written to the store at a time while restoring


@dataclass(frozen=True)
class Restored:
    mode: str  # "warm": from the store's offset; "cold": from the window's start
    entries: int
    seconds: float

    def fields(self) -> dict[str, object]:
        rate = self.entries / self.seconds if self.seconds > 0 else 0.0
        return {"mode": self.mode, "entries": self.entries, "seconds": round(self.seconds, 3), "per_s": round(rate)}


class Restorer:
    """Brings partitions' stores up to their results partitions' ends: from the offset the store
    recorded (warm), or, without one or with one the partition no longer has (a recreated or
    truncated topic), from the start of the dedup window (cold). One read_committed consumer reads
    every partition of an assignment; one read_uncommitted consumer, kept for the worker's life, looks
    up the offsets to read from and to (docs/performance.md#state-restore).
    Reading to the high watermark rather than to the last stable offset waits out any transaction
    open there (a crashed worker's, aborted by the broker after its timeout), so results committed
    behind it are not missed."""

    def __init__(self, settings: Settings, store: StateStore) -> None:
        self.settings, self.store = settings, store
        self._lookup_consumer: AIOKafkaConsumer | None = None

    async def high_watermarks(self, partitions: Iterable[int]) -> dict[int, int]:
        """The end of each results partition including records of transactions still open."""
        tps = [TopicPartition(self.settings.topics.results, p) for p in partitions]
        return {tp.partition: offset for tp, offset in (await (await self._lookups()).end_offsets(tps)).items()}

    async def _lookups(self) -> AIOKafkaConsumer:
        """The consumer offsets are looked up with: assigned nothing, since a consumer's own position
        resets for partitions just assigned hold its lookups back (~0.4 s each)."""
        if self._lookup_consumer is None:
            self._lookup_consumer = await reader(self.settings, "changelog", "read_uncommitted")
        return self._lookup_consumer

    async def restore(
        self, partitions: Iterable[int], wanted: Callable[[int], bool] | None = None, timeout_s: float = 600.0
    ) -> AsyncIterator[tuple[int, Restored]]:
        """Each partition once restored, as soon as it is (empty tails first). Partitions no longer
        `wanted` meanwhile (revoked) are no longer read; what they restored stays in the store."""
        began = time.monotonic()
        tps = {p: TopicPartition(self.settings.topics.results, p) for p in sorted(partitions)}
        if not tps:
            return
        ends = await self.high_watermarks(tps)
        modes, starts = await self._starts(tps, ends)
        consumer = await reader(self.settings, f"changelog-{min(tps)}", "read_committed")
        try:
            consumer.assign(list(tps.values()))
            for p, tp in tps.items():
                consumer.seek(tp, starts[p])
            entries = dict.fromkeys(tps, 0)
            reading = set(tps)
            deadline = began + timeout_s
            while reading:
                for p in sorted(reading):
                    if wanted is not None and not wanted(p):
                        reading.discard(p)
                        consumer.pause(tps[p])
                    elif await consumer.position(tps[p]) >= ends[p]:
                        reading.discard(p)
                        consumer.pause(tps[p])
                        self.store.write(p, (), ends[p])
                        yield p, Restored(modes[p], entries[p], time.monotonic() - began)
                if not reading:
                    break
                if time.monotonic() > deadline:
                    raise ConfigurationError(
                        f"{self.settings.topics.results}{sorted(reading)} not restored within {timeout_s:g} s"
                    )
                await self._read_chunks(consumer, {p: tps[p] for p in reading}, ends, entries)
        finally:
            await consumer.stop()

    async def _starts(
        self, tps: dict[int, TopicPartition], ends: dict[int, int]
    ) -> tuple[dict[int, str], dict[int, int]]:
        """Where each partition's restore starts: the store's offset when the partition still has it
        (warm), else the first record within the dedup window (cold)."""
        store, lookups = self.store, await self._lookups()
        firsts = await lookups.beginning_offsets(list(tps.values()))
        modes: dict[int, str] = {}
        starts: dict[int, int] = {}
        for p, tp in tps.items():
            start = store.offset(p)
            if start is not None and firsts[tp] <= start <= ends[p]:
                modes[p], starts[p] = "warm", start
            else:
                modes[p] = "cold"
                if start is not None:  # recorded for a partition the topic no longer has: not to be trusted
                    store.forget(p)
        cold = [tps[p] for p, mode in modes.items() if mode == "cold"]
        if cold:
            since = int((time.time() - store.window_s) * 1000)
            for tp, found in (await lookups.offsets_for_times(dict.fromkeys(cold, since))).items():
                starts[tp.partition] = ends[tp.partition] if found is None else found.offset
        return modes, starts

    async def _read_chunks(
        self,
        consumer: AIOKafkaConsumer,
        reading: dict[int, TopicPartition],
        ends: dict[int, int],
        entries: dict[int, int],
    ) -> None:
        """A chunk of each partition's fetched records in turn, into the store, so that a long tail does
        not keep the others waiting behind it; when none has any yet, wait for the first to come."""
        fetched: dict[TopicPartition, list[Any]] = {}
        for tp in reading.values():
            fetched |= await consumer.getmany(tp, timeout_ms=0, max_records=_CHUNK)
        if not fetched:
            fetched = await consumer.getmany(*reading.values(), timeout_ms=200, max_records=_CHUNK)
        for tp, records in fetched.items():
            chunk = [
                (record_key(r), r.offset, r.timestamp / 1000)
                for r in records
                if r.key is not None and r.value is not None
            ]
            position = min(await consumer.position(tp), ends[tp.partition])
            entries[tp.partition] += self.store.write(tp.partition, chunk, position)

    async def close(self) -> None:
        if self._lookup_consumer is not None:
            await self._lookup_consumer.stop()
            self._lookup_consumer = None


def record_key(record: Any) -> str:
    """A result record's dedup key: its key (the event_id), within the replay its header names."""
    for name, value in record.headers or ():
        if name == REPLAY_ID:
            return dedup_key(record.key.decode(), value)
    return record.key.decode()


async def reader(settings: Settings, name: str, isolation_level: str) -> AIOKafkaConsumer:
    consumer = clients.aio_consumer(
        settings,
        client_id=f"{settings.kafka.client_id}-{name}",
        enable_auto_commit=False,
        isolation_level=isolation_level,
    )
    await consumer.start()
    return consumer
