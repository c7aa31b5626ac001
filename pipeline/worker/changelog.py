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

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline import topics
from pipeline.errors import ConfigurationError
from pipeline.settings import Settings


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


async def read_partition(
    settings: Settings, partition: int, since_s: float, until: int, timeout_s: float = 120.0
) -> list[tuple[str, bytes, float]]:
    """Every committed result in one results partition from time `since_s` to offset `until`:
    (event_id, result, epoch seconds). Reading to a high watermark rather than to the last stable
    offset waits out any transaction open there (a crashed worker's, aborted by the broker after its
    timeout), so results committed behind it are not missed."""
    tp = TopicPartition(settings.topics.results, partition)
    consumer = await _reader(settings, f"changelog-{partition}", "read_committed")
    try:
        consumer.assign([tp])
        start = (await consumer.offsets_for_times({tp: int(since_s * 1000)}))[tp]
        if start is None:  # nothing that recent
            return []
        consumer.seek(tp, start.offset)
        records: list[tuple[str, bytes, float]] = []
        deadline = time.monotonic() + timeout_s
        while await consumer.position(tp) < until:
            if time.monotonic() > deadline:
                raise ConfigurationError(f"{tp.topic}[{partition}] not read within {timeout_s:g} s")
            for batch in (await consumer.getmany(tp, timeout_ms=200, max_records=10_000)).values():
                records += [
                    (r.key.decode(), r.value, r.timestamp / 1000)
                    for r in batch
                    if r.key is not None and r.value is not None
                ]
            await asyncio.sleep(0)
        return records
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
