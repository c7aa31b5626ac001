"""The dedup changelog is the results topic itself, read back on assignment.

A result is written to the results partition numbered like the input partition its request came
from, inside the transaction that commits that request's offset. So results partition `p` holds,
committed, exactly the events of input partition `p` that were scored, keyed by `event_id`, with the
result a repeat must get back: the dedup state of `p` is what that partition holds within the dedup
window (the store keeps where each result is; `StoredResults` reads it back for a repeat). No second
copy of every result is written (the broker's work per event, and the partitions each transaction
spans, are halved), and entries expire by the records' time rather than by tombstones. (Kafka
Streams reuses a source topic as a table's changelog in the same way.)
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from pipeline import topics
from pipeline.contract import REPLAY_ID, dedup_key
from pipeline.errors import ConfigurationError, ResultsUnreadable
from pipeline.settings import Settings
from pipeline.worker.store import UNBOUNDED, Located, StateStore

_CHUNK = 10_000  # records of one partition written to the store at a time while restoring


def check_copartitioned(settings: Settings) -> int:
    """The requests topic's partition count; the results topic must have at least as many."""
    requests = topics.partition_count(settings, settings.topics.requests)
    results = topics.partition_count(settings, settings.topics.results)
    if results < requests:
        raise ConfigurationError(
            f"{settings.topics.results} has {results} partitions, fewer than {settings.topics.requests} ({requests}): "
            "each result goes to the partition numbered like its request's (it is the dedup state's changelog); "
            "raise the results topic's partitions in topics/topics.yaml and run `pipeline topics apply`"
        )
    return requests


def check_retention(settings: Settings) -> None:
    """The results topic must keep records at least as long as the dedup window: what it has
    dropped, a worker taking a partition over cannot know was scored, and would score again."""
    config = topics.topic_config(settings, settings.topics.results)
    gap = retention_gap(config, settings.worker.dedup_window_s)
    if gap is not None:
        raise ConfigurationError(
            f"{settings.topics.results} {gap}, shorter than the dedup window "
            f"({settings.worker.dedup_window_s:g} s, PIPELINE_WORKER__DEDUP_WINDOW_S): a worker taking a partition "
            "over would score repeats of older events again; raise its retention.ms (topics/topics.yaml is what "
            "`pipeline topics apply` creates) or shorten the window"
        )


def retention_gap(config: dict[str, str], window_s: float) -> str | None:
    """Pure: why a topic with this config forgets records sooner than `window_s`, or None."""
    if "delete" not in config.get("cleanup.policy", "delete"):
        return None  # compacted only: the last result of every event_id stays
    retention_ms = int(config.get("retention.ms", "604800000"))
    if 0 <= retention_ms < window_s * 1000:
        return f"keeps records {retention_ms / 1000:g} s (retention.ms)"
    return None


def open_store(settings: Settings, partitions: int, directory: Path | None = None) -> StateStore:
    """The worker's store, under PIPELINE_WORKER__STATE_DIR/<app_id> unless given a directory, for
    what its content must have been written for: a directory of another app id, topic or partition
    count is not trusted (StateStore wipes it)."""
    worker = settings.worker
    identity = {
        "app_id": worker.app_id,
        "requests": settings.topics.requests,
        "results": settings.topics.results,
        "partitions": partitions,
    }
    path = directory or worker.state_dir / worker.app_id
    return StateStore(path, identity, worker.dedup_window_s, worker.state_cache_mib << 20)


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
            self._lookup_consumer = await _reader(self.settings, "changelog", "read_uncommitted")
        return self._lookup_consumer

    async def restore(
        self, partitions: Iterable[int], wanted: Callable[[int], bool] | None = None, timeout_s: float = 600.0
    ) -> AsyncIterator[tuple[int, Restored]]:
        """Each partition once restored, as soon as it is (empty tails first). Partitions no longer
        `wanted` meanwhile (revoked) are no longer read; what they restored stays in the store."""
        began = time.monotonic()
        topic, store = self.settings.topics.results, self.store
        tps = {p: TopicPartition(topic, p) for p in sorted(partitions)}
        if not tps:
            return
        lookups = await self._lookups()
        ends = await self.high_watermarks(tps)
        firsts = await lookups.beginning_offsets(list(tps.values()))
        consumer = await _reader(self.settings, f"changelog-{min(tps)}", "read_committed")
        try:
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
                        store.write(p, (), ends[p])
                        yield p, Restored(modes[p], entries[p], time.monotonic() - began)
                if not reading:
                    break
                if time.monotonic() > deadline:
                    raise ConfigurationError(f"{topic}{sorted(reading)} not restored within {timeout_s:g} s")
                # A chunk of each partition's fetched records in turn, so that a long tail does not keep
                # the others waiting behind it; when none has any yet, wait for the first to come.
                fetched = {}
                for p in sorted(reading):
                    fetched |= await consumer.getmany(tps[p], timeout_ms=0, max_records=_CHUNK)
                if not fetched:
                    fetched = await consumer.getmany(*(tps[p] for p in reading), timeout_ms=200, max_records=_CHUNK)
                for tp, records in fetched.items():
                    chunk = [
                        (_dedup_key(r), r.offset, r.timestamp / 1000)
                        for r in records
                        if r.key is not None and r.value is not None
                    ]
                    position = min(await consumer.position(tp), ends[tp.partition])
                    entries[tp.partition] += store.write(tp.partition, chunk, position)
        finally:
            await consumer.stop()

    async def close(self) -> None:
        if self._lookup_consumer is not None:
            await self._lookup_consumer.stop()
            self._lookup_consumer = None


class StoredResults:
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
            self._consumer = await _reader(self.settings, "stored-results", "read_committed")
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
                        key = _dedup_key(r) if r.key is not None and r.offset < end else None
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


def _dedup_key(record: Any) -> str:
    """A result record's dedup key: its key (the event_id), within the replay its header names."""
    for name, value in record.headers or ():
        if name == REPLAY_ID:
            return dedup_key(record.key.decode(), value)
    return record.key.decode()


async def _reader(settings: Settings, name: str, isolation_level: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        client_id=f"{settings.kafka.client_id}-{name}",
        enable_auto_commit=False,
        isolation_level=isolation_level,
    )
    await consumer.start()
    return consumer
