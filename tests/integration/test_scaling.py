"""`pipeline scale` on the real broker: a burst into 12 partitions with one worker running is met by
more workers, drained, and scaled back down after the stabilisation window, every request scored
once, in a bounded number of scale events; a burst into an idle pipeline under the default policy
is drained no slower than by one worker alone, by no more workers than the CPUs; a worker stopped
in the middle of a backlog loses and doubles nothing; the policy service answers what KEDA reads."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from pipeline.local import probe, traffic
from pipeline.local.stack import free_port, settings_env
from pipeline.scaling import cpus
from pipeline.scaling.lag import BacklogReader
from pipeline.scaling.learnt import LearntRates
from pipeline.scaling.pool import WorkerPool, instance
from tests.conftest import metric

pytestmark = pytest.mark.integration

BURST = 100_000


@pytest.fixture
def scale_settings(pipeline_settings, tmp_path):
    """A fresh group on fresh topics; a policy quick enough for a test: a backlog is drained within
    2 s (so 100,000 requests call for the most workers, a new one assumed to start in 2 s), up at
    most every 5 s, down after 15 s. Three workers, above this machine's cores, and every step kept
    whatever it adds (`min_gain` 0, no CPU limit): what is tested is the mechanism of a step.
    Batches of 32 keep one worker slow enough (~9,000/s here) that it drains such a burst in longer
    than a new worker takes to help, so a scale-up is worth it."""
    return pipeline_settings(state_dir=tmp_path / "state", batch_size=32).updated(
        scaling={
            "min_workers": 1,
            "max_workers": 3,
            "drain_s": 2.0,
            "up_cooldown_s": 5.0,
            "down_window_s": 15.0,
            "restore_s": 1.0,
            "start_s": 2.0,
            "interval_s": 1.0,
            "status_every_s": 0.5,  # every decision in the log: a failure shows the way it went
            "worker_rate_per_s": 2_000.0,
            "min_gain": 0.0,
            "cpu_busy_limit": 1.0,
            "worker_metrics_port": 0,
            "run_dir": tmp_path / "scale",
            "serve_port": free_port(),
        }
    )


def _wait(what: str, check, timeout_s: float, every_s: float = 0.5, process=None, port: int | None = None):
    """`check()`'s value once truthy; on time out, the failure says the service's last decision."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process is None or process.poll() is None, f"exited ({process.returncode}) waiting for: {what}"
        if value := check():
            return value
        time.sleep(every_s)
    last = _desired(port) if port is not None else None
    raise AssertionError(f"not within {timeout_s:g} s: {what}" + (f"; last decision: {last}" if last else ""))


def _desired(port: int) -> dict | None:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/desired", timeout=2)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def _ready_workers(run_dir: Path) -> int:
    return sum("worker_ready" in log.read_text(errors="replace") for log in run_dir.glob("*.log"))


def test_a_burst_is_scaled_up_drained_and_scaled_down_once_each(stack, processes, scale_settings):
    settings, port = scale_settings, scale_settings.scaling.serve_port
    run_dir = Path(settings.scaling.run_dir)
    name = f"scale-{uuid.uuid4().hex[:8]}"
    supervisor = processes.stack.spawn(name, settings, "scale")
    processes.started.append(supervisor)
    _wait("one worker ready", lambda: _ready_workers(run_dir) >= 1, 90, process=supervisor)
    assert _desired(port)["workers"] == 1, "min_workers without a backlog"

    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    # 20% repeats, anywhere later in the burst: many meet their original's partition on another worker.
    burst = traffic.mixed(BURST, f"burst-{uuid.uuid4().hex[:6]}-", duplicate_rate=0.2, malformed_rate=0)
    distinct = len(burst.requests)
    probe.publish(settings, burst.messages)
    _wait("scaled up", lambda: (d := _desired(port)) and d["desired_workers"] > 1 and d, 30, every_s=0.2, port=port)

    collected = probe.collect(
        settings,
        start,
        lambda c: c.distinct_results >= distinct,
        timeout_s=300,
        sentinels=probe.publish_sentinels(settings),
    )
    assert set(collected.results) == set(burst.requests)
    assert collected.repeated_results == 0, "an event scored twice across the rebalances"
    assert collected.dead_letters == []

    # The step down may come while the burst's last repeats are still being read (one worker drains
    # them within drain_s: the policy's demand counts the lag); then the lag reaches 0 at one worker.
    down = _wait(
        "scaled down and drained",
        lambda: (d := _desired(port)) and d["workers"] == 1 and d["lag_records"] == 0 and d,
        60,
        port=port,
    )
    assert "down to 1" in down["reason"] or down["desired_workers"] == 1
    assert down["lag_seconds"] == 0
    ups = metric(port, "pipeline_scaling_events_total", direction="up")
    downs = metric(port, "pipeline_scaling_events_total", direction="down")
    # Up to the top (straight once a worker's rate is measured, else one step on the prior first) and
    # one down: within 2 each, however the drain goes.
    assert 1 <= ups <= 2 and 1 <= downs <= 2, (ups, downs)

    supervisor.terminate()
    assert supervisor.wait(60) == 0
    lines = _events(processes.stack.run_dir / f"{name}.log")
    stops = [line for line in lines if line["event"] == "worker_stopped"]
    assert len(stops) == 3, "two stopped by the scale-down, one at the supervisor's stop"
    assert all(stop["exit_code"] == 0 and not stop["killed"] and stop["stop_s"] > 0 for stop in stops), stops
    decisions = [line for line in lines if line["event"] == "scale_decision"]
    counts = [d["desired_workers"] for d in decisions]
    assert counts[0] == 1 and 3 in counts and counts[-1] == 1, counts
    # The snapshot polled above may already say "3 kept"; the log keeps the step itself.
    up = decisions[counts.index(3)]
    assert "needed, up to 3" in up["reason"] and up["max_workers"] == 3, up
    assert all(d["reason"] for d in decisions)
    # Read beside the lag: the usable CPUs (the supervisor runs the workers here) and Triton's queue, from
    # Triton's own metrics endpoint.
    assert all(d["cpu_busy"] is not None and 0 <= d["cpu_busy"] <= 1 for d in decisions[1:]), decisions
    assert any(d["triton_queue_s"] is not None and d["triton_queue_s"] >= 0 for d in decisions), decisions
    started = [line["instance"] for line in lines if line["event"] == "worker_started"]
    assert started == [instance(0), instance(1), instance(2)], "one at the start, two for the burst"
    # Whether the two join before one worker has drained the burst depends on the machine's load;
    # a worker joining mid-stream is test_guarantee's partitions-revoked test.

    # One worker's rate as measured is kept on the group's record, and a scaler started next reads it back.
    measured = {d["per_worker_per_s"] for d in decisions if d["per_worker_measured"]}
    kept = LearntRates(settings, settings.worker.app_id)
    try:
        learnt = kept.load()
    finally:
        kept.close()
    assert learnt is not None and round(learnt.per_worker_per_s, 1) in measured, (learnt, measured)
    assert 1 <= learnt.workers <= 3


