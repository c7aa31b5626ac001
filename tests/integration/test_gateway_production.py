"""The HTTP bridge under production concerns: several instances, worker loss, deadlines, auth, limits."""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid

import httpx
import pytest

from pipeline import topics
from pipeline.local import probe, traffic
from pipeline.topics import TopicSpec
from tests.conftest import free_port, make_settings, running_pipeline

pytestmark = pytest.mark.integration


def _gateway_settings(settings, **gateway):
    return settings.updated(gateway={"port": free_port(), **gateway})


async def _burst(ports, requests, concurrency=300, on_progress=None):
    """POST every request, spread over the gateways, with `concurrency` in flight."""
    clients = [httpx.AsyncClient(base_url=f"http://127.0.0.1:{p}", timeout=120) for p in ports]
    gate = asyncio.Semaphore(concurrency)
    done = 0

    async def one(i, request):
        nonlocal done
        async with gate:
            response = await clients[i % len(clients)].post("/v1/predict", json=request)
        done += 1
        if on_progress is not None:
            await on_progress(done)
        return response

    try:
        return await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
    finally:
        for client in clients:
            await client.aclose()


async def test_three_gateways_two_workers_every_caller_gets_its_own_result(pipeline_settings, processes):
    settings = pipeline_settings()
    processes.worker(settings)
    processes.worker(settings)
    gateways = [_gateway_settings(settings) for _ in range(3)]
    for gateway in gateways:
        processes.gateway(gateway)
    requests = traffic.valid_requests(3000, prefix="multi-", seed=31)

    responses = await _burst([g.gateway.port for g in gateways], requests)

    assert [r.status_code for r in responses] == [200] * len(requests)
    assert [r.json()["event_id"] for r in responses] == [r["event_id"] for r in requests]


async def test_a_worker_killed_during_a_burst_fails_no_request(pipeline_settings, processes):
    settings = pipeline_settings(session_timeout_ms=6000)
    settings = _gateway_settings(settings, timeout_s=60.0)
    victim = processes.worker(settings)
    processes.worker(settings)
    processes.gateway(settings)
    requests = traffic.valid_requests(2000, prefix="rebalance-", seed=32)

    async def kill_at_a_quarter(done):
        if done == len(requests) // 4 and victim.poll() is None:
            victim.send_signal(signal.SIGKILL)

    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])

    responses = await _burst([settings.gateway.port], requests, on_progress=kill_at_a_quarter)

    assert victim.poll() is not None, "the worker was killed mid-burst"
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == len(requests), f"non-200: {sorted(set(statuses) - {200})}"
    answers = {r.json()["event_id"]: r.json() for r in responses}
    assert set(answers) == {r["event_id"] for r in requests}
    # Callers are answered before the transaction that commits their results: those the victim
    # answered but never committed are scored again by the survivor, once, with the same score.
    results = probe.collect(settings, start, lambda c: c.distinct_results >= len(requests), settle_s=2).results
    assert {event_id: len(found) for event_id, found in results.items()} == dict.fromkeys(answers, 1)
    assert {event_id: found[0]["score"] for event_id, found in results.items()} == {
        event_id: answer["score"] for event_id, answer in answers.items()
    }


def _gauge(port, name):
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return float(re.search(rf"^{name} (\S+)$", text, re.MULTILINE).group(1))


def _in_flight(port):
    return _gauge(port, "gateway_in_flight_requests") + _gauge(port, "gateway_pending_replies")


def _reply_address(port):
    return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).json()["reply_address"]


async def test_gateways_claim_their_own_reply_partition_and_keep_it_while_another_joins(pipeline_settings, processes):
    settings = _gateway_settings(pipeline_settings(), reply_group=f"claims-{uuid.uuid4().hex[:8]}")
    processes.worker(settings)
    first = [_gateway_settings(settings) for _ in range(2)]
    for gateway in first:
        processes.gateway(gateway)
    addresses = [_reply_address(g.gateway.port) for g in first]
    assert len(set(addresses)) == 2 and all(a.startswith(f"{settings.topics.replies}:") for a in addresses)
    late = _gateway_settings(settings)
    requests = traffic.valid_requests(2000, prefix="claims-", seed=34)

    async def join_at_a_quarter(done):
        if done == len(requests) // 4:  # the group rebalances while requests are waiting for replies
            await asyncio.to_thread(processes.gateway, late)

    responses = await _burst([g.gateway.port for g in first], requests, on_progress=join_at_a_quarter)

    assert [r.status_code for r in responses] == [200] * len(requests)
    assert [_reply_address(g.gateway.port) for g in first] == addresses, "claims survive the rebalance"
    assert _reply_address(late.gateway.port) not in addresses


def test_a_gateway_with_no_free_reply_partition_is_not_ready_and_refuses_with_503(pipeline_settings, processes, stack):
    settings = pipeline_settings()
    replies = f"replies-two-{uuid.uuid4().hex[:8]}"
    topics.apply(settings, [TopicSpec(replies, partitions=2)])
    settings = settings.updated(topics={"replies": replies})
    settings = _gateway_settings(settings, reply_group=f"full-{uuid.uuid4().hex[:8]}", reply_claim_timeout_s=5.0)
    for _ in range(2):
        processes.gateway(_gateway_settings(settings))
    third = _gateway_settings(settings)
    process = stack.spawn("gateway-third", third, "gateway")
    processes.started.append(process)
    _until_listening(third.gateway.port)

    ready = httpx.get(f"http://127.0.0.1:{third.gateway.port}/readyz", timeout=10)
    refused = httpx.post(
        f"http://127.0.0.1:{third.gateway.port}/v1/predict", json=traffic.valid_requests(1, prefix="full-")[0]
    )

    assert ready.status_code == 503 and ready.json()["reply_address"] is None
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "unavailable"


