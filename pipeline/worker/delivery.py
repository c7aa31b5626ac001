"""Delivery semantics, in one place: effectively-once, one Kafka transaction per scored batch (KIP-447).

Each lane has one transactional producer (`transactional.id = "<app_id>-<instance_id>-<lane>"`).
For every scored batch, or group of batches, of the lane's input partitions:

1. Begin a transaction.
2. Send the results (each to the results partition numbered like its request's: the dedup
   changelog), the dead letters and, with answers at commit, replies with no open direct link.
3. Add each input partition's next offset, with the consumer's group metadata: a zombie (a worker
   that missed a rebalance) holds an old generation, so its offsets are refused and all of it aborts.
4. Commit: a `read_committed` reader sees all of it or none of it. Its dedup entries move from the
   state's overlay to its store, with the results offsets the commit reached (`dedup`), and answers
   waiting for it are sent.
5. If a step fails, the transaction is aborted (an unusable producer is replaced, which aborts what
   was open): nothing of it is visible. Its lane drops the batches scored since (they saw the aborted
   dedup entries) and notes where each of its partitions must restart, at the first record not
   committed (`rewind_points`, in `Lane.settle`). The worker then takes in the fetch under way and
   the batch being scored, seeks each of those partitions back there, drops their uncommitted dedup
   entries and what it held of them, reads into their store the results committed since it last had
   them (`Worker._rewind`), and scores them again. That read matters where the outcome was not seen:
   a stalled commit whose producer was replaced, or a commit still retriable when its time ran out,
   may have committed at the broker; its records, fetched again, are then repeats, not scored twice.

In full: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from pipeline import metrics
from pipeline.errors import ProducerUnavailable
from pipeline.kafka import clients
from pipeline.settings import Settings
from pipeline.worker.messages import Outbound, Record

log = structlog.get_logger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class BatchCommit:
    messages: list[Outbound]
    offsets: dict[int, int]  # input partition -> offset after its last record in the batch
    group_metadata: Any  # the consumer's, taken when the transaction starts (the current generation)


class Aborted(Exception):
    """The batch's transaction did not commit; nothing of it is visible to read_committed readers."""


def rewind_points(
    rewind_to: Mapping[int, int], aborted_first: Mapping[int, int], scored_since: Iterable[Record]
) -> dict[int, int]:
    """Step 5: where each partition restarts after an abort: the first offset of the aborted
    transaction there, or of a batch scored since (which saw its dedup entries), whichever is
    earlier, and never later than a rewind already noted."""
    first = dict(aborted_first)
    for record in scored_since:
        first.setdefault(record.partition(), record.offset())
    rewind = dict(rewind_to)
    for partition, offset in first.items():
        rewind[partition] = min(offset, rewind.get(partition, offset))
    return rewind


