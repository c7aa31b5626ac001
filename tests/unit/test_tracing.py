"""`pipeline.tracing`'s pure parts: the `traceparent` header a span is named by, read back from a
message's headers (as a mapping or as Kafka's list of pairs), and a batch's links, capped. With a
real SDK tracer, not the global one (the processes set that at start)."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from pipeline import tracing
from pipeline.contract import TRACEPARENT


@pytest.fixture
def traced(monkeypatch):
    provider = TracerProvider()
    monkeypatch.setattr(tracing, "ENABLED", True)
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("test"))
    yield provider.get_tracer("test")
    provider.shutdown()


def test_off_no_context_is_read_and_no_span_is_made():
    assert not tracing.ENABLED
    assert tracing.context_of({TRACEPARENT: b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"}) is None
    with tracing.span("nothing") as span:
        assert span is None


def test_a_spans_header_names_it_and_reads_back_as_its_context(traced):
    with traced.start_as_current_span("publish") as span:
        name, value = tracing.header(span)
    ids = span.get_span_context()
    assert name == TRACEPARENT
    version, trace_id, span_id, flags = value.decode().split("-")
    assert (version, trace_id, span_id) == ("00", f"{ids.trace_id:032x}", f"{ids.span_id:016x}")
    assert int(flags, 16) & 1, "sampled"
    for headers in ({TRACEPARENT: value, "other": b"x"}, [("reply-to", b"t:0"), (TRACEPARENT, value)]):
        context = tracing.context_of(headers)
        assert trace.get_current_span(context).get_span_context().span_id == ids.span_id
    # A child made from it is in the same trace, its parent that span.
    child = traced.start_span("score", context=tracing.context_of({TRACEPARENT: value}))
    assert child.parent.span_id == ids.span_id and child.get_span_context().trace_id == ids.trace_id


def test_headers_without_a_trace_or_with_a_malformed_one_give_no_valid_parent(traced):
    assert tracing.context_of({}) is None and tracing.context_of([("reply-to", b"t:0")]) is None
    context = tracing.context_of({TRACEPARENT: b"not a traceparent"})
    assert not trace.get_current_span(context).get_span_context().is_valid


def test_a_batch_links_to_at_most_its_limit_of_traces(traced):
    headers = []
    for _ in range(5):
        with traced.start_as_current_span("publish") as span:
            headers.append([tracing.header(span)])
    assert len(tracing.links(tracing.context_of(h) for h in headers)) == 5
    assert len(tracing.links((tracing.context_of(h) for h in headers), limit=3)) == 3
    assert tracing.links([None, None], limit=3) == []
    assert len(tracing.message_links([*headers, [("reply-to", b"x")]])) == 5


def test_the_sampled_flag_is_read_from_the_header_alone():
    sampled = b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"
    assert tracing.recorded(sampled) and tracing.recorded(sampled[:-2] + b"03")
    assert not tracing.recorded(sampled[:-2] + b"00") and not tracing.recorded(sampled[:-2] + b"02")
    assert not tracing.recorded(None) and not tracing.recorded(b"00-short")
    assert not tracing.recorded(sampled[:-2] + b"zz")
