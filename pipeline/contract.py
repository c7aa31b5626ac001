"""The public message contract: request parsing and validation, result and dead-letter records.

Pure functions only; the shapes are in docs/contract.md.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
import orjson
from msgspec import UNSET, UnsetType
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import PydanticCustomError

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
# Set by `pipeline replay --model-version MODEL:VERSION`: a backfill worker scores the replayed requests
# of MODEL with VERSION (a backtest), whatever the routing says; live workers ignore it.
MODEL_VERSION = "model-version"
# W3C trace context (https://www.w3.org/TR/trace-context/): on a request, the span that published it;
# on a result, the span that scored it. Optional; set only where tracing is on (`pipeline.tracing`).
TRACEPARENT = "traceparent"


# Entity ids are 64-bit integers or strings (Kafka keys, Feast INT64 entities).
EntityInt = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]


def _printable(event_id: str) -> str:
    # A control character (a NUL, a newline) in the idempotency key would blur the dedup key, which
    # joins a replay id and an event_id with NUL (`dedup_key`), and the log lines and records it is in.
    if not event_id.isprintable():
        raise PydanticCustomError("printable", "must be printable characters (no control characters)")
    return event_id


EventId = Annotated[StrictStr, Field(min_length=1, max_length=128), AfterValidator(_printable)]
EventTime = datetime | None


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    event_id: EventId | None = None
    model: StrictStr | None = Field(default=None, min_length=1, max_length=128)
    entity: dict[StrictStr, EntityInt | StrictStr] = Field(min_length=1)
    features: dict[StrictStr, StrictFloat]
    event_time: EventTime = None


class InferenceRequest(_Request):
    """A request as it travels on the requests topic."""

    event_id: EventId


class PredictBody(_Request):
    """A request as the HTTP bridge takes it: `event_id` is generated when absent."""


@dataclass(frozen=True)
class Source:
    topic: str
    partition: int
    offset: int


def parse_request(raw: bytes | None) -> InferenceRequest:
    """Parse one message value; raises InvalidJson / InvalidRequest carrying the event_id when readable.

    A request msgspec's decoder takes (`plain_request`) is built from what it decoded; anything it
    refuses goes to pydantic, which alone decides and describes every refusal (`_parse_fully`)."""
    if raw is None:
        raise InvalidJson("empty message value")
    plain = plain_request(raw)
    if plain is None:
        return _parse_fully(raw)
    return _built(*plain)


_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class PlainRequest(msgspec.Struct):
    """A request as msgspec's C decoder checks it while it decodes, in a fraction of pydantic's time:
    the contract's types and bounds, strictly (features are numbers, not strings or booleans; entity
    values 64-bit integers or strings). What it takes, `InferenceRequest` takes with the same values
    (tests/unit/test_contract.py holds the two to it on the edge cases); what it refuses, pydantic decides.
    `model` and `event_time` are UNSET when absent, so the request knows which fields were given."""

    event_id: _Id
    entity: Annotated[dict[str, _Int64 | str], msgspec.Meta(min_length=1)]
    features: dict[str, float]
    model: _Id | UnsetType | None = UNSET
    # A string for pydantic's own datetime parser: msgspec's reads fewer forms, and rounds digits
    # past the microsecond where pydantic's truncates them. A number (epoch seconds): pydantic decides.
    event_time: str | UnsetType | None = UNSET


_plain = msgspec.json.Decoder(PlainRequest)
# The field's own validator (its adapter's Python wrapper would double its cost).
_event_time = TypeAdapter(EventTime, config=_Request.model_config).validator


def plain_request(raw: bytes) -> tuple[PlainRequest, EventTime] | None:
    """The request and its `event_time` when msgspec's decoder takes it, which makes it valid;
    None: only `parse_request` can tell (docs/performance.md#request-parsing-msgspec-first)."""
    try:
        plain = _plain.decode(raw)
    # Deep nesting, in a field the contract ignores, ends msgspec's decoding with a RecursionError.
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None
    # msgspec skips the fields the contract ignores without checking that their text is UTF-8.
    if not plain.event_id.isprintable() or not (raw.isascii() or _is_utf8(raw)):
        return None
    when = plain.event_time
    if when is UNSET or when is None:
        return plain, None
    try:
        return plain, _event_time.validate_python(when)  # a string is parsed as from JSON: the same parser
    except ValidationError:
        return None


# `model_construct`, less what this model does not use (aliases, defaults, extras), in a third of its
# time: the instance's four slots set directly.
_new = object.__new__
_set_dict, _set_given, _set_extra, _set_private = (
    BaseModel.__dict__[slot].__set__
    for slot in ("__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__")
)


def _built(plain: PlainRequest, event_time: EventTime) -> InferenceRequest:
    """The `InferenceRequest` that pydantic would have made of the request msgspec checked."""
    request = _new(InferenceRequest)
    model = plain.model
    given = {"event_id", "entity", "features"}
    if model is UNSET:
        model = None
    else:
        given.add("model")
    if plain.event_time is not UNSET:
        given.add("event_time")
    _set_dict(
        request,
        {
            "event_id": plain.event_id,
            "model": model,
            "entity": plain.entity,
            "features": plain.features,
            "event_time": event_time,
        },
    )
    _set_given(request, given)
    _set_extra(request, None)
    _set_private(request, None)
    return request


def _parse_fully(raw: bytes) -> InferenceRequest:
    """pydantic's verdict, and the reason for a refusal."""
    try:
        # pydantic's own JSON parser in one pass; anything it refuses is parsed again below, so that
        # the error is classified and described the one way.
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
        raise InvalidRequest(describe_validation_error(e), event_id=_readable_event_id(data)) from e


def _readable_event_id(data: dict[str, Any]) -> str | None:
    """The event_id a refusal carries: none when it is not a string of printable characters."""
    event_id = data.get("event_id")
    return event_id if isinstance(event_id, str) and event_id and event_id.isprintable() else None


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
    arm: str | None = None,
) -> dict[str, Any]:
    """`scored_at` defaults to now; a batch scored in one call passes one stamp for all its results.
    `entity`: the request's entity keys, so the results' consumers need no join back to the requests.
    `labels`: the model's label below its threshold and at or above it. `features`: the request
    features the model's results carry (its `result_features`). `arm`: which arm of the model's
    routing scored it ("stable", "canary", or "shadow" on the shadow results topic)."""
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
    if arm is not None:
        record["arm"] = arm
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
