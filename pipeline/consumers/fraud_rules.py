"""The fraud consumer's rules, pure: one scored result and its account's window state in, the window's
new state and any alert out. No Kafka and no Faust here (`consumers.fraud` runs them in an agent).

- `high_score`: a score at or above a hard threshold alerts at once, for that event.
- `repeated_high_scores`: at least K scores at or above T for one account within one tumbling window
  of W seconds alert once for that window.
- `velocity`: at least N results of one account within one tumbling window of V seconds (however low
  their scores): a burst of activity, as card testing makes, visible only across events.

A window's state holds the `event_id`s it counted with their scores, so a result read twice (after a
crash, before its offset was committed) counts once; a window that has alerted stops growing.
An alert's id is a hash of what decided it (rule, model, account and window, or the event), so the
same decision always gets the same id.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from pipeline.contract import utc_timestamp
from pipeline.errors import InvalidRequest

WindowState = dict[str, Any]  # {"events": {event_id: score}, "alerted": bool}: JSON in a Faust table


@dataclass(frozen=True, slots=True)
class Scored:
    """What the rules read of one result."""

    event_id: str
    account_id: int | str  # as in the request's entity
    score: float
    model: str
    model_version: str
    at: float  # epoch seconds: the result record's time


@dataclass(frozen=True, slots=True)
class WindowRule:
    name: str
    size_s: float
    count: int
    min_score: float  # only scores at or above this count (0: every result)

    def start(self, at: float) -> float:
        return math.floor(at / self.size_s) * self.size_s


def parse_result(value: bytes, at: float, entity_key: str = "account_id", *, model: str | None = None) -> Scored | None:
    """A result record (the contract's shape) as the rules read it; None when `model` is given and it
    is another model's (whose entity may be no account); InvalidRequest when it is not a result, or
    names no account."""
    try:
        record = orjson.loads(value)
        if model is not None and str(record["model"]) != model:
            return None
        entity = record.get("entity") or {}
        return Scored(
            event_id=str(record["event_id"]),
            account_id=entity[entity_key],
            score=float(record["score"]),
            model=str(record["model"]),
            model_version=str(record.get("model_version", "")),
            at=at,
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise InvalidRequest(f"not a result with entity.{entity_key}: {e!r}") from e


def alert_id(*parts: object) -> str:
    """Deterministic: the same decision, the same id (32 hex digits)."""
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:32]


def high_score(scored: Scored, threshold: float, now: float) -> dict[str, Any] | None:
    if scored.score < threshold:
        return None
    return _alert(
        alert_id("high_score", scored.model, scored.event_id),
        "high_score",
        f"account {scored.account_id} scored {scored.score:.3f}, at or above {threshold:g}",
        scored,
        {scored.event_id: scored.score},
        None,
        now,
    )


def windowed(
    rule: WindowRule, state: WindowState | None, scored: Scored, now: float
) -> tuple[WindowState | None, dict[str, Any] | None]:
    """The account's window state after `scored` (None: unchanged) and the alert it raises, if any.
    `state` is the state of the window `scored` falls in."""
    if scored.score < rule.min_score:
        return None, None
    state = state or {"events": {}, "alerted": False}
    events: Mapping[str, float] = state["events"]
    if state["alerted"] or scored.event_id in events:
        return None, None
    events = {**events, scored.event_id: scored.score}
    if len(events) < rule.count:
        return {"events": events, "alerted": False}, None
    start = rule.start(scored.at)
    window = (start, start + rule.size_s)
    if rule.min_score > 0:
        reason = (
            f"account {scored.account_id}: {len(events)} scores at or above {rule.min_score:g} "
            f"within {rule.size_s / 60:g} minutes"
        )
    else:
        reason = f"account {scored.account_id}: {len(events)} scored events within {rule.size_s:g} s"
    alert = _alert(
        alert_id(rule.name, scored.model, scored.account_id, start), rule.name, reason, scored, events, window, now
    )
    return {"events": events, "alerted": True}, alert


def _alert(
    id_: str,
    rule: str,
    reason: str,
    scored: Scored,
    events: Mapping[str, float],
    window: tuple[float, float] | None,
    now: float,
) -> dict[str, Any]:
    alert: dict[str, Any] = {
        "alert_id": id_,
        "kind": "fraud",
        "rule": rule,
        "reason": reason,
        "model": scored.model,
        "model_version": scored.model_version,
        "created_at": _stamp(now),
        "account_id": scored.account_id,
        "event_ids": list(events),
        "scores": [round(s, 6) for s in events.values()],
    }
    if window is not None:
        alert["window"] = {"start": _stamp(window[0]), "end": _stamp(window[1])}
    return alert


def _stamp(epoch_s: float) -> str:
    return utc_timestamp(datetime.fromtimestamp(epoch_s, UTC))
