"""`pipeline replay export`: a topic range to a Parquet file, so history outlives the topic's retention.

Each record becomes a row: `key` and `value` (the request as it was published, byte for byte), its
`event_id` and `model` when the value is a readable request (for filtering and inspection), and
where it was: `partition`, `offset`, `timestamp`. `pipeline replay --file` reads it back.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.replay.progress import Progress
from pipeline.replay.sources import Chunk, TopicSource

SCHEMA = pa.schema(
    [
        ("key", pa.binary()),
        ("value", pa.binary()),
        ("event_id", pa.string()),
        ("model", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("timestamp", pa.timestamp("ms", tz="UTC")),
    ]
)


def export(source: TopicSource, output: Path) -> int:
    """Write the source's range to `output` (replaced, via a temporary file); the rows written."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    total = sum(end - start for start, end in source.ranges().values())
    written = 0
    with pq.ParquetWriter(partial, SCHEMA, compression="zstd") as writer, Progress("export", total) as progress:
        for chunk in source.chunks({}):
            writer.write_table(_table(chunk))
            written += chunk.size
            progress.advance(chunk.size)
    partial.replace(output)
    return written


def _table(chunk: Chunk) -> pa.Table:
    described = [_described(value) for value in chunk.values]
    return pa.Table.from_pydict(
        {
            "key": chunk.keys,
            "value": chunk.values,
            "event_id": [event_id for event_id, _ in described],
            "model": [model for _, model in described],
            "partition": chunk.partitions,
            "offset": chunk.positions,
            "timestamp": chunk.timestamps,
        },
        schema=SCHEMA,
    )


def _described(value: bytes | None) -> tuple[str | None, str | None]:
    """The event_id and model of a readable request; None for what is not one."""
    try:
        request = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(request, dict):
        return None, None
    event_id, model = request.get("event_id"), request.get("model")
    return (event_id if isinstance(event_id, str) else None), (model if isinstance(model, str) else None)
