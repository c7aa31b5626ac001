"""`pipeline worker`: consume micro-batches from the requests topic, score them, deliver them.

Wiring only: fetch → decide (`batching`, a pure state machine) → act. Scoring lives in `processor`,
delivery semantics, aborts included, in `delivery` and the `lanes` that carry each batch to its
transaction (group commits, one transaction in flight per lane), idempotency state in `dedup`,
answers to HTTP callers in `answers`, the messages passed between them in `messages`. Kafka I/O runs
on librdkafka (confluent-kafka), its blocking calls off the event loop: on a thread for the consumer
(whose rebalance callbacks run there and hand over to the event loop) and one per transactional
producer. A partition assigned is paused until its state is restored (`ownership`), while the others
are scored.
In full: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import structlog
from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import start_http_server

from pipeline import heap, metrics, topics, tracing
from pipeline.contract import REPLY_TO, Source
from pipeline.features.lookup import FeatureLookup
from pipeline.inference.triton import TritonScorer
from pipeline.kafka import clients
from pipeline.models.routing_log import RoutingFollower
from pipeline.settings import Settings
from pipeline.worker import startup
from pipeline.worker.answers import AnswerProducer
from pipeline.worker.batching import Advance, Batching, Decision, Facts, FollowGate, Rewind, Settle
from pipeline.worker.changelog import Restorer
from pipeline.worker.dedup import DedupState
from pipeline.worker.lanes import Lanes
from pipeline.worker.messages import Inbound, Record
from pipeline.worker.ownership import Ownership
from pipeline.worker.priority import LiveFirst
from pipeline.worker.processor import BatchProcessor, Features, Scorer, Validated
from pipeline.worker.result_reader import ResultReader
from pipeline.worker.retry import Backoff
from pipeline.worker.topic_catalog import TopicCatalog

log = structlog.get_logger(__name__)

T = TypeVar("T")


class Worker:
    def __init__(
        self,
        settings: Settings,
        scorer: Scorer | None = None,
        features: Features | None = None,
        live_first: LiveFirst | None = None,
    ) -> None:
        """Scores on Triton with Feast features unless given others (the bench's in-process monolith).
        `live_first`: a backfill worker's gate; its partitions are paused while it yields."""
        self.settings = settings
        worker = settings.worker
        self._scorer = scorer or TritonScorer(settings.triton)
        self._features = features or FeatureLookup.from_settings(settings.feast)
        self._live_first = live_first
        self.requests = settings.topics.requests
        self.state: DedupState | None = None  # opened by run(), once the topics are checked
        self._ownership: Ownership | None = None  # which partitions are ours; opened by run()
        self._results = ResultReader(settings)
        self._processor: BatchProcessor | None = None
        self._routing: RoutingFollower | None = None  # every model's routing, followed live; opened by run()
        self._consumer: Consumer | None = None
        self._metadata: Any = None
        self.lanes = Lanes(settings, self.requests, self._group_metadata)
        # Answers sent outside the transactions: as soon as scored, or (reply_when="committed") over a
        # direct link once their transaction commits. None: every answer is in its transaction.
        self._answers: AnswerProducer | None = None
        self._answer_when_scored = worker.reply_when == "scored"
        self._answered_at = -math.inf  # monotonic s when callers were last answered ahead of a commit
        # When to fetch, hold, score and commit (docs/performance.md#held-records for why records are
        # held). A caller answered as soon as scored is not held for a commit.
        self._batching: Batching[Record] = Batching(
            batch_size=worker.batch_size,
            max_batches=worker.max_batches_per_transaction,
            linger_s=worker.transaction_linger_ms / 1000,
            partition=_partition,
            awaits_answer=_awaits_answer if self._answer_when_scored else None,
        )
        self._fetching: asyncio.Future[list[Record]] | None = None
        self._consumer_thread = ThreadPoolExecutor(1, thread_name_prefix="consumer")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_report = time.time()
        # The batch being scored (it may be waiting for its model call while the next is prepared)
        # and its event_ids.
        self._scoring: asyncio.Task[None] | None = None
        self._scoring_ids: set[str] = set()
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        consumer = await self._open()
        try:
            while not stop.is_set():
                self._check()
                await self._act(self._batching.decide(self._facts()), consumer)
            if self._fetching is not None:
                await self._fetching
            if self._scoring is not None:
                await self._scoring
        finally:
            await self._close(consumer)

    def _facts(self) -> Facts:
        return Facts(
            now=time.monotonic(),
            lanes=self.lanes.states(),
            owned=self._owned,
            scoring=self._scoring is not None and not self._scoring.done(),
            answered_at=self._answered_at,
            gate=self._live_first.yielding if self._live_first is not None else None,
        )

    async def _act(self, decision: Decision[Record], consumer: Consumer) -> None:
        batching = self._batching
        if isinstance(decision, FollowGate):
            await self._pause_owned(consumer, decision.pause)
        elif isinstance(decision, Settle):
            await self.lanes.settle(decision.lanes)
        elif isinstance(decision, Rewind):
            if self._fetching is not None:
                batching.fetched(await self._fetching)
                self._fetching = None
            if self._scoring is not None:  # handed over first: the lanes drop what they must
                await self._scoring
                self._scoring = None
            batching.rewound(await self._rewind(consumer))
        elif isinstance(decision, Advance):
            self.lanes.commit(decision.commit)
            if decision.fetch:
                timeout_s = self.settings.worker.batch_timeout_ms / 1000
                self._fetching = asyncio.ensure_future(self._on_consumer(_fetch, consumer, decision.fetch, timeout_s))
            if decision.score is None:
                await self._wait(decision.wake_in)
            elif decision.score:
                await self._start_scoring(decision.score)

    async def _wait(self, timeout_s: float | None) -> None:
        """For records, for the end of a transaction in flight (to start the next) or of a score, or
        until a gathering transaction is ripe."""
        waits: list[asyncio.Future[Any]] = [*self.lanes.in_flight()]
        if self._fetching is not None:
            waits.append(self._fetching)
        if self._scoring is not None:
            waits.append(self._scoring)
        await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if self._fetching is not None and self._fetching.done():
            self._batching.fetched(self._fetching.result())
            self._fetching = None

    def _check(self) -> None:
        """Raise what a restore or the last score raised; report the state's size."""
        if self._ownership is not None and self._ownership.failed is not None:
            raise self._ownership.failed
        self._report_state()
        if self._scoring is not None and self._scoring.done():
            self._scoring.result()  # raises what scoring raised
            self._scoring = None

    async def _open(self) -> Consumer:
        """Check the topics, open the state, the lanes' producers and the consumer; join the group."""
        settings = self.settings
        self._loop = asyncio.get_running_loop()
        partitions = startup.check_copartitioned(settings)
        startup.check_retention(settings)
        self.state = DedupState(startup.open_store(settings, partitions))
        self._ownership = Ownership(Restorer(settings, self.state.store), self._take, self._release, self._on_ready)
        self.lanes.listen(entries_committed=self.state.committed)
        backfill = self._live_first is not None
        worker = settings.worker
        self._routing = RoutingFollower(settings)
        self._routing.wait_caught_up(settings.models.routing_wait_s)
        self._processor = BatchProcessor(
            settings.topics,
            settings.default_model,
            self._scorer,
            self._features,
            self.state,
            self._results,
            Backoff(worker.retry_initial_ms / 1000, worker.retry_max_ms / 1000, worker.retry_budget_s),
            copies=backfill,  # a backfill worker also writes to a replay's own results topic
            topic_exists=self._catalog().exists if backfill else None,
            routings=self._routing.routings,
        )
        await self.lanes.open()
        if self._answer_when_scored or worker.direct_answers:
            self._answers = AnswerProducer(settings)
            self.lanes.listen(committed=self._answers.send)
        frozen = heap.freeze_startup()  # what start-up built lives as long as the process
        log.info("startup_heap_frozen", objects=frozen)
        consumer = clients.consumer(settings, _consumer_options(settings))
        self._consumer = consumer
        consumer.subscribe([self.requests], on_assign=self._on_assign, on_revoke=self._on_revoke)
        return consumer

    async def _close(self, consumer: Consumer) -> None:
        # Closing leaves the group; the revocation callback commits what is scored, in there.
        await self._on_consumer(consumer.close)
        self._consumer_thread.shutdown(wait=True)
        await self.lanes.close()
        if self._answers is not None:
            self._answers.close()
        self._features.close()
        await self._scorer.close()
        if self._ownership is not None:
            await self._ownership.close()
        await self._results.close()
        if self._routing is not None:
            self._routing.close()
        if self.state is not None:
            self.state.store.close()

    def _catalog(self) -> TopicCatalog:
        """The topics a backfill worker's copies may go to; asked again after any aborted transaction."""
        admin = topics.admin_client(self.settings)

        def lookup(name: str) -> bool:
            # Blocks the loop, but only for a topic not seen yet, after an abort, or every recheck_s.
            try:
                found = admin.list_topics(timeout=10).topics.get(name)  # all topics: asking for one may create it
            except KafkaException:
                return True  # unknown is not missing: the transaction will tell
            return found is not None and found.error is None and bool(found.partitions)

        catalog = TopicCatalog(lookup, self.settings.replay.topic_recheck_s)
        self.lanes.listen(aborted=catalog.forget)
        return catalog

    async def _start_scoring(self, batch: list[Record]) -> None:
        """Score `batch` while the batch before it may still wait for its model call (the worker
        would otherwise idle through every Triton round trip), then wait for that one: at most two
        are in flight, and outcomes reach the lanes in the order the records were consumed."""
        assert self._processor is not None
        validated = self._processor.validate(_inbounds(batch))
        event_ids = validated.event_ids()
        previous = self._scoring
        # A repeat of an event still being scored must be answered from the dedup state: after it.
        after = previous if previous is not None and not event_ids.isdisjoint(self._scoring_ids) else None
        self._scoring = asyncio.create_task(self._score(validated, batch, previous, after))
        self._scoring_ids = event_ids
        if previous is not None:
            await previous

    async def _score(
        self,
        validated: Validated,
        batch: list[Record],
        previous: asyncio.Task[None] | None,
        after: asyncio.Task[None] | None,
    ) -> None:
        if after is not None:
            await after
        assert self._processor is not None and self.state is not None
        outcome = await self._processor.complete(validated)
        if previous is not None:
            await previous
        if any(record.partition() not in self._owned for record in batch):  # revoked meanwhile
            batch = [record for record in batch if record.partition() in self._owned]
            outcome = outcome.keep(self._owned)
        self.state.put_many(outcome.remembered)
        entries = outcome.remembered
        if self._answers is None:
            self.lanes.add(batch, outcome.messages + outcome.replies, entries)
        elif self._answer_when_scored:  # callers are answered now, the results committed next
            if outcome.replies:
                self._answers.send(outcome.replies)
                self._answered_at = time.monotonic()
            self.lanes.add(batch, outcome.messages, entries)
        else:  # at commit: over an open direct link once it commits, else inside the transaction
            direct, in_transaction = self._answers.split(outcome.replies)
            self.lanes.add(batch, outcome.messages + in_transaction, entries, direct)

    @property
    def _owned(self) -> set[int]:
        """The partitions whose dedup state is in: only their records are scored."""
        return self._ownership.owned if self._ownership is not None else set()

    def _group_metadata(self) -> Any:
        """The consumer's group metadata (generation, member id), as of the last rebalance or abort.
        Cached: asking librdkafka once per transaction would block on its main thread
        (docs/performance.md#group-metadata). A stale one can only make the coordinator refuse a
        commit, never accept one it should not; the abort that follows refreshes it."""
        if self._metadata is None:
            assert self._consumer is not None
            self._metadata = self._consumer.consumer_group_metadata()
        return self._metadata

    async def _rewind(self, consumer: Consumer) -> set[int]:
        """After an abort (delivery, step 5): back to the first uncommitted record of each partition of
        the aborted lane(s), with their dedup state as committed at the broker (the overlay of the
        dropped batches goes; the results committed since the store last had them are read in: an
        outcome the worker could not see may have been a commit). Returns the partitions rewound."""
        rewind = self.lanes.take_rewinds()
        self._metadata = await self._on_consumer(consumer.consumer_group_metadata)  # it may be why
        owned = sorted(p for p in rewind if p in self._owned)
        for partition in owned:
            await self._on_consumer(consumer.seek, TopicPartition(self.requests, partition, rewind[partition]))
        assert self.state is not None and self._ownership is not None
        self.state.discard(rewind)
        await self._ownership.reload(owned)
        await asyncio.sleep(0.2)  # let a broker or coordinator recover before the retry
        return set(rewind)

    async def _pause_owned(self, consumer: Consumer, pause: bool) -> None:
        """Pause (or resume) every owned partition for the live workers: the consumer stays in its
        group, polled, so a long pause is no rebalance."""
        owned = [TopicPartition(self.requests, p) for p in sorted(self._owned)]
        if owned:
            await self._on_consumer(consumer.pause if pause else consumer.resume, owned)

    def _report_state(self) -> None:
        """The state's size, once a second (expiry itself is the store's)."""
        now = time.time()
        if now - self._last_report < 1.0 or self.state is None:
            return
        self._last_report = now
        metrics.DEDUP_ENTRIES.set(self.state.store.estimated_entries() + self.state.uncommitted())

    # -- rebalances: librdkafka calls these on the consumer thread, inside a poll ------------------
    def _on_assign(self, consumer: Consumer, assigned: list[TopicPartition]) -> None:
        self._metadata = consumer.consumer_group_metadata()  # a new generation
        if not assigned:
            return
        # Fetched only once their state is restored; the other partitions are scored meanwhile.
        consumer.incremental_assign(assigned)
        consumer.pause(assigned)
        assert self._ownership is not None
        self._call_soon(self._ownership.acquire(sorted(tp.partition for tp in assigned)))

    def _on_revoke(self, consumer: Consumer, revoked: list[TopicPartition]) -> None:
        self._metadata = consumer.consumer_group_metadata()
        assert self._ownership is not None
        self._call_soon(self._ownership.revoke(sorted(tp.partition for tp in revoked)))

    def _call_soon(self, coroutine: Any) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _take(self, partition: int) -> None:
        """A partition whose state is in: fetch its records (unless paused for the live workers: then
        when they have caught up)."""
        assert self._consumer is not None
        if not self._batching.paused:
            await self._on_consumer(self._consumer.resume, [TopicPartition(self.requests, partition)])

    async def _release(self, partitions: list[int]) -> None:
        """Revoked partitions: what is scored carries their offsets, so it is committed now, while the
        group still lets us; what is not committed of them is forgotten."""
        await self.lanes.flush()
        self.lanes.forget(partitions)
        assert self.state is not None
        self.state.discard(partitions)

    def _on_ready(self) -> None:
        self.ready.set()
        log.info("worker_ready", app_id=self.settings.worker.app_id)

    async def _on_consumer(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._consumer_thread, call, *args)


def _consumer_options(settings: Settings) -> dict[str, Any]:
    worker = settings.worker
    return {
        # With an instance id, the group's description tells the workers apart (`pipeline scale`).
        "client.id": "-".join(filter(None, (settings.kafka.client_id, "worker", worker.instance_id))),
        "group.id": worker.app_id,
        "enable.auto.commit": False,  # offsets are committed inside each batch's transaction
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        # Partitions a rebalance does not move stay put: no reload of their dedup state.
        "partition.assignment.strategy": "cooperative-sticky",
        "max.poll.interval.ms": int((worker.retry_budget_s + 120) * 1000),
        "session.timeout.ms": worker.session_timeout_ms,
        "heartbeat.interval.ms": max(1000, worker.session_timeout_ms // 3),
        "error_cb": metrics.kafka_error_callback("consumer"),
    }


def _fetch(consumer: Consumer, size: int, timeout_s: float) -> list[Record]:
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
    return cast(list[Record], good)


def _partition(record: Record) -> int:
    return record.partition()


def _awaits_answer(records: list[Record]) -> bool:
    """Whether a caller waits for one of these (an HTTP request, answered as soon as it is scored)."""
    for record in records:
        headers = record.headers()
        if headers and any(key == REPLY_TO for key, _ in headers):
            return True
    return False


def _inbounds(batch: list[Record]) -> list[Inbound]:
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


def run(settings: Settings, backfill: bool = False) -> None:
    """A worker of the live requests, or (`backfill`) of replayed ones: on the backfill topics, in
    its own group, at a lower CPU priority, paused while the live workers lag (see `priority`)."""
    live = settings
    if backfill:
        settings = settings.backfill()
        os.nice(settings.replay.backfill_nice)
    # Feast imports torch eagerly when it is installed (for its PyTorch retrieval API, unused here),
    # at a cost in RSS and start-up (docs/performance.md#no-torch-in-workers). Scoring happens in
    # Triton, so the worker process declines the import; Feast runs without it, as without torch.
    sys.modules.setdefault("torch", None)  # type: ignore[arg-type]
    metrics.zero_worker_series()
    server, _ = start_http_server(settings.worker.metrics_port, addr=settings.worker.metrics_host)
    log.info("worker_starting", app_id=settings.worker.app_id, metrics_port=server.server_port)

    async def main() -> None:
        stop = asyncio.Event()
        signalled: list[float] = []  # when the first stop signal came

        def on_signal() -> None:
            signalled.append(time.monotonic())
            stop.set()

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal)
        gate = LiveFirst(settings, live.worker.app_id, live.topics.requests).start() if backfill else None
        try:
            await Worker(settings, live_first=gate).run(stop)
        finally:
            if gate is not None:
                gate.stop()
        # From the signal to the group left, the last batch committed: what a scale-down waits for.
        log.info("worker_stopped", stop_s=round(time.monotonic() - signalled[0], 3) if signalled else None)

    asyncio.run(main())
    tracing.flush()
