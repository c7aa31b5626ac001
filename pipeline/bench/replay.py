"""The replay group of `pipeline bench`: its load and its figures.

A Parquet file of distinct requests as `replay export` writes them (`key`, `value`), published by
`pipeline replay` with no backfill worker running (the publishing rate); a part of it with a backfill
worker scoring it (published → scored); and the live HTTP p99 at a low rate while a replay runs,
against the same load without one, in the same run.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import topics
from pipeline.bench import load
from pipeline.replay import checkpoint
from pipeline.settings import Settings

_SCHEMA = pa.schema([("key", pa.binary()), ("value", pa.binary())])
_TEMPLATES = 100_000  # distinct transactions; each is repeated with its own event_id


def write_requests(path: Path, count: int, prefix: str, rows_per_group: int = 100_000) -> Path:
    """`count` valid requests with distinct event_ids, keyed by account, to `path`."""
    templates = [(m.key, orjson.loads(m.value)) for m in load.requests(min(count, _TEMPLATES), prefix="template-")]
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, _SCHEMA, compression="zstd") as writer:
        for start in range(0, count, rows_per_group):
            keys, values = [], []
            for i in range(start, min(count, start + rows_per_group)):
                key, request = templates[i % len(templates)]
                request["event_id"] = f"{prefix}{i:08d}"
                keys.append(key)
                values.append(orjson.dumps(request))
            writer.write_table(pa.Table.from_pydict({"key": keys, "value": values}, schema=_SCHEMA))
    return path


def backfill_settings(settings: Settings, label: str, metrics_port: int) -> Settings:
    """A part's own backfill topics (created), checkpoints and backfill group, beside the run's live
    topics: what one part published is not scored in the next."""
    uid = f"{settings.worker.app_id}-{label}"
    fresh = settings.updated(
        topics={
            "backfill_requests": f"{uid}.backfill_requests",
            "backfill_results": f"{uid}.backfill_results",
            "replay_checkpoints": f"{uid}.replay_checkpoints",
        },
        replay={"backfill_app_id": f"{uid}-backfill", "backfill_metrics_port": metrics_port},
    )
    topics.apply(fresh)
    return fresh


def published(settings: Settings, replay_id: str) -> dict[str, float]:
    """What a finished replay's checkpoint says: requests published and the seconds it took."""
    state = checkpoint.latest(settings, replay_id)
    if state is None or not state.done:
        raise RuntimeError(f"replay {replay_id} did not complete")
    return {
        "published": state.counts["published"],
        "seconds": state.seconds,
        "per_s": round(state.counts["published"] / max(1e-6, state.seconds), 1),
    }


def drop_topics(settings: Settings) -> None:
    """Delete a run's backfill topics once it is measured (see `load.drop_topics`)."""
    names = [settings.topics.backfill_requests, settings.topics.backfill_results, settings.topics.replay_checkpoints]
    admin = topics.admin_client(settings)
    for future in admin.delete_topics(names, operation_timeout=30).values():
        future.result()


def wait_exit(process: subprocess.Popen[bytes], timeout_s: float) -> float:
    """Seconds until `process` exits; raises when it fails or outlives the timeout."""
    began = time.monotonic()
    code = process.wait(timeout_s)
    if code != 0:
        raise RuntimeError(f"pipeline replay exited {code}")
    return time.monotonic() - began
