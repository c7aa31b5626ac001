"""The dedup changelog: a compacted topic, partitioned like the requests topic, read back on assignment."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.errors import ConfigurationError
from pipeline.settings import Settings
from pipeline.topics import TopicSpec


def changelog_topic(settings: Settings) -> str:
    return f"{settings.worker.app_id}-{settings.worker.dedup_table}-changelog"


def changelog_spec(settings: Settings, partitions: int) -> TopicSpec:
    return TopicSpec(changelog_topic(settings), partitions, {"cleanup.policy": "compact"})


async def high_watermarks(settings: Settings, partitions: list[int]) -> dict[int, int]:
    """The end of each changelog partition including records of transactions still open."""
    consumer = await _reader(settings, "changelog", "read_uncommitted")
    try:
        tps = [TopicPartition(changelog_topic(settings), p) for p in partitions]
        return {tp.partition: offset for tp, offset in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def read_partition(
    settings: Settings, partition: int, until: int, timeout_s: float = 120.0
) -> list[tuple[str, bytes | None, float]]:
    """Every committed record of one changelog partition before `until`: (event_id, result or None,
    epoch seconds). Reading to a high watermark rather than to the last stable offset waits out any
    transaction open there (a crashed worker's, aborted by the broker after its timeout), so entries
    committed behind it are not missed."""
    tp = TopicPartition(changelog_topic(settings), partition)
    consumer = await _reader(settings, f"changelog-{partition}", "read_committed")
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        records: list[tuple[str, bytes | None, float]] = []
        deadline = time.monotonic() + timeout_s
        while await consumer.position(tp) < until:
            if time.monotonic() > deadline:
                raise ConfigurationError(f"changelog {tp.topic}[{partition}] not read within {timeout_s:g} s")
            for batch in (await consumer.getmany(tp, timeout_ms=200, max_records=10_000)).values():
                records += [(r.key.decode(), r.value, r.timestamp / 1000) for r in batch if r.key is not None]
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
