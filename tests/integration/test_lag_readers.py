"""Every long-lived process that reads a group's lag keeps working across broker restarts: the
backfill gate of a backfill worker, `pipeline scale` running workers, and `pipeline scale --serve`.
librdkafka's admin requests to a group coordinator can end their process when the broker goes away
(docs/scaling.md#lag-readers); these tests restart the broker twice under each reader and show it
still decides afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline.local import probe, traffic
from pipeline.local.stack import PROJECT_ROOT, LocalStack, free_port, settings_env
from pipeline.scaling.members import GroupMembers
from pipeline.settings import Settings
from tests.conftest import metric, with_replay_topics

pytestmark = pytest.mark.integration

UNREADABLE = "pipeline_scaling_lag_unreadable_total"


def _wait(what: str, check: Callable[[], Any], timeout_s: float, processes: tuple[subprocess.Popen[bytes], ...] = ()):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for process in processes:
            assert process.poll() is None, f"a reader exited ({process.returncode}) waiting for: {what}"
        if value := check():
            return value
        time.sleep(0.3)
    raise AssertionError(f"not within {timeout_s:g} s: {what}")


def _desired(port: int) -> dict[str, Any] | None:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/desired", timeout=2)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


class _Log:
    """A process's log, read from a mark on: what it said after that point."""

    def __init__(self, path: Path) -> None:
        self.path, self.mark = path, 0

    def since_mark(self) -> str:
        return self.path.read_text(errors="replace")[self.mark :]

    def set_mark(self) -> None:
        self.mark = len(self.path.read_text(errors="replace"))


def test_a_group_description_whose_process_is_ended_is_unknown_and_the_next_one_is_read(
    pipeline_settings, start_worker
):
    settings = pipeline_settings()
    start_worker(settings)
    connection = {"bootstrap.servers": settings.kafka.bootstrap_servers}
    members = GroupMembers(connection, settings.worker.app_id, settings.topics.requests)
    try:
        first = members.read()
        assert first is not None and len(first) == 1
        assert sorted(p for partitions in first.values() for p in partitions) == list(range(12))
        pid = members.pid
        assert pid is not None and pid != os.getpid(), "read in a process apart"
        os.kill(pid, signal.SIGABRT)  # what librdkafka's failed assertion does to its process
        assert members.read() is None, "the reading in flight is unknown"
        assert members.read() == first, "a new child reads the group"
        assert members.pid not in (None, pid)
    finally:
        members.close()


def test_both_scale_modes_hold_their_count_through_two_broker_outages_and_decide_again_after(
    stack: LocalStack, processes, pipeline_settings, tmp_path
):
    """A supervisor running the workers and a policy service serving KEDA, on one group: while the
    broker is down each says the lag is unreadable, counts it, and holds its count with no worker
    started or stopped; once it is back each reads the lag again; after two outages a burst makes
    both ask for more workers."""
    base = pipeline_settings(state_dir=tmp_path / "state", batch_size=32)
    scaling = {
        "min_workers": 1,
        "max_workers": 3,
        "drain_s": 2.0,
        "up_cooldown_s": 5.0,
        "down_window_s": 600.0,
        "restore_s": 1.0,
        "start_s": 5.0,
        "interval_s": 1.0,
        "worker_rate_per_s": 2_000.0,
        "worker_metrics_port": 0,
    }
    supervised = base.updated(scaling={**scaling, "run_dir": tmp_path / "scale", "serve_port": free_port()})
    served = base.updated(scaling={**scaling, "run_dir": tmp_path / "serve", "serve_port": free_port()})
    supervisor = processes.stack.spawn(f"scale-{uuid.uuid4().hex[:8]}", supervised, "scale")
    service = processes.stack.spawn(f"serve-{uuid.uuid4().hex[:8]}", served, "scale", "--serve")
    processes.started += [supervisor, service]
    readers = (supervisor, service)
    ports = (supervised.scaling.serve_port, served.scaling.serve_port)
    run_dir = Path(supervised.scaling.run_dir)

    def read_lag(port: int) -> bool:
        return (d := _desired(port)) is not None and d["lag_records"] is not None and d["group_members"] == 1

    _wait("a worker in the group, the lag read by both", lambda: all(read_lag(p) for p in ports), 120, readers)
    for outage in range(2):
        unreadable = [metric(port, UNREADABLE) for port in ports]
        exits = metric(ports[0], "pipeline_scaling_worker_exits_total")
        stack.stop_kafka()
        try:
            for port, before in zip(ports, unreadable, strict=True):
                _wait(
                    f"outage {outage}: several unreadable readings on :{port}",
                    lambda port=port, before=before: (
                        metric(port, "pipeline_scaling_lag_unreadable_total") >= before + 3
                    ),
                    60,
                    readers,
                )
                held = _desired(port)
                assert held is not None and held["lag_records"] is None and "unreadable" in held["reason"]
                assert held["desired_workers"] == 1, "the count held"
            assert _desired(ports[0])["workers"] == 1, "no worker started or stopped"
            assert metric(ports[0], "pipeline_scaling_worker_exits_total") == exits
            assert metric(ports[0], "pipeline_scaling_events_total") == 0
        finally:
            stack.start_kafka()
        _wait(f"outage {outage}: the lag read again by both", lambda: all(read_lag(p) for p in ports), 120, readers)
    assert len(list(run_dir.glob("*.log"))) == 1, "one worker process throughout"

    probe.publish(base, [traffic.message_for(r) for r in traffic.valid_requests(20_000, "after-", seed=3)])
    for port in ports:
        _wait(
            f"more workers asked for on :{port}",
            lambda port=port: (d := _desired(port)) is not None and d["desired_workers"] > 1,
            60,
            readers,
        )


