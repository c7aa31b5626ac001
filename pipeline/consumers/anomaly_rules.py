"""The anomaly consumer's rule, pure: one scored reading and its device's episode in, the episode's new
state and the alert to publish (if any) out. No Kafka and no Faust here (`consumers.anomaly` runs it).

A reading scored at or above the threshold opens an episode for its device when none is open, and the
episode's alert is published at once. Anomalous readings of the same device within `suppress_s` of
the episode's start are not alerts of their own: they are counted in the open alert's follow-up, and
the alert (same `alert_id`) is published again with the running count once `follow_up_s` has passed
since its last publication, and at the counts 1, 2, 4, 8, ... (so that a burst shows at once, in a
handful of messages): a device in trouble is one alert with a count, not a flood. The first
anomalous reading after the episode's end opens the next one.

An episode remembers the results offset of the last reading it counted: a reading read again (after
a crash, before its offset was committed) is at or below it and counts once. A device's readings are
on one results partition, in order, so that offset only grows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from pipeline.contract import utc_timestamp
from pipeline.errors import InvalidRequest

Episode = dict[str, Any]  # JSON in a Faust table, keyed by device


@dataclass(frozen=True, slots=True)
class Reading:
    """What the rule reads of one result."""

    event_id: str
    device_id: int | str
    score: float
    model: str
    model_version: str
    at: float  # epoch seconds: the result record's time
    offset: int  # its offset in its results partition
    readings: dict[str, float]  # the request features the result carries (the model's result_features)


@dataclass(frozen=True, slots=True)
class Suppression:
    threshold: float
    suppress_s: float
    follow_up_s: float


def parse_reading(
    value: bytes | None, at: float, offset: int, model: str, entity_key: str = "device_id"
) -> Reading | None:
    """A result record (the contract's shape) as the rule reads it; None when it is another model's;
    InvalidRequest when it is not a result, or is `model`'s and names no device."""
    try:
        record = orjson.loads(value or b"")
        if str(record["model"]) != model:
            return None
        return Reading(
            event_id=str(record["event_id"]),
            device_id=(record.get("entity") or {})[entity_key],
            score=float(record["score"]),
            model=model,
            model_version=str(record.get("model_version", "")),
            at=at,
            offset=offset,
            readings=dict(record.get("features") or {}),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise InvalidRequest(f"not a result with entity.{entity_key}: {e!r}") from e


def decide(
    rule: Suppression, episode: Episode | None, reading: Reading, now: float
) -> tuple[Episode | None, dict[str, Any] | None]:
    """The device's episode after `reading` (None: unchanged) and the alert to publish, if any."""
    if episode is not None and reading.offset <= episode["offset"]:
        return None, None  # counted already
    if reading.score < rule.threshold:
        if episode is None:
            return None, None
        return {**episode, "offset": reading.offset}, None
    if episode is None or reading.at >= episode["started_at"] + rule.suppress_s:
        opened = {
            "alert_id": hashlib.sha256(
                f"anomaly|{reading.model}|{reading.device_id}|{reading.event_id}".encode()
            ).hexdigest()[:32],
            "started_at": reading.at,
            "first": {"event_id": reading.event_id, "score": round(reading.score, 6), "readings": reading.readings},
            "model_version": reading.model_version,
            "follow_ups": 0,
            "last": None,
            "published_at": reading.at,
            "offset": reading.offset,
        }
        return opened, alert(rule, opened, reading, now)
    counted = {
        **episode,
        "follow_ups": episode["follow_ups"] + 1,
        "last": {
            "event_id": reading.event_id,
            "score": round(reading.score, 6),
            "at": _stamp(reading.at),
            "readings": reading.readings,
        },
        "offset": reading.offset,
    }
    count = counted["follow_ups"]
    # Republished with the count when `follow_up_s` has passed, and at counts 1, 2, 4, 8, ...: a burst
    # is seen growing at once, in a handful of messages.
    if reading.at < episode["published_at"] + rule.follow_up_s and count & (count - 1):
        return counted, None
    counted["published_at"] = reading.at
    return counted, alert(rule, counted, reading, now)


def alert(rule: Suppression, episode: Episode, reading: Reading, now: float) -> dict[str, Any]:
    """The alert of an episode as it stands."""
    start = episode["started_at"]
    return {
        "alert_id": episode["alert_id"],
        "kind": "anomaly",
        "rule": "anomalous_reading",
        "reason": f"device {reading.device_id} scored {episode['first']['score']:.3f}, at or above {rule.threshold:g}",
        "model": reading.model,
        "model_version": episode["model_version"],
        "created_at": _stamp(now),
        "device_id": reading.device_id,
        "event_id": episode["first"]["event_id"],
        "score": episode["first"]["score"],
        "readings": episode["first"].get("readings", {}),
        "window": {"start": _stamp(start), "end": _stamp(start + rule.suppress_s)},
        "follow_up": {"count": episode["follow_ups"], "last": episode["last"]},
    }


def _stamp(epoch_s: float) -> str:
    return utc_timestamp(datetime.fromtimestamp(epoch_s, UTC))
