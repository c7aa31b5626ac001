"""Worker → consumers across a worker crash, on the real broker, Triton and Feast.

A real worker scores a mixed stream (card transactions and machine telemetry, 10% repeats; a burst
of one card, a risky payment retried, machines with a faulty sensor, then amounts and vibration
shifted) while the fraud, anomaly and drift consumers run. It is SIGKILLed while a transaction of
its is open with results in the log, one of them an anomalous reading (it is paused with SIGSTOP
until the results topic shows such a transaction undecided: records past the last stable offset,
which stays put), and restarted under the same instance id, which aborts that transaction.

The oracle: the committed results (read_committed) and the requests, the pure rules applied to them
offline in the order of each partition (`fraud_rules`, `anomaly_rules`, `drift_window`), compared
with what the consumers published. The alerts are read once every consumer group has committed the
offset past the last record of every partition it reads (a consumer acknowledges what a record
caused, state and alerts, before it commits its offset), so that nothing of the stream can come
later. The aborted results are the records read_uncommitted shows and read_committed does not: the
consumers read each committed result once and none of those, and the same rules over the aborted
results too decide otherwise (the aborted anomalous reading would count twice).

So that the drift monitor's windows, which it fills in the order it reads its partitions, have one
order, each model's requests are keyed onto one partition of their own: the cards' accounts onto
partition 0, the machines onto partition 1. Per account and per machine, order is per partition
anyway.

A second test holds the consumers to committing past a run of small transactions at once (each one's
commit marker is a gap in the offsets they read: `consumers/app.py`).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pytest
from aiokafka.partitioner import murmur2
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from pipeline import topics
from pipeline.consumers.anomaly_rules import Suppression, decide, parse_reading
from pipeline.consumers.drift_window import ModelDrift
from pipeline.consumers.fraud_rules import WindowRule, alert_id, high_score, parse_result, windowed
from pipeline.contract import parse_request, result_record
from pipeline.errors import PipelineError
from pipeline.local import probe, traffic
from pipeline.local.probe import consumer_config
from pipeline.local.stack import free_port
from pipeline.local.traffic import Message
from pipeline.models import reference
from pipeline.settings import Settings
from pipeline.synthetic import telemetry
from pipeline.topics import TopicSpec
from tests.conftest import metric
from tests.integration.results_follower import ResultsFollower

pytestmark = pytest.mark.integration

CARDS, MACHINES = 0, 1  # the partition each model's requests are keyed onto
FRAUD, ANOMALY = "fraud_scorer", "anomaly_detector"

FRAUD_PLAIN, FRAUD_SHIFTED = 1_100, 700  # transactions before and after the shift
AMOUNT_SHIFT = 4.0  # after it, amounts are this many times larger: the scores rise with them
VIBRATION_SHIFT = 1.3  # and the machines' vibration readings this much (a feature drift)
BURST = 20  # one account's payments at once: twice the velocity rule's count
RISKY_RETRIES = 6  # a risky payment tried again: twice what repeated_high_scores needs
FAULTY_EVERY = 7  # every 7th machine has a faulty pressure sensor throughout: episodes with follow-ups
REPEAT_RATE = 0.1
RATE = 200  # requests a second: the stream flows for ~21 s, through the crash (a try takes ~0.4 s)

ANY_TIME = 0.0  # `now` for the oracle's alerts: their created_at is left out of every comparison


# -- the stream --------------------------------------------------------------------------------------


def _partition_of(entity: int, partitions: int) -> int:
    """Where the requests topic's producers place an entity's key (contract.REQUESTS_PARTITIONER)."""
    return (murmur2(str(entity).encode()) & 0x7FFFFFFF) % partitions


@dataclass
class Stream:
    messages: list[Message]
    event_ids: set[str]  # every distinct valid request
    first_shifted: dict[str, str]  # model -> the event_id of its first shifted request
    burst_account: int
    risky_account: int
    faulty_machines: set[int]


def _cards(prefix: str, accounts: set[int], count: int, seed: int) -> list[dict[str, Any]]:
    """`count` synthetic transactions of `accounts` only."""
    drawn = traffic.valid_requests(count * 16, prefix=prefix, seed=seed)
    chosen = [r for r in drawn if r["entity"]["account_id"] in accounts][:count]  # type: ignore[index]
    assert len(chosen) == count, f"only {len(chosen)} transactions of the partition's accounts"
    return chosen


def _machines(prefix: str, machines: set[int]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], set[int]]:
    """Readings of `machines` (every 20th, then every 26th of theirs over a day, shuffled: each part
    spans the day, as the training data does): the plain part, with the faulty machines' pressure 1.0 bar high;
    the shifted part, all vibration VIBRATION_SHIFT times higher. And the faulty machines."""
    day = telemetry.readings(288 * 1_000, 1_000, seed=29, anomaly_rate=0.05)  # a reading per 5 min each
    theirs = np.flatnonzero(np.isin(day.device_id, sorted(machines)))
    faulty = set(sorted(machines)[::FAULTY_EVERY])
    rows = day.features.to_dict(orient="records")

    def reading(i: int, part: str) -> dict[str, Any]:
        device = int(day.device_id[i])
        features = {k: float(v) for k, v in rows[i].items()}
        if part == "plain" and device in faulty:
            features["pressure"] = round(features["pressure"] + 1.0, 3)
        if part == "shifted":
            features["vibration"] = round(features["vibration"] * VIBRATION_SHIFT, 3)
        return {
            "event_id": f"{prefix}{part}-{i:07d}",
            "model": ANOMALY,
            "entity": {"device_id": device},
            "features": features,
        }

    shuffled = np.random.default_rng(5).permutation  # any window of a part holds all hours of the day
    plain = [reading(i, "plain") for i in shuffled(theirs[::20])]
    return plain, [reading(i, "shifted") for i in shuffled(theirs[10::26])], faulty


def _interleave(first: list[Any], second: list[Any], rng: random.Random) -> list[Any]:
    """Both lists merged at random, each in its own order."""
    merged, a, b = [], 0, 0
    while a < len(first) or b < len(second):
        take_first = b >= len(second) or (a < len(first) and rng.random() < len(first) / (len(first) + len(second)))
        if take_first:
            merged.append(first[a])
            a += 1
        else:
            merged.append(second[b])
            b += 1
    return merged


def _with_repeats(requests: list[dict[str, Any]], rng: random.Random) -> list[Message]:
    """Each request's message, and REPEAT_RATE as many repeats of earlier ones (same event_id and
    key), each anywhere after its original up to the end: some across the crash."""
    repeats_after: dict[int, list[Message]] = defaultdict(list)
    for _ in range(int(len(requests) * REPEAT_RATE)):
        source = rng.randrange(len(requests))
        repeats_after[rng.randrange(source, len(requests))].append(traffic.message_for(requests[source], "duplicate"))
    messages = []
    for i, request in enumerate(requests):
        messages.append(traffic.message_for(request))
        messages.extend(repeats_after.get(i, ()))
    return messages


def _stream(settings: Settings, prefix: str) -> Stream:
    partitions = topics.partition_count(settings, settings.topics.requests)
    accounts = {a for a in range(1, settings.feast.accounts + 1) if _partition_of(a, partitions) == CARDS}
    machines = {d for d in range(1, settings.feast.devices + 1) if _partition_of(d, partitions) == MACHINES}
    rng = random.Random(41)
    plain_cards = _cards(f"{prefix}card-", accounts, FRAUD_PLAIN + FRAUD_SHIFTED, seed=3)
    shifted_cards = [
        r | {"features": r["features"] | {"amount": round(r["features"]["amount"] * AMOUNT_SHIFT, 2)}}
        for r in plain_cards[FRAUD_PLAIN:]
    ]
    plain_cards = plain_cards[:FRAUD_PLAIN]
    burst_account, risky_account = min(accounts), max(accounts)
    burst = [
        {
            "event_id": f"{prefix}burst-{i}",
            "entity": {"account_id": burst_account},
            "features": plain_cards[0]["features"],
        }
        for i in range(BURST)
    ]
    risky_features = {
        "amount": 4_800.0,
        "merchant_category": 7995.0,
        "hour_of_day": 3.0,
        "is_foreign": 1.0,
        "card_present": 0.0,
        "distance_from_home_km": 2_600.0,
    }
    risky = [
        {"event_id": f"{prefix}risky-{i}", "entity": {"account_id": risky_account}, "features": risky_features}
        for i in range(RISKY_RETRIES)
    ]
    plain_readings, shifted_readings, faulty = _machines(f"{prefix}reading-", machines)
    cards_before = plain_cards[:300] + burst + plain_cards[300:600] + risky + plain_cards[600:]
    requests = _interleave(cards_before, plain_readings, rng) + _interleave(shifted_cards, shifted_readings, rng)
    return Stream(
        messages=_with_repeats(requests, rng),
        event_ids={str(r["event_id"]) for r in requests},
        first_shifted={FRAUD: shifted_cards[0]["event_id"], ANOMALY: shifted_readings[0]["event_id"]},
        burst_account=burst_account,
        risky_account=risky_account,
        faulty_machines=faulty,
    )


class _Publisher:
    """The stream published on a thread at RATE, so that it flows through the crash."""

    def __init__(self, settings: Settings, messages: list[Message]) -> None:
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._publish, args=(settings, messages), daemon=True)
        self._thread.start()

    def _publish(self, settings: Settings, messages: list[Message]) -> None:
        try:
            probe.publish(settings, messages, rate=RATE)
        except BaseException as e:  # noqa: BLE001 -- re-raised by join()
            self._error = e

    @property
    def publishing(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout_s: float = 120) -> None:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"the stream was still being published after {timeout_s:g} s"
        if self._error is not None:
            raise self._error


# -- reading topics ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes

    @property
    def json(self) -> dict[str, Any]:
        return orjson.loads(self.value)


def _reader(settings: Settings, isolation: str = "read_committed") -> Consumer:
    return Consumer(
        consumer_config(settings)
        | {"group.id": f"probe-{uuid.uuid4().hex}", "isolation.level": isolation, "enable.partition.eof": True}
    )


def _consume(reader: Consumer, topic: str, spans: dict[int, tuple[int, int]]) -> list[Record]:
    """The records of `topic` in each partition's span of offsets [start, end), by partition and offset."""
    reader.assign([TopicPartition(topic, p, start) for p, (start, _) in spans.items()])
    reached = {p: start for p, (start, _) in spans.items()}
    found: list[Record] = []
    deadline = time.monotonic() + 60
    while any(reached[p] < end for p, (_, end) in spans.items()):
        assert time.monotonic() < deadline, f"{topic} not read to {spans}: {reached}"
        for message in reader.consume(num_messages=1000, timeout=0.2):
            partition, offset, error = message.partition(), message.offset(), message.error()
            if error is not None:
                assert error.code() == KafkaError._PARTITION_EOF, error
                reached[partition] = max(reached[partition], offset)  # past any transaction marker
                continue
            reached[partition] = max(reached[partition], offset + 1)
            if offset < spans[partition][1]:
                found.append(Record(topic, partition, offset, message.timestamp()[1], message.key(), message.value()))
    return sorted(found, key=lambda r: (r.partition, r.offset))


