"""The HTTP bridge on the real stack: same result as a Kafka producer gets, idempotent retries, 4xx."""

from __future__ import annotations

import re
import signal

import httpx
import pytest

from pipeline.local import probe, traffic
from tests.conftest import free_port, make_settings, metric, running_pipeline

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["scored", "committed"])
def bridge(stack, request):
    """One worker and one gateway for the module's tests (each test uses its own event ids), with
    callers answered as soon as scored (the default) or once their result is committed."""
    with (
        running_pipeline(stack, make_settings(stack, reply_when=request.param)) as settings,
        httpx.Client(base_url=f"http://127.0.0.1:{settings.gateway.port}", timeout=30) as client,
    ):
        yield settings, client


def test_predict_returns_what_a_kafka_producer_gets(bridge):
    settings, client = bridge
    request = traffic.valid_requests(1, prefix="via-kafka-", seed=21)[0]
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    probe.publish(settings, [traffic.message_for(request)])
    from_kafka = probe.collect(settings, start, lambda c: c.distinct_results >= 1, timeout_s=60).results
    kafka_result = from_kafka[request["event_id"]][0]

    response = client.post("/v1/predict", json=dict(request, event_id="via-http-1"))

    assert response.status_code == 200
    http_result = response.json()
    assert http_result["event_id"] == "via-http-1"
    for field in ("model", "model_version", "score", "label"):
        assert http_result[field] == kafka_result[field]


def test_a_repeated_event_id_gets_the_original_result_back(bridge):
    settings, client = bridge
    request = traffic.valid_requests(1, prefix="retry-", seed=22)[0]
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])

    first = client.post("/v1/predict", json=request)
    again = client.post("/v1/predict", json=request)

    assert first.status_code == again.status_code == 200
    assert again.json() == first.json(), "same score, model_version and scored_at"
    results = probe.collect(
        settings,
        start,
        lambda c: c.distinct_results >= 1,
        timeout_s=30,
        sentinels=probe.publish_sentinels(settings),
    ).results
    assert len(results[request["event_id"]]) == 1, "a retry is not a second result on the results topic"


def test_predict_without_event_id_generates_one(bridge):
    _, client = bridge
    request = traffic.valid_requests(1, prefix="x-", seed=23)[0]
    request.pop("event_id")
    response = client.post("/v1/predict", json=request)
    assert response.status_code == 200
    assert response.json()["event_id"].startswith("http-")


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"features": {"amount": 1.0}}, "invalid_request", "entity"),
        ({"entity": {"account_id": 1}, "features": {"amount": "x"}}, "invalid_request", "features.amount"),
        ({"event_id": "", "entity": {"account_id": 1}, "features": {}}, "invalid_request", "event_id"),
        ({"entity": {"account_id": 1}, "features": {"amount": 1.0}}, "invalid_request", "features.merchant_category"),
        ({"entity": {"account_id": 1}, "features": {"amount": 1.0}, "model": "nope"}, "unknown_model", "nope"),
    ],
)
def test_invalid_bodies_get_422_naming_the_problem(bridge, body, code, field):
    _, client = bridge
    response = client.post("/v1/predict", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == code
    assert field in error["message"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hour_of_day": 99.0}, "features.hour_of_day: 99 is outside its domain [0, 23]"),
        ({"is_foreign": 7.0}, "features.is_foreign: 7 is outside its domain one of 0, 1"),
        ({"amount": -40.0}, "features.amount: -40 is outside its domain [0, 1e+06]"),
    ],
)
def test_a_feature_outside_the_models_domain_gets_422_naming_field_and_domain(bridge, change, message):
    _, client = bridge
    request = traffic.valid_requests(1, prefix=f"domain-{next(iter(change))}-", seed=31)[0]
    response = client.post("/v1/predict", json=request | {"features": request["features"] | change})
    assert response.status_code == 422
    body = response.json()
    assert body["error"]["code"] == "invalid_request" and message in body["error"]["message"]
    assert body["event_id"] == request["event_id"]


