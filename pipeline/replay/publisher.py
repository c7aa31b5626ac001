"""`pipeline replay`: publish past requests to the backfill requests topic, each with a `replay-id`
header and its original `event_id`, keyed as the contract keys requests.

Requests go out in Kafka transactions of up to one source chunk, each also carrying the replay's
checkpoint (`checkpoint`), under a transactional id of the replay's own: a second run of the same
replay fences the first, the broker aborts what it left open, and the new run resumes from the last
checkpoint that committed. So every selected request of the source is published exactly once per
replay id, however the replay is stopped and restarted. Backfill workers (`pipeline worker
--backfill`) score them into the backfill results topic, deduplicated within each replay id
(docs/architecture.md#replays).

A row that is not a valid request is counted by its error code and written to the rejects file
(JSON Lines: position, reason, payload), after the transaction that moved past it committed.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import structlog
from confluent_kafka import KafkaException, Producer

from pipeline import heap
from pipeline.contract import MODEL_VERSION, REPLAY_ID, RESULTS_TOPIC, entity_key, payload_text
from pipeline.errors import ConfigurationError
from pipeline.kafka import clients
from pipeline.replay import pacing
from pipeline.replay.checkpoint import Checkpoint
from pipeline.replay.progress import Progress
from pipeline.replay.selection import Filter, judge, plain_entity
from pipeline.replay.sources import CHUNK, Chunk, Source
from pipeline.settings import Settings

log = structlog.get_logger(__name__)

Headers = list[tuple[str, str | bytes | None]]  # as the producer takes them


@dataclass(frozen=True)
class Options:
    replay_id: str
    results_topic: str
    model_version: str | None = None  # MODEL:VERSION, a backtest's (the `model-version` header)
    filters: Sequence[Filter] = ()
    rate: float | None = None  # events/s published at most
    limit: int | None = None  # requests published by this run at most
    dry_run: bool = False
    rejects: Path | None = None


@dataclass
class Summary:
    checkpoint: Checkpoint
    read: int  # by this run
    published: int
    rejected: int
    filtered: int
    seconds: float
    already_done: bool = False
    interrupted: bool = False
    rejects: Path | None = None

    @property
    def per_s(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0

    def fields(self) -> dict[str, Any]:
        return {
            "replay_id": self.checkpoint.replay_id,
            "read": self.read,
            "published": self.published,
            "rejected": self.rejected,
            "rejected_by_code": dict(self.checkpoint.rejected),
            "filtered": self.filtered,
            "seconds": round(self.seconds, 3),
            "per_s": round(self.per_s),
            "done": self.checkpoint.done,
            "interrupted": self.interrupted,
            "results_topic": self.checkpoint.results_topic,
        }


def begin(previous: Checkpoint | None, source: Source, options: Options) -> Checkpoint:
    """The checkpoint to start from: the previous run's, for the same source, or a fresh one."""
    described = source.describe()
    if previous is None:
        return Checkpoint(
            options.replay_id, described, source.ranges(), options.results_topic, model_version=options.model_version
        )
    if previous.model_version != options.model_version:
        began = f"--model-version {previous.model_version}" if previous.model_version else "no --model-version"
        raise ConfigurationError(
            f"replay {options.replay_id!r} began with {began}: resume it so (one replay is scored by one "
            "version), or start a new replay with another --replay-id"
        )
    if previous.source != described:
        raise ConfigurationError(
            f"replay {options.replay_id!r} began on another source ({_describe(previous.source)}); "
            "resume it with that source, or start a new replay with another --replay-id"
        )
    if previous.ranges != source.ranges():
        raise ConfigurationError(
            f"replay {options.replay_id!r}: its source changed since it began ({_describe(described)}); "
            "start a new replay with another --replay-id"
        )
    return previous


