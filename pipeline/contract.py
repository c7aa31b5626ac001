"""The public message contract: request parsing and validation, result and dead-letter records.

Pure functions only; see ../shared/CONTRACT.md (and docs/contract.md for the additions) for the shapes.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError

from pipeline.errors import InvalidJson, InvalidRequest, PipelineError

ERROR_CODES = (
    "invalid_json",
    "invalid_request",
    "unknown_model",
    "missing_features",
    "inference_failed",
    "deadline_exceeded",  # additive: a request whose `deadline` header had passed
)

# How every producer of the requests topic maps a key to a partition: murmur2 of the key, as Java's
# and aiokafka's default partitioner do (librdkafka's default hashes differently). A repeat of an
# event is deduplicated by the worker that owns its partition, so all producers must agree.
REQUESTS_PARTITIONER = {"partitioner": "murmur2_random"}

# Header names (values are UTF-8).
CORRELATION_ID = "correlation-id"
REPLY_TO = "reply-to"
DEADLINE = "deadline"
ANSWER_TO = "answer-to"  # host:port/token where the bridge takes answers directly (see answer_wire)
REPLY_KIND = "reply-kind"  # "result" or "dead_letter", on messages sent to a reply address
REPLAY_ID = "replay-id"  # set by `pipeline replay` on the requests it publishes, on their results and dead letters
# Set by `pipeline replay --results-topic`: a backfill worker also writes each result there, in the same
# transaction (its own results topic stays the dedup state's changelog).
RESULTS_TOPIC = "results-topic"


# Entity ids are 64-bit integers or strings (Kafka keys, Feast INT64 entities).
EntityInt = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    event_id: StrictStr | None = Field(default=None, min_length=1, max_length=128)
    model: StrictStr | None = Field(default=None, min_length=1, max_length=128)
    entity: dict[StrictStr, EntityInt | StrictStr] = Field(min_length=1)
    features: dict[StrictStr, StrictFloat]
    event_time: datetime | None = None


class InferenceRequest(_Request):
    """A request as it travels on the requests topic."""

    event_id: StrictStr = Field(min_length=1, max_length=128)


class PredictBody(_Request):
    """A request as the HTTP bridge takes it: `event_id` is generated when absent."""


@dataclass(frozen=True)
class Source:
    topic: str
    partition: int
    offset: int


def parse_request(raw: bytes | None) -> InferenceRequest:
    """Parse one message value; raises InvalidJson / InvalidRequest carrying the event_id when readable."""
    if raw is None:
        raise InvalidJson("empty message value")
    try:
        # The common case in one pass of pydantic's own JSON parser; anything it refuses is parsed
        # again below, so that the error is classified and described the one way.
        return InferenceRequest.model_validate_json(raw)
    except ValidationError:
        pass
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidJson(f"not JSON: {e}") from e
    if not isinstance(data, dict):
        raise InvalidJson("not a JSON object")
    try:
        return InferenceRequest.model_validate(data)
    except ValidationError as e:
        event_id = data.get("event_id")
        raise InvalidRequest(
            describe_validation_error(e), event_id=event_id if isinstance(event_id, str) and event_id else None
        ) from e


_UNION_TAGS = frozenset({"int", "str", "constrained-int"})


def describe_validation_error(error: ValidationError) -> str:
    """`features.amount: not a number` — the first problem, named by its field path."""
    return describe_error(dict(error.errors()[0]))


def describe_error(first: dict[str, Any]) -> str:
    loc = [str(part) for part in first["loc"] if part != "body"]
    union_branch = len(loc) > 2 and loc[0] == "entity" and loc[-1] in _UNION_TAGS
    path = ".".join(loc[:-1] if union_branch else loc)
    kind = "entity_value" if union_branch else first["type"]
    message = {
        "missing": "required",
        "float_type": "not a number",
        "int_type": "not an integer",
        "finite_number": "not a finite number",
        "entity_value": "must be a 64-bit integer or a string",
    }.get(kind, first["msg"].lower())
    return f"{path}: {message}" if path else message


def request_key(request: _Request) -> bytes:
    """The requests topic key: the entity key as UTF-8 (all requests of an entity share a partition)."""
    return entity_key(request.entity)


def entity_key(entity: Mapping[str, int | str]) -> bytes:
    """`{"account_id": 42}` → `42`; with several keys, `k1=v1|k2=v2` in key order."""
    if len(entity) == 1:
        return str(next(iter(entity.values()))).encode()
    return "|".join(f"{k}={entity[k]}" for k in sorted(entity)).encode()


def dedup_key(event_id: str, replay_id: bytes | None) -> str:
    """What a repeat is recognised by: the `event_id`, within its replay when it has one, so a
    deliberate re-score is not a repeat of the live event, and each replay scores it once."""
    return event_id if not replay_id else f"{replay_id.decode(errors='replace')}\x00{event_id}"


def utc_timestamp(when: datetime | None = None) -> str:
    when = when or datetime.now(UTC)
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    # isoformat (C) rather than strftime, the dearer of the two (docs/performance.md#scored-at-stamp).
    return when.isoformat(timespec="milliseconds") + "Z"


def result_record(
    *,
    event_id: str,
    model: str,
    model_version: str,
    score: float,
    threshold: float,
    latency_ms: float,
    scored_at: str | None = None,
    entity: Mapping[str, int | str] | None = None,
    labels: tuple[str, str] = ("legit", "fraud"),
    features: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """`scored_at` defaults to now; a batch scored in one call passes one stamp for all its results.
    `entity`: the request's entity keys, so the results' consumers need no join back to the requests.
    `labels`: the model's label below its threshold and at or above it. `features`: the request
    features the model's results carry (its `result_features`)."""
    record = {
        "event_id": event_id,
        "model": model,
        "model_version": model_version,
        "score": round(float(score), 6),
        "label": labels[1] if score >= threshold else labels[0],
        "scored_at": scored_at or utc_timestamp(),
        "latency_ms": round(latency_ms, 3),
    }
    if entity is not None:
        record["entity"] = dict(entity)
    if features:
        record["features"] = dict(features)
    return record


def dead_letter_record(
    error: PipelineError,
    raw: bytes | None,
    source: Source,
    *,
    attempts: int | None = None,
    key: bytes | None = None,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event_id": error.event_id,
        "error": {"code": error.code, "message": error.message},
        "source": {"topic": source.topic, "partition": source.partition, "offset": source.offset},
        "payload": payload_text(raw),
    }
    if raw is not None and not _is_utf8(raw):
        record["payload_encoding"] = "base64"
    if key is not None:
        record["key"] = payload_text(key)  # what a redrive republishes the payload with
    if attempts is not None:
        record["attempts"] = attempts
    return record


def payload_bytes(record: dict[str, Any]) -> bytes | None:
    """The original value of a dead letter (inverse of `payload_text`)."""
    payload = record.get("payload")
    if payload is None:
        return None
    if record.get("payload_encoding") == "base64":
        return base64.b64decode(payload)
    return str(payload).encode()


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def payload_text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii")


def deadline_passed(headers: dict[str, bytes] | Any, now_ms: int) -> bool:
    """True when a `deadline` header (epoch ms) is present, readable and in the past."""
    raw = headers.get(DEADLINE)
    if not raw:
        return False
    try:
        return int(raw) < now_ms
    except ValueError:
        return False


def parse_reply_to(value: str) -> tuple[str, int | None] | None:
    """`topic` or `topic:partition` (topic names cannot contain ':'); None when malformed."""
    topic, _, partition = value.partition(":")
    if not topic or (partition and not partition.isdigit()):
        return None
    return topic, int(partition) if partition else None
