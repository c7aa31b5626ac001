"""`pipeline models compare MODEL`: the candidate's shadow results against the live results of the
same events (`compare`, pure). Both topics are read to their current ends; a shadow result is joined
to the live result of its `event_id`, which is always the stable version's (only stable events are
shadowed).
"""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.errors import ConfigurationError
from pipeline.models.compare import Comparison, compare
from pipeline.replay.diff import read_all
from pipeline.settings import Settings


def shadow_comparison(settings: Settings, model: str, version: str | None = None) -> Comparison:
    """The shadow results of `model` (of candidate `version`; default: the latest shadowed) against
    the live results of the same events."""
    shadowed: dict[str, dict[str, dict[str, Any]]] = {}  # version → event_id → record
    for message in read_all(settings, settings.topics.shadow_results):
        if (record := _record(message.value())) is not None and record.get("model") == model:
            shadowed.setdefault(str(record.get("model_version", "")), {})[record["event_id"]] = record
    if not shadowed:
        raise ConfigurationError(f"{model} has no shadow results on {settings.topics.shadow_results}")
    if version is None:
        version = list(shadowed)[-1]  # the last version to appear on the topic
    if version not in shadowed:
        raise ConfigurationError(f"{model} version {version} has no shadow results (shadowed: {', '.join(shadowed)})")
    candidate = shadowed[version]
    live: dict[str, dict[str, Any]] = {}
    for message in read_all(settings, settings.topics.results, keys=candidate.__contains__):
        if (record := _record(message.value())) is not None and record.get("model") == model:
            live.setdefault(record["event_id"], record)
    return compare(model, live, candidate)


def _record(value: bytes | None) -> dict[str, Any] | None:
    try:
        record = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("event_id"), str) else None
