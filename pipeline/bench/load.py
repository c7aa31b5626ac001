"""Load for the throughput scenarios: a backlog of valid requests in, a count of committed outputs back."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import TopicPartition

from pipeline import topics
from pipeline.local import probe, traffic
from pipeline.settings import Settings


def requests(count: int, prefix: str, seed: int = 5) -> list[traffic.Message]:
    return [traffic.message_for(r) for r in traffic.valid_requests(count, prefix=prefix, seed=seed)]


def every_account(warmup: list[traffic.Message], accounts: int, prefix: str) -> list[traffic.Message]:
    """A request for each account 1..`accounts` that `warmup` does not name (keyed by account), so that
    a worker holds every account's feature row before a timed run, as the monolith peer holds its table
    from its start (docs/performance.md#warm-up)."""
    named = {int(m.key) for m in warmup if m.key is not None}
    template = traffic.valid_requests(1, prefix=prefix)[0]
    return [
        traffic.message_for(template | {"event_id": f"{prefix}{account:07d}", "entity": {"account_id": account}})
        for account in range(1, accounts + 1)
        if account not in named
    ]


def mixed(requests: list[traffic.Message], prefix: str, seed: int = 31) -> list[traffic.Message]:
    """As many messages as `requests`, alternating: one of theirs (the fraud scorer's), one reading
    for the anomaly detector."""
    readings = traffic.telemetry_requests(len(requests) - len(requests) // 2, prefix=prefix, seed=seed)
    telemetry = iter(traffic.message_for(r) for r in readings)
    return [message if i % 2 else next(telemetry) for i, message in enumerate(requests)]


@dataclass
class Run:
    produced_at: float  # epoch s of the first request produced
    done_at: float  # epoch s when the last output was visible to a read_committed consumer
    count: int
    # (epoch s, outputs of this run so far) each time the counter saw more
    timeline: list[tuple[float, int]] = field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        return self.count / max(1e-6, self.done_at - self.produced_at)

    def figures(self) -> dict[str, Any]:
        """Its outputs, the seconds from the first request produced to the last output, their rate."""
        return {
            "events": self.count,
            "seconds": round(self.done_at - self.produced_at, 3),
            "events_per_s": round(self.events_per_s, 1),
        }


class OutputCounter:
    """Counts committed messages on a topic from its current end, in a thread, until `expected`."""

    def __init__(self, settings: Settings, topic: str) -> None:
        start = probe.end_offsets(settings, [topic])
        self._consumer = probe.new_consumer(settings)
        self._consumer.assign([TopicPartition(tp.topic, tp.partition, offset) for tp, offset in start.items()])
        self._lock = threading.Lock()
        self._count = 0
        self._reached = threading.Event()
        self._expected = 0
        self.reached_at = 0.0
        self.timeline: list[tuple[float, int]] = []  # (epoch s, count) each time the count grew
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="output-counter", daemon=True)
        self._thread.start()

    def expect(self, total: int) -> None:
        with self._lock:
            self._expected = total
            self._reached.clear()
            self._check()

    def wait(self, timeout_s: float) -> bool:
        return self._reached.wait(timeout_s)

    @property
    def count(self) -> int:
        return self._count

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            messages = self._consumer.consume(num_messages=10_000, timeout=0.05)
            seen = sum(1 for m in messages if m.error() is None)
            if seen:
                with self._lock:
                    self._count += seen
                    self.timeline.append((time.time(), self._count))
                    self._check()

    def _check(self) -> None:
        if self._expected and self._count >= self._expected and not self._reached.is_set():
            self.reached_at = time.time()
            self._reached.set()


def drive(settings: Settings, counter: OutputCounter, messages: list[traffic.Message], timeout_s: float) -> Run:
    """Publish `messages` as fast as the producer goes; time until all their outputs are committed."""
    before, seen = counter.count, len(counter.timeline)
    counter.expect(before + len(messages))
    began = time.time()
    probe.publish(settings, messages)
    if not counter.wait(timeout_s):
        raise TimeoutError(f"{counter.count} outputs after {timeout_s:g} s; expected {len(messages)} more")
    timeline = [(at, count - before) for at, count in counter.timeline[seen:]]
    return Run(began, counter.reached_at, len(messages), timeline)


_RUN_TOPICS = ("requests", "results", "dlq", "replies", "alerts", "shadow_results")
_RUN_PREFIX = "bench-"


def fresh_topics(settings: Settings, label: str) -> Settings:
    """Settings with this run's own topics (created) and consumer group."""
    uid = f"{_RUN_PREFIX}{label}-{time.time_ns() % 10**10}"
    fresh = settings.updated(topics={name: f"{uid}.{name}" for name in _RUN_TOPICS}, worker={"app_id": uid})
    topics.apply(fresh)
    return fresh


def drop_topics(settings: Settings) -> None:
    """Delete a run's topics once it is measured: a broker carrying every earlier run's partitions
    (six topics, 54 partitions, per run) does more work per request, which would weigh on the runs after.
    A routed run's own routing topic (routed_model.py) goes too."""
    names = [getattr(settings.topics, name) for name in _RUN_TOPICS]
    if settings.topics.model_routing.startswith(_RUN_PREFIX):
        names.append(settings.topics.model_routing)
    admin = topics.admin_client(settings)  # held until the futures resolve: they die with it
    for future in admin.delete_topics(names, operation_timeout=30).values():
        future.result()
