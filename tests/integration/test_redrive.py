from __future__ import annotations

import signal

import pytest

from pipeline.local import probe, traffic
from pipeline.replay import redrive

pytestmark = pytest.mark.integration


def test_redrive_scores_what_failed_and_doubles_nothing_already_scored(pipeline_settings, start_worker):
    settings = pipeline_settings(retry_budget_s=1.0, retry_initial_ms=100, retry_max_ms=200)
    broken = settings.model_copy(update={"triton": settings.triton.model_copy(update={"grpc_url": "127.0.0.1:1"})})
    requests = traffic.valid_requests(10, prefix="redrive-")
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])

    # Triton unreachable: every request is dead-lettered once its retries run out.
    worker = start_worker(broken)
    probe.publish(settings, [traffic.message_for(r) for r in requests])
    failed = probe.collect(settings, start, lambda c: len(c.dead_letters) >= 10, timeout_s=120, settle_s=0)
    assert failed.dead_letter_codes() == {"inference_failed": 10}
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=60)

    # Fixed; meanwhile a producer retried half of them, and those got scored.
    start_worker(settings)
    probe.publish(settings, [traffic.message_for(r) for r in requests[:5]])
    probe.collect(settings, start, lambda c: c.distinct_results >= 5, timeout_s=120, settle_s=0)

    assert redrive.redrive(settings, redrive.Selection(frozenset({"inference_failed"}))) == 10

    # Sentinels after the redriven requests: once scored, a second result or a new dead letter of those
    # would have been read too (`probe.collect`).
    sentinels = probe.publish_sentinels(settings)
    collected = probe.collect(settings, start, lambda c: c.distinct_results >= 10, sentinels=sentinels)
    assert set(collected.results) == {r["event_id"] for r in requests}
    assert collected.repeated_results == 0
    assert len(collected.dead_letters) == 10, "no new dead letters"
