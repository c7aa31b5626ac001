"""Where a replay reads past requests: a topic range, or a file of requests (JSON Lines, Parquet).

Each source yields rows in chunks, each row with its position: (partition, offset) on a topic; for a
file partition 0 and the row's index. A replay's checkpoint is the next position of each partition,
so a source resumes from any checkpoint. A topic range is resolved once, when a replay starts (its
end is the topic's end then, without `--until`), and the resolved offsets are kept in the
checkpoint: a resumed replay reads exactly the range it began with.

Parquet files hold either the raw requests (a binary or string column `value`, as `replay export`
writes them) or the contract's fields as columns: `event_id`, `model`, `entity` and `features`
(structs, maps or JSON strings), `event_time`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol, cast

import orjson
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from pipeline.errors import ConfigurationError
from pipeline.kafka import clients
from pipeline.kafka.acls import READERS
from pipeline.kafka.offsets import watermarks
from pipeline.settings import Settings

CHUNK = 10_000  # rows per chunk (and at most per replay transaction)


class Chunk(NamedTuple):
    """Rows of a source column by column: an object per row would cost more than publishing it
    (docs/performance.md#replay-publishing)."""

    keys: list[bytes | None]  # a record's key; None: keyed as the contract keys requests
    values: list[bytes | None]
    partitions: list[int]
    positions: list[int]  # offset on a topic, row index in a file
    timestamps: list[int | None]  # the record's time (epoch ms; topic sources)

    @property
    def size(self) -> int:
        return len(self.values)

    def part(self, start: int, stop: int) -> Chunk:
        return Chunk(
            self.keys[start:stop],
            self.values[start:stop],
            self.partitions[start:stop],
            self.positions[start:stop],
            self.timestamps[start:stop],
        )

    def ends(self) -> dict[int, int]:
        """The next position of each partition after this chunk (a partition's rows are in order)."""
        return {partition: position + 1 for partition, position in zip(self.partitions, self.positions, strict=True)}


def file_chunk(keys: list[bytes | None], values: list[bytes | None], first: int) -> Chunk:
    """Rows `first`, `first + 1`, ... of a file (partition 0)."""
    count = len(values)
    return Chunk(keys, values, [0] * count, list(range(first, first + count)), [None] * count)


class _Consumed(Protocol):
    """A record `Consumer.consume` returns for an assigned partition: librdkafka's `Message`, whose
    partition and offset are never None there (its stubs say Optional for every message)."""

    def error(self) -> KafkaError | None: ...
    def partition(self) -> int: ...
    def offset(self) -> int: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def timestamp(self) -> tuple[int, int]: ...


class Source(Protocol):
    def describe(self) -> dict[str, Any]:
        """What the user asked for (resuming a replay must ask for the same)."""
        ...

    def ranges(self) -> dict[int, tuple[int, int]]:
        """[start, end) of positions per partition, as resolved when the replay began."""
        ...

    def chunks(self, positions: dict[int, int]) -> Iterator[Chunk]:
        """Rows from each partition's next position to its end, in chunks."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class PartitionRange:
    partition: int
    start: int
    end: int  # exclusive

    @classmethod
    def parse(cls, text: str) -> PartitionRange:
        """`3:1000-2000` → partition 3, offsets 1000 (inclusive) to 2000 (exclusive)."""
        try:
            partition, _, span = text.partition(":")
            start, _, end = span.partition("-")
            parsed = cls(int(partition), int(start), int(end))
        except ValueError as e:
            raise ConfigurationError(f"--range {text!r}: expected PARTITION:START-END, e.g. 3:1000-2000") from e
        if parsed.partition < 0 or parsed.start < 0 or parsed.end < parsed.start:
            raise ConfigurationError(f"--range {text!r}: expected 0 <= START <= END")
        return parsed


class TopicSource:
    """A topic's records by time (`since`/`until`, through offsets-for-times) or explicit offsets,
    read committed."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        since: datetime | None = None,
        until: datetime | None = None,
        explicit: list[PartitionRange] | None = None,
        resolved: dict[int, tuple[int, int]] | None = None,
    ) -> None:
        if explicit and (since or until):
            raise ConfigurationError("--range and --since/--until select the same thing two ways: give one")
        if since and until and until <= since:
            raise ConfigurationError(f"--until {until.isoformat()} is not after --since {since.isoformat()}")
        self.settings, self.topic, self.since, self.until, self.explicit = settings, topic, since, until, explicit
        self._consumer = clients.reader(settings, READERS["replay"], clients.QUIET)
        self._ranges = resolved if resolved is not None else self._resolve()

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "topic",
            "topic": self.topic,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "ranges": [f"{r.partition}:{r.start}-{r.end}" for r in self.explicit or []],
        }

    def ranges(self) -> dict[int, tuple[int, int]]:
        return dict(self._ranges)

    def _resolve(self) -> dict[int, tuple[int, int]]:
        try:
            metadata = self._consumer.list_topics(self.topic, timeout=10)
        except KafkaException as e:
            raise ConfigurationError(f"{self.settings.kafka.bootstrap_servers}: broker unreachable ({e})") from e
        found = metadata.topics.get(self.topic)
        if found is None or found.error is not None or not found.partitions:
            raise ConfigurationError(f"topic {self.topic!r} does not exist")
        partitions = sorted(found.partitions)
        marks = {p: watermarks(self._consumer, TopicPartition(self.topic, p)) for p in partitions}
        if self.explicit:
            ranges = {}
            for r in self.explicit:
                if r.partition not in marks:
                    raise ConfigurationError(f"--range {r.partition}:…: {self.topic} has partitions 0-{partitions[-1]}")
                low, high = marks[r.partition]
                if r.start < low or r.end > high:
                    raise ConfigurationError(
                        f"--range {r.partition}:{r.start}-{r.end}: partition {r.partition} holds offsets {low}-{high}"
                    )
                ranges[r.partition] = (r.start, r.end)
            return ranges
        starts = self._offsets_at(self.since, marks, low=True)
        ends = self._offsets_at(self.until, marks, low=False)
        return {p: (starts[p], max(starts[p], ends[p])) for p in partitions}

    def _offsets_at(self, when: datetime | None, marks: dict[int, tuple[int, int]], low: bool) -> dict[int, int]:
        """Each partition's first offset at or after `when`: its start (low) or end without one."""
        if when is None:
            return {p: (lo if low else hi) for p, (lo, hi) in marks.items()}
        ms = int(when.timestamp() * 1000)
        asked = [TopicPartition(self.topic, p, ms) for p in marks]
        found = self._consumer.offsets_for_times(asked, timeout=10)
        # -1: no record at or after that time, so the partition's end.
        return {tp.partition: tp.offset if tp.offset >= 0 else marks[tp.partition][1] for tp in found}

    def chunks(self, positions: dict[int, int]) -> Iterator[Chunk]:
        todo = {p: (positions.get(p, start), end) for p, (start, end) in self._ranges.items()}
        todo = {p: (s, e) for p, (s, e) in todo.items() if s < e}
        if not todo:
            return
        self._consumer.assign([TopicPartition(self.topic, p, s) for p, (s, _) in todo.items()])
        remaining = set(todo)
        idle_since = time.monotonic()
        try:
            while remaining:
                chunk = Chunk([], [], [], [], [])
                keys, values, partitions, offsets, times = chunk
                consumed = cast("list[_Consumed]", self._consumer.consume(num_messages=CHUNK, timeout=0.5))
                for message in consumed:
                    if message.error() is not None:
                        raise ConfigurationError(f"{self.topic}: {message.error()}")
                    p, offset = message.partition(), message.offset()
                    if p in remaining and offset < todo[p][1]:
                        keys.append(message.key())
                        values.append(message.value())
                        partitions.append(p)
                        offsets.append(offset)
                        times.append(message.timestamp()[1])
                # Done with a partition once its position passes the range's end (markers included).
                for tp in self._consumer.position([TopicPartition(self.topic, p) for p in remaining]):
                    if tp.offset >= todo[tp.partition][1]:
                        remaining.discard(tp.partition)
                        self._consumer.pause([TopicPartition(self.topic, tp.partition)])
                if values:
                    idle_since = time.monotonic()
                    yield chunk
                elif time.monotonic() - idle_since > 60:
                    raise ConfigurationError(f"{self.topic}{sorted(remaining)}: no records for 60 s before the end")
        finally:
            self._consumer.unassign()

    def close(self) -> None:
        self._consumer.close()