def run(
    settings: Settings,
    source: Source,
    options: Options,
    previous: Checkpoint | None,
    stop: threading.Event | None = None,
) -> Summary:
    """Publish from `previous` (None: from the start) until the source ends, `limit` is reached or
    `stop` is set (SIGINT and SIGTERM set it: the transaction under way commits first)."""
    state = begin(previous, source, options)
    began = time.monotonic()
    if state.done:
        return Summary(state, 0, 0, 0, 0, 0.0, already_done=True)
    stop = stop or _stop_on_signals()
    producer = None if options.dry_run else _producer(settings, options.replay_id)
    headers = request_headers(settings, options)
    outbox = _Outbox(producer, settings, options.replay_id, headers)
    # A replay begun afresh (or a dry run) starts its rejects file anew; a resumed one goes on from
    # what its last checkpoint had written (rejects of a transaction that never committed go).
    rejects = _Rejects(options.rejects, keep=0 if options.dry_run or previous is None else previous.rejects_bytes)
    ledger = _Ledger(state, outbox, rejects, began, previous_seconds(previous))
    rows = _RowPublisher(settings.topics.backfill_requests, headers, options.filters, settings.default_model)
    chunk_rows = pacing.transaction_rows(options.rate, CHUNK)
    transaction_rows = settings.replay.transaction_rows if not options.rate else chunk_rows
    heap.freeze_startup()  # the collector's full passes would walk start-up's objects again and again

    total = state.total()
    with Progress(f"replay {options.replay_id}", total, total - state.remaining()) as progress:
        for chunk in _split(source.chunks(state.positions), chunk_rows):
            if stop.is_set():
                break
            if options.limit is not None:
                chunk = _up_to_limit(chunk, options.limit - ledger.published, settings.default_model, options.filters)
                if not chunk.size:
                    break
            if not outbox.open:
                outbox.begin()
            ledger.add(chunk, *rows.publish(chunk, outbox))
            if outbox.rows >= transaction_rows:
                ledger.commit()
            progress.advance(chunk.size, published=ledger.published)
            if (wait := pacing.wait_s(ledger.published, options.rate, time.monotonic() - began)) > 0:
                if outbox.open:
                    ledger.commit()
                stop.wait(wait)
        else:
            if options.limit is None or ledger.published < options.limit:
                state.done = True
        interrupted = stop.is_set()
        if outbox.open or state.done:
            if not outbox.open:
                outbox.begin()
            ledger.commit()
    rejects.close()
    seconds = time.monotonic() - began
    if options.dry_run:
        state.done = False
    counts = ledger.read, ledger.published, ledger.rejected, ledger.filtered
    return Summary(state, *counts, seconds, interrupted=interrupted, rejects=rejects.path)


@dataclass(frozen=True)
class _RowPublisher:
    """How the rows of a chunk are checked and published."""

    topic: str
    headers: Headers
    filters: Sequence[Filter]
    default_model: str

    def publish(self, chunk: Chunk, outbox: _Outbox) -> tuple[int, int, list[tuple[int, str]]]:
        """Produce the chunk's selected requests into the open transaction. Returns how many were
        sent, how many a filter skipped, and the rejected rows (by index) with why."""
        topic, headers, filters, default_model = self.topic, self.headers, self.filters, self.default_model
        plain = None if filters else plain_entity  # filters need the request's fields: `judge`
        rejects: list[tuple[int, str]] = []
        sent = skipped = 0
        produce, send = outbox.produce, outbox.send
        # The hot loop: checking and producing a row costs ~10 µs of the 2-core box's time; most rows
        # take the contract's fast path (docs/performance.md#replay-publishing).
        for index, (key, value) in enumerate(zip(chunk.keys, chunk.values, strict=True)):
            entity: Mapping[str, int | str] | None = plain(value) if plain is not None else None
            if entity is None:
                verdict = judge(value, filters, default_model)
                if verdict.entity is None:
                    rejects.append((index, verdict.reason or ""))
                    continue
                if not verdict.selected:
                    skipped += 1
                    continue
                entity = verdict.entity
            try:
                produce(topic, value, key or entity_key(entity), headers=headers)
            except BufferError:  # the client's queue is full
                send(key or entity_key(entity), value)
            sent += 1
        return sent, skipped, rejects


@dataclass
class _Ledger:
    """What this run has read, published, rejected and filtered out, into the checkpoint chunk by
    chunk; each commit carries the checkpoint, and then writes the rejects of the chunks it moved past."""

    state: Checkpoint
    outbox: _Outbox
    rejects: _Rejects
    began: float  # time.monotonic() when this run began
    seconds_before: float  # publishing time of the replay's earlier runs
    read: int = 0
    published: int = 0
    rejected: int = 0
    filtered: int = 0
    pending: list[tuple[Chunk, list[tuple[int, str]]]] = field(default_factory=list)  # the open transaction's

    def add(self, chunk: Chunk, sent: int, skipped: int, rejects: list[tuple[int, str]]) -> None:
        state = self.state
        state.positions.update(chunk.ends())
        for _, reason in rejects:
            state.rejected[reason.split(":", 1)[0]] += 1
        state.counts.update(read=chunk.size, published=sent, rejected=len(rejects), filtered=skipped)
        self.pending.append((chunk, rejects))
        self.outbox.rows += chunk.size
        self.read += chunk.size
        self.published += sent
        self.rejected += len(rejects)
        self.filtered += skipped

    def commit(self) -> None:
        """The rejects go to disk first and the checkpoint records the file's length with them: a run
        stopped anyhow before its commit leaves rejects that the next run cuts off, and re-reads."""
        for chunk, rows in self.pending:
            self.rejects.write(chunk, rows)
        self.pending.clear()
        self.state.rejects_bytes = self.rejects.synced()
        self.state.seconds = self.seconds_before + time.monotonic() - self.began
        self.outbox.commit(self.state)


def previous_seconds(previous: Checkpoint | None) -> float:
    return previous.seconds if previous is not None else 0.0