class TransactionalDelivery:
    def __init__(self, settings: Settings, requests_topic: str, lane: int = 0) -> None:
        self._settings = settings
        self._requests = requests_topic
        worker = settings.worker
        self.transactional_id = f"{worker.app_id}-{worker.instance_id or uuid.uuid4().hex[:12]}-{lane}"
        self._timeout_s = worker.transaction_timeout_ms / 1000
        self._producer: Producer | None = None
        # librdkafka's transactional calls block: they run on this thread, one at a time, in order.
        self._thread = _DaemonThread("txn-producer")
        # Bumped when a stalled call is left behind; only a call of the current generation may
        # replace the producer (the one left behind may still return, and must not).
        self._generation = 0
        self._lock = threading.Lock()

    async def open(self, retry_for_s: float = 120.0) -> None:
        await self._thread.run(self._init, retry_for_s, self._generation)

    async def commit(self, batch: BatchCommit) -> dict[int, int]:
        """Publish the batch in one transaction; raises `Aborted` when it did not commit. Returns, for
        each results partition it wrote, the offset after its last result there."""
        generation = self._generation
        done = asyncio.ensure_future(self._thread.run(self._transact, batch, generation))
        finished, _ = await asyncio.wait([done], timeout=self._timeout_s)
        if finished:
            return done.result()
        # librdkafka can wait forever for a group coordinator it dropped while the broker restarted
        # (confluentinc/librdkafka#5511, #5456: the call's own timeout is not applied). Leave that
        # call behind: a new producer with the same transactional id fences the stalled one, and
        # its init settles the open transaction (committed or aborted) before we go on.
        log.warning("transaction_stalled", waited_s=self._timeout_s)
        metrics.TRANSACTION_ABORTS.labels("stalled").inc()
        done.add_done_callback(_forget)
        await self._replace()
        raise Aborted(f"stalled for {self._timeout_s:g} s; producer replaced")

    async def _replace(self) -> None:
        """A new producer on a thread of its own, the stalled one left behind. Its init is bounded
        too (librdkafka's init can wait for ever as its commit can): an init that stalls is left behind
        in turn, and one that fails is tried again, for up to `_REPLACE_FOR_S`; then the worker stops
        with `ProducerUnavailable` (a supervisor restarts it) rather than wait for ever."""
        deadline = time.monotonic() + _REPLACE_FOR_S
        while True:
            with self._lock:
                self._generation += 1
                generation = self._generation
            self._thread.stop()  # it ends once its call returns (a stalled one may never)
            self._thread = _DaemonThread("txn-producer")
            init = asyncio.ensure_future(self._thread.run(self._init, self._timeout_s, generation))
            finished, _ = await asyncio.wait([init], timeout=self._timeout_s * 3)
            if not finished:
                init.add_done_callback(_forget)
                log.warning("producer_init_stalled", waited_s=self._timeout_s * 3)
            elif (error := init.exception()) is None:
                return
            else:
                log.warning("producer_replacement_failed", error=str(error))
                await asyncio.sleep(1.0)  # an init that fails at once is not retried in a tight loop
            if time.monotonic() > deadline:
                raise ProducerUnavailable(
                    f"no transactional producer could be made within {_REPLACE_FOR_S:g} s "
                    f"(transactional.id {self.transactional_id})"
                )

    async def close(self) -> None:
        if self._producer is not None:
            await self._thread.run(self._producer.flush, self._timeout_s)
        self._thread.stop()

    # -- on the producer thread ---------------------------------------------------------------
    def _init(self, retry_for_s: float, generation: int) -> None:
        """A producer with our transactional id; init aborts whatever a predecessor with it left open.
        Retried while the broker is unreachable (a restart), up to `retry_for_s`. Kept only while
        `generation` is current."""
        deadline = time.monotonic() + retry_for_s
        delay = 0.2
        while generation == self._generation:  # one left behind stops trying: it would fence its successor
            producer = clients.producer(
                self._settings,
                {
                    "client.id": f"{self._settings.kafka.client_id}-worker",
                    "transactional.id": self.transactional_id,
                    "transaction.timeout.ms": self._settings.worker.transaction_timeout_ms,
                    "linger.ms": 1,
                    "retry.backoff.ms": self._settings.worker.transaction_retry_backoff_ms,
                    "retry.backoff.max.ms": max(100, self._settings.worker.transaction_retry_backoff_ms),
                    "error_cb": metrics.kafka_error_callback("transactions"),
                },
            )
            try:
                producer.init_transactions(self._timeout_s)
                with self._lock:
                    if generation == self._generation:
                        self._producer = producer
                return
            except KafkaException as e:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("producer_init_failed", error=str(e), retry_in_s=delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _transact(self, batch: BatchCommit, generation: int) -> dict[int, int]:
        if self._producer is None:  # a replacement that could not be made: try again
            self._init(120.0, generation)
        producer = self._producer
        assert producer is not None, "open() first"
        try:
            producer.begin_transaction()
            results_offsets = self._send(producer, batch)
            offsets = [TopicPartition(self._requests, p, o) for p, o in sorted(batch.offsets.items())]
            producer.send_offsets_to_transaction(offsets, batch.group_metadata, self._timeout_s)
            self._commit(producer)
            producer.poll(0)  # delivery reports the commit's flush left unserved
            return results_offsets
        except (KafkaException, BufferError) as e:
            error = _kafka_error(e)
            fenced = error is not None and error.code() in _FENCED
            metrics.TRANSACTION_ABORTS.labels("fenced" if fenced else "error").inc()
            self._abort(producer, error, generation)
            raise Aborted(str(e)) from e

    def _send(self, producer: Producer, batch: BatchCommit) -> dict[int, int]:
        """Every message of the batch, without a wrapper call per message. The last result of each
        results partition goes last, with a delivery report: it tells the offset the transaction
        brings that partition (the dedup store records it). Fills the returned dict on commit."""
        results = self._settings.topics.results
        last = {m.partition: i for i, m in enumerate(batch.messages) if m.topic == results}
        if last:
            tails = set(last.values())
            ordinary = [m for i, m in enumerate(batch.messages) if i not in tails]
            last_results = [batch.messages[i] for i in sorted(tails)]
        else:
            ordinary, last_results = batch.messages, []
        offsets: dict[int, int] = {}

        def reported(error: KafkaError | None, message: Any) -> None:
            if error is None:
                offsets[message.partition()] = message.offset() + 1

        produce, sent = producer.produce, 0
        try:
            for m in ordinary:
                if m.partition is None:
                    produce(m.topic, m.value, m.key, headers=list(m.headers))
                elif m.headers:
                    produce(m.topic, m.value, m.key, m.partition, headers=list(m.headers))
                else:
                    produce(m.topic, m.value, m.key, m.partition)
                sent += 1
        except BufferError:  # the local queue is full: the rest one at a time, letting it drain
            for m in ordinary[sent:]:
                produce_draining(producer, m)
        for m in last_results:
            produce_draining(producer, m, reported)
        return offsets

    def _commit(self, producer: Producer) -> None:
        """Commit, retrying while the outcome is retriable: a timed-out commit may still complete, so
        it is never abandoned for an abort while the broker could have applied it."""
        deadline = time.monotonic() + self._timeout_s * 3
        while True:
            try:
                producer.commit_transaction(self._timeout_s)
                return
            except KafkaException as e:
                error = _kafka_error(e)
                if error is None or not error.retriable() or time.monotonic() > deadline:
                    raise
                log.warning("transaction_commit_retry", error=str(e))

    def _abort(self, producer: Producer, error: KafkaError | None, generation: int) -> None:
        if generation != self._generation:
            return  # a call left behind after a stall: its replacement has settled what was open
        if error is not None and not error.fatal():
            try:
                producer.abort_transaction(self._timeout_s)
                return
            except KafkaException as e:
                log.warning("transaction_abort_failed", error=str(e))
        # Unusable (fatal error, or the abort failed): a new producer with the same id aborts what is open.
        with self._lock:
            if generation != self._generation:
                return
            self._producer = None
        self._init(120.0, generation)


def produce_draining(
    producer: Producer, message: Outbound, on_delivery: Callable[[KafkaError | None, Any], None] | None = None
) -> None:
    """Queue one message; while librdkafka's local queue is full, let its sender drain it first."""
    kwargs: dict[str, Any] = {"partition": message.partition} if message.partition is not None else {}
    if message.headers:
        kwargs["headers"] = list(message.headers)
    if on_delivery is not None:
        kwargs["on_delivery"] = on_delivery
    while True:
        try:
            producer.produce(message.topic, message.value, message.key, **kwargs)
            return
        except BufferError:
            producer.poll(0.01)


# The group coordinator refused the offsets: this worker no longer owns (some of) the partitions.
_FENCED = {
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError._FENCED,
}


# How long a stalled producer is replaced for before the worker gives up (`_replace`).
_REPLACE_FOR_S = 120.0


def _forget(call: asyncio.Future[Any]) -> None:
    """A call left behind: what it ends with is of no use (and not an unretrieved exception)."""
    if not call.cancelled():
        call.exception()


def _kafka_error(e: Exception) -> KafkaError | None:
    return e.args[0] if e.args and isinstance(e.args[0], KafkaError) else None


class _DaemonThread:
    """Runs blocking calls one at a time on a daemon thread. Not a ThreadPoolExecutor: the
    interpreter joins those at exit, and a call librdkafka never returns would keep the worker
    from exiting."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]] | None]
        self._calls = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    async def run(self, call: Callable[..., T], *args: Any) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._calls.put((call, args, future))
        return await future

    def stop(self) -> None:
        self._calls.put(None)

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            call, args, future = item
            try:
                result = call(*args)
            except BaseException as e:  # noqa: BLE001 -- handed to the awaiting coroutine
                future.get_loop().call_soon_threadsafe(_settle, future, None, e)
            else:
                future.get_loop().call_soon_threadsafe(_settle, future, result, None)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