class JsonLinesSource:
    """One request per line; blank lines are not rows."""

    def __init__(self, path: Path) -> None:
        self.path = _readable(path)

    def describe(self) -> dict[str, Any]:
        return {"kind": "jsonl", "path": str(self.path.resolve())}

    def ranges(self) -> dict[int, tuple[int, int]]:
        with self.path.open("rb") as f:
            return {0: (0, sum(1 for line in f if line.strip()))}

    def chunks(self, positions: dict[int, int]) -> Iterator[Chunk]:
        start, index = positions.get(0, 0), 0
        values: list[bytes | None] = []
        with self.path.open("rb") as f:
            for line in f:
                if not line.strip():
                    continue
                if index >= start:
                    values.append(line.rstrip(b"\r\n"))
                    if len(values) >= CHUNK:
                        yield file_chunk([None] * len(values), values, index + 1 - len(values))
                        values = []
                index += 1
        if values:
            yield file_chunk([None] * len(values), values, index - len(values))

    def close(self) -> None:
        pass


class ParquetSource:
    def __init__(self, path: Path) -> None:
        import pyarrow.parquet as pq

        self.path = _readable(path)
        try:
            self._file = pq.ParquetFile(self.path)
        except Exception as e:  # pyarrow raises its own ArrowInvalid, OSError and more for a bad file
            raise ConfigurationError(f"{self.path}: not a readable Parquet file ({e})") from e
        names = set(self._file.schema_arrow.names)
        if "value" not in names and not {"event_id", "entity", "features"} <= names:
            raise ConfigurationError(
                f"{self.path}: neither a `value` column (raw requests) nor the columns event_id, entity, features"
            )
        self._raw = "value" in names

    def describe(self) -> dict[str, Any]:
        return {"kind": "parquet", "path": str(self.path.resolve())}

    def ranges(self) -> dict[int, tuple[int, int]]:
        return {0: (0, self._file.metadata.num_rows)}

    def chunks(self, positions: dict[int, int]) -> Iterator[Chunk]:
        start, index = positions.get(0, 0), 0
        columns = ["value", *(["key"] if "key" in self._file.schema_arrow.names else [])] if self._raw else None
        for batch in self._file.iter_batches(batch_size=CHUNK, columns=columns):
            size = batch.num_rows
            if index + size <= start:
                index += size
                continue
            skip = max(0, start - index)
            keys: list[bytes | None]
            values: list[bytes | None]
            if self._raw:
                values = _binary(batch.column("value"))[skip:]
                keys = _binary(batch.column("key"))[skip:] if "key" in batch.schema.names else [None] * len(values)
            else:
                values = [_request_bytes(r) for r in batch.to_pylist()[skip:]]
                keys = [None] * len(values)
            yield file_chunk(keys, values, index + skip)
            index += size

    def close(self) -> None:
        self._file.close()


