"""A replay's progress, kept on the compacted `replay.checkpoints` topic under its replay id.

The replay publishes its requests in transactions, and each transaction also writes the checkpoint
that its requests bring the replay to: the next position of each source partition and the running
counts. Read back `read_committed`, the latest checkpoint is exactly what was published, so a replay
stopped anyhow (Ctrl-C, SIGKILL, a lost broker) and run again with the same id resumes there,
publishing nothing twice; once its source is exhausted it is `done`, and running it again publishes
nothing.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import KafkaException, TopicPartition

from pipeline.contract import utc_timestamp
from pipeline.errors import ConfigurationError
from pipeline.kafka import clients
from pipeline.kafka.acls import READERS
from pipeline.kafka.offsets import watermarks
from pipeline.settings import Settings


@dataclass
class Checkpoint:
    replay_id: str
    source: dict[str, Any]  # what was asked for (Source.describe)
    ranges: dict[int, tuple[int, int]]  # the source's positions as resolved when the replay began
    results_topic: str
    positions: dict[int, int] = field(default_factory=dict)  # next position per source partition
    counts: Counter[str] = field(default_factory=Counter)  # read, published, rejected, filtered
    rejected: Counter[str] = field(default_factory=Counter)  # by error code
    done: bool = False
    started_at: str = field(default_factory=utc_timestamp)
    seconds: float = 0.0  # publishing time over every run of the replay
    rejects_bytes: int = 0  # the rejects file's length once this checkpoint's rejects are in it
    model_version: str | None = None  # a backtest's MODEL:VERSION (--model-version), the same for every run

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "replay_id": self.replay_id,
                "source": self.source,
                "ranges": {str(p): list(r) for p, r in self.ranges.items()},
                "results_topic": self.results_topic,
                "model_version": self.model_version,
                "positions": {str(p): n for p, n in self.positions.items()},
                "counts": dict(self.counts),
                "rejected": dict(self.rejected),
                "done": self.done,
                "started_at": self.started_at,
                "updated_at": utc_timestamp(),
                "seconds": round(self.seconds, 3),
                "rejects_bytes": self.rejects_bytes,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> Checkpoint:
        data = orjson.loads(raw)
        return cls(
            replay_id=data["replay_id"],
            source=data["source"],
            ranges={int(p): (r[0], r[1]) for p, r in data["ranges"].items()},
            results_topic=data["results_topic"],
            model_version=data.get("model_version"),
            positions={int(p): n for p, n in data["positions"].items()},
            counts=Counter(data["counts"]),
            rejected=Counter(data["rejected"]),
            done=data["done"],
            started_at=data["started_at"],
            seconds=data.get("seconds", 0.0),
            rejects_bytes=data.get("rejects_bytes", 0),
        )

    def total(self) -> int:
        return sum(end - start for start, end in self.ranges.values())

    def remaining(self) -> int:
        return sum(max(0, end - self.positions.get(p, start)) for p, (start, end) in self.ranges.items())


def latest(settings: Settings, replay_id: str, timeout_s: float = 60.0) -> Checkpoint | None:
    """The replay's last committed checkpoint, or None when it never committed one."""
    topic = settings.topics.replay_checkpoints
    consumer = clients.reader(settings, f"{READERS['replay']}-checkpoints", clients.QUIET)
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=10)
        except KafkaException as e:
            raise ConfigurationError(f"{settings.kafka.bootstrap_servers}: broker unreachable ({e})") from e
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            raise ConfigurationError(f"topic {topic!r} does not exist: run `pipeline topics apply`")
        ends = {}
        for p in found.partitions:
            low, high = watermarks(consumer, TopicPartition(topic, p))
            if high > low:
                ends[p] = (low, high)
        if not ends:
            return None
        assigned = [TopicPartition(topic, p, low) for p, (low, _) in ends.items()]
        consumer.assign(assigned)
        wanted, last = replay_id.encode(), None
        deadline = time.monotonic() + timeout_s
        while any(tp.offset < ends[tp.partition][1] for tp in consumer.position(assigned)):
            if time.monotonic() > deadline:
                raise ConfigurationError(f"{topic} could not be read to its end within {timeout_s:g} s")
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                if message.error() is None and message.key() == wanted and message.value() is not None:
                    last = message.value()
        return Checkpoint.decode(last) if last is not None else None
    finally:
        consumer.close()
