"""The HTTP bridge under production concerns: several instances, worker loss, deadlines, auth, limits."""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid

import httpx
import pytest
from confluent_kafka import Consumer, IsolationLevel, TopicPartition
from confluent_kafka.admin import OffsetSpec

from pipeline import topics
from pipeline.contract import ANSWER_TO, CORRELATION_ID, REPLY_TO
from pipeline.local import probe, traffic
from pipeline.topics import TopicSpec
from tests.conftest import free_port, make_settings, metric, running_pipeline

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
    results = probe.collect(
        settings,
        start,
        lambda c: c.distinct_results >= len(requests),
        sentinels=probe.publish_sentinels(settings),
    ).results
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
    collected = probe.collect(
        settings,
        start,
        lambda c: len(c.dead_letters) >= 200,
        timeout_s=120,
        sentinels=probe.publish_sentinels(settings),
    )
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


def _committed_values(settings, start, topic, done, timeout_s=180.0, settle_s=2.0):
    """Raw values on `topic` from `start` (read_committed) by key, until done(found) holds (then settle_s)."""
    consumer = Consumer(probe.consumer_config(settings))
    consumer.assign([TopicPartition(tp.topic, tp.partition, o) for tp, o in start.items() if tp.topic == topic])
    found: dict[bytes, list[bytes]] = {}
    deadline = time.monotonic() + timeout_s
    settle_until = None
    try:
        while time.monotonic() < deadline and (settle_until is None or time.monotonic() < settle_until):
            for message in consumer.consume(1000, 0.2):
                if message.error() is None:
                    found.setdefault(message.key(), []).append(message.value())
            if settle_until is None and done(found):
                settle_until = time.monotonic() + settle_s
    finally:
        consumer.close()
    return found


def _open_transactions(admin, topic: str, partitions: int) -> dict[int, int]:
    """Partitions of `topic` where a transaction is open, with how many records it holds so far:
    the high watermark (read_uncommitted) is past the last stable offset (read_committed)."""
    ends = {}
    for level in (IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED):
        asked = {TopicPartition(topic, p): OffsetSpec.latest() for p in range(partitions)}
        futures = admin.list_offsets(asked, isolation_level=level, request_timeout=10)
        ends[level] = {tp.partition: future.result().offset for tp, future in futures.items()}
    stable, high = ends[IsolationLevel.READ_COMMITTED], ends[IsolationLevel.READ_UNCOMMITTED]
    return {p: high[p] - stable[p] for p in range(partitions) if high[p] > stable[p]}


