"""Committed results read back from the results topic: the original answer to a repeat whose caller
waits, from where the dedup store says its result is."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from pipeline.errors import ResultsUnreadable
from pipeline.settings import Settings
from pipeline.worker.changelog import reader, record_key
from pipeline.worker.store import UNBOUNDED, Located


class ResultReader:
    """Committed results read back from where the dedup store says they are: the original answer to a
    repeat whose caller waits. One read_committed consumer for the worker's life, assigned only the
    partitions of one read at a time (docs/performance.md#dedup-store-on-the-hot-path)."""

    def __init__(self, settings: Settings, timeout_s: float = 10.0) -> None:
        self.settings, self.timeout_s = settings, timeout_s
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def read(self, located: Sequence[tuple[int, str, Located]]) -> dict[tuple[int, str], bytes]:
        """The result of each (partition, event_id) found where it is said to be."""
        wanted: dict[int, set[str]] = defaultdict(set)
        ranges: dict[int, tuple[int, int]] = {}
        for partition, event_id, where in located:
            wanted[partition].add(event_id)
            start, end = ranges.get(partition, where)
            ranges[partition] = (min(start, where.start), max(end, where.end))
        try:
            async with self._lock:
                return await asyncio.wait_for(self._read(wanted, ranges), self.timeout_s)
        except (KafkaError, TimeoutError) as e:
            raise ResultsUnreadable(f"{self.settings.topics.results} could not be read back: {e!r}") from e

    async def _read(
        self, wanted: dict[int, set[str]], ranges: dict[int, tuple[int, int]]
    ) -> dict[tuple[int, str], bytes]:
        if self._consumer is None:
            self._consumer = await reader(self.settings, "stored-results", "read_committed")
        consumer, topic = self._consumer, self.settings.topics.results
        tps = {p: TopicPartition(topic, p) for p in ranges}
        if any(end >= UNBOUNDED for _, end in ranges.values()):
            highs = await consumer.end_offsets(list(tps.values()))
            ranges = {p: (start, min(end, highs[tps[p]])) for p, (start, end) in ranges.items()}
        consumer.assign(list(tps.values()))
        for p, (start, _) in ranges.items():
            consumer.seek(tps[p], start)
        found: dict[tuple[int, str], bytes] = {}
        reading = set(tps)
        try:
            while reading:
                fetched = await consumer.getmany(*(tps[p] for p in reading), timeout_ms=200)
                for tp, records in fetched.items():
                    p, end, ids = tp.partition, ranges[tp.partition][1], wanted[tp.partition]
                    for r in records:
                        key = record_key(r) if r.key is not None and r.offset < end else None
                        if key in ids and r.value is not None:
                            found[p, key] = r.value
                for p in list(reading):
                    done = all((p, e) in found for e in wanted[p])
                    if done or await consumer.position(tps[p]) >= ranges[p][1]:
                        reading.discard(p)
        finally:
            consumer.pause(*tps.values())  # no fetching between reads
        return found

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