def _read(settings: Settings, topic: str, isolation: str = "read_committed") -> list[Record]:
    """Every record of `topic` up to where each partition ends now."""
    reader = _reader(settings, isolation)
    try:
        partitions = range(topics.partition_count(settings, topic))
        ends = {p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        return _consume(reader, topic, {p: (0, end) for p, end in ends.items()})
    finally:
        reader.close()


def _undecided(committed_view: Consumer, everything: Consumer, tp: TopicPartition) -> list[Record]:
    """The results partition's records past its last stable offset, when it stays there while they
    are read: those of a transaction still open there (the worker's; nothing else writes the results)."""
    stable = committed_view.get_watermark_offsets(tp, timeout=10)[1]
    end = everything.get_watermark_offsets(tp, timeout=10)[1]
    if stable >= end:
        return []
    found = _consume(everything, tp.topic, {tp.partition: (stable, end)})
    return found if committed_view.get_watermark_offsets(tp, timeout=10)[1] == stable else []


# -- the crash -----------------------------------------------------------------------------------------


def _is_anomalous(settings: Settings, value: bytes) -> bool:
    """Whether a result's value is an anomalous reading."""
    result = orjson.loads(value)
    return result["model"] == ANOMALY and result["score"] >= settings.consumers.anomaly.threshold


def _kill_inside_an_open_transaction(
    settings: Settings, worker: subprocess.Popen[bytes], publisher: _Publisher
) -> list[Record]:
    """Pause the worker (SIGSTOP) until the machines' results partition shows a transaction of its
    open, with an anomalous reading in it, and still undecided a moment later (a commit the broker
    had already begun would have its markers written by then); SIGKILL it there. The records of that
    transaction.

    A transaction's results are written only when it commits, a few milliseconds before its markers,
    so the worker is paused the moment a reader of everything written sees an anomalous reading
    arrive, or at a random moment soon after it resumed, whichever comes first."""
    rng = random.Random(7)
    killed, tries, sightings = False, 0, 0
    # The views are opened once: a try is then a pause and three offset queries.
    committed_view, everything = _reader(settings), _reader(settings, "read_uncommitted")
    machines = TopicPartition(settings.topics.results, MACHINES)
    follower = ResultsFollower(settings, [MACHINES])
    try:
        while publisher.publishing:
            tries += 1
            os.kill(worker.pid, signal.SIGSTOP)
            follower.skip(0.3)
            open_records = _undecided(committed_view, everything, machines)
            if any(_is_anomalous(settings, r.value) for r in open_records):
                worker.send_signal(signal.SIGKILL)
                worker.wait(timeout=30)
                killed = True
                return open_records
            os.kill(worker.pid, signal.SIGCONT)
            # Soon after: the worker is then catching up on what arrived while it was paused, in a
            # transaction of many readings, far likelier to hold an anomalous one than a random moment's.
            sightings += follower.until_written(rng.uniform(0.01, 0.1), lambda v: _is_anomalous(settings, v))
        raise AssertionError(
            f"the stream ended before the worker was caught inside an open transaction ({tries} tries, "
            f"{sightings} of them paused as an anomalous reading was written)"
        )
    finally:
        if not killed and worker.poll() is None:
            os.kill(worker.pid, signal.SIGCONT)
        for reader in (committed_view, everything, follower):
            reader.close()


# -- the consumers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Running:
    group: str
    metrics_port: int


def _start_consumers(
    processes, settings: Settings, names: Iterable[str] = ("fraud", "anomaly", "drift")
) -> dict[str, Running]:
    """Consumers (`pipeline consumers NAME`), each in a group of its own, started side by side from
    the beginning of the topics."""
    running, started = {}, {}
    for consumer in names:
        running[consumer] = own = Running(f"{consumer}-{uuid.uuid4().hex[:8]}", free_port())
        process = processes.stack.spawn(
            own.group,
            settings.updated(consumers={"metrics_port": own.metrics_port}),
            "consumers",
            consumer,
            "--from-beginning",
            "--group-id",
            own.group,
        )
        processes.started.append(process)
        started[own.group] = process
    for group, process in started.items():
        processes.stack.wait_for_log(group, "consumer_ready", process, timeout_s=120)
    return running


def _past_last(records: Iterable[Record]) -> dict[TopicPartition, int]:
    ends: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        ends[tp] = max(ends.get(tp, 0), r.offset + 1)
    return ends


# -- the oracle: the pure rules over the committed results, in each partition's order ---------------------


def _fraud_alerts(settings: Settings, results: list[Record]) -> dict[str, dict[str, Any]]:
    """Each fraud alert the rules decide, by alert_id, the first decision of each (the consumer
    publishes an alert_id once)."""
    fraud = settings.consumers.fraud
    rules = [
        WindowRule("repeated_high_scores", fraud.high_score_window_s, fraud.high_score_count, fraud.high_score),
        WindowRule("velocity", fraud.velocity_window_s, fraud.velocity_count, 0.0),
    ]
    windows: dict[tuple[str, str, float], Any] = {}  # (rule, account, window start) -> state
    decided: dict[str, dict[str, Any]] = {}
    for record in results:
        if record.json["model"] != fraud.model:
            continue
        scored = parse_result(record.value, record.timestamp_ms / 1000)
        assert scored is not None
        alerts = [high_score(scored, fraud.hard_threshold, ANY_TIME)]
        for rule in rules:
            window = (rule.name, str(scored.account_id), rule.start(scored.at))
            state, alert = windowed(rule, windows.get(window), scored, ANY_TIME)
            if state is not None:
                windows[window] = state
            alerts.append(alert)
        for alert in alerts:
            if alert is not None:
                decided.setdefault(alert["alert_id"], alert)
    return decided


def _anomaly_alerts(settings: Settings, results: list[Record]) -> list[dict[str, Any]]:
    """Every anomaly alert message the rule publishes, in order (an episode's opening alert once)."""
    anomaly = settings.consumers.anomaly
    rule = Suppression(anomaly.threshold, anomaly.suppress_s, anomaly.follow_up_s)
    episodes: dict[str, Any] = {}
    published: list[dict[str, Any]] = []
    opened: set[str] = set()
    for record in results:
        reading = parse_reading(record.value, record.timestamp_ms / 1000, record.offset, anomaly.model)
        if reading is None:
            continue
        episode, alert = decide(rule, episodes.get(str(reading.device_id)), reading, ANY_TIME)
        if episode is not None:
            episodes[str(reading.device_id)] = episode
        if alert is None or (alert["follow_up"]["count"] == 0 and alert["alert_id"] in opened):
            continue
        opened.add(alert["alert_id"])
        published.append(alert)
    return published


@dataclass
class _Drift:
    """The drift monitor's windows, one per model and input (features or score)."""

    settings: Settings
    windows: dict[tuple[str, str], tuple[str, ModelDrift]] = field(default_factory=dict)
    alerts: list[dict[str, Any]] = field(default_factory=list)

    def observe(self, model: str, inputs: str, values: dict[str, float], record: Record) -> None:
        if (model, inputs) not in self.windows:
            found = reference.latest(self.settings.triton.model_repository / model)
            assert found is not None, f"no training reference for {model}"
            version, references = found
            chosen = {name: ref for name, ref in references.items() if (name == "score") == (inputs == "score")}
            drift = self.settings.consumers.drift
            self.windows[model, inputs] = (
                version,
                ModelDrift(chosen, drift.window_events, drift.every_events, drift.warning, drift.alert),
            )
        version, window = self.windows[model, inputs]
        if not window.observe(values):
            return
        _, crossed = window.measure()
        last = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
        for m in crossed:
            self.alerts.append(
                {
                    "alert_id": alert_id("drift", model, version, m.feature, m.level, *last.values()),
                    "rule": f"psi_{m.level}",
                    "model": model,
                    "model_version": version,
                    "feature": m.feature,
                    "psi": round(m.psi, 6),
                    "level": m.level,
                    "window": {"events": m.events, "last": last},
                }
            )


def _drift_alerts(settings: Settings, requests: list[Record], results: list[Record]) -> list[dict[str, Any]]:
    """The drift crossings: the request features from the requests topic, the scores from the results."""
    drift = _Drift(settings)
    for record in requests:
        try:
            request = parse_request(record.value)
        except PipelineError:
            continue
        drift.observe(request.model or settings.default_model, "features", dict(request.features), record)
    for record in results:
        result = record.json
        drift.observe(str(result["model"]), "score", {"score": float(result["score"])}, record)
    return drift.alerts


# -- the test ------------------------------------------------------------------------------------------


def _without_created_at(alert: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in alert.items() if k != "created_at"}


def _drift_fields(alert: dict[str, Any]) -> dict[str, Any]:
    return {k: alert[k] for k in ("alert_id", "rule", "model", "model_version", "feature", "psi", "level", "window")}


def _latest(alerts: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each alert's last message, as the compacted topic keeps it."""
    return {a["alert_id"]: _without_created_at(a) for a in alerts}


@dataclass
class Outcome:
    """What a run left on the topics, read once every consumer had committed past the stream."""

    stream: Stream
    killed_transaction: list[Record]  # the records of the transaction open at the kill
    committed: list[Record]  # the results, read_committed
    everything: list[Record]  # and read_uncommitted: the aborted ones too
    requests: list[Record]
    fraud: list[dict[str, Any]]  # the alerts published, in order
    anomaly: list[dict[str, Any]]
    drift: list[dict[str, Any]]

    @property
    def committed_at(self) -> set[tuple[int, int]]:
        return {(r.partition, r.offset) for r in self.committed}


def _alerts(settings: Settings, topic: str) -> list[dict[str, Any]]:
    """An alerts topic's messages, each checked to be keyed by its alert_id."""
    alerts = [r.json | {"_key": r.key} for r in _read(settings, topic)]
    assert all(a.pop("_key") == a["alert_id"].encode() for a in alerts), f"{topic}: keyed by alert_id"
    return alerts


def _run_through_a_crash(settings: Settings, processes, consumers: dict[str, Running]) -> Outcome:
    """The stream through a worker SIGKILLed inside a transaction and restarted; then everything read."""
    stream = _stream(settings, f"c{uuid.uuid4().hex[:6]}-")
    worker = processes.worker(settings)
    publisher = _Publisher(settings, stream.messages)
    results = topics.partition_count(settings, settings.topics.results)
    results_start = {TopicPartition(settings.topics.results, p): 0 for p in range(results)}
    probe.collect(settings, results_start, lambda c: c.distinct_results >= 300, timeout_s=60, settle_s=0)

    killed_transaction = _kill_inside_an_open_transaction(settings, worker, publisher)
    restarted = settings.updated(worker={"metrics_port": free_port()})  # the same instance id: fences the killed one
    processes.worker(restarted)
    publisher.join()
    probe.collect(settings, results_start, expect=stream.event_ids, timeout_s=180, settle_s=0)
    assert metric(restarted.worker.metrics_port, "pipeline_events_total", outcome="scored") > 0

    committed = _read(settings, settings.topics.results)
    everything = _read(settings, settings.topics.results, "read_uncommitted")
    requests = _read(settings, settings.topics.requests)
    for name, consumer in consumers.items():  # the drift monitor reads the requests too
        ends = _past_last(committed) | (_past_last(requests) if name == "drift" else {})
        probe.until_committed(settings, consumer.group, ends, timeout_s=60)
    outcome = Outcome(
        stream,
        killed_transaction,
        committed,
        everything,
        requests,
        fraud=_alerts(settings, settings.topics.alerts),
        anomaly=_alerts(settings, settings.topics.anomaly_alerts),
        drift=[r.json for r in _read(settings, settings.topics.drift_alerts)],
    )
    assert _read(settings, settings.topics.results, "read_uncommitted") == everything, "nothing written since"
    return outcome


def _assert_the_crash_aborted_results(outcome: Outcome) -> None:
    """The transaction open at the kill was aborted (its records are in no committed view), and every
    event got exactly one committed result."""
    aborted = {(r.partition, r.offset) for r in outcome.everything} - outcome.committed_at
    assert outcome.killed_transaction and {(r.partition, r.offset) for r in outcome.killed_transaction} <= aborted
    results_by_event = Counter(r.json["event_id"] for r in outcome.committed)
    assert set(results_by_event) == outcome.stream.event_ids and set(results_by_event.values()) == {1}


def _assert_each_result_read_once(outcome: Outcome, consumers: dict[str, Running]) -> None:
    """The fraud and anomaly consumers each read every committed result once (an aborted one read
    too would count), the other model's as such."""
    models = Counter(r.json["model"] for r in outcome.committed)
    for name, own, other in (("fraud", FRAUD, ANOMALY), ("anomaly", ANOMALY, FRAUD)):
        port = consumers[name].metrics_port
        read = {
            kind: metric(port, "pipeline_consumer_results_total", consumer=name, outcome=kind)
            for kind in ("read", "other_model", "invalid")
        }
        assert read == {"read": models[own], "other_model": models[other], "invalid": 0}, name


def _assert_fraud_alerts(settings: Settings, outcome: Outcome) -> None:
    """Each alert the rules decide over the committed results, published once; the stream's patterns among them."""
    expected = _fraud_alerts(settings, outcome.committed)
    assert len({a["alert_id"] for a in outcome.fraud}) == len(outcome.fraud), "no alert published twice"
    assert {a["alert_id"]: _without_created_at(a) for a in outcome.fraud} == {
        alert: _without_created_at(a) for alert, a in expected.items()
    }
    rules = Counter((a["rule"], a["account_id"]) for a in expected.values())
    stream = outcome.stream
    assert rules[("velocity", stream.burst_account)] >= 1
    assert rules[("repeated_high_scores", stream.risky_account)] >= 1
    assert rules[("high_score", stream.risky_account)] == RISKY_RETRIES


def _assert_anomaly_alerts(settings: Settings, outcome: Outcome) -> None:
    """The episodes the rule has over the committed results: each one's last message on the compacted
    topic as the rule has it, the same publications; and none that a read_uncommitted consumer
    would have (the killed transaction's anomalous reading, read again, would count twice)."""
    expected = _anomaly_alerts(settings, outcome.committed)
    assert _latest(outcome.anomaly) == _latest(expected)
    published = Counter((a["alert_id"], a["follow_up"]["count"]) for a in outcome.anomaly)
    assert published == Counter((a["alert_id"], a["follow_up"]["count"]) for a in expected)
    faulty = [a for a in _latest(expected).values() if a["device_id"] in outcome.stream.faulty_machines]
    assert len(faulty) == len(outcome.stream.faulty_machines), "each faulty machine is one episode"
    assert all(a["follow_up"]["count"] >= 4 for a in faulty), "with its further readings counted"
    assert _latest(_anomaly_alerts(settings, outcome.everything)) != _latest(expected)


def _assert_drift_alerts(settings: Settings, outcome: Outcome) -> None:
    """The crossings of the windows over the requests and the committed results; the shifted scores'
    and the shifted vibration's among them, measured past the shift; none measured on an aborted result."""
    expected = _drift_alerts(settings, outcome.requests, outcome.committed)
    assert sorted(map(_drift_fields, outcome.drift), key=lambda a: a["alert_id"]) == sorted(
        expected, key=lambda a: a["alert_id"]
    )
    shifted = outcome.stream.first_shifted
    for model, feature, records in ((FRAUD, "score", outcome.committed), (ANOMALY, "vibration", outcome.requests)):
        since = next(r.offset for r in records if r.json["event_id"] == shifted[model])
        crossed = [a for a in expected if (a["model"], a["feature"], a["level"]) == (model, feature, "alert")]
        assert crossed and all(a["window"]["last"]["offset"] >= since for a in crossed), (model, feature)
    last = [a["window"]["last"] for a in outcome.drift]
    on_results = {(w["partition"], w["offset"]) for w in last if w["topic"] == settings.topics.results}
    assert on_results and on_results <= outcome.committed_at


def test_alerts_after_a_worker_crash_are_the_rules_over_the_committed_results(pipeline_settings, processes):
    base = pipeline_settings(instance_id=f"crash-{uuid.uuid4().hex[:8]}", session_timeout_ms=6_000)
    settings = base.updated(
        topics={"drift_alerts": f"{base.topics.requests}.drift"}, worker={"metrics_port": free_port()}
    )
    topics.apply(settings, [TopicSpec(settings.topics.drift_alerts, 1)])
    consumers = _start_consumers(processes, settings)

    outcome = _run_through_a_crash(settings, processes, consumers)

    _assert_the_crash_aborted_results(outcome)
    _assert_each_result_read_once(outcome, consumers)
    _assert_fraud_alerts(settings, outcome)
    _assert_anomaly_alerts(settings, outcome)
    _assert_drift_alerts(settings, outcome)


def _publish_in_transactions(settings: Settings, transactions: list[list[dict[str, Any]]]) -> None:
    """Results written as a worker writes them: each list in a transaction of its own (to the cards'
    partition)."""
    producer = Producer(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, "transactional.id": f"results-{uuid.uuid4().hex}"}
    )
    producer.init_transactions(30)
    for records in transactions:
        producer.begin_transaction()
        for record in records:
            producer.produce(
                settings.topics.results, orjson.dumps(record), record["event_id"].encode(), partition=CARDS
            )
        producer.commit_transaction(30)


def test_a_consumer_commits_past_every_transaction_it_has_read(pipeline_settings, processes):
    """The results come in many small transactions (a worker's, at a trickle): each one's commit
    marker is a gap in the offsets a consumer reads. Once a consumer has read every result, its
    committed offset gets past all of them within a few commit intervals, not one per interval."""
    settings = pipeline_settings()
    transactions, per_transaction = 200, 3
    _publish_in_transactions(
        settings,
        [
            [
                result_record(
                    event_id=f"t{t}-{i}",
                    model=FRAUD,
                    model_version="1",
                    score=0.1,
                    threshold=0.5,
                    latency_ms=1.0,
                    entity={"account_id": 1 + t % 50},
                )
                for i in range(per_transaction)
            ]
            for t in range(transactions)
        ],
    )
    results = _read(settings, settings.topics.results)
    assert len(results) == transactions * per_transaction

    running = _start_consumers(processes, settings, ("fraud",))["fraud"]
    deadline = time.monotonic() + 60
    while metric(running.metrics_port, "pipeline_consumer_results_total", consumer="fraud") < len(results):
        assert time.monotonic() < deadline, "the consumer did not read every result"
        time.sleep(0.2)
    # One transaction per commit interval (1 s) would take 200 s.
    probe.until_committed(
        settings, running.group, _past_last(results), timeout_s=15 * settings.consumers.commit_interval_s
    )