IDLE_BURST = 100_000


def _drained_in(settings, messages, distinct: int) -> tuple[float, probe.Collected]:
    """Publish `messages` into an idle pipeline: seconds from the first published to the last first
    result (the results' own broker timestamps), and what was collected."""
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    began = time.time()
    probe.publish(settings, messages)
    collected = probe.collect(
        settings,
        start,
        lambda c: c.distinct_results >= distinct,
        timeout_s=300,
        sentinels=probe.publish_sentinels(settings),
    )
    return max(collected.result_times_ms.values()) / 1000 - began, collected


def test_a_burst_into_an_idle_pipeline_drains_no_slower_than_one_worker_and_within_the_cores(
    stack, processes, pipeline_settings, tmp_path
):
    """The default policy (its interval aside) on this machine: it runs at most the CPUs it may use,
    and a burst is drained no slower than by one worker alone. A policy that took a new worker's start
    for free ran 12 workers on 2 cores here and drained 3-4 times slower (the issue's measure)."""
    cores = cpus.count()

    def one_worker_alone(label: str) -> float:
        alone = pipeline_settings(state_dir=tmp_path / label)
        processes.worker(alone)
        burst = traffic.mixed(IDLE_BURST, f"{label}-{uuid.uuid4().hex[:6]}-", duplicate_rate=0.2, malformed_rate=0)
        seconds, collected = _drained_in(alone, burst.messages, len(burst.requests))
        assert set(collected.results) == set(burst.requests) and collected.repeated_results == 0
        processes.stop_all()
        return seconds

    # One worker alone before and after the supervisor's run: the other xdist worker's load drifts
    # between runs, so the baseline is the two runs' mean, taken on either side of the measured one.
    before_s = one_worker_alone("alone-before")

    # `pipeline scale` from one worker, on a group and topics of its own.
    port, run_dir = free_port(), tmp_path / "scale"
    scaled = pipeline_settings(state_dir=tmp_path / "scaled").updated(
        scaling={"interval_s": 1.0, "worker_metrics_port": 0, "run_dir": run_dir, "serve_port": port}
    )
    name = f"scale-{uuid.uuid4().hex[:8]}"
    supervisor = processes.stack.spawn(name, scaled, "scale")
    processes.started.append(supervisor)
    _wait("one worker ready", lambda: _ready_workers(run_dir) >= 1, 90, process=supervisor)
    burst = traffic.mixed(IDLE_BURST, f"scaled-{uuid.uuid4().hex[:6]}-", duplicate_rate=0.2, malformed_rate=0)
    scaled_s, collected = _drained_in(scaled, burst.messages, len(burst.requests))
    assert set(collected.results) == set(burst.requests), "every distinct event scored"
    assert collected.repeated_results == 0 and collected.dead_letters == [], "none twice, repeats dropped"
    status = _wait("a decision", lambda: _desired(port), 10, process=supervisor)
    supervisor.terminate()
    assert supervisor.wait(60) == 0
    one_s = (before_s + one_worker_alone("alone-after")) / 2

    lines = _events(processes.stack.run_dir / f"{name}.log")
    decisions = [line for line in lines if line["event"] == "scale_decision"]
    assert status["max_workers"] == cores and {d["max_workers"] for d in decisions} == {cores}
    assert max(d["desired_workers"] for d in decisions) <= cores, [d["reason"] for d in decisions]
    started = {line["instance"] for line in lines if line["event"] == "worker_started"}
    assert len(started) <= cores, started
    # No slower than one worker, within the noise of runs on two shared cores beside another test
    # process and the supervisor's own polling (a run kept at one worker came to 1.28x in CI); the
    # defect this guards against drained 3-4 times slower.
    assert scaled_s <= 1.5 * one_s, (scaled_s, before_s, one_s, [d["reason"] for d in decisions])


