"""The pipeline on a three-node Kafka cluster (deploy/kafka/cluster.sh: every topic on 3 replicas,
min.insync.replicas 2, the transaction state log replicated) while its brokers are killed and
restarted: where exactly-once implementations break (a partition's leader lost mid-stream, the
transaction coordinator lost mid-transaction, every broker restarted in turn), no event is lost or
scored twice."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from aiokafka.partitioner import murmur2
from confluent_kafka import TopicPartition

from pipeline import topics
from pipeline.local import probe, traffic
from pipeline.local.cluster import LocalCluster, leader, transaction_coordinator
from pipeline.local.stack import LocalStack, free_port, settings_env
from pipeline.settings import Settings
from tests.conftest import CLUSTER_KAFKA_PORT, Processes, make_settings, route_as_served, with_replay_topics
from tests.integration.reference import reference_scores
from tests.integration.streams import Stream, requests_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The cluster, its routing topic naming the version of the fraud scorer the session's Triton serves."""
    local = LocalCluster(tmp_path_factory.mktemp("cluster"), CLUSTER_KAFKA_PORT)
    local.start()
    try:
        route_as_served(stack, local.settings(stack.settings()))
        yield local
    finally:
        local.stop()


@pytest.fixture
def on_cluster(stack: LocalStack, cluster: LocalCluster) -> Iterator[tuple[Settings, Processes]]:
    """Fresh topics on the cluster (the session's Triton scores), the processes a test starts, and
    every node running again at its end."""
    settings = make_settings(stack, cluster.settings(stack.settings()))
    processes = Processes(stack)
    try:
        yield settings, processes
    finally:
        processes.stop_all()
        for node in (1, 2, 3):
            cluster.start_node(node)  # a node already running is left as it is


def _progress(settings: Settings, start, at_least: int) -> None:
    probe.collect(settings, start, lambda c: c.distinct_results >= at_least, timeout_s=180, settle_s=0)


