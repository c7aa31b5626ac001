"""OpenTelemetry traces across every hop (docs/operations.md#traces): the bridge's HTTP request and
its publish, the worker's batch (feature read, Triton calls, commit) and each event's scoring, the
consumers' rules and the alerts they raise. The W3C `traceparent` travels in the Kafka headers
(`contract.TRACEPARENT`), so one caller's trace runs from its HTTP request to its result and alert.

Off unless `PIPELINE_TRACING__ENABLED`: then every call here is a cheap check of `ENABLED`, and the
hot path makes no span at all. On, spans go in batches to an OTLP/HTTP collector, or to a file.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from pipeline.contract import TRACEPARENT
from pipeline.settings import TracingSettings

ENABLED = False
MAX_LINKS = 128  # a batch span's links to its events' traces, at most (`TracingSettings.max_links`)
_PROPAGATOR = TraceContextTextMapPropagator()
_tracer: Tracer = trace.NoOpTracer()
_file: IO[str] | None = None

__all__ = [
    "ENABLED",
    "Link",
    "Span",
    "SpanKind",
    "context_of",
    "current_link",
    "flush",
    "header",
    "http_context",
    "links",
    "message_links",
    "recorded",
    "setup",
    "span",
    "tracer",
    "wall_ns",
]


def setup(settings: TracingSettings, service: str) -> None:
    """This process's tracer, named `service` (pipeline-worker, pipeline-gateway, ...), when tracing
    is on; else nothing."""
    global ENABLED, MAX_LINKS, _tracer, _file
    if not settings.enabled:
        return
    MAX_LINKS = settings.max_links
    exporter: SpanExporter
    if settings.file is not None:
        _file = open(settings.file, "a", buffering=1)  # noqa: SIM115 -- open for the process's life
        exporter = ConsoleSpanExporter(out=_file, formatter=lambda span: span.to_json(indent=None) + "\n")
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint or None)
    provider = TracerProvider(
        resource=Resource.create({"service.name": service}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _tracer = provider.get_tracer("pipeline")
    ENABLED = True


def flush() -> None:
    """Export the spans still queued (a process about to stop)."""
    provider = trace.get_tracer_provider()
    if ENABLED and isinstance(provider, TracerProvider):
        provider.force_flush()


def tracer() -> Tracer:
    return _tracer


@contextmanager
def span(name: str, kind: SpanKind = SpanKind.INTERNAL, **options: Any) -> Iterator[Span | None]:
    """A span of the current one for the block, when tracing is on (None when off). Once per batch
    or request, never per event: the off case costs a generator's entry."""
    if not ENABLED:
        yield None
        return
    with _tracer.start_as_current_span(name, kind=kind, **options) as current:
        yield current


def http_context(headers: Mapping[str, str]) -> Context | None:
    """The trace context an HTTP caller sent (its `traceparent` header), when tracing is on."""
    return _PROPAGATOR.extract(headers) if ENABLED else None


def current_link() -> list[Link]:
    """A link to the current span (a batch's, from an event's span)."""
    span_context = trace.get_current_span().get_span_context()
    return [Link(span_context)] if span_context.is_valid else []


def context_of(headers: Mapping[str, bytes] | Iterable[tuple[str, bytes | None]] | None) -> Context | None:
    """The trace context a message's headers carry (None: none, or tracing off)."""
    if not ENABLED or not headers:
        return None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in pairs:
        if name == TRACEPARENT and value:
            return _PROPAGATOR.extract({TRACEPARENT: value.decode(errors="replace")})
    return None


def recorded(traceparent: bytes | None) -> bool:
    """Whether a `traceparent` header says its trace is sampled, read from its flags without parsing
    the rest (`00-<32 hex>-<16 hex>-<flags>`): an unsampled event costs the worker no more than this."""
    if not traceparent or len(traceparent) < 55:
        return False
    try:
        return bool(int(traceparent[53:55], 16) & 1)
    except ValueError:
        return False


def header(span: Span) -> tuple[str, bytes] | None:
    """The `traceparent` header naming `span`, for the message it published (None for a span not
    recorded: tracing off, or not sampled)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    value = carrier.get(TRACEPARENT)
    return (TRACEPARENT, value.encode()) if value else None


def message_links(headers: Iterable[Iterable[tuple[str, bytes]]]) -> list[Link]:
    """Links to the spans named by these messages' `traceparent` headers, at most MAX_LINKS."""
    return links(context_of(tuple(h)) for h in headers)


def links(contexts: Iterable[Context | None], limit: int | None = None) -> list[Link]:
    """Links to the spans these contexts name, at most `limit` (default MAX_LINKS): a batch's
    events' traces."""
    limit = MAX_LINKS if limit is None else limit
    found: list[Link] = []
    if limit <= 0:
        return found
    for context in contexts:
        if context is None:
            continue
        span_context = trace.get_current_span(context).get_span_context()
        if span_context.is_valid:
            found.append(Link(span_context))
            if len(found) >= limit:
                break
    return found


def wall_ns(monotonic: float) -> int:
    """A `time.monotonic()` instant as the wall-clock nanoseconds a span's start takes."""
    return time.time_ns() - int((time.monotonic() - monotonic) * 1e9)