async def test_answered_at_commit_a_worker_killed_mid_burst_sends_only_committed_results(pipeline_settings, processes):
    # One record per batch (and a fetch that waits for it), so that a steady stream is a backlog: each
    # transaction gathers batches for up to transaction_linger_ms, so the victim holds scored work it
    # has not committed. A stable instance id: the new worker's producer aborts the transaction its
    # predecessor left open.
    settings = pipeline_settings(
        reply_when="committed",
        session_timeout_ms=6000,
        batch_size=1,
        batch_timeout_ms=1000,
        transaction_linger_ms=500,
        max_batches_per_transaction=64,
        instance_id="killed",
    )
    settings = _gateway_settings(settings, timeout_s=120.0)
    victim_settings = settings.updated(worker={"metrics_port": free_port()})
    successor_settings = settings.updated(worker={"metrics_port": free_port()})
    victim = processes.worker(victim_settings)
    processes.gateway(settings)
    requests = traffic.valid_requests(1200, prefix="committed-kill-", seed=39)
    at_kill: dict[str, object] = {}

    def scored(worker_settings) -> float:
        return metric(worker_settings.worker.metrics_port, "pipeline_events_total", outcome="scored")

    def kill_inside_an_open_transaction() -> None:
        """Once a fifth of the callers are answered: when the victim has scored at least 20 requests
        more than the bridge has answers for, watch for its next transaction to open on the results
        topic, and freeze it; if that transaction is still open then (it can never commit now), kill it."""
        admin = topics.admin_client(settings)
        deadline = time.monotonic() + 300
        while victim.poll() is None and time.monotonic() < deadline:
            answered = metric(settings.gateway.port, "gateway_answers_total")
            victim_scored = scored(victim_settings)
            watch_until = time.monotonic() + 1.0  # past transaction_linger_ms: a transaction opens by then
            while answered >= len(requests) // 5 and victim_scored - answered >= 20 and time.monotonic() < watch_until:
                if _open_transactions(admin, settings.topics.results, 12):
                    victim.send_signal(signal.SIGSTOP)
                    time.sleep(0.5)  # a commit already under way completes meanwhile
                    if open_now := _open_transactions(admin, settings.topics.results, 12):
                        victim.send_signal(signal.SIGKILL)
                        at_kill.update(answered=answered, scored=victim_scored, open=open_now)
                        processes.worker(successor_settings)
                        return
                    victim.send_signal(signal.SIGCONT)
                    break
            time.sleep(0.02)

    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    killer = asyncio.create_task(asyncio.to_thread(kill_inside_an_open_transaction))

    responses = await _burst([settings.gateway.port], requests)

    await killer
    assert at_kill, "the victim was caught inside an open transaction and killed"
    assert victim.wait(timeout=10) == -signal.SIGKILL
    # Mid-burst, checked: at least half of the requests were neither answered nor scored when the victim died.
    assert at_kill["answered"] < at_kill["scored"] <= len(requests) // 2, at_kill
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == len(requests), f"non-200: {sorted(set(statuses) - {200})}"
    answers = {r.json()["event_id"]: r.content for r in responses}
    assert set(answers) == {r["event_id"] for r in requests}
    results = _committed_values(settings, start, settings.topics.results, lambda f: len(f) >= len(requests))
    counts = {key.decode(): len(values) for key, values in results.items()}
    assert counts == dict.fromkeys(answers, 1), "exactly one committed result per request"
    # The transaction open at the kill was aborted (its results are there for read_uncommitted readers
    # only) and its requests scored again by the successor, with a new scored_at: an answer sent from
    # that transaction would differ from the committed result.
    aborted = _uncommitted_count(settings, start, settings.topics.results) - len(requests)
    assert aborted >= sum(at_kill["open"].values()) > 0, (aborted, at_kill)
    assert at_kill["scored"] + scored(successor_settings) > len(requests), "the successor scored them again"
    differing = [event_id for event_id, answer in answers.items() if results[event_id.encode()][0] != answer]
    assert differing == [], f"{len(differing)} answers are not their committed result, e.g. {differing[:3]}"


def _uncommitted_count(settings, start, topic) -> int:
    """How many records `topic` holds from `start`, aborted transactions' included (read_uncommitted)."""
    consumer = Consumer(probe.consumer_config(settings) | {"isolation.level": "read_uncommitted"})
    consumer.assign([TopicPartition(tp.topic, tp.partition, o) for tp, o in start.items() if tp.topic == topic])
    count, idle = 0, 0
    try:
        while idle < 10:
            batch = [m for m in consumer.consume(1000, 0.3) if m.error() is None]
            count += len(batch)
            idle = 0 if batch else idle + 1
    finally:
        consumer.close()
    return count


def _replies_by_correlation(settings, reply_address: str, start: int, wanted: set[str], expected: int, timeout_s=120.0):
    """How many answers the replies partition `reply_address` holds from `start` for each wanted
    correlation id (the part of the header before the padding): until `expected` are found, then 2 s more."""
    topic, _, partition = reply_address.partition(":")
    consumer = Consumer(probe.consumer_config(settings))
    consumer.assign([TopicPartition(topic, int(partition), start)])
    counts: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and sum(counts.values()) < expected:
            for message in consumer.consume(100, 0.2):
                if message.error() is None:
                    correlation = dict(message.headers() or ()).get(CORRELATION_ID, b"").decode()[:32]
                    if correlation in wanted:
                        counts[correlation] = counts.get(correlation, 0) + 1
        for message in consumer.consume(100, 2.0):  # nothing more comes
            correlation = dict(message.headers() or ()).get(CORRELATION_ID, b"").decode()[:32]
            if message.error() is None and correlation in wanted:
                counts[correlation] = counts.get(correlation, 0) + 1
    finally:
        consumer.close()
    return counts