def test_the_leader_of_the_busiest_partition_and_then_the_transaction_coordinator_killed_lose_and_double_nothing(
    cluster, on_cluster
):
    settings, processes = on_cluster
    settings = settings.updated(worker={"instance_id": f"fo-{uuid.uuid4().hex[:6]}", "batch_size": 256})
    stream = traffic.mixed(20_000, f"fo-{uuid.uuid4().hex[:6]}-", duplicate_rate=0.2, malformed_rate=0.01)
    distinct, poison = len(stream.requests), sum(stream.expected_dead_letters.values())
    partitions = topics.partition_count(settings, settings.topics.requests)
    busiest, _ = Counter((murmur2(m.key) & 0x7FFFFFFF) % partitions for m in stream.messages).most_common(1)[0]
    processes.worker(settings)
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    # The stream in two parts: the second is published after the second loss, so the worker goes on
    # through both failovers, whatever this machine's speed.
    first, second = stream.messages[: len(stream.messages) * 3 // 5], stream.messages[len(stream.messages) * 3 // 5 :]
    probe.publish(settings, first)

    _progress(settings, start, distinct // 5)
    partition_leader = leader(settings, settings.topics.requests, busiest)
    cluster.kill(partition_leader)
    _progress(settings, start, distinct * 2 // 5)
    cluster.start_node(partition_leader)  # two of three again before the next loss: min.insync.replicas
    coordinator = transaction_coordinator(settings, f"{settings.worker.app_id}-{settings.worker.instance_id}-0")
    cluster.kill(coordinator)
    probe.publish(settings, second)
    collected = probe.collect(
        settings, start, lambda c: c.distinct_results >= distinct and len(c.dead_letters) >= poison,
        timeout_s=300, sentinels=probe.publish_sentinels(settings),
    )  # fmt: skip
    [worker_log] = [processes.stack.run_dir / f"{name}.log" for name in processes.names]
    seen = [line for line in worker_log.read_text().splitlines() if '"kafka_error"' in line]

    assert set(collected.results) == set(stream.requests)
    assert collected.repeated_results == 0, "an event scored twice across the failovers"
    assert collected.dead_letter_codes() == dict(stream.expected_dead_letters)
    assert len(collected.dead_letters) == poison, "one dead letter per poison message"
    assert any(f":{cluster.port(coordinator)}" in line for line in seen), "the worker met the coordinator's loss"
    print(f"killed node {partition_leader} (leader of requests[{busiest}]), then node {coordinator} (coordinator)")


def test_a_rolling_restart_of_every_broker_under_a_stream_and_http_calls_loses_nothing_and_answers_no_500(
    cluster, on_cluster
):
    settings, processes = on_cluster
    processes.worker(settings)
    processes.gateway(settings)
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    stream = Stream(settings, rate=300, model="fraud_scorer")
    for node in (1, 2, 3):  # as an operator upgrades a cluster: one node at a time, back in sync before the next
        time.sleep(2)
        cluster.stop_node(node)
        cluster.start_node(node)
        cluster.wait_in_sync(settings)
    time.sleep(2)
    requests = stream.stop()
    ready = httpx.get(f"http://127.0.0.1:{settings.gateway.port}/readyz", timeout=10)
    after = httpx.post(
        f"http://127.0.0.1:{settings.gateway.port}/v1/predict",
        json=requests_for("fraud_scorer", 1, prefix=f"after-{uuid.uuid4().hex[:6]}-")[0],
        timeout=30,
    )
    collected = probe.collect(
        settings, start, lambda c: c.distinct_results >= len(requests) - _unpublished(stream), timeout_s=300,
        sentinels=probe.publish_sentinels(settings),
    )  # fmt: skip

    statuses = Counter(status for _, status, _ in stream.http)
    assert statuses[200] > 0 and set(statuses) <= {200, 503, 504}, statuses
    published = [r for r in requests if r["event_id"] not in _refused(stream)]
    assert {r["event_id"] for r in published} <= set(collected.results), "a published request with no result"
    assert collected.repeated_results == 0 and collected.dead_letters == []
    assert ready.status_code == 200 and after.status_code == 200, (ready.text, after.text)
    print(f"{len(requests)} requests through three restarts; HTTP {dict(statuses)}")


def _refused(stream: Stream) -> set[str]:
    """The HTTP calls the bridge refused with 503: never published (contract.md: HTTP errors)."""
    return {str(request["event_id"]) for request, status, _ in stream.http if status == 503}


def _unpublished(stream: Stream) -> int:
    return len(_refused(stream))


def test_the_fraud_consumer_and_a_replay_carry_on_across_leader_changes_without_a_repeat(
    stack, cluster, on_cluster, tmp_path
):
    settings, processes = on_cluster
    settings = with_replay_topics(settings).updated(consumers={"metrics_port": free_port()})
    processes.worker(settings)
    processes.started.append(
        stack.start_consumer(settings, "fraud", f"fraud-{uuid.uuid4().hex[:6]}", "--from-beginning")
    )
    processes.started.append(stack.start_worker(settings, f"backfill-{uuid.uuid4().hex[:6]}", backfill=True))
    requests = traffic.valid_requests(4_000, prefix=f"lc-{uuid.uuid4().hex[:6]}-", seed=31)
    since = datetime.now(UTC) - timedelta(seconds=5)
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    probe.publish(settings, [traffic.message_for(r) for r in requests])

    # The results' leader moves while the worker writes them and the consumer reads them.
    _progress(settings, start, len(requests) // 4)
    moved = leader(settings, settings.topics.results, 0)
    cluster.stop_node(moved)
    collected = probe.collect(
        settings, start, lambda c: c.distinct_results >= len(requests), timeout_s=180,
        sentinels=probe.publish_sentinels(settings),
    )  # fmt: skip
    cluster.start_node(moved)
    cluster.wait_in_sync(settings)

    # A replay of them, its requests' leader moving while it publishes.
    replay = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "replay", "--replay-id", "lc1", "--since", since.isoformat(),
         "--rate", "500"],
        env={**os.environ, **settings_env(settings)}, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(1.5)
    backfill_leader = leader(settings, settings.topics.backfill_requests, 0)
    cluster.stop_node(backfill_leader)
    _, err = replay.communicate(timeout=180)
    cluster.start_node(backfill_leader)

    scores = dict(zip([r["event_id"] for r in requests], reference_scores(settings, requests), strict=True))
    surely = {e for e, s in scores.items() if s >= settings.consumers.fraud.hard_threshold + 1e-4}
    assert surely, "some events over the hard threshold, for the consumer to alert on"
    alerts = _until_alerts(settings, surely)
    replayed = Counter(
        value["event_id"]
        for value in probe.read_to_end(settings, _from_start(settings, settings.topics.backfill_requests))
        if str(value.get("event_id", "")).startswith("lc-")
    )

    assert collected.distinct_results == len(requests) and collected.repeated_results == 0
    ids = Counter(a["alert_id"] for a in alerts)
    assert not [i for i, n in ids.items() if n > 1], "an alert published twice"
    high = {e for a in alerts if a["rule"] == "high_score" for e in a["event_ids"]}
    assert surely <= high <= {e for e, s in scores.items() if s >= settings.consumers.fraud.hard_threshold - 1e-4}
    assert replay.returncode == 0, err.decode()[-2000:]
    assert set(replayed) == set(scores) and max(replayed.values()) == 1, "a request replayed twice"
    print(f"results' leader {moved} stopped, then the backfill requests' {backfill_leader}; {len(ids)} alerts")


def _from_start(settings: Settings, topic: str) -> dict[TopicPartition, int]:
    return {tp: 0 for tp in probe.end_offsets(settings, [topic])}


def _until_alerts(settings: Settings, expected: set[str], timeout_s: float = 120) -> list[dict]:
    """The committed fraud alerts, once the high-score alerts of `expected` events are all in."""
    deadline = time.monotonic() + timeout_s
    while True:
        alerts = probe.read_to_end(settings, _from_start(settings, settings.topics.alerts))
        if expected <= {e for a in alerts if a["rule"] == "high_score" for e in a["event_ids"]}:
            return alerts
        assert time.monotonic() < deadline, f"not every expected alert within {timeout_s:g} s"
        time.sleep(1)


def test_a_worker_refuses_at_start_a_results_topic_where_one_in_sync_replica_acknowledges(on_cluster):
    settings, _ = on_cluster
    lax = settings.updated(topics={"results": f"{settings.topics.results}.lax"})
    topics.apply(lax, [topics.TopicSpec(lax.topics.results, 12, {"min.insync.replicas": "1"})])
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "worker"], env={**os.environ, **settings_env(lax)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    [line] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert f"{lax.topics.results} has min.insync.replicas 1: acks=all is then acknowledged by one replica" in line
