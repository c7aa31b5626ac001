"""The scoring path on the real broker, Triton and Feast: counts, values, dedup, dead letters."""

from __future__ import annotations

import signal

import numpy as np
import pytest
import torch
from feast import FeatureStore

from pipeline.inference.scoring import feature_matrix
from pipeline.local import probe, traffic
from pipeline.models.spec import load_spec_file

pytestmark = pytest.mark.integration


def _run(settings, messages, *, results: int, dead_letters: int = 0, start=None, timeout_s: float = 120):
    start = start or probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    probe.publish(settings, messages)
    return probe.collect(
        settings,
        start,
        lambda c: c.distinct_results >= results and len(c.dead_letters) >= dead_letters,
        timeout_s=timeout_s,
        settle_s=2.0,
    )


def _reference_scores(settings, requests, model_path):
    """The same TorchScript model run in-process on the same request + Feast features."""
    from pipeline.contract import InferenceRequest

    spec = load_spec_file(settings.triton.model_repository / "fraud_scorer" / "config.pbtxt")
    store = FeatureStore(repo_path=str(settings.feast.repo_path))
    accounts = [r["entity"]["account_id"] for r in requests]
    online = store.get_online_features(list(spec.store_features), {"account_id": accounts}).to_dict()
    rows = [np.array([online[n][i] for n in spec.store_feature_names], dtype=np.float32) for i in range(len(accounts))]
    matrix = feature_matrix(spec, [InferenceRequest.model_validate(r) for r in requests], rows)
    model = torch.jit.load(str(model_path))
    with torch.inference_mode():
        return model(torch.from_numpy(matrix)).numpy()


def test_every_distinct_event_scored_once_with_the_models_score(pipeline_settings, start_worker, model_path):
    settings = pipeline_settings()
    start_worker(settings)
    requests = traffic.valid_requests(600, prefix="exact-")
    collected = _run(settings, [traffic.message_for(r) for r in requests], results=len(requests))

    assert collected.distinct_results == len(requests)
    assert collected.repeated_results == 0
    assert collected.dead_letters == []
    expected = _reference_scores(settings, requests, model_path)
    got = np.array([collected.results[r["event_id"]][0]["score"] for r in requests])
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    first = collected.results[requests[0]["event_id"]][0]
    assert first["model"] == "fraud_scorer" and first["model_version"] == "1"
    assert {res[0]["label"] for res in collected.results.values()} <= {"fraud", "legit"}
    assert all((res[0]["label"] == "fraud") == (res[0]["score"] >= 0.5) for res in collected.results.values())


def test_repeats_get_no_second_result_even_after_a_worker_restart(pipeline_settings, start_worker):
    settings = pipeline_settings()
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    first = start_worker(settings)
    originals = traffic.valid_requests(200, prefix="restart-")
    # Repeats inside the first stream too, near their originals.
    stream = [traffic.message_for(r) for r in originals] + [traffic.message_for(r) for r in originals[:50]]
    collected = _run(settings, stream, results=200, start=start)
    assert collected.distinct_results == 200 and collected.repeated_results == 0

    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) is not None
    start_worker(settings)  # same app id: recovers the dedup table from its changelog

    # Every original again, then a fresh event per account: a fresh result proves the repeats
    # before it (same key, same partition) were already handled.
    fresh = [dict(r, event_id=r["event_id"].replace("restart-", "after-")) for r in originals]
    stream = [traffic.message_for(r) for r in originals] + [traffic.message_for(r) for r in fresh]
    collected = _run(settings, stream, results=400, start=start)
    assert collected.distinct_results == 400
    assert collected.repeated_results == 0, "a repeat after restart produced a second result"


def test_each_kind_of_bad_input_is_dead_lettered_with_its_code(pipeline_settings, start_worker):
    settings = pipeline_settings()
    worker = start_worker(settings)
    good = traffic.valid_requests(20, prefix="dlq-")
    bad = [traffic.malformed(kind, good[0], f"dlq-bad-{i}") for i, (kind, _) in enumerate(traffic.MALFORMED_KINDS)]
    stream = [traffic.message_for(r) for r in good[:10]] + bad + [traffic.message_for(r) for r in good[10:]]
    collected = _run(settings, stream, results=20, dead_letters=len(bad))

    by_payload = {letter["payload"]: letter for letter in collected.dead_letters}
    assert len(collected.dead_letters) == len(bad)
    for message, (kind, code) in zip(bad, traffic.MALFORMED_KINDS, strict=True):
        letter = by_payload[message.value.decode()]
        assert letter["error"]["code"] == code, kind
        assert letter["event_id"] == message.event_id
        assert letter["source"]["topic"] == settings.topics.requests
    assert collected.distinct_results == 20, "valid requests after the bad ones were still scored"
    assert worker.poll() is None, "the worker kept running"
