"""Dedup within its window, and only within it, on the real stack."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from pipeline.local import probe, traffic
from tests.conftest import free_port, metric

pytestmark = pytest.mark.integration


def _dedup_entries(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    match = re.search(r"^pipeline_dedup_entries (\S+)$", text, re.MULTILINE)
    assert match, "the worker exports pipeline_dedup_entries"
    return float(match.group(1))


def _counted(port: int, outcome: str, expected: int) -> str | None:
    """None when the worker counted `expected` events of `outcome`, else why not. The counters are
    bumped as a batch is handled, so an aborted transaction's batches, handled again, count twice."""
    counted = metric(port, "pipeline_events_total", outcome=outcome)
    aborts = metric(port, "pipeline_transaction_aborts_total")
    if counted == expected or (aborts > 0 and counted > expected):
        return None
    return f"{counted:g} {outcome} events counted, {expected} expected ({aborts:g} transactions aborted)"


def _until(condition, what: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s:g} s: {what}"
        time.sleep(0.2)


def test_a_repeat_inside_the_window_gets_no_result_and_one_after_it_is_scored_again(pipeline_settings, start_worker):
    # A window short enough to wait out, long enough that repeats sent right after their originals'
    # results are read back are inside it (checked, below).
    port = free_port()
    settings = pipeline_settings(dedup_window_s=6.0, metrics_port=port)
    start_worker(settings)
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    requests = traffic.valid_requests(100, prefix="window-", seed=47)
    stream = [traffic.message_for(r) for r in requests]
    ids = [r["event_id"] for r in requests]

    probe.publish(settings, stream)
    first = probe.collect(settings, start, expect=ids, timeout_s=120, settle_s=0)
    assert first.distinct_results == 100
    probe.publish(settings, stream)  # inside the window: answered from the dedup state
    # Sentinels after the repeats: once they are scored, every repeat was handled and a result it got
    # would have been read (`probe.collect`). The worker remembers and counts them as scored events.
    inside_sentinels = probe.publish_sentinels(settings)
    inside = probe.collect(settings, start, sentinels=inside_sentinels)
    found = time.monotonic()  # each original's entry was stored before its repeat found it, so before now
    # The premise, should this fail: each repeat was handled (before now) within the window from its
    # original's entry, stored after its result was produced (its Kafka timestamp).
    elapsed = f"{time.time() - min(first.result_times_ms.values()) / 1000:.1f} s from the first result to now"
    assert inside.repeated_results == 0, f"no second result inside the window ({elapsed})"
    assert (why := _counted(port, "duplicate", 100)) is None, f"100 repeats handled: {why} ({elapsed})"
    entries = 100 + len(inside_sentinels.event_ids)
    _until(
        lambda: _dedup_entries(port) == entries, f"{entries} entries: the repeats added none ({_dedup_entries(port):g})"
    )

    # Repeats leave their originals' entries as they were: once the window has passed since those were
    # stored, they are not found.
    time.sleep(max(0.0, found + settings.worker.dedup_window_s + 0.5 - time.monotonic()))
    probe.publish(settings, stream)  # after the window: scored again
    after_sentinels = probe.publish_sentinels(settings)
    collected = probe.collect(settings, start, sentinels=after_sentinels)
    sentinels = len(inside_sentinels.event_ids) + len(after_sentinels.event_ids)

    counts = {event_id: len(collected.results[event_id]) for event_id in ids}
    assert counts == dict.fromkeys(ids, 2), "one result inside the window, a second one after it"
    assert (why := _counted(port, "duplicate", 100)) is None, f"only the repeats inside the window: {why}"
    assert (why := _counted(port, "scored", 200 + sentinels)) is None, why
    for event_id in ids:
        original, again = collected.results[event_id]
        assert again["scored_at"] > original["scored_at"], "the second result is a new scoring"
        assert again["score"] == original["score"], "same model, same features: same score"
