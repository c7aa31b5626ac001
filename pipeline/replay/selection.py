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
from typing import Annotated, Any, NamedTuple

import msgspec

from pipeline.contract import parse_request
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
    fields = _plainly_valid(value)
    if fields is not None:
        model, entity, event_time = fields.model, fields.entity, fields.event_time
    else:
        try:
            request = parse_request(value)
        except PipelineError as e:
            return Verdict(None, f"{e.code}: {e.message}")
        model, entity, event_time = request.model, request.entity, request.event_time
    if filters and not all(f.matches(model or default_model, entity, event_time) for f in filters):
        return Verdict(entity, None, False)
    return Verdict(entity, None, True)


_Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class _Plain(msgspec.Struct):
    """A request in the plainest form the contract accepts, decoded and checked in one pass of
    msgspec's C decoder (a fraction of pydantic's time): anything it refuses may still be a valid
    request, and `parse_request` decides (a replay validates every row: docs/performance.md#replay-publishing)."""

    event_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    entity: Annotated[
        dict[str, Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)] | str], msgspec.Meta(min_length=1)
    ]
    features: dict[str, float]
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    event_time: datetime | None = None


_plain = msgspec.json.Decoder(_Plain)


def _plainly_valid(value: bytes | None) -> _Plain | None:
    try:
        return _plain.decode(value) if value else None
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def plain_entity(value: bytes | None) -> dict[str, int | str] | None:
    """The entity of a request of the plainest form, which is therefore valid; None: ask `judge`."""
    try:
        return _plain.decode(value).entity if value else None
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def _instant(when: datetime | None) -> datetime | None:
    """An event time as an aware datetime (UTC when it names no zone)."""
    if when is None:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
