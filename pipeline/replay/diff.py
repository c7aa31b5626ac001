"""`pipeline replay diff REPLAY_ID`: a replay's results against the original results of the same
`event_id`s.

The replay's requests are read from the backfill requests topic (header `replay-id`), its results
from the backfill results topic, the originals from the results topic. `compare` is pure: matched
events, those missing on either side (a replayed request not scored yet or dead-lettered; an event
never scored live, as in an outage window), the score shift (replayed minus original: mean, mean
absolute, largest) and the label flips by direction.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import orjson
from confluent_kafka import KafkaException, Message, TopicPartition

from pipeline.contract import REPLAY_ID
from pipeline.errors import ConfigurationError
from pipeline.kafka import clients
from pipeline.kafka.acls import READERS
from pipeline.kafka.offsets import watermarks
from pipeline.settings import Settings


@dataclass(frozen=True, slots=True)
class Scored:
    score: float
    label: str
    model: str
    model_version: str


def compare(originals: Mapping[str, Scored], replayed: Mapping[str, Scored], published: set[str]) -> dict[str, Any]:
    """The diff's figures (see the module)."""
    matched = sorted(replayed.keys() & originals.keys())
    shifts = [(replayed[e].score - originals[e].score, e) for e in matched]
    flips = Counter(
        f"{originals[e].label}→{replayed[e].label}" for e in matched if originals[e].label != replayed[e].label
    )
    largest = max(shifts, key=lambda s: (abs(s[0]), s[1]), default=None)
    versions = Counter(f"{originals[e].model_version}→{replayed[e].model_version}" for e in matched)
    return {
        "published": len(published),
        "replayed": len(replayed),
        "matched": len(matched),
        "missing_in_replay": len(published - replayed.keys()),
        "missing_in_original": len(replayed.keys() - originals.keys()),
        "mean_shift": _round(sum(s for s, _ in shifts) / len(shifts)) if shifts else None,
        "mean_abs_shift": _round(sum(abs(s) for s, _ in shifts) / len(shifts)) if shifts else None,
        "largest_shift": {"event_id": largest[1], "shift": _round(largest[0])} if largest else None,
        "label_flips": dict(sorted(flips.items())),
        "model_versions": dict(sorted(versions.items())),
    }


def diff(settings: Settings, replay_id: str, results_topic: str | None = None) -> dict[str, Any]:
    wanted = replay_id.encode()
    published: set[str] = set()
    for message in read_all(settings, settings.topics.backfill_requests):
        if _replay_of(message) == wanted and (event_id := _event_id(message.value())) is not None:
            published.add(event_id)
    replayed: dict[str, Scored] = {}
    for message in read_all(settings, results_topic or settings.topics.backfill_results):
        if _replay_of(message) == wanted and (scored := _scored(message.value())) is not None:
            replayed.setdefault(scored[0], scored[1])
    originals: dict[str, Scored] = {}
    for message in read_all(settings, settings.topics.results, keys=published.__contains__):
        if (scored := _scored(message.value())) is not None:
            originals.setdefault(scored[0], scored[1])
    return {"replay_id": replay_id} | compare(originals, replayed, published)


def read_all(
    settings: Settings, topic: str, keys: Callable[[str], bool] | None = None, timeout_s: float = 600.0
) -> Iterator[Message]:
    """Every committed record of `topic` up to its current end (those whose key `keys` accepts)."""
    consumer = clients.reader(settings, f"{READERS['replay']}-diff", clients.QUIET)
    try:
        try:
            found = consumer.list_topics(topic, timeout=10).topics.get(topic)
        except KafkaException as e:
            raise ConfigurationError(f"{settings.kafka.bootstrap_servers}: broker unreachable ({e})") from e
        if found is None or found.error is not None:
            raise ConfigurationError(f"topic {topic!r} does not exist")
        ends = {p: watermarks(consumer, TopicPartition(topic, p)) for p in found.partitions}
        assigned = [TopicPartition(topic, p, low) for p, (low, high) in ends.items() if high > low]
        if not assigned:
            return
        consumer.assign(assigned)
        deadline = time.monotonic() + timeout_s
        while any(tp.offset < ends[tp.partition][1] for tp in consumer.position(assigned)):
            if time.monotonic() > deadline:
                raise ConfigurationError(f"{topic} could not be read to its end within {timeout_s:g} s")
            for message in consumer.consume(num_messages=10_000, timeout=0.5):
                if message.error() is not None:
                    continue
                if keys is None or ((key := message.key()) is not None and keys(key.decode(errors="replace"))):
                    yield message
    finally:
        consumer.close()


def _replay_of(message: Message) -> bytes | None:
    # A consumed record's headers are a list of (name, value) pairs: the stubs' dict form is for producing.
    headers = cast("list[tuple[str, bytes | None]] | None", message.headers())
    for name, value in headers or ():
        if name == REPLAY_ID:
            return value
    return None


def _event_id(value: bytes | None) -> str | None:
    try:
        event_id = orjson.loads(value or b"").get("event_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return event_id if isinstance(event_id, str) else None


def _scored(value: bytes | None) -> tuple[str, Scored] | None:
    try:
        record = orjson.loads(value or b"")
        return str(record["event_id"]), Scored(
            float(record["score"]), str(record["label"]), str(record["model"]), str(record.get("model_version", ""))
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


def _round(value: float) -> float:
    return round(value, 6) if math.isfinite(value) else value
