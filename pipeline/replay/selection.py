"""Which rows a replay publishes, pure: each row validated against the contract, then `--filter`ed.

A filter is `FIELD OP VALUE`: `model=anomaly_detector`, an entity key (`account_id=42`,
`device_id=17`), or `event_time` with `>=`, `>`, `<=`, `<` or `=` against an RFC 3339 time. Every
filter must hold. A row that is not a valid request is rejected with the reason the worker would
give it; a valid one that a filter excludes is skipped, not rejected.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from pipeline.contract import parse_request, plain_request
from pipeline.errors import ConfigurationError, PipelineError

_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
    "=": operator.eq,
}


@dataclass(frozen=True)
class Filter:
    field: str
    op: str
    value: str | int | datetime

    def __str__(self) -> str:
        value = self.value.isoformat() if isinstance(self.value, datetime) else self.value
        return f"{self.field}{self.op}{value}"

    def matches(self, model: str, entity: Mapping[str, int | str], event_time: datetime | None) -> bool:
        compare = _OPERATORS[self.op]
        if self.field == "model":
            return compare(model, self.value)
        if self.field == "event_time":
            when = _instant(event_time)
            return when is not None and compare(when, self.value)
        found = entity.get(self.field)
        if found is None:
            return False
        # Entity ids are integers or strings: compare as the filter's value was written.
        if isinstance(self.value, int) and isinstance(found, int):
            return compare(found, self.value)
        return compare(str(found), str(self.value))


def parse_filter(text: str) -> Filter:
    """`account_id=42` → a Filter; ConfigurationError naming what is wrong."""
    for op in _OPERATORS:  # two-character operators first
        field, found, value = text.partition(op)
        if found:
            break
    else:
        raise ConfigurationError(f"--filter {text!r}: expected FIELD=VALUE (or >=, >, <=, <, != on event_time)")
    field, value = field.strip(), value.strip()
    if not field or not value:
        raise ConfigurationError(f"--filter {text!r}: expected FIELD=VALUE")
    if field == "event_time":
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as e:
            raise ConfigurationError(f"--filter {text!r}: {value!r} is not an RFC 3339 time") from e
        return Filter(field, op, when if when.tzinfo else when.replace(tzinfo=UTC))
    if op not in ("=", "!="):
        raise ConfigurationError(f"--filter {text!r}: only = and != apply to {field}")
    if field == "model":
        return Filter(field, op, value)
    try:
        return Filter(field, op, int(value))
    except ValueError:
        return Filter(field, op, value)


class Verdict(NamedTuple):  # a tuple: one per row (see `sources.Row`)
    entity: Mapping[str, int | str] | None  # the valid request's entity; None when rejected
    reason: str | None = None  # why it was rejected (the contract's code and message)
    selected: bool = True  # False: valid, but a filter excludes it


def judge(value: bytes | None, filters: Sequence[Filter], default_model: str) -> Verdict:
    """One row: rejected (with the reason), skipped by a filter, or to publish."""
    plain = plain_request(value) if value else None  # the contract's fast path: most rows
    if plain is not None:
        fields, event_time = plain
        model, entity = fields.model or None, fields.entity
    else:
        try:
            request = parse_request(value)
        except PipelineError as e:
            return Verdict(None, f"{e.code}: {e.message}")
        model, entity, event_time = request.model, request.entity, request.event_time
    if filters and not all(f.matches(model or default_model, entity, event_time) for f in filters):
        return Verdict(entity, None, False)
    return Verdict(entity, None, True)


def plain_entity(value: bytes | None) -> dict[str, int | str] | None:
    """The entity of a request that the contract's fast path takes, which is therefore valid; None: ask `judge`."""
    plain = plain_request(value) if value else None
    return plain[0].entity if plain is not None else None


def _instant(when: datetime | None) -> datetime | None:
    """An event time as an aware datetime (UTC when it names no zone)."""
    if when is None:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
