"""`pipeline worker`: consume micro-batches from the requests topic, score them, deliver them.

Wiring only: the consumer group and its rebalances live here, scoring in `processor`, delivery
semantics in `delivery`, idempotency state in `dedup`.

Commits are pipelined per partition: once a batch is scored, each input partition's transaction
commits in its own task while the loop goes on scoring records of the other partitions. A partition
is paused from the moment its records are scored until its transaction has committed (or aborted
and rewound) and its dedup entries are applied, so the next records of that partition always see
the state their predecessors left: a repeat is never scored twice.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections import defaultdict

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord
from prometheus_client import start_http_server

from pipeline import changelog, metrics, topics
from pipeline.contract import Source
from pipeline.dedup import DedupState
from pipeline.delivery import Fenced, PartitionCommit, TransactionalDelivery
from pipeline.features import FeatureLookup
from pipeline.inference import TritonScorer
from pipeline.processor import BatchProcessor, Inbound, Outcome
from pipeline.retry import Backoff
from pipeline.settings import Settings

log = structlog.get_logger(__name__)

Records = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = DedupState(settings.worker.dedup_window_s)
        self.delivery = TransactionalDelivery(settings, changelog.changelog_topic(settings))
        # Held while a batch is processed; a revocation waits for it, then for the partitions' commits.
        self._lock = asyncio.Lock()
        self._committing: dict[int, asyncio.Task[None]] = {}
        self._expired: dict[int, list[str]] = defaultdict(list)
        self._last_expiry = time.time()
        # Partitions whose producer is open and whose dedup state is loaded: only these are processed.
        self._owned: set[int] = set()
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        settings, worker = self.settings, self.settings.worker
        partitions = topics.partition_count(settings, settings.topics.requests)
        topics.apply(settings, [changelog.changelog_spec(settings, partitions)])
        scorer = TritonScorer(settings.triton)
        features = FeatureLookup(settings.feast.repo_path, settings.feast.cache_ttl_s)
        backoff = Backoff(worker.retry_initial_ms / 1000, worker.retry_max_ms / 1000, worker.retry_budget_s)
        processor = BatchProcessor(settings.topics, settings.default_model, scorer, features, self.state, backoff)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka.bootstrap_servers,
            client_id=f"{settings.kafka.client_id}-worker",
            group_id=worker.app_id,
            enable_auto_commit=False,  # offsets are committed inside each partition's transaction
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_interval_ms=int((worker.retry_budget_s + 120) * 1000),
            session_timeout_ms=worker.session_timeout_ms,
            heartbeat_interval_ms=max(1000, worker.session_timeout_ms // 3),
        )
        consumer.subscribe([settings.topics.requests], listener=_Rebalance(self))
        await consumer.start()
        try:
            while not stop.is_set():
                # A partition resumed after its commit does not wake a waiting getmany: poll briefly then.
                wait_ms = 1 if self._committing else worker.batch_timeout_ms
                records = await consumer.getmany(timeout_ms=wait_ms, max_records=worker.batch_size)
                async with self._lock:
                    owned = self._take_owned(consumer, records)
                    if owned:
                        now_ms = int(time.time() * 1000)
                        outcome = await processor.process([_inbound(r, now_ms) for rs in owned.values() for r in rs])
                        self._deliver(consumer, owned, outcome)
                    self._expire()
        finally:
            async with self._lock:
                await self._settle(list(self._committing))
                for partition in sorted(self.delivery.partitions):
                    await self._release(partition)
            await consumer.stop()
            features.close()
            await scorer.close()

    def _take_owned(self, consumer: AIOKafkaConsumer, records: Records) -> Records:
        """Records of partitions this worker is ready for; others are handed back to the fetcher
        (their position rewound), as the consumer may fetch while an assignment is still loading."""
        owned: Records = {}
        assignment = consumer.assignment()
        for tp, batch in records.items():
            if tp.partition in self._owned and tp.partition not in self._committing:
                owned[tp] = batch
            elif tp in assignment:
                consumer.seek(tp, batch[0].offset)
        return owned

    def _deliver(self, consumer: AIOKafkaConsumer, records: Records, outcome: Outcome) -> None:
        """Start each partition's transaction in its own task; the partition waits, paused, for it."""
        by_partition: dict[int, list] = defaultdict(list)
        for message in outcome.messages:
            by_partition[message.source_partition].append(message)
        entries: dict[int, list[tuple[str, bytes]]] = defaultdict(list)
        for event_id, partition, result in outcome.remembered:
            entries[partition].append((event_id, result))
        for tp, batch in records.items():
            commit = PartitionCommit(
                partition=tp.partition,
                messages=by_partition[tp.partition],
                changelog=[(e.encode(), r) for e, r in entries[tp.partition]]
                + [(e.encode(), None) for e in self._expired.pop(tp.partition, [])],
                next_offset=batch[-1].offset + 1,
            )
            consumer.pause(tp)
            self._committing[tp.partition] = asyncio.create_task(
                self._commit(consumer, tp, batch[0].offset, commit, entries[tp.partition]),
                name=f"commit-{tp.partition}",
            )

    async def _commit(
        self,
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        first_offset: int,
        commit: PartitionCommit,
        entries: list[tuple[str, bytes]],
    ) -> None:
        try:
            with metrics.STAGE_SECONDS.labels("produce").time():
                await self.delivery.commit(self.settings.topics.requests, commit)
        except Exception as e:  # noqa: BLE001 -- whatever failed, nothing committed: nothing may be skipped
            # Aborted: process these records again, from the first one, with the state as it was.
            consumer.seek(tp, first_offset)
            self._expired[tp.partition] += [k.decode() for k, v in commit.changelog if v is None]
            if isinstance(e, Fenced):
                log.warning("partition_fenced", partition=tp.partition)
                await self._release(tp.partition)
            else:
                log.warning("transaction_aborted", partition=tp.partition, error=repr(e))
                await asyncio.sleep(0.2)  # let a broker or coordinator recover before the retry
        else:
            now = time.time()
            for event_id, value in entries:
                self.state.put(tp.partition, event_id, value, now)
            metrics.DEDUP_ENTRIES.set(len(self.state))
        finally:
            self._committing.pop(tp.partition, None)
            if tp in consumer.assignment():
                consumer.resume(tp)

    async def _settle(self, partitions: list[int]) -> None:
        """Wait for these partitions' commits in flight to finish (commit or abort)."""
        tasks = [task for p in partitions if (task := self._committing.get(p)) is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _expire(self) -> None:
        now = time.time()
        if now - self._last_expiry < min(60.0, self.state.window_s / 10):
            return
        self._last_expiry = now
        for partition, event_ids in self.state.expire(now).items():
            self._expired[partition] += event_ids  # tombstoned with the partition's next commit

    async def acquire(self, partitions: list[int]) -> None:
        # Producers first: starting them fences the previous owners and aborts their open
        # transactions, so the changelog read next is final.
        await asyncio.gather(*(self.delivery.open(p) for p in partitions))
        loaded = await asyncio.gather(*(changelog.read_partition(self.settings, p) for p in partitions))
        now = time.time()
        for partition, records in zip(partitions, loaded, strict=True):
            self.state.load(partition, records, now)
        self._owned.update(partitions)
        metrics.REBALANCES.labels("assigned").inc(len(partitions))
        metrics.DEDUP_ENTRIES.set(len(self.state))
        log.info("partitions_assigned", partitions=partitions, dedup_entries=len(self.state))
        if not self.ready.is_set():
            self.ready.set()
            log.info("worker_ready", app_id=self.settings.worker.app_id)

    async def revoke(self, partitions: list[int]) -> None:
        async with self._lock:
            await self._settle(partitions)
            for partition in partitions:
                await self._release(partition)
        metrics.REBALANCES.labels("revoked").inc(len(partitions))
        log.info("partitions_revoked", partitions=partitions)

    async def _release(self, partition: int) -> None:
        self._owned.discard(partition)
        await self.delivery.close(partition)
        self.state.drop(partition)
        self._expired.pop(partition, None)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._worker.revoke(sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._worker.acquire(sorted(tp.partition for tp in assigned))


def _inbound(record: ConsumerRecord[bytes, bytes], now_ms: int) -> Inbound:
    metrics.QUEUE_WAIT.observe(max(0, now_ms - record.timestamp) / 1000)
    return Inbound(
        value=record.value,
        key=record.key,
        headers={k: v for k, v in record.headers if v is not None},
        source=Source(record.topic, record.partition, record.offset),
        received=time.monotonic(),
    )


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