@pytest.fixture
def backfill_settings(pipeline_settings) -> Settings:
    return with_replay_topics(pipeline_settings(), live_max_lag=500, live_check_s=0.5, live_unreadable_s=3.0)


def test_the_backfill_gate_outlives_two_broker_outages_opens_after_its_bound_and_decides_again(
    stack: LocalStack, processes, backfill_settings, tmp_path
):
    settings = backfill_settings
    name = f"backfill-{uuid.uuid4().hex[:8]}"
    backfill = processes.stack.start_worker(settings, name, backfill=True)
    processes.started.append(backfill)
    log = _Log(processes.stack.run_dir / f"{name}.log")
    # A live backlog of 2,000 requests and no live worker: the live group lags by all of them.
    probe.publish(settings, [traffic.message_for(r) for r in traffic.valid_requests(2_000, prefix="gate-live-")])
    _wait("the gate closed for the live lag", lambda: "backfill_yielding" in log.since_mark(), 30, (backfill,))
    for outage in range(2):
        log.set_mark()
        stack.stop_kafka()
        try:
            _wait(
                f"outage {outage}: the gate opened after 3 s of an unreadable lag",
                lambda: "backfill_resumed_lag_unknown" in log.since_mark(),
                60,
                (backfill,),
            )
        finally:
            stack.start_kafka()
        log.set_mark()
        _wait(
            f"outage {outage}: the lag read again, still lagging, the gate closed again",
            lambda: "backfill_yielding" in log.since_mark(),
            120,
            (backfill,),
        )

    history = traffic.valid_requests(300, prefix="gate-history-", seed=19)
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in history))
    replay = subprocess.run(
        [sys.executable, "-m", "pipeline", "replay", "--replay-id", "g1", "--file", str(path)],
        env={**os.environ, **settings_env(settings)},
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=300,
    )
    assert replay.returncode == 0, replay.stderr
    log.set_mark()
    processes.worker(settings)  # the live workers catch up
    _wait("the gate opened once the live workers caught up", lambda: "backfill_resumed" in log.since_mark(), 120)
    expected = {r["event_id"] for r in history}
    scored = _wait("every replayed request scored", lambda: _scored(settings, expected), 120)
    assert scored == dict.fromkeys(expected, 1)
    assert metric(settings.replay.backfill_metrics_port, "pipeline_backfill_live_lag_unreadable_total") > 0


def _scored(settings: Settings, expected: set[str]) -> dict[str, int] | None:
    """How many committed backfill results each event has, once every expected one has one (read
    from the start of the topic, which only this test's backfill worker writes)."""
    topic = settings.topics.backfill_results
    consumer = Consumer(probe.consumer_config(settings))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        counts: Counter[str] = Counter()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            messages = consumer.consume(num_messages=1000, timeout=0.5)
            for message in messages:
                if message.error() is None:
                    counts[orjson.loads(message.value())["event_id"]] += 1
            if not messages and set(counts) >= expected:
                return dict(counts)
        return None
    finally:
        consumer.close()
