"""Delivery semantics, in one place: effectively-once, with one Kafka transaction per input partition.

Each input partition p of the requests topic has its own transactional producer
(`transactional.id = "<app_id>-<p>"`). For every batch, and for each partition p it holds records
of (partitions in parallel):

1. Begin a transaction on p's producer.
2. Send p's results, replies and dead letters, and p's dedup entries (to partition p of the
   changelog; tombstones for expired entries too).
3. Add the offset after p's last record to the transaction (the consumer group's commit).
4. Commit. A `read_committed` reader sees all of it or none of it.
5. Only then apply the dedup entries to the in-memory state.

If a step fails, the transaction is aborted, the worker rewinds p to the batch's first offset and
processes those records again with unchanged state, so nothing is lost and nothing is doubled.
When p moves to another worker, the new owner's producer starts with the same transactional id:
Kafka aborts the old owner's open transaction and fences it, so a stalled ("zombie") worker can
never commit results for a partition it no longer owns. A repeat of an already-scored event_id
is answered from the dedup state (no second result; the stored one goes to its reply address).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiokafka.producer.sender
import structlog
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced

from pipeline import metrics
from pipeline.processor import Outbound
from pipeline.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PartitionCommit:
    partition: int
    messages: list[Outbound]
    changelog: list[tuple[bytes, bytes | None]]  # (event_id, result) or (event_id, None) tombstone
    next_offset: int


class Fenced(Exception):
    """Another worker owns this partition now."""


class TransactionalDelivery:
    def __init__(self, settings: Settings, changelog_topic: str) -> None:
        self._settings = settings
        self._changelog = changelog_topic
        self._group = settings.worker.app_id
        self._producers: dict[int, AIOKafkaProducer] = {}
        # A transaction begun right after the previous commit of the same producer meets
        # CONCURRENT_TRANSACTIONS until the broker has written the commit markers (KAFKA-5477), a few
        # ms. aiokafka then waits a fixed 20 ms (a module constant) or retry_backoff_ms (100 ms):
        # on a busy partition that wait, not the work, would set the latency. Retry within ms instead.
        aiokafka.producer.sender.BACKOFF_OVERRIDE = settings.worker.transaction_retry_backoff_ms / 1000

    @property
    def partitions(self) -> set[int]:
        return set(self._producers)

    async def open(self, partition: int, retry_for_s: float = 120.0) -> None:
        """Start p's producer; its init fences any previous owner and aborts its open transaction.
        Retried while the broker is unreachable (a restart), up to `retry_for_s`."""
        deadline = time.monotonic() + retry_for_s
        delay = 0.2
        while True:
            try:
                self._producers[partition] = await self._start_producer(partition)
                return
            except KafkaError as e:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("producer_start_failed", partition=partition, error=repr(e), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _start_producer(self, partition: int) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=self._settings.kafka.bootstrap_servers,
            client_id=f"{self._settings.kafka.client_id}-worker-{partition}",
            transactional_id=f"{self._group}-{partition}",
            enable_idempotence=True,
            acks="all",
            linger_ms=2,
            retry_backoff_ms=self._settings.worker.transaction_retry_backoff_ms,
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    async def close(self, partition: int) -> None:
        producer = self._producers.pop(partition, None)
        if producer is not None:
            await producer.stop()

    async def commit(self, requests_topic: str, commit: PartitionCommit) -> None:
        producer = self._producers[commit.partition]
        try:
            await producer.begin_transaction()
            sent = [
                await producer.send(m.topic, m.value, key=m.key, partition=m.partition, headers=list(m.headers))
                for m in commit.messages
            ]
            sent += [
                await producer.send(self._changelog, value, key=key, partition=commit.partition)
                for key, value in commit.changelog
            ]
            offsets = {TopicPartition(requests_topic, commit.partition): commit.next_offset}
            await producer.send_offsets_to_transaction(offsets, self._group)
            await producer.commit_transaction()
            await asyncio.gather(*sent)
        except ProducerFenced as e:
            metrics.TRANSACTION_ABORTS.labels("fenced").inc()
            raise Fenced(f"partition {commit.partition}") from e
        except KafkaError:
            metrics.TRANSACTION_ABORTS.labels("error").inc()
            await self._reset(commit.partition)
            raise

    async def _reset(self, partition: int) -> None:
        """A producer whose transaction failed may be unusable: replace it (which aborts what was open)."""
        await self.close(partition)
        await self.open(partition)
