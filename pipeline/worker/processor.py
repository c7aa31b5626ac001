"""One batch of consumed requests in, the messages to publish out: validate, dedup, features, score.

No Kafka here: the worker hands batches in and delivery publishes what comes out, so this
runs the same under Faust, a test, or a bench.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import orjson
import structlog

from pipeline import metrics, tracing
from pipeline.contract import (
    ANSWER_TO,
    CORRELATION_ID,
    MODEL_VERSION,
    REPLAY_ID,
    REPLY_KIND,
    REPLY_TO,
    RESULTS_TOPIC,
    TRACEPARENT,
    InferenceRequest,
    dead_letter_record,
    deadline_passed,
    dedup_key,
    parse_reply_to,
    parse_request,
    result_record,
    utc_timestamp,
)
from pipeline.errors import (
    DeadlineExceeded,
    InferenceFailed,
    InferenceUnavailable,
    InvalidRequest,
    MissingFeatures,
    PipelineError,
    UnknownModel,
)
from pipeline.inference import scoring
from pipeline.inference.scoring import EntityId
from pipeline.models.routing import Arm, Routing, pinned
from pipeline.models.spec import ModelSpec
from pipeline.settings import TopicSettings
from pipeline.tracing import SpanKind
from pipeline.worker.messages import DedupEntry, Inbound, Outbound
from pipeline.worker.retry import Backoff, RetriesExhausted, retrying
from pipeline.worker.store import Located

log = structlog.get_logger(__name__)


class DedupLookup(Protocol):
    def get_many(self, keys: Sequence[tuple[int, str]], now: float) -> list[bytes | Located | None]:
        """For each (input partition, event_id) already scored, its result or where it is; else None."""
        ...


class StoredResults(Protocol):
    async def read(self, located: Sequence[tuple[int, str, Located]]) -> Mapping[tuple[int, str], bytes]:
        """The committed result of each (input partition, event_id) where the dedup state says it is
        (`result_reader.ResultReader`); those it cannot find are left out."""
        ...


class Scorer(Protocol):
    """Scores feature matrices: Triton (`inference.triton.TritonScorer`), or a model in the process."""

    async def spec(self, model: str) -> ModelSpec: ...
    async def score(self, spec: ModelSpec, matrix: np.ndarray, version: str = "") -> tuple[np.ndarray, str]:
        """Scores of each row by `version` ("": the one the server chooses), and the version that scored."""
        ...

    async def close(self) -> None: ...


class Features(Protocol):
    """Store features by entity: Feast (`features.lookup.FeatureLookup`), or a table in the process."""

    async def fetch(self, spec: ModelSpec, entity_ids: Sequence[EntityId]) -> Mapping[EntityId, np.ndarray | None]: ...
    def close(self) -> None: ...


@dataclass
class Outcome:
    messages: list[Outbound] = field(default_factory=list)  # results and dead letters
    replies: list[Outbound] = field(default_factory=list)  # answers to reply-to addresses (HTTP callers)
    remembered: list[DedupEntry] = field(default_factory=list)
    events: Counter[str] = field(default_factory=Counter)  # by outcome, added to the metric once per batch
    latencies: list[float] = field(default_factory=list)  # seconds from consume to result, per scored event

    def keep(self, partitions: set[int]) -> Outcome:
        """Only what belongs to these input partitions (the others were revoked while it was scored)."""
        return Outcome(
            messages=[m for m in self.messages if m.source_partition in partitions],
            replies=[m for m in self.replies if m.source_partition in partitions],
            remembered=[e for e in self.remembered if e.partition in partitions],
            events=self.events,
            latencies=self.latencies,
        )


@dataclass(slots=True)
class Validated:
    """A batch parsed against the contract, not yet scored (see `BatchProcessor.validate`)."""

    size: int
    parsed: list[tuple[InferenceRequest, Inbound]]
    outcome: Outcome  # dead letters of the invalid ones so far

    def event_ids(self) -> set[str]:
        return {request.event_id for request, _ in self.parsed}


@dataclass(slots=True)
class _Scored:
    """One model's outcome for a batch: each request's score and the version and arm that gave it,
    or its error; and the shadow scores of the events the candidate also scored."""

    spec: ModelSpec
    results: list[tuple[_Pending, float | PipelineError, str, str]] = field(default_factory=list)
    shadow: list[tuple[_Pending, float, str]] = field(default_factory=list)


@dataclass(slots=True)
class _Pending:
    request: InferenceRequest
    inbound: Inbound
    key: str  # its dedup key (`contract.dedup_key`)
    repeats: list[Inbound] = field(default_factory=list)  # same key later in this batch


class BatchProcessor:
    def __init__(
        self,
        topics: TopicSettings,
        default_model: str,
        scorer: Scorer,
        features: Features,
        dedup: DedupLookup,
        stored: StoredResults,
        backoff: Backoff,
        copies: bool = False,
        topic_exists: Callable[[str], bool] | None = None,
        routings: Callable[[], Mapping[str, Routing]] | None = None,
    ) -> None:
        """`copies`: a backfill worker's, which also writes each result to a replay's own results
        topic (the `results-topic` header of a replayed request) and scores a replayed request with
        the version its `model-version` header names; a live one ignores both headers.
        `topic_exists` tells whether that topic exists: a request naming one that does not is
        dead-lettered (a copy to a missing topic would fail its whole transaction). `routings`: each
        model's routing now (`models.routing_log.RoutingFollower`); without, every event goes to the
        version Triton chooses."""
        self._topics = topics
        self._copies = copies
        self._topic_exists = topic_exists
        self._default_model = default_model
        self._scorer = scorer
        self._features = features
        self._dedup = dedup
        self._stored = stored
        self._backoff = backoff
        self._routings = routings

    def validate(self, batch: Sequence[Inbound]) -> Validated:
        """The first step, apart from `complete` so that a caller can look at a batch's event_ids
        before scoring it (the worker orders batches that share one)."""
        outcome = Outcome()
        with metrics.STAGE_SECONDS.labels("validate").time():
            parsed = self._validate(batch, outcome)
        return Validated(len(batch), parsed, outcome)

    async def complete(self, validated: Validated) -> Outcome:
        """Dedup, features, scores: the outcome of a validated batch."""
        if not tracing.ENABLED:
            return await self._complete(validated)
        # One span for the batch, linked to its events' traces; each traced event gets its own span
        # in its trace (`_traced`), linked back to this one (docs/operations.md#traces).
        events = tracing.links(
            tracing.context_of(inbound.headers)
            for _, inbound in validated.parsed
            if tracing.recorded(inbound.headers.get(TRACEPARENT))
        )
        attributes: dict[str, str | int] = {
            "messaging.system": "kafka",
            "messaging.batch.message_count": validated.size,
        }
        with tracing.tracer().start_as_current_span(
            "process batch", kind=SpanKind.CONSUMER, links=events, attributes=attributes
        ):
            return await self._complete(validated)

    async def _complete(self, validated: Validated) -> Outcome:
        outcome = validated.outcome
        with metrics.STAGE_SECONDS.labels("dedup").time():
            pending, located = self._admit(validated.parsed, outcome)
        if located:
            await self._answer_from_results(located, outcome)
        by_model: dict[str, list[_Pending]] = defaultdict(list)
        for item in pending.values():
            by_model[item.request.model or self._default_model].append(item)
        for model, items in by_model.items():
            await self._score_model(model, items, outcome)
        metrics.BATCH_SIZE.observe(validated.size)
        metrics.observe_many(metrics.EVENT_LATENCY, outcome.latencies)
        for kind, count in outcome.events.items():
            metrics.EVENTS.labels(kind).inc(count)
        return outcome

    def _validate(self, batch: Sequence[Inbound], outcome: Outcome) -> list[tuple[InferenceRequest, Inbound]]:
        """Parse each message against the contract; bad ones are dead-lettered."""
        parsed = []
        for inbound in batch:
            try:
                request = parse_request(inbound.value)
                if self._topic_exists is not None:
                    self._check_copy_topic(request, inbound)
                parsed.append((request, inbound))
            except PipelineError as e:
                self._dead_letter(e, inbound, outcome)
        return parsed

    def _check_copy_topic(self, request: InferenceRequest, inbound: Inbound) -> None:
        headers = inbound.headers
        if REPLAY_ID not in headers or (copy := headers.get(RESULTS_TOPIC)) is None:
            return
        name = copy.decode(errors="replace")
        if self._topic_exists is not None and not self._topic_exists(name):
            raise InvalidRequest(
                f"{RESULTS_TOPIC} {name!r}: no such topic (create it, or replay again with another)",
                event_id=request.event_id,
            )

    def _admit(
        self, parsed: list[tuple[InferenceRequest, Inbound]], outcome: Outcome
    ) -> tuple[dict[str, _Pending], list[tuple[Inbound, str, Located]]]:
        """Answer repeats from the dedup state, skip work past its deadline; the rest is to score.
        Also returns the repeats with a reply address whose result is to be read back."""
        pending: dict[str, _Pending] = {}
        located: list[tuple[Inbound, str, Located]] = []
        now = time.time()
        now_ms = int(now * 1000)
        keyed = [(dedup_key(r.event_id, inbound.headers.get(REPLAY_ID)), r, inbound) for r, inbound in parsed]
        # One lookup for the batch: the first occurrence of each key in it.
        firsts = list({key: inbound.source.partition for key, _, inbound in keyed}.items())
        stored_results = dict(
            zip((k for k, _ in firsts), self._dedup.get_many([(p, k) for k, p in firsts], now), strict=True)
        )
        for key, request, inbound in keyed:
            if (first := pending.get(key)) is not None:
                first.repeats.append(inbound)
            elif (stored := stored_results[key]) is not None:
                if isinstance(stored, bytes):
                    self._duplicate(inbound, stored, outcome)
                elif REPLY_TO in inbound.headers:
                    located.append((inbound, key, stored))
                else:
                    outcome.events["duplicate"] += 1
            elif deadline_passed(inbound.headers, now_ms):
                expired = DeadlineExceeded("the caller's deadline passed before scoring", event_id=request.event_id)
                self._dead_letter(expired, inbound, outcome)
            else:
                pending[key] = _Pending(request, inbound, key)
        return pending, located

    async def _answer_from_results(self, located: list[tuple[Inbound, str, Located]], outcome: Outcome) -> None:
        """Repeats of committed events whose callers wait: the original result, read back from the
        results topic (one read for all of them)."""
        with metrics.STAGE_SECONDS.labels("stored_result").time():
            try:
                found = await self._stored.read([(i.source.partition, e, where) for i, e, where in located])
            except PipelineError as e:
                log.warning("stored_results_unreadable", error=e.message, repeats=len(located))
                found = {}
        for inbound, key, where in located:
            if (value := found.get((inbound.source.partition, key))) is not None:
                self._duplicate(inbound, value, outcome)
            else:  # the caller is not answered (it times out and may ask again); nothing is scored twice
                log.warning("stored_result_not_found", key=key, start=where.start, end=where.end)
                outcome.events["duplicate"] += 1

    async def _score_model(self, model: str, items: list[_Pending], outcome: Outcome) -> None:
        try:
            scored, _ = await retrying(lambda: self._score(model, items), self._backoff, self._on_retry)
        except RetriesExhausted as e:
            for item in items:
                error = InferenceFailed(e.last.message, event_id=item.request.event_id)
                self._dead_letter(error, item.inbound, outcome, attempts=e.attempts)
            return
        except PipelineError as e:  # the model itself is unknown: every request of it
            for item in items:
                self._dead_letter(type(e)(e.message, event_id=item.request.event_id), item.inbound, outcome)
            return
        scored_at = utc_timestamp()  # one model call scored them all (docs/performance.md#scored-at-stamp)
        for item, result, version, arm in scored.results:
            if isinstance(result, PipelineError):
                self._dead_letter(result, item.inbound, outcome)
            else:
                self._emit_result(item, scored.spec, version, arm, result, scored_at, outcome)
        for item, score, version in scored.shadow:
            self._emit_shadow(item, scored.spec, version, score, scored_at, outcome)

    async def _score(self, model: str, items: list[_Pending]) -> _Scored:
        """Features for the batch in one call, scores in one call per routed version, under the
        model's routing as it is now (a retry routes afresh: a version unloaded since is no longer
        routed to). Retriable errors propagate."""
        routing = self._routing(model)
        try:
            spec = await self._scorer.spec(model)
        except UnknownModel as e:
            if not routing.stable:
                raise
            # A routed model is to be served: Triton restarted, or loading it again, does not serve
            # it yet (explicit model control), so the batch waits in its retries.
            raise InferenceUnavailable(f"{e.message}, though routed to version {routing.stable}") from e
        scored = _Scored(spec)
        checked: list[tuple[_Pending, int]] = []
        for item in items:
            try:
                scoring.check_features(item.request, spec)
                checked.append((item, scoring.entity_id(item.request, spec)))
            except PipelineError as e:
                scored.results.append((item, e, "", ""))
        with (
            metrics.STAGE_SECONDS.labels("features").time(),
            tracing.span("features", attributes={"entities": len(checked)}),
        ):
            rows = await self._features.fetch(spec, [entity for _, entity in checked])
        by_version: dict[tuple[str, str], list[tuple[_Pending, np.ndarray]]] = defaultdict(list)
        shadowed: dict[str, list[tuple[_Pending, np.ndarray]]] = defaultdict(list)
        for item, entity in checked:
            if (row := rows.get(entity)) is None:
                message = f"no features for {spec.entity_key}={entity} in the feature store"
                scored.results.append((item, MissingFeatures(message, event_id=item.request.event_id), "", ""))
                continue
            if self._copies and (chosen := pinned(item.inbound.headers.get(MODEL_VERSION))) and chosen[0] == model:
                by_version[(chosen[1], Arm.BACKTEST)].append((item, row))  # a replay's chosen version
                continue
            route = routing.route(item.request.event_id)
            by_version[(route.version, route.arm)].append((item, row))
            if route.shadow is not None:
                shadowed[route.shadow].append((item, row))
        # Every version's call at once: a canary or a shadow adds a call, not its round trip in series.
        live = [self._infer(spec, found, routed) for (routed, _), found in by_version.items()]
        shadows = [self._shadow(spec, found, routed) for routed, found in shadowed.items()]
        answers = await asyncio.gather(*live, *shadows)
        for ((_, arm), found), (scores, version) in zip(by_version.items(), answers[: len(live)], strict=True):
            scored.results += [
                (item, float(score), version, arm) for (item, _), score in zip(found, scores, strict=True)
            ]
            _count_scored(spec.name, version, arm, scores)
        for found, shadow in zip(shadowed.values(), answers[len(live) :], strict=True):
            if shadow is not None:
                scores, version = shadow
                scored.shadow += [(item, float(s), version) for (item, _), s in zip(found, scores, strict=True)]
                _count_scored(spec.name, version, Arm.SHADOW, scores)
        return scored

    async def _shadow(
        self, spec: ModelSpec, found: list[tuple[_Pending, np.ndarray]], version: str
    ) -> tuple[np.ndarray, str] | None:
        """A shadow call; None when it fails: a shadow never holds up the live results, its events go
        unshadowed."""
        try:
            return await self._infer(spec, found, version)
        except PipelineError as e:
            metrics.SHADOW_FAILURES.labels(spec.name).inc(len(found))
            log.warning("shadow_failed", model=spec.name, version=version, events=len(found), error=e.message)
            return None

    def _routing(self, model: str) -> Routing:
        routings = self._routings() if self._routings is not None else {}
        return routings.get(model) or Routing(model)

    async def _infer(
        self, spec: ModelSpec, found: list[tuple[_Pending, np.ndarray]], version: str
    ) -> tuple[np.ndarray, str]:
        matrix = scoring.feature_matrix(spec, [item.request for item, _ in found], [row for _, row in found])
        attributes = {"model": spec.name, "model.version": version, "rows": len(found)}
        with (
            metrics.STAGE_SECONDS.labels("inference").time(),
            tracing.span("triton infer", SpanKind.CLIENT, attributes=attributes),
        ):
            return await self._scorer.score(spec, matrix, version)

    def _emit_result(
        self, item: _Pending, spec: ModelSpec, version: str, arm: str, score: float, scored_at: str, outcome: Outcome
    ) -> None:
        latency = time.monotonic() - item.inbound.received
        key, value = item.request.event_id.encode(), _record(item, spec, version, arm, score, scored_at, latency)
        # To the results partition numbered like the request's: the dedup state's changelog (see `changelog`).
        partition = item.inbound.source.partition
        headers = _replay_headers(item.inbound)
        if tracing.ENABLED:
            headers = _traced(item, spec.name, version, arm, score, headers)
        outcome.messages.append(Outbound(partition, self._topics.results, key, value, partition, headers))
        if self._copies and headers and (copy := item.inbound.headers.get(RESULTS_TOPIC)):
            outcome.messages.append(Outbound(partition, copy.decode(errors="replace"), key, value, None, headers))
        outcome.remembered.append(DedupEntry(item.key, partition, value))
        self._reply(item.inbound, key, value, "result", outcome)
        for repeat in item.repeats:
            self._duplicate(repeat, value, outcome)
        outcome.events["scored"] += 1
        outcome.latencies.append(latency)

    def _emit_shadow(
        self, item: _Pending, spec: ModelSpec, version: str, score: float, scored_at: str, outcome: Outcome
    ) -> None:
        """The candidate's result on an event it shadows: to the shadow topic, in the same transaction
        as the live result, never anywhere an HTTP caller or a results consumer reads."""
        latency = time.monotonic() - item.inbound.received
        value = _record(item, spec, version, Arm.SHADOW, score, scored_at, latency)
        key = item.request.event_id.encode()
        partition = item.inbound.source.partition
        topic = self._topics.shadow_results
        outcome.messages.append(Outbound(partition, topic, key, value, None, _replay_headers(item.inbound)))
        outcome.events["shadowed"] += 1

    def _duplicate(self, inbound: Inbound, stored: bytes, outcome: Outcome) -> None:
        """A repeat of a scored event: no second result; an HTTP retry gets the original back."""
        self._reply(inbound, inbound.key, stored, "result", outcome)
        outcome.events["duplicate"] += 1

    def _dead_letter(
        self, error: PipelineError, inbound: Inbound, outcome: Outcome, attempts: int | None = None
    ) -> None:
        value = orjson.dumps(
            dead_letter_record(error, inbound.value, inbound.source, attempts=attempts, key=inbound.key)
        )
        key = error.event_id.encode() if error.event_id else None
        headers = _replay_headers(inbound)
        outcome.messages.append(Outbound(inbound.source.partition, self._topics.dlq, key, value, None, headers))
        self._reply(inbound, key, value, "dead_letter", outcome)
        outcome.events["dead_letter"] += 1
        metrics.DEAD_LETTERS.labels(error.code).inc()
        log.info("dead_letter", code=error.code, event_id=error.event_id, reason=error.message)

    def _reply(self, inbound: Inbound, key: bytes | None, value: bytes, kind: str, outcome: Outcome) -> None:
        reply_to = inbound.headers.get(REPLY_TO)
        if not reply_to:
            return
        address = parse_reply_to(reply_to.decode(errors="replace"))
        if address is None:
            log.warning("bad_reply_to", reply_to=reply_to.decode(errors="replace"))
            return
        topic, partition = address
        headers = [(REPLY_KIND, kind.encode())]
        if correlation := inbound.headers.get(CORRELATION_ID):
            headers.append((CORRELATION_ID, correlation))
        answer_to = inbound.headers.get(ANSWER_TO)
        outcome.replies.append(
            Outbound(inbound.source.partition, topic, key, value, partition, tuple(headers), answer_to)
        )

    def _on_retry(self, error: PipelineError, attempt: int, delay: float) -> None:
        metrics.RETRIES.labels(error.stage).inc()
        log.warning("transient_failure", error=error.message, attempt=attempt, retry_in_s=delay)


def _record(
    item: _Pending, spec: ModelSpec, version: str, arm: str, score: float, scored_at: str, latency_s: float
) -> bytes:
    """An event's result as the contract has it (a live and a shadow result alike)."""
    request = item.request
    record = result_record(
        arm=arm,
        event_id=request.event_id,
        model=spec.name,
        model_version=version,
        score=score,
        threshold=spec.threshold,
        labels=spec.labels,
        latency_ms=latency_s * 1000,
        scored_at=scored_at,
        entity=request.entity,
        features={name: request.features[name] for name in spec.result_features} if spec.result_features else {},
    )
    return orjson.dumps(record)