def test_answers_to_a_bridge_that_reads_none_drop_the_link_and_take_the_replies_topic(
    stack, pipeline_settings, processes
):
    worker_port = free_port()
    settings = pipeline_settings(answer_buffer_bytes=65_536, metrics_port=worker_port)
    # The bridge keeps its reply partition while it is stopped.
    settings = _gateway_settings(settings, reply_session_timeout_ms=60_000)
    name = f"worker-buffer-{uuid.uuid4().hex[:8]}"
    processes.started.append(stack.spawn(name, settings, "worker"))
    stack.wait_for_log(name, "worker_ready", processes.started[-1])
    gateway = processes.gateway(settings)
    url = f"http://127.0.0.1:{settings.gateway.port}"
    warm_up = traffic.valid_requests(5, prefix="buffer-warm-", seed=41)
    assert all(httpx.post(f"{url}/v1/predict", json=r, timeout=60).status_code == 200 for r in warm_up)
    assert metric(worker_port, "pipeline_answers_direct_total") > 0, "the worker has a direct link to the bridge"
    ready = httpx.get(f"{url}/readyz", timeout=10).json()
    reply_address, answer_address = ready["reply_address"], ready["answer_address"]
    topic, _, partition = reply_address.partition(":")
    replies_start = probe.end_offsets(settings, [topic])[TopicPartition(topic, int(partition))]
    producer = topics.requests_producer(settings, {"linger.ms": 5})
    # Requests as this bridge would publish them, each with a ~50 kB correlation id: every answer
    # frame is that big, so a few MB fill the kernel's socket buffers and then the worker's.
    requests = traffic.valid_requests(600, prefix="buffer-", seed=42)
    correlations: list[str] = []

    def publish(wave: list[dict[str, object]]) -> None:
        for request in wave:
            correlations.append(uuid.uuid4().hex)
            headers = [
                (CORRELATION_ID, (correlations[-1] + "x" * 50_000).encode()),
                (REPLY_TO, reply_address.encode()),
                (ANSWER_TO, answer_address.encode()),
            ]
            message = traffic.message_for(request)
            producer.produce(settings.topics.requests, message.value, message.key, headers=headers)
        producer.flush(30)
        deadline = time.monotonic() + 120
        while (answered := metric(worker_port, "pipeline_answers_total") - len(warm_up)) < len(correlations):
            assert time.monotonic() < deadline, f"the worker answered {answered} of {len(correlations)} requests"
            time.sleep(0.2)

    def by_topic() -> float:
        """Answers to the test's requests sent through the replies topic (not to the link)."""
        sent = metric(worker_port, "pipeline_answers_total") - metric(worker_port, "pipeline_answers_direct_total")
        return sent - warm_up_by_topic

    # The first warm-up answer may have taken the topic while the worker connected.
    warm_up_by_topic = len(warm_up) - metric(worker_port, "pipeline_answers_direct_total")
    gateway.send_signal(signal.SIGSTOP)
    try:
        waves = [requests[i : i + 20] for i in range(0, len(requests), 20)]
        for wave in waves[:-1]:
            publish(wave)
            if by_topic() > 0:
                break
        assert by_topic() > 0, "answers to a bridge that reads none moved to the replies topic"
        direct_before = metric(worker_port, "pipeline_answers_direct_total")
        publish(waves[-1])  # while the bridge still reads nothing: straight to the topic
        assert metric(worker_port, "pipeline_answers_direct_total") == direct_before
    finally:
        gateway.send_signal(signal.SIGCONT)

    log = (stack.run_dir / f"{name}.log").read_text(errors="replace")
    assert "answer_link_backed_up" in log, "the worker dropped the connection"
    direct = metric(worker_port, "pipeline_answers_direct_total") - (len(warm_up) - warm_up_by_topic)
    on_topic = _replies_by_correlation(settings, reply_address, replies_start, set(correlations), int(by_topic()))
    assert set(on_topic.values()) == {1}, "no answer twice on the topic"
    assert len(on_topic) == by_topic() > 0, "every answer not written to the link is on the replies topic"
    assert direct + len(on_topic) == len(correlations), "each answer went one way"
    assert direct > 0, "the link took answers until its buffers were full"
    # The bridge reads again: callers are answered, and the worker's link to it comes back.
    direct_at_resume = metric(worker_port, "pipeline_answers_direct_total")
    after = traffic.valid_requests(200, prefix="buffer-after-", seed=43)
    for request in after:
        assert httpx.post(f"{url}/v1/predict", json=request, timeout=60).status_code == 200
        if metric(worker_port, "pipeline_answers_direct_total") > direct_at_resume:
            break
    assert metric(worker_port, "pipeline_answers_direct_total") > direct_at_resume, "the link was opened again"
