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
from pipeline.replay.sources import Row, TopicSource

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
            writer.write_table(pa.Table.from_pylist([_row(r) for r in chunk], schema=SCHEMA))
            written += len(chunk)
            progress.advance(len(chunk))
    partial.replace(output)
    return written


def _row(row: Row) -> dict[str, object]:
    event_id = model = None
    try:
        request = orjson.loads(row.value or b"")
        if isinstance(request, dict):
            event_id = request.get("event_id") if isinstance(request.get("event_id"), str) else None
            model = request.get("model") if isinstance(request.get("model"), str) else None
    except orjson.JSONDecodeError:
        pass
    return {
        "key": row.key,
        "value": row.value,
        "event_id": event_id,
        "model": model,
        "partition": row.partition,
        "offset": row.position,
        "timestamp": row.timestamp_ms,
    }
