"""The dedup changelog is the results topic itself, read back on assignment.

A result is written to the results partition numbered like the input partition its request came
from, inside the transaction that commits that request's offset. So results partition `p` holds,
committed, exactly the events of input partition `p` that were scored, keyed by `event_id`, with the
result a repeat must get back: the dedup state of `p` is what that partition holds within the dedup
window. No second copy of every result is written (the broker's work per event, and the partitions
each transaction spans, are halved), and entries expire by the records' time rather than by
tombstones. (Kafka Streams reuses a source topic as a table's changelog in the same way.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline import topics
from pipeline.errors import ConfigurationError
from pipeline.settings import Settings
from pipeline.worker.store import StateStore


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


async def high_watermarks(settings: Settings, partitions: list[int]) -> dict[int, int]:
    """The end of each results partition including records of transactions still open."""
    consumer = await _reader(settings, "changelog", "read_uncommitted")
    try:
        tps = [TopicPartition(settings.topics.results, p) for p in partitions]
        return {tp.partition: offset for tp, offset in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


@dataclass(frozen=True)
class Restored:
    mode: str  # "warm": from the store's offset; "cold": from the window's start
    entries: int
    seconds: float

    def fields(self) -> dict[str, object]:
        rate = self.entries / self.seconds if self.seconds > 0 else 0.0
        return {"mode": self.mode, "entries": self.entries, "seconds": round(self.seconds, 3), "per_s": round(rate)}


async def restore(settings: Settings, store: StateStore, partition: int, timeout_s: float = 600.0) -> Restored:
    """Bring one partition's store up to its results partition's end: from the offset the store
    recorded (warm), or, without one or with one the partition no longer has (a recreated or
    truncated topic), from the start of the dedup window (cold). Reading to the high watermark rather
    than to the last stable offset waits out any transaction open there (a crashed worker's, aborted
    by the broker after its timeout), so results committed behind it are not missed."""
    began = time.monotonic()
    tp = TopicPartition(settings.topics.results, partition)
    consumer = await _reader(settings, f"changelog-{partition}", "read_committed")
    try:
        consumer.assign([tp])
        end = (await high_watermarks(settings, [partition]))[partition]
        first = (await consumer.beginning_offsets([tp]))[tp]
        start = store.offset(partition)
        mode = "warm"
        if start is None or not first <= start <= end:
            mode = "cold"
            if start is not None:  # recorded for a partition the topic no longer has: not to be trusted
                store.forget(partition)
            since = time.time() - store.window_s
            found = (await consumer.offsets_for_times({tp: int(since * 1000)}))[tp]
            start = end if found is None else found.offset
        consumer.seek(tp, start)
        entries = 0
        deadline = time.monotonic() + timeout_s
        position = start
        while position < end:
            if time.monotonic() > deadline:
                raise ConfigurationError(f"{tp.topic}[{partition}] not restored within {timeout_s:g} s")
            chunk = [
                (r.key.decode(), r.value, r.timestamp / 1000)
                for batch in (await consumer.getmany(tp, timeout_ms=200, max_records=10_000)).values()
                for r in batch
                if r.key is not None and r.value is not None
            ]
            position = await consumer.position(tp)
            entries += store.write(partition, chunk, min(position, end))
        store.write(partition, (), end)
        return Restored(mode, entries, time.monotonic() - began)
    finally:
        await consumer.stop()


async def _reader(settings: Settings, name: str, isolation_level: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        client_id=f"{settings.kafka.client_id}-{name}",
        enable_auto_commit=False,
        isolation_level=isolation_level,
    )
    await consumer.start()
    return consumer
