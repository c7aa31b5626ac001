"""Which rows a replay publishes, pure: each row validated against the contract, then `--filter`ed.

A filter is `FIELD OP VALUE`: `model=anomaly_detector`, an entity key (`account_id=42`,
`device_id=17`), or `event_time` with `>=`, `>`, `<=`, `<` or `=` against an RFC 3339 time. Every
filter must hold. A row that is not a valid request is rejected with the reason the worker would
give it; a valid one that a filter excludes is skipped, not rejected.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline.contract import InferenceRequest, parse_request
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

    def matches(self, request: InferenceRequest, default_model: str) -> bool:
        compare = _OPERATORS[self.op]
        if self.field == "model":
            return compare(request.model or default_model, self.value)
        if self.field == "event_time":
            if request.event_time is None:
                return False
            when = request.event_time if request.event_time.tzinfo else request.event_time.replace(tzinfo=UTC)
            return compare(when, self.value)
        found = request.entity.get(self.field)
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


@dataclass(frozen=True)
class Verdict:
    request: InferenceRequest | None  # the valid request, None when rejected
    reason: str | None = None  # why it was rejected (the contract's code and message)
    selected: bool = True  # False: valid, but a filter excludes it


def judge(value: bytes | None, filters: Sequence[Filter], default_model: str) -> Verdict:
    """One row: rejected (with the reason), skipped by a filter, or to publish."""
    try:
        request = parse_request(value)
    except PipelineError as e:
        return Verdict(None, f"{e.code}: {e.message}")
    if filters and not all(f.matches(request, default_model) for f in filters):
        return Verdict(request, selected=False)
    return Verdict(request)