def _count_scored(model: str, version: str, arm: str, scores: np.ndarray) -> None:
    """One call's scores in the metrics, per call, not per event: how many by version and arm, and
    their distribution by arm."""
    metrics.SCORED.labels(model, version, arm).inc(len(scores))
    metrics.observe_many(metrics.SCORES.labels(model, arm), scores)


def _traced(
    item: _Pending, model: str, version: str, arm: str, score: float, headers: tuple[tuple[str, bytes], ...]
) -> tuple[tuple[str, bytes], ...]:
    """An event that came with a trace gets a span in it, from its consume to its result, linked to
    its batch's span; its result names that span (`traceparent`), for the consumers that follow."""
    traceparent = item.inbound.headers.get(TRACEPARENT)
    if traceparent is None:
        return headers
    if not tracing.recorded(traceparent):  # recorded nowhere: the caller's context goes on as it came
        return (*headers, (TRACEPARENT, traceparent))
    caller = tracing.context_of(item.inbound.headers)
    span = tracing.tracer().start_span(
        f"score {model}",
        context=caller,
        kind=SpanKind.CONSUMER,
        start_time=tracing.wall_ns(item.inbound.received),
        links=tracing.current_link(),
        attributes={
            "messaging.message.id": item.request.event_id,
            "model": model,
            "model.version": version,
            "arm": arm,
            "score": score,
        },
    )
    span.end()
    named = tracing.header(span)
    return (*headers, named) if named is not None else headers


def _replay_headers(inbound: Inbound) -> tuple[tuple[str, bytes], ...]:
    """What a record written for a request carries of its headers: a replay's id."""
    replay = inbound.headers.get(REPLAY_ID)
    return ((REPLAY_ID, replay),) if replay else ()