def _until_listening(port, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listening on {port}")


async def test_expired_requests_are_504_then_skipped_by_workers_and_nothing_leaks(pipeline_settings, processes):
    settings = _gateway_settings(pipeline_settings(), timeout_s=1.0)
    processes.gateway(settings)  # no worker yet: every request times out
    requests = traffic.valid_requests(200, prefix="expired-", seed=33)
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])

    responses = await _burst([settings.gateway.port], requests, concurrency=200)

    assert {r.status_code for r in responses} == {504}
    assert all(r.json()["error"]["event_id"] == q["event_id"] for r, q in zip(responses, requests, strict=True))
    assert _in_flight(settings.gateway.port) == 0, "the pending map is back to empty"

    processes.worker(settings)  # arrives after every deadline: the work is skipped, not scored
    collected = probe.collect(settings, start, lambda c: len(c.dead_letters) >= 200, timeout_s=120, settle_s=2)
    assert collected.distinct_results == 0
    assert collected.dead_letter_codes() == {"deadline_exceeded": 200}
    assert _in_flight(settings.gateway.port) == 0, "late answers are dropped"


@pytest.fixture(scope="module")
def guarded(stack):
    """One worker and a gateway with API keys, a rate limit and a small body limit."""
    settings = _gateway_settings(
        make_settings(stack),
        api_keys=["key-one", "key-two"],
        rate_limit_per_s=0.5,
        rate_limit_burst=20.0,
        max_body_bytes=4096,
    )
    with running_pipeline(stack, settings):
        yield settings


def _url(settings, path="/v1/predict"):
    return f"http://127.0.0.1:{settings.gateway.port}{path}"


def test_without_a_valid_key_the_answer_is_401(guarded):
    request = traffic.valid_requests(1, prefix="auth-", seed=34)[0]
    assert httpx.post(_url(guarded), json=request).status_code == 401
    wrong = httpx.post(_url(guarded), json=request, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
    assert httpx.post(_url(guarded), json={"bad": 1}).status_code == 401, "auth before validation"
    ok = httpx.post(_url(guarded), json=request, headers={"X-API-Key": "key-two"}, timeout=30)
    assert ok.status_code == 200


def test_a_body_over_the_limit_is_413(guarded):
    request = traffic.valid_requests(1, prefix="big-", seed=35)[0]
    request["padding"] = "x" * 10_000
    response = httpx.post(_url(guarded), json=request, headers={"X-API-Key": "key-one"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"


def test_a_key_over_its_rate_gets_429_with_retry_after_and_others_are_unaffected(guarded):
    requests = traffic.valid_requests(40, prefix="rate-", seed=36)
    responses = [
        httpx.post(_url(guarded), json=r, headers={"Authorization": "Bearer key-one"}, timeout=30) for r in requests
    ]
    statuses = [r.status_code for r in responses]
    assert 429 in statuses and 200 in statuses
    limited = next(r for r in responses if r.status_code == 429)
    assert limited.json()["error"]["code"] == "rate_limited" and int(limited.headers["Retry-After"]) >= 1
    other = httpx.post(_url(guarded), json=requests[0], headers={"X-API-Key": "key-two"}, timeout=30)
    assert other.status_code == 200


def test_the_batch_endpoint_answers_each_request_in_order(guarded):
    requests = traffic.valid_requests(5, prefix="batch-", seed=37)
    requests[2] = {**requests[2], "model": "no_such_model"}
    response = httpx.post(
        _url(guarded, "/v1/predict:batch"), json={"requests": requests}, headers={"X-API-Key": "key-two"}, timeout=30
    )
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["event_id"] for r in results] == [r["event_id"] for r in requests]
    assert [r["status"] for r in results] == [200, 200, 422, 200, 200]
    assert results[2]["body"]["error"]["code"] == "unknown_model"
    assert results[0]["body"]["score"] >= 0


def test_the_openapi_document_is_served(guarded):
    document = httpx.get(_url(guarded, "/openapi.json")).json()
    assert "/v1/predict" in document["paths"] and "/v1/predict:batch" in document["paths"]


async def test_overload_is_shed_with_429_not_5xx(pipeline_settings, processes):
    settings = _gateway_settings(pipeline_settings(), max_in_flight=20, timeout_s=60.0)
    processes.worker(settings)
    processes.gateway(settings)
    requests = traffic.valid_requests(900, prefix="overload-", seed=38)

    responses = await _burst([settings.gateway.port], requests, concurrency=300)  # far past the bound

    statuses = [r.status_code for r in responses]
    assert not [s for s in statuses if s >= 500], "no 5xx under overload"
    assert statuses.count(429) > 0 and statuses.count(200) > 0
    assert set(statuses) == {200, 429}
    shed = next(r for r in responses if r.status_code == 429)
    assert shed.headers["Retry-After"] == "1" and shed.json()["error"]["code"] == "overloaded"
    assert _in_flight(settings.gateway.port) == 0