def open_file(path: Path) -> JsonLinesSource | ParquetSource:
    if path.suffix == ".parquet":
        return ParquetSource(path)
    if path.suffix in (".jsonl", ".ndjson", ".json"):
        return JsonLinesSource(path)
    raise ConfigurationError(f"{path}: a .jsonl or .parquet file expected")


def _readable(path: Path) -> Path:
    if not path.is_file():
        raise ConfigurationError(f"{path}: no such file")
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as e:
        raise ConfigurationError(f"{path}: cannot be read ({e.strerror})") from e
    return path


def _binary(column: Any) -> list[bytes | None]:
    """A binary or string column's values as bytes."""
    import pyarrow as pa

    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return [v.encode() if v is not None else None for v in column.to_pylist()]
    return column.to_pylist()


def _request_bytes(record: dict[str, Any]) -> bytes:
    """A row of contract columns as the request's JSON (maps arrive as lists of pairs; JSON strings
    are parsed; nulls are left out)."""
    request: dict[str, Any] = {}
    for name, value in record.items():
        if value is None:
            continue
        if name in ("entity", "features"):
            if isinstance(value, str | bytes):
                value = orjson.loads(value)
            elif isinstance(value, list):
                value = dict(value)
            if isinstance(value, dict):
                value = {k: v for k, v in value.items() if v is not None}
        elif isinstance(value, datetime):
            value = value.isoformat()
        request[name] = value
    return orjson.dumps(request)
