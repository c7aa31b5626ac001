"""`pipeline worker`: consume micro-batches from the requests topic, score them, deliver them.

Wiring only: the consumer group and its rebalances live here, scoring in `processor`, delivery
semantics in `delivery`, idempotency state in `dedup`.

Kafka I/O runs on librdkafka (confluent-kafka): its blocking calls go to two threads, one for the
consumer (whose rebalance callbacks therefore run there and hand over to the event loop) and one
for the transactional producer. One transaction is in flight at a time; the batches scored while it
commits wait and then share the next one (group commit), so under load transactions grow and their
fixed cost is spread, while a lone request is committed at once. A batch's dedup entries are put in
the state when it is scored, so the batches after it see them; if a transaction aborts, everything
scored since is dropped too, the partitions are rewound to their first uncommitted records and the
state is reloaded from the changelog, so a repeat is never scored twice and nothing is skipped.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from prometheus_client import start_http_server

from pipeline import changelog, metrics
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
        self.delivery = TransactionalDelivery(settings, self.requests)
        self._consumer_thread = ThreadPoolExecutor(1, thread_name_prefix="consumer")
        self._loop: asyncio.AbstractEventLoop | None = None
        # Partitions whose dedup state is loaded: only their records are processed.
        self._owned: set[int] = set()
        self._consumer: Consumer | None = None
        # The transaction in flight and the first offset of each partition in it; the batches
        # scored since, for the next one; where to rewind to after an abort.
        self._inflight: asyncio.Task[bool] | None = None
        self._inflight_first: dict[int, int] = {}
        self._pending: list[tuple[list[Message], Outcome]] = []
        self._rewind_to: dict[int, int] = {}
        self._last_expiry = time.time()
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        settings, worker = self.settings, self.settings.worker
        self._loop = asyncio.get_running_loop()
        changelog.check_copartitioned(settings)
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
        self._consumer = consumer
        consumer.subscribe([self.requests], on_assign=self._on_assign, on_revoke=self._on_revoke)
        fetching: asyncio.Future[list[Message]] | None = None
        try:
            while not stop.is_set():
                if self._inflight is not None and (
                    self._inflight.done() or len(self._pending) >= worker.max_batches_per_transaction
                ):
                    await self._settle()
                if self._rewind_to:
                    if fetching is not None:  # records fetched before the rewind are stale
                        await fetching
                        fetching = None
                    await self._rewind(consumer)
                    continue
                self._start_commit()
                if fetching is None:
                    fetching = asyncio.ensure_future(
                        self._on_consumer(_fetch, consumer, worker.batch_size, worker.batch_timeout_ms / 1000)
                    )
                # Wake for records, or for the end of the transaction in flight (to start the next).
                await asyncio.wait(
                    [fetching] if self._inflight is None else [fetching, self._inflight],
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not fetching.done():
                    continue
                records, fetching = fetching.result(), None
                batch = [r for r in records if r.partition() in self._owned]
                if batch:
                    outcome = await processor.process(_inbounds(batch))
                    now = time.time()
                    for event_id, partition, result in outcome.remembered:
                        self.state.put(partition, event_id, result, now)
                    self._pending.append((batch, outcome))
                self._expire()
            if fetching is not None:
                await fetching
        finally:
            # Closing leaves the group; the revocation callback commits what is scored, in there.
            await self._on_consumer(consumer.close)
            self._consumer_thread.shutdown(wait=True)
            await self.delivery.close()
            features.close()
            await scorer.close()

    def _start_commit(self) -> None:
        """Publish every batch scored so far in one transaction, while the loop goes on."""
        if self._inflight is not None or not self._pending or self._consumer is None:
            return
        messages, offsets, first = [], {}, {}
        for batch, outcome in self._pending:
            messages += outcome.messages
            for record in batch:
                first.setdefault(record.partition(), record.offset())
                offsets[record.partition()] = record.offset() + 1
        self._pending = []
        commit = BatchCommit(
            messages=messages,
            offsets=offsets,
            # The current generation: a rebalance in between revoked (and committed) what we lost.
            group_metadata=self._consumer.consumer_group_metadata(),
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
        metrics.TRANSACTION_MESSAGES.observe(len(commit.messages))
        metrics.DEDUP_ENTRIES.set(len(self.state))
        return True

    async def _settle(self) -> None:
        """Wait for the transaction in flight. If it aborted, what was scored since goes too (it saw
        the aborted entries): note where each partition must restart."""
        task = self._inflight
        if task is None:
            return
        committed = await task
        if self._inflight is not task:  # settled meanwhile by the other caller (loop or revocation)
            return
        first, self._inflight, self._inflight_first = self._inflight_first, None, {}
        if committed:
            return
        for batch, _ in self._pending:
            for record in batch:
                first.setdefault(record.partition(), record.offset())
        self._pending = []
        for partition, offset in first.items():
            self._rewind_to[partition] = min(offset, self._rewind_to.get(partition, offset))

    async def _rewind(self, consumer: Consumer) -> None:
        """After an abort: back to the first uncommitted record of every partition, with the dedup
        state as the changelog has it (the dropped batches' entries were put in it early)."""
        rewind, self._rewind_to = self._rewind_to, {}
        for partition, offset in rewind.items():
            if partition in self._owned:
                await self._on_consumer(consumer.seek, TopicPartition(self.requests, partition, offset))
        await self._load(sorted(self._owned))
        await asyncio.sleep(0.2)  # let a broker or coordinator recover before the retry

    def _expire(self) -> None:
        now = time.time()
        if now - self._last_expiry < min(60.0, self.state.window_s / 10):
            return
        self._last_expiry = now
        self.state.expire(now)

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
        # What is scored carries offsets of these partitions: it is committed while we own them.
        await self._settle()
        if not self._rewind_to:
            self._start_commit()
            await self._settle()
        for partition in partitions:
            self._rewind_to.pop(partition, None)
            self._owned.discard(partition)
            self.state.drop(partition)
        metrics.REBALANCES.labels("revoked").inc(len(partitions))
        metrics.DEDUP_ENTRIES.set(len(self.state))
        log.info("partitions_revoked", partitions=partitions)

    async def _load(self, partitions: list[int]) -> None:
        """Dedup state of these partitions: their committed results within the window."""
        if not partitions:
            return
        now = time.time()
        since = now - self.state.window_s
        ends = await changelog.high_watermarks(self.settings, partitions)
        loaded = await asyncio.gather(*(changelog.read_partition(self.settings, p, since, ends[p]) for p in partitions))
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


def _inbounds(batch: list[Message]) -> list[Inbound]:
    now_ms = int(time.time() * 1000)
    received = time.monotonic()
    metrics.observe_many(metrics.QUEUE_WAIT, [max(0, now_ms - r.timestamp()[1]) / 1000 for r in batch])
    return [
        Inbound(
            value=record.value(),
            key=record.key(),
            headers={k: v for k, v in record.headers() or () if v is not None},
            source=Source(record.topic(), record.partition(), record.offset()),
            received=received,
        )
        for record in batch
    ]


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
