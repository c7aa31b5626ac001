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
BURST = 100_000


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


class _ScaleReaders:
    """A supervisor running the workers and a policy service serving KEDA, on one group."""

    def __init__(self, processes, base: Settings, tmp_path: Path) -> None:
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
            "min_gain": 0.0,  # the readers are tested, not whether a step pays on this machine
            "cpu_busy_limit": 1.0,
            "worker_metrics_port": 0,
        }
        supervised = base.updated(scaling={**scaling, "run_dir": tmp_path / "scale", "serve_port": free_port()})
        served = base.updated(scaling={**scaling, "run_dir": tmp_path / "serve", "serve_port": free_port()})
        supervisor = processes.stack.spawn(f"scale-{uuid.uuid4().hex[:8]}", supervised, "scale")
        service = processes.stack.spawn(f"serve-{uuid.uuid4().hex[:8]}", served, "scale", "--serve")
        processes.started += [supervisor, service]
        self.base = base
        self.processes = (supervisor, service)
        self.ports = (supervised.scaling.serve_port, served.scaling.serve_port)
        self.run_dir = Path(supervised.scaling.run_dir)

    def _read_lag(self, port: int) -> bool:
        return (d := _desired(port)) is not None and d["lag_records"] is not None and d["group_members"] == 1

    def wait_reading(self, what: str) -> None:
        _wait(what, lambda: all(self._read_lag(p) for p in self.ports), 120, self.processes)

    def mark(self) -> None:
        self.unreadable = [metric(port, UNREADABLE) for port in self.ports]
        self.exits = metric(self.ports[0], "pipeline_scaling_worker_exits_total")

    def check_held(self, outage: int) -> None:
        """While the broker is down: each says the lag is unreadable, counts it, and holds its count
        with no worker started or stopped."""
        for port, before in zip(self.ports, self.unreadable, strict=True):
            _wait(
                f"outage {outage}: several unreadable readings on :{port}",
                lambda port=port, before=before: metric(port, UNREADABLE) >= before + 3,
                60,
                self.processes,
            )
            held = _desired(port)
            assert held is not None and held["lag_records"] is None and "unreadable" in held["reason"]
            assert held["desired_workers"] == 1, "the count held"
        assert _desired(self.ports[0])["workers"] == 1, "no worker started or stopped"
        assert metric(self.ports[0], "pipeline_scaling_worker_exits_total") == self.exits
        assert metric(self.ports[0], "pipeline_scaling_events_total") == 0

    def check_decide_again(self) -> None:
        """After the outages: one worker process throughout, and a burst makes both ask for more."""
        assert len(list(self.run_dir.glob("*.log"))) == 1, "one worker process throughout"
        # More than one worker drains within drain_s on a fast machine (one drained 9,000/s): one needs more.
        probe.publish(self.base, [traffic.message_for(r) for r in traffic.valid_requests(BURST, "after-", seed=3)])
        for port in self.ports:
            _wait(
                f"more workers asked for on :{port}",
                lambda port=port: (d := _desired(port)) is not None and d["desired_workers"] > 1,
                60,
                self.processes,
            )


class _Gate:
    """A backfill worker whose gate yields to a live group that lags by 2,000 requests and has no
    worker (3 s of an unreadable lag open it)."""

    def __init__(self, processes, settings: Settings) -> None:
        name = f"backfill-{uuid.uuid4().hex[:8]}"
        self.settings = settings
        self.worker = processes.stack.start_worker(settings, name, backfill=True)
        processes.started.append(self.worker)
        self.log = _Log(processes.stack.run_dir / f"{name}.log")
        probe.publish(settings, [traffic.message_for(r) for r in traffic.valid_requests(2_000, prefix="gate-live-")])
        self.wait_for("the gate closed for the live lag", "backfill_yielding", 30)

    def wait_for(self, what: str, line: str, timeout_s: float) -> None:
        _wait(what, lambda: line in self.log.since_mark(), timeout_s, (self.worker,))

    def check_decide_again(self, processes, tmp_path: Path) -> None:
        """After the outages: a replay waits for the live workers, then is scored once."""
        settings = self.settings
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
        self.log.set_mark()
        processes.worker(settings)  # the live workers catch up
        _wait(
            "the gate opened once the live workers caught up", lambda: "backfill_resumed" in self.log.since_mark(), 120
        )
        expected = {r["event_id"] for r in history}
        scored = _wait("every replayed request scored", lambda: _scored(settings, expected), 120)
        assert scored == dict.fromkeys(expected, 1)
        assert metric(settings.replay.backfill_metrics_port, "pipeline_backfill_live_lag_unreadable_total") > 0


def test_every_lag_reader_outlives_two_broker_outages_and_decides_again_after(
    stack: LocalStack, processes, pipeline_settings, tmp_path
):
    """Under the same two broker outages: `pipeline scale` and `pipeline scale --serve` each say the
    lag is unreadable, count it and hold their count, and read it again once the broker is back; the
    backfill gate opens after its bound and closes again on the live lag. Afterwards a burst makes
    both scalers ask for more workers, and a replay is scored once after the live workers catch up."""
    scale = _ScaleReaders(processes, pipeline_settings(state_dir=tmp_path / "state", batch_size=32), tmp_path)
    gate = _Gate(
        processes,
        with_replay_topics(pipeline_settings(), live_max_lag=500, live_check_s=0.5, live_unreadable_s=3.0),
    )
    scale.wait_reading("a worker in the group, the lag read by both")
    for outage in range(2):
        scale.mark()
        gate.log.set_mark()
        stack.stop_kafka()
        try:
            scale.check_held(outage)
            gate.wait_for(
                f"outage {outage}: the gate opened after 3 s of an unreadable lag", "backfill_resumed_lag_unknown", 60
            )
        finally:
            stack.start_kafka()
        gate.log.set_mark()
        scale.wait_reading(f"outage {outage}: the lag read again by both")
        gate.wait_for(
            f"outage {outage}: the lag read again, still lagging, the gate closed again", "backfill_yielding", 120
        )
    scale.check_decide_again()
    gate.check_decide_again(processes, tmp_path)


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
