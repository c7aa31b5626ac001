"""`pipeline worker`: consume micro-batches from the requests topic, score them, deliver them.

Wiring only: the consumer group and its rebalances live here, scoring in `processor`, delivery
semantics in `delivery`, idempotency state in `dedup`.

Kafka I/O runs on librdkafka (confluent-kafka): its blocking calls go to two threads, one for the
consumer (whose rebalance callbacks therefore run there and hand over to the event loop) and one
for the transactional producer. Commits are pipelined one batch deep: while batch N's transaction
commits, batch N+1 is consumed and scored. N's dedup entries are put in the state when its commit
starts, so N+1 sees them; if N aborts, N+1 is discarded too, the partitions are rewound to their
first uncommitted records and the state is reloaded from the changelog, so a repeat is never scored
twice and nothing is skipped.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from prometheus_client import start_http_server

from pipeline import changelog, metrics, topics
from pipeline.contract import Source
from pipeline.dedup import DedupState
from pipeline.delivery import Aborted, BatchCommit, TransactionalDelivery
from pipeline.features import FeatureLookup
from pipeline.inference import TritonScorer
from pipeline.processor import BatchProcessor, Inbound, Outcome
from pipeline.retry import Backoff
from pipeline.settings import Settings

log = structlog.get_logger(__name__)

T = TypeVar("T")


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.requests = settings.topics.requests
        self.state = DedupState(settings.worker.dedup_window_s)
        self.delivery = TransactionalDelivery(settings, self.requests, changelog.changelog_topic(settings))
        self._consumer_thread = ThreadPoolExecutor(1, thread_name_prefix="consumer")
        self._loop: asyncio.AbstractEventLoop | None = None
        # Partitions whose dedup state is loaded: only their records are processed.
        self._owned: set[int] = set()
        # The batch whose transaction is committing, and the first offset of each partition in it.
        self._inflight: asyncio.Task[bool] | None = None
        self._inflight_first: dict[int, int] = {}
        self._expired: dict[int, list[str]] = defaultdict(list)
        self._last_expiry = time.time()
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        settings, worker = self.settings, self.settings.worker
        self._loop = asyncio.get_running_loop()
        partitions = topics.partition_count(settings, self.requests)
        topics.apply(settings, [changelog.changelog_spec(settings, partitions)])
        scorer = TritonScorer(settings.triton)
        features = FeatureLookup(settings.feast.repo_path, settings.feast.cache_ttl_s)
        backoff = Backoff(worker.retry_initial_ms / 1000, worker.retry_max_ms / 1000, worker.retry_budget_s)
        processor = BatchProcessor(settings.topics, settings.default_model, scorer, features, self.state, backoff)
        await self.delivery.open()
        consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka.bootstrap_servers,
                "client.id": f"{settings.kafka.client_id}-worker",
                "group.id": worker.app_id,
                "enable.auto.commit": False,  # offsets are committed inside each batch's transaction
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                # Partitions a rebalance does not move stay put: no reload of their dedup state.
                "partition.assignment.strategy": "cooperative-sticky",
                "max.poll.interval.ms": int((worker.retry_budget_s + 120) * 1000),
                "session.timeout.ms": worker.session_timeout_ms,
                "heartbeat.interval.ms": max(1000, worker.session_timeout_ms // 3),
                **settings.kafka.extra,
            }
        )
        consumer.subscribe([self.requests], on_assign=self._on_assign, on_revoke=self._on_revoke)
        try:
            while not stop.is_set():
                records = await self._on_consumer(_fetch, consumer, worker.batch_size, worker.batch_timeout_ms / 1000)
                metadata = consumer.consumer_group_metadata()
                batch = [r for r in records if r.partition() in self._owned]
                outcome = await processor.process(_inbounds(batch)) if batch else None
                first = _first_offsets(batch)
                if not await self._settled():
                    # The previous batch aborted: this one was scored on its state and goes too.
                    await self._rewind(consumer, first)
                    continue
                if outcome is not None:
                    self._start_commit(batch, first, outcome, metadata)
                self._expire()
            if not await self._settled():
                await self._rewind(consumer, {})
        finally:
            # Closing leaves the group; the revocation callback runs (and settles) in there.
            await self._on_consumer(consumer.close)
            self._consumer_thread.shutdown(wait=True)
            await self.delivery.close()
            features.close()
            await scorer.close()

    def _start_commit(self, batch: list[Message], first: dict[int, int], outcome: Outcome, metadata: Any) -> None:
        """Publish the batch in its own transaction while the loop goes on; its dedup entries count now."""
        now = time.time()
        for event_id, partition, result in outcome.remembered:
            self.state.put(partition, event_id, result, now)
        tombstones = [(p, e.encode(), None) for p in first for e in self._expired.pop(p, [])]
        offsets: dict[int, int] = {}
        for record in batch:
            offsets[record.partition()] = record.offset() + 1
        commit = BatchCommit(
            messages=outcome.messages,
            changelog=[(p, e.encode(), r) for e, p, r in outcome.remembered] + tombstones,
            offsets=offsets,
            group_metadata=metadata,
        )
        self._inflight_first = first
        self._inflight = asyncio.create_task(self._commit(commit), name="commit")

    async def _commit(self, commit: BatchCommit) -> bool:
        try:
            with metrics.STAGE_SECONDS.labels("produce").time():
                await self.delivery.commit(commit)
        except Aborted as e:
            log.warning("transaction_aborted", partitions=sorted(commit.offsets), error=str(e))
            return False
        metrics.DEDUP_ENTRIES.set(len(self.state))
        return True

    async def _settled(self) -> bool:
        """Wait for the batch in flight; False if its transaction aborted."""
        if self._inflight is None:
            return True
        committed = await self._inflight
        if committed:
            self._inflight, self._inflight_first = None, {}
        return committed

    async def _rewind(self, consumer: Consumer, also: dict[int, int]) -> None:
        """After an abort: back to the first uncommitted record of every partition, with the dedup
        state as the changelog has it (the aborted batch's entries were put in it early)."""
        first = dict(also)
        for partition, offset in self._inflight_first.items():
            first[partition] = min(offset, first.get(partition, offset))
        self._inflight, self._inflight_first = None, {}
        for partition, offset in first.items():
            if partition in self._owned:
                await self._on_consumer(consumer.seek, TopicPartition(self.requests, partition, offset))
        owned = sorted(self._owned)
        await self._load(owned)
        await asyncio.sleep(0.2)  # let a broker or coordinator recover before the retry

    def _expire(self) -> None:
        now = time.time()
        if now - self._last_expiry < min(60.0, self.state.window_s / 10):
            return
        self._last_expiry = now
        for partition, event_ids in self.state.expire(now).items():
            self._expired[partition] += event_ids  # tombstoned with the partition's next commit

    # -- rebalances: librdkafka calls these on the consumer thread, inside a poll ------------------
    def _on_assign(self, consumer: Consumer, assigned: list[TopicPartition]) -> None:
        self._call_soon(self.acquire(sorted(tp.partition for tp in assigned)))

    def _on_revoke(self, consumer: Consumer, revoked: list[TopicPartition]) -> None:
        self._call_soon(self.revoke(sorted(tp.partition for tp in revoked)))

    def _call_soon(self, coroutine: Any) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def acquire(self, partitions: list[int]) -> None:
        if not partitions:
            return
        await self._load(partitions)
        self._owned.update(partitions)
        metrics.REBALANCES.labels("assigned").inc(len(partitions))
        log.info("partitions_assigned", partitions=partitions, dedup_entries=len(self.state))
        if not self.ready.is_set():
            self.ready.set()
            log.info("worker_ready", app_id=self.settings.worker.app_id)

    async def revoke(self, partitions: list[int]) -> None:
        if not partitions:
            return
        # A commit in flight carries offsets of these partitions: it must finish while we own them.
        if self._inflight is not None:
            await asyncio.wait([self._inflight])
        for partition in partitions:
            self._owned.discard(partition)
            self.state.drop(partition)
            self._expired.pop(partition, None)
        metrics.REBALANCES.labels("revoked").inc(len(partitions))
        metrics.DEDUP_ENTRIES.set(len(self.state))
        log.info("partitions_revoked", partitions=partitions)

    async def _load(self, partitions: list[int]) -> None:
        """Dedup state of these partitions, as committed in the changelog."""
        if not partitions:
            return
        ends = await changelog.high_watermarks(self.settings, partitions)
        loaded = await asyncio.gather(*(changelog.read_partition(self.settings, p, ends[p]) for p in partitions))
        now = time.time()
        for partition, records in zip(partitions, loaded, strict=True):
            self.state.load(partition, records, now)
        metrics.DEDUP_ENTRIES.set(len(self.state))

    async def _on_consumer(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._consumer_thread, call, *args)


def _fetch(consumer: Consumer, size: int, timeout_s: float) -> list[Message]:
    """Wait up to `timeout_s` for one record, then take what else is already fetched, up to `size`:
    a lone request is not held back to fill a batch, and a backlog comes in full batches."""
    first = consumer.poll(timeout_s)
    if first is None:
        return []
    records = [first, *consumer.consume(size - 1, 0)] if size > 1 else [first]
    good = []
    for record in records:
        if (error := record.error()) is None:
            good.append(record)
        elif error.fatal():
            raise KafkaException(error)
        else:
            log.warning("consumer_error", error=str(error))
    return good


def _first_offsets(batch: list[Message]) -> dict[int, int]:
    first: dict[int, int] = {}
    for record in batch:
        first.setdefault(record.partition(), record.offset())
    return first


def _inbounds(batch: list[Message]) -> list[Inbound]:
    now_ms = int(time.time() * 1000)
    received = time.monotonic()
    inbounds = []
    for record in batch:
        metrics.QUEUE_WAIT.observe(max(0, now_ms - record.timestamp()[1]) / 1000)
        inbounds.append(
            Inbound(
                value=record.value(),
                key=record.key(),
                headers={k: v for k, v in (record.headers() or ()) if v is not None},
                source=Source(record.topic(), record.partition(), record.offset()),
                received=received,
            )
        )
    return inbounds


def run(settings: Settings) -> None:
    # Feast imports torch eagerly when it is installed (for its PyTorch retrieval API, unused here):
    # ~400 MiB of RSS and a second of start-up per worker. Scoring happens in Triton, so the worker
    # process declines the import; Feast then runs without it, as on a machine without torch.
    sys.modules.setdefault("torch", None)  # type: ignore[arg-type]
    server, _ = start_http_server(settings.worker.metrics_port, addr=settings.worker.metrics_host)
    log.info("worker_starting", app_id=settings.worker.app_id, metrics_port=server.server_port)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await Worker(settings).run(stop)
        log.info("worker_stopped")

    asyncio.run(main())