def test_a_body_that_is_not_json_gets_422(bridge):
    _, client = bridge
    response = client.post("/v1/predict", content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_json"


def test_health_and_readiness(bridge):
    _, client = bridge
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    host_port, _, token = ready.json()["answer_address"].partition("/")
    assert host_port.startswith("127.0.0.1:") and len(token) == 32
    metrics = client.get("/metrics").text
    assert "gateway_requests_total" in metrics


def _answers(client):
    """The bridge's answers so far, by route (direct from a worker, or the replies topic)."""
    text = client.get("/metrics").text
    found = re.findall(r'^gateway_answers_total\{route="(\w+)"\} (\S+)$', text, re.MULTILINE)
    return {route: float(count) for route, count in found}


def test_answers_come_straight_from_the_worker(bridge):
    _, client = bridge
    requests = traffic.valid_requests(20, prefix="route-", seed=25)
    before = _answers(client)

    assert all(client.post("/v1/predict", json=request).status_code == 200 for request in requests)

    after = _answers(client)
    gained = {route: after.get(route, 0) - before.get(route, 0) for route in ("direct", "topic")}
    # The first answer may take the topic while the worker connects to this bridge (answered at
    # commit: inside the transaction; afterwards each is sent over the link once its commit is done).
    assert gained["direct"] >= len(requests) - 1
    assert gained["direct"] + gained["topic"] == len(requests)


def test_an_unreachable_answer_address_falls_back_to_the_replies_topic(pipeline_settings, start_worker, start_gateway):
    # The bridge advertises a port where nothing listens: workers cannot answer it directly.
    settings = pipeline_settings().updated(gateway={"answer_advertise": "127.0.0.1:1"})
    start_worker(settings)
    start_gateway(settings)
    requests = traffic.valid_requests(5, prefix="fallback-", seed=26)

    with httpx.Client(base_url=f"http://127.0.0.1:{settings.gateway.port}", timeout=60) as client:
        responses = [client.post("/v1/predict", json=request) for request in requests]
        answers = _answers(client)

    assert [r.status_code for r in responses] == [200] * len(requests)
    assert [r.json()["event_id"] for r in responses] == [r["event_id"] for r in requests]
    assert answers == {"topic": len(requests)}


def test_no_result_within_the_timeout_is_a_504_naming_the_event(stack, pipeline_settings, start_gateway):
    settings = pipeline_settings()  # no worker consumes these topics
    settings = settings.updated(gateway={"timeout_s": 1.0})
    start_gateway(settings)
    request = traffic.valid_requests(1, prefix="late-", seed=24)[0]

    response = httpx.post(f"http://127.0.0.1:{settings.gateway.port}/v1/predict", json=request, timeout=30)

    assert response.status_code == 504
    error = response.json()["error"]
    assert error["code"] == "timeout"
    assert error["event_id"] == request["event_id"]


@pytest.mark.parametrize(("side", "reply_when"), [("worker", "scored"), ("worker", "committed"), ("gateway", "scored")])
def test_with_direct_answers_off_every_caller_is_answered_through_the_replies_topic(
    pipeline_settings, start_worker, start_gateway, side, reply_when
):
    worker_port = free_port()
    settings = pipeline_settings(reply_when=reply_when, metrics_port=worker_port)
    settings = settings.updated(**{side: {"direct_answers": False}})
    start_worker(settings)
    start_gateway(settings)
    requests = traffic.valid_requests(20, prefix=f"topic-only-{side}-{reply_when}-", seed=27)

    with httpx.Client(base_url=f"http://127.0.0.1:{settings.gateway.port}", timeout=60) as client:
        if side == "gateway":
            assert client.get("/readyz").json()["answer_address"] is None, "the bridge takes no direct answers"
        responses = [client.post("/v1/predict", json=request) for request in requests]
        answers = _answers(client)

    assert [r.status_code for r in responses] == [200] * len(requests)
    assert [r.json()["event_id"] for r in responses] == [r["event_id"] for r in requests]
    assert answers == {"topic": len(requests)}, "every answer came through the replies topic, none direct"
    assert metric(worker_port, "pipeline_answers_direct_total") == 0


def test_an_http_retry_after_a_worker_restart_gets_the_original_result(pipeline_settings, start_worker, start_gateway):
    settings = pipeline_settings()
    first_worker = start_worker(settings)
    start_gateway(settings)
    request = traffic.valid_requests(1, prefix="restart-retry-", seed=28)[0]
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])

    with httpx.Client(base_url=f"http://127.0.0.1:{settings.gateway.port}", timeout=60) as client:
        first = client.post("/v1/predict", json=request)
        assert first.status_code == 200
        first_worker.send_signal(signal.SIGTERM)
        assert first_worker.wait(timeout=60) == 0, "the worker stopped cleanly"
        start_worker(settings)  # same app id: its dedup state comes back from the results topic
        again = client.post("/v1/predict", json=request)

    assert again.status_code == 200
    assert again.json() == first.json(), "same score, model_version, scored_at (and every other field)"
    assert again.content == first.content
    results = probe.collect(
        settings,
        start,
        lambda c: c.distinct_results >= 1,
        timeout_s=60,
        sentinels=probe.publish_sentinels(settings),
    ).results
    assert {event_id: len(found) for event_id, found in results.items()} == {request["event_id"]: 1}
    assert results[request["event_id"]][0] == first.json(), "the answer is the committed result"
