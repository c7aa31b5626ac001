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

import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog
from confluent_kafka import KafkaException, Producer

from pipeline.contract import REPLAY_ID, REQUESTS_PARTITIONER, payload_text, request_key
from pipeline.errors import ConfigurationError
from pipeline.replay import pacing
from pipeline.replay.checkpoint import Checkpoint
from pipeline.replay.clients import client_config
from pipeline.replay.progress import Progress
from pipeline.replay.selection import Filter, judge
from pipeline.replay.sources import CHUNK, Row, Source
from pipeline.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Options:
    replay_id: str
    results_topic: str
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
        return Checkpoint(options.replay_id, described, source.ranges(), options.results_topic)
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
    rows_per_transaction = pacing.transaction_rows(options.rate, CHUNK)
    read = published = rejected = filtered = 0
    # A replay begun afresh (or a dry run) starts its rejects file anew; a resumed one adds to it.
    rejects = _Rejects(options.rejects, fresh=options.dry_run or previous is None)
    total = state.total()
    with Progress(f"replay {options.replay_id}", total, total - state.remaining()) as progress:
        for chunk in _split(source.chunks(state.positions), rows_per_transaction):
            if stop.is_set():
                break
            if options.limit is not None:
                chunk = _up_to_limit(chunk, options.limit - published, settings.default_model, options.filters)
                if not chunk:
                    break
            to_publish, chunk_rejects = [], []
            for row in chunk:
                verdict = judge(row.value, options.filters, settings.default_model)
                if verdict.request is None:
                    chunk_rejects.append((row, verdict.reason or ""))
                elif verdict.selected:
                    to_publish.append((row.key or request_key(verdict.request), row.value))
                else:
                    filtered += 1
                state.positions[row.partition] = row.position + 1
            read += len(chunk)
            for _, reason in chunk_rejects:
                state.rejected[reason.split(":", 1)[0]] += 1
            state.counts.update(
                read=len(chunk), published=len(to_publish), rejected=len(chunk_rejects),
                filtered=len(chunk) - len(to_publish) - len(chunk_rejects),
            )  # fmt: skip
            if producer is not None:
                state.seconds = previous_seconds(previous) + time.monotonic() - began
                _transaction(producer, settings, options.replay_id, to_publish, state)
            published += len(to_publish)
            rejected += len(chunk_rejects)
            rejects.write(chunk_rejects)
            progress.advance(len(chunk), published=published)
            if (wait := pacing.wait_s(published, options.rate, time.monotonic() - began)) > 0:
                stop.wait(wait)
        else:
            if options.limit is None or published < options.limit:
                state.done = True
        interrupted = stop.is_set()
        if state.done and producer is not None:
            state.seconds = previous_seconds(previous) + time.monotonic() - began
            _transaction(producer, settings, options.replay_id, [], state)
    rejects.close()
    seconds = time.monotonic() - began
    if options.dry_run:
        state.done = False
    return Summary(state, read, published, rejected, filtered, seconds, interrupted=interrupted, rejects=rejects.path)


def previous_seconds(previous: Checkpoint | None) -> float:
    return previous.seconds if previous is not None else 0.0


def _transaction(
    producer: Producer,
    settings: Settings,
    replay_id: str,
    messages: list[tuple[bytes, bytes | None]],
    state: Checkpoint,
) -> None:
    topic, header = settings.topics.backfill_requests, [(REPLAY_ID, replay_id.encode())]
    try:
        producer.begin_transaction()
        for key, value in messages:
            while True:
                try:
                    producer.produce(topic, value, key, headers=header)
                    break
                except BufferError:  # the client's queue is full: let it send
                    producer.poll(0.05)
        producer.produce(settings.topics.replay_checkpoints, state.encode(), replay_id.encode())
        producer.commit_transaction(60)
    except KafkaException as e:
        raise ConfigurationError(f"replay {replay_id!r}: a transaction failed ({e}); run it again to resume") from e


def _producer(settings: Settings, replay_id: str) -> Producer:
    producer = Producer(
        client_config(
            settings,
            **{
                "client.id": f"{settings.kafka.client_id}-replay",
                # The replay's own: a new run of it fences an old one and aborts what that left open.
                "transactional.id": f"{settings.kafka.client_id}-replay-{replay_id}",
                "linger.ms": 20,
                "batch.size": 1_000_000,
                "compression.type": "lz4",
                "queue.buffering.max.messages": 200_000,
                **REQUESTS_PARTITIONER,
            },
        )
    )
    try:
        producer.init_transactions(30)
    except KafkaException as e:
        raise ConfigurationError(f"{settings.kafka.bootstrap_servers}: broker unreachable ({e})") from e
    return producer


def _split(chunks: Iterator[list[Row]], size: int) -> Iterator[list[Row]]:
    for chunk in chunks:
        for start in range(0, len(chunk), size):
            yield chunk[start : start + size]


def _up_to_limit(chunk: list[Row], left: int, default_model: str, filters: Sequence[Filter]) -> list[Row]:
    """The rows of `chunk` up to the one that publishes the `left`-th request."""
    if left <= 0:
        return []
    kept = 0
    for index, row in enumerate(chunk):
        verdict = judge(row.value, filters, default_model)
        if verdict.request is not None and verdict.selected:
            kept += 1
            if kept == left:
                return chunk[: index + 1]
    return chunk


class _Rejects:
    """The rejects file, opened at the first reject."""

    def __init__(self, path: Path | None, fresh: bool) -> None:
        self.path = path
        self._file: Any = None
        self.written = 0
        if fresh and path is not None:
            path.unlink(missing_ok=True)

    def write(self, rows: list[tuple[Row, str]]) -> None:
        if not rows or self.path is None:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("ab")
        for row, reason in rows:
            line = {"partition": row.partition, "position": row.position, "reason": reason}
            self._file.write(orjson.dumps(line | {"payload": payload_text(row.value)}) + b"\n")
        self._file.flush()
        self.written += len(rows)

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
