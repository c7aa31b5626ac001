"""The consumer group's load: fraud results published as a worker publishes them, and the alerts
read back.

Results go in transactions (one per 100 ms slice at a steady rate), to the partition numbered like
the account, with scores drawn so that about one result in a hundred is over the hard threshold
(each one an alert of its own)."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from confluent_kafka import TopicPartition

from pipeline.contract import result_record
from pipeline.kafka import clients
from pipeline.local import probe
from pipeline.settings import Settings

ACCOUNTS = 1_000_000  # cards seldom pay twice a minute: most windows hold one result
HIGH_SHARE = 0.01  # results scored over the hard threshold


@dataclass(frozen=True)
class Result:
    event_id: str
    account: int
    value: bytes


def results(settings: Settings, count: int, prefix: str, seed: int = 11) -> list[Result]:
    """`count` fraud results, most scores low, HIGH_SHARE of them over the hard threshold."""
    fraud = settings.consumers.fraud
    rng = np.random.default_rng(seed)
    accounts = rng.integers(1, ACCOUNTS + 1, count)
    scores = rng.beta(1.0, 12.0, count) * fraud.hard_threshold
    high = rng.random(count) < HIGH_SHARE
    scores[high] = fraud.hard_threshold + (1 - fraud.hard_threshold) * rng.random(int(high.sum()))
    rows = []
    for i in range(count):
        event_id = f"{prefix}{i:09d}"
        record = result_record(
            event_id=event_id,
            model=fraud.model,
            model_version="1",
            score=float(scores[i]),
            threshold=0.5,
            latency_ms=1.0,
            entity={"account_id": int(accounts[i])},
        )
        rows.append(Result(event_id, int(accounts[i]), orjson.dumps(record)))
    return rows


class ResultsPublisher:
    """A transactional producer of results to the results topic, one transaction per call."""

    def __init__(self, settings: Settings, partitions: int) -> None:
        self._topic, self._partitions = settings.topics.results, partitions
        self._producer = clients.producer(
            settings,
            {
                "transactional.id": f"bench-results-{uuid.uuid4().hex}",
                "linger.ms": 5,
            },
        )
        self._producer.init_transactions(30)

    def commit(self, rows: list[Result]) -> float:
        """Publish `rows` in one transaction; the epoch second its commit returned."""
        self._producer.begin_transaction()
        for row in rows:
            self._producer.produce(
                self._topic, row.value, row.event_id.encode(), partition=row.account % self._partitions
            )
            self._producer.poll(0)
        self._producer.commit_transaction(30)
        return time.time()


@dataclass
class AlertReader:
    """Every alert on the alerts topic from its current end, with the epoch second it was read."""

    settings: Settings
    seen: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        start = probe.end_offsets(self.settings, [self.settings.topics.alerts])
        self._consumer = probe.new_consumer(self.settings, {"fetch.wait.max.ms": 10})
        self._consumer.assign([TopicPartition(tp.topic, tp.partition, offset) for tp, offset in start.items()])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in self._consumer.consume(num_messages=1000, timeout=0.05):
                if message.error() is None and (value := message.value()) is not None:
                    self.seen.append((time.time(), orjson.loads(value)))

    def wait_quiet(self, quiet_s: float, timeout_s: float) -> None:
        """Until no alert has arrived for `quiet_s`."""
        deadline = time.monotonic() + timeout_s
        last, count = time.monotonic(), len(self.seen)
        while time.monotonic() < deadline and time.monotonic() - last < quiet_s:
            time.sleep(0.1)
            if len(self.seen) != count:
                last, count = time.monotonic(), len(self.seen)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


def steady(publisher: ResultsPublisher, rows: list[Result], rate: float) -> dict[str, float]:
    """Publish `rows` at `rate` per second, one transaction per 100 ms slice; each event_id's commit
    time (epoch s)."""
    committed: dict[str, float] = {}
    per_slice = max(1, round(rate / 10))
    began = time.monotonic()
    for n, start in enumerate(range(0, len(rows), per_slice)):
        due = began + n * per_slice / rate
        if (wait := due - time.monotonic()) > 0:
            time.sleep(wait)
        part = rows[start : start + per_slice]
        at = publisher.commit(part)
        committed.update((row.event_id, at) for row in part)
    return committed


def alert_latencies_s(seen: list[tuple[float, dict[str, Any]]], committed: dict[str, float]) -> list[float]:
    """Pure: for each alert read, the seconds from the commit of the latest result behind it (the one
    that decided it) to its being read."""
    latencies = []
    for read_at, alert in seen:
        behind = [committed[e] for e in alert.get("event_ids", []) if e in committed]
        if behind:
            latencies.append(read_at - max(behind))
    return latencies