class _Outbox:
    """One transaction at a time: requests, then the checkpoint they bring the replay to. Without a
    producer (a dry run), nothing is sent."""

    def __init__(self, producer: Producer | None, settings: Settings, replay_id: str, headers: Headers) -> None:
        self._producer, self._replay_id = producer, replay_id
        self._topic, self._checkpoints = settings.topics.backfill_requests, settings.topics.replay_checkpoints
        self._headers = headers
        # The producer's own produce (the hot loop calls it directly); a dry run's does nothing.
        self.produce: Callable[..., None] = producer.produce if producer is not None else _nothing
        self.open = False
        self.rows = 0  # source rows the open transaction moves past

    def begin(self) -> None:
        if self._producer is not None:
            self._guarded(self._producer.begin_transaction)
        self.open, self.rows = True, 0

    def send(self, key: bytes, value: bytes | None) -> None:
        """Produce once the client's queue has room."""
        while self._producer is not None:
            self._producer.poll(0.05)
            try:
                self._producer.produce(self._topic, value, key, headers=self._headers)
                return
            except BufferError:
                continue

    def commit(self, state: Checkpoint) -> None:
        self.open = False
        if self._producer is None:
            return
        producer = self._producer
        self._guarded(lambda: producer.produce(self._checkpoints, state.encode(), self._replay_id.encode()))
        self._guarded(lambda: producer.commit_transaction(60))

    def _guarded(self, call: Callable[[], Any]) -> None:
        try:
            call()
        except KafkaException as e:
            raise ConfigurationError(
                f"replay {self._replay_id!r}: a transaction failed ({e}); run it again to resume"
            ) from e


def request_headers(settings: Settings, options: Options) -> Headers:
    """The replay's id on each request; the replay's own results topic, if it has one; the version it
    backtests, if it chose one."""
    headers: Headers = [(REPLAY_ID, options.replay_id.encode())]
    if options.results_topic != settings.topics.backfill_results:
        headers.append((RESULTS_TOPIC, options.results_topic.encode()))
    if options.model_version is not None:
        headers.append((MODEL_VERSION, options.model_version.encode()))
    return headers


def _nothing(*args: Any, **kwargs: Any) -> None:
    pass


def _producer(settings: Settings, replay_id: str) -> Producer:
    producer = clients.requests_producer(
        settings,
        {
            "client.id": f"{settings.kafka.client_id}-replay",
            # The replay's own: a new run of it fences an old one and aborts what that left open.
            "transactional.id": f"{settings.kafka.client_id}-replay-{replay_id}",
            # Large batches: the broker's cost is mostly per request (docs/performance.md#replay-publishing).
            "linger.ms": 100,
            "batch.size": 4_000_000,
            "batch.num.messages": 100_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 200_000,
            **clients.QUIET,
        },
    )
    try:
        producer.init_transactions(30)
    except KafkaException as e:
        raise ConfigurationError(f"{settings.kafka.bootstrap_servers}: broker unreachable ({e})") from e
    return producer


def _split(chunks: Iterator[Chunk], size: int) -> Iterator[Chunk]:
    for chunk in chunks:
        if chunk.size <= size:
            yield chunk
            continue
        for start in range(0, chunk.size, size):
            yield chunk.part(start, start + size)


def _up_to_limit(chunk: Chunk, left: int, default_model: str, filters: Sequence[Filter]) -> Chunk:
    """The rows of `chunk` up to the one that publishes the `left`-th request."""
    kept = 0
    for index, value in enumerate(chunk.values):
        if kept >= left:
            return chunk.part(0, index)
        verdict = judge(value, filters, default_model)
        if verdict.entity is not None and verdict.selected:
            kept += 1
    return chunk


class _Rejects:
    """The rejects file, opened at the first reject; its first `keep` bytes are the replay's earlier
    runs' (what its last checkpoint counted), anything after them is cut off."""

    def __init__(self, path: Path | None, keep: int) -> None:
        self.path = path
        self._file: Any = None
        self.written = 0
        self._size = 0
        if path is not None and keep == 0:
            path.unlink(missing_ok=True)
        elif path is not None and path.exists():
            with path.open("ab") as file:
                self._size = min(keep, file.tell())
                file.truncate(self._size)

    def write(self, chunk: Chunk, rows: list[tuple[int, str]]) -> None:
        """Rows of `chunk` (by index) and why each was rejected."""
        if not rows or self.path is None:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("ab")
        for index, reason in rows:
            line = {"partition": chunk.partitions[index], "position": chunk.positions[index], "reason": reason}
            self._file.write(orjson.dumps(line | {"payload": payload_text(chunk.values[index])}) + b"\n")
        self.written += len(rows)

    def synced(self) -> int:
        """Everything written is on disk; the file's length."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._size = self._file.tell()
        return self._size

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        elif self.written == 0:
            self.path = None


def _stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM (in the main thread only: elsewhere nothing is installed)."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        handler: Callable[[int, Any], None] = lambda signum, frame: stop.set()  # noqa: E731
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, handler)
    return stop


def _describe(source: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in source.items() if v not in (None, [], ""))