def _events(path: Path) -> list[dict]:
    """The JSON log lines of a process."""
    return [orjson.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_a_worker_stopped_in_the_middle_of_a_backlog_loses_and_doubles_nothing(stack, scale_settings):
    settings = scale_settings.updated(scaling={"stop_timeout_s": 60.0})
    pool = WorkerPool(settings, env={**os.environ, **settings_env(settings)})
    run_dir = Path(settings.scaling.run_dir)
    try:
        pool.resize(2)
        _wait("two workers ready", lambda: _ready_workers(run_dir) >= 2, 120)
        start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
        count, prefix = 20_000, f"stop-{uuid.uuid4().hex[:6]}-"
        probe.publish(settings, [traffic.message_for(r) for r in traffic.valid_requests(count, prefix, seed=5)])
        probe.collect(settings, start, lambda c: c.distinct_results >= 1_000, timeout_s=120, settle_s=0)
        stopped = pool.resize(1)
        collected = probe.collect(
            settings,
            start,
            lambda c: c.distinct_results >= count,
            timeout_s=300,
            sentinels=probe.publish_sentinels(settings),
        )
    finally:
        pool.close()
    assert collected.distinct_results == count
    assert collected.repeated_results == 0
    assert list(stopped) == [instance(1)]
    log = pool.log_path(1).read_text()
    assert "partitions_revoked" in log, "it left the group, committing what it had scored"
    (own,) = [line["stop_s"] for line in _events(pool.log_path(1)) if line["event"] == "worker_stopped"]
    assert 0 < own <= stopped[instance(1)], "the worker reports its stop, within the supervisor's measure"


def test_commit_markers_left_behind_are_no_lag_and_the_oldest_request_gives_its_age(stack, pipeline_settings):
    """A topic written in transactions (as a replay writes), read by a group that committed past
    every record: the log end is one marker ahead per partition (KEDA's ever-present lag), ours is 0."""
    settings = pipeline_settings()
    topic, group = settings.topics.requests, f"{settings.worker.app_id}-markers"
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, "transactional.id": f"t-{group}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for partition in range(12):
        for i in range(10):
            producer.produce(topic, b"{}", key=str(i).encode(), partition=partition, timestamp=int(time.time() * 1000))
    producer.commit_transaction(30)
    committer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": group})
    committer.commit(offsets=[TopicPartition(topic, p, 10) for p in range(12)], asynchronous=False)
    reader = BacklogReader({"bootstrap.servers": settings.kafka.bootstrap_servers}, group, topic)
    try:
        offsets = reader.offsets.read(range(12))
        assert {o.stable - o.committed for o in offsets.values()} == {1}, "one commit marker per partition"
        assert reader.read(range(12)).records == dict.fromkeys(range(12), 0)
        time.sleep(1.0)
        committer.commit(offsets=[TopicPartition(topic, 0, 4)], asynchronous=False)  # 6 requests back
        backlog = reader.read(range(12))
        assert backlog.records[0] == 7 and backlog.lag == 7, "6 requests, then the marker the offsets cannot tell"
        assert backlog.lag_s >= 1.0
    finally:
        reader.close()
        committer.close()


def test_the_policy_service_serves_the_count_for_the_groups_workers(stack, processes, scale_settings):
    """`pipeline scale --serve` runs no worker: it reads the group's members and lag and serves the
    count that KEDA's metrics-api trigger reads (`desired_workers`)."""
    settings, port = scale_settings, scale_settings.scaling.serve_port
    processes.worker(settings)
    service = processes.stack.spawn(f"serve-{uuid.uuid4().hex[:8]}", settings, "scale", "--serve")
    processes.started.append(service)
    idle = _wait("a decision", lambda: _desired(port), 60, process=service)
    assert idle["desired_workers"] == 1 and idle["group_members"] == 1 and idle["workers"] == 1
    assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
    probe.publish(settings, [traffic.message_for(r) for r in traffic.valid_requests(BURST, "serve-", seed=7)])
    busy = _wait(
        "the most workers asked for", lambda: (d := _desired(port)) and d["desired_workers"] == 3 and d, 60, port=port
    )
    assert busy["group_members"] == 1, "asked for, not started"
    assert busy["lag_records"] > 0
    assert len(busy["worker_rates"]) == 1, "the one member's own rate"
    assert not list(Path(settings.scaling.run_dir).glob("*.log")), "no worker process of its own"
    assert httpx.get(f"http://127.0.0.1:{port}/nowhere").json()["error"] == "not_found"
