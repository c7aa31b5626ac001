"""The delivery guarantee's mechanisms, each met by the fault it exists for, on real worker processes.

Each test streams a mix of valid requests, repeats and bad input, provokes one mechanism of the
README's delivery guarantee and proves from the worker's own metrics (or the broker) that the
mechanism really ran, not merely that the stream came out right. Then it reads everything back
with a read_committed consumer: every distinct valid event_id has exactly one result, every bad
message exactly one dead letter.

- a zombie: a worker stalled (SIGSTOP) past its session timeout is fenced when it resumes;
- an abort inside a running worker: a transaction the broker aborted while its worker was stalled
  is rewound and reloaded by that same process, with no rebalance;
- several transaction lanes, every one committing, across a SIGKILL and restart;
- partitions revoked in a real rebalance while their batch waits for Triton;
- nothing new is taken while a batch is retried.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pytest
from aiokafka.partitioner import murmur2
from confluent_kafka import Consumer, TopicPartition

from pipeline import topics
from pipeline.contract import REPLY_TO
from pipeline.local import probe, traffic
from pipeline.local.probe import Collected
from pipeline.local.stack import LocalStack, free_port
from pipeline.settings import Settings
from tests.conftest import metric
from tests.integration.results_follower import ResultsFollower

pytestmark = pytest.mark.integration

Start = dict[TopicPartition, int]


# -- the stream and its outcome -------------------------------------------------------------------
def _mix(total: int, prefix: str) -> traffic.Traffic:
    return traffic.mixed(total, prefix=prefix, duplicate_rate=0.2, malformed_rate=0.05)


def _begin(settings: Settings) -> Start:
    return probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])


def _collect_all(settings: Settings, start: Start, mix: traffic.Traffic, timeout_s: float = 300) -> Collected:
    """Everything the stream (published by now) produced: read until sentinels published after it are
    scored, so that a late second result or dead letter would have been read too (`probe.collect`).
    The worker counts the sentinels among its events: one per requests partition."""
    expected_dead = sum(mix.expected_dead_letters.values())
    return probe.collect(
        settings,
        start,
        lambda c: len(c.dead_letters) >= expected_dead,
        timeout_s=timeout_s,
        expect=mix.requests,
        sentinels=probe.publish_sentinels(settings),
    )


def _assert_exactly_once(mix: traffic.Traffic, collected: Collected) -> None:
    """Every distinct valid event_id exactly one result; every bad message exactly one dead letter."""
    missing = set(mix.requests) - set(collected.results)
    assert not missing, f"{len(missing)} events never got a result, e.g. {sorted(missing)[:3]}"
    doubled = {e: len(r) for e, r in collected.results.items() if len(r) > 1}
    assert not doubled, f"{len(doubled)} events got more than one result, e.g. {list(doubled.items())[:3]}"
    assert set(collected.results) == set(mix.requests), "results only for the stream's events"
    poison = Counter(m.value.decode() for m in mix.messages if m.kind not in ("valid", "duplicate"))
    dead = Counter(letter["payload"] for letter in collected.dead_letters)
    assert dead == poison, "every bad message has exactly one dead letter"
    assert collected.dead_letter_codes() == mix.expected_dead_letters


def _wait_for_results(settings: Settings, start: Start, count: int, timeout_s: float = 180) -> None:
    probe.collect(settings, start, lambda c: c.distinct_results >= count, timeout_s=timeout_s, settle_s=0)


# -- waiting, publishing ----------------------------------------------------------------------------
def _eventually(condition: Callable[[], bool], timeout_s: float, every_s: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(every_s)


def _wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    assert _eventually(condition, timeout_s), f"{what}: not within {timeout_s:g} s"


class _Background:
    """Runs a call on a thread; `join` re-raises what it raised."""

    def __init__(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._error: BaseException | None = None

        def run() -> None:
            try:
                call(*args, **kwargs)
            except BaseException as e:  # noqa: BLE001 -- re-raised by join()
                self._error = e

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def join(self, timeout_s: float = 300) -> None:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"still running after {timeout_s:g} s"
        if self._error is not None:
            raise self._error


def _publish(
    settings: Settings, messages: Sequence[traffic.Message], rate: float, headers: Iterable[tuple[str, bytes]] = ()
) -> None:
    """Like `probe.publish` at `rate` messages a second, each with `headers`."""
    producer = topics.requests_producer(settings, {"linger.ms": 5, "enable.idempotence": True})
    header_list = list(headers)
    began = time.monotonic()
    for index, message in enumerate(messages):
        if (ahead_s := began + index / rate - time.monotonic()) > 0:
            producer.poll(ahead_s)
        while True:
            try:
                producer.produce(settings.topics.requests, message.value, key=message.key, headers=header_list)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(30) == 0, "every request was published"


# -- looking at a worker and the broker ---------------------------------------------------------------
def _metrics_port() -> dict[str, int]:
    return {"metrics_port": free_port()}


def _aborts(port: int) -> Counter[str]:
    return Counter(
        {
            reason: metric(port, "pipeline_transaction_aborts_total", reason=reason)
            for reason in ("fenced", "error", "stalled")
        }
    )


def _rebalanced(port: int, change: str) -> float:
    return metric(port, "pipeline_rebalances_total", change=change)


def _events(port: int) -> float:
    """Requests whose processing completed (scored, repeats answered, dead letters), whatever became of them."""
    return metric(port, "pipeline_events_total")


def _partition(message: traffic.Message, partitions: int) -> int:
    """The requests partition of a message, placed as every producer of the topic places keys (murmur2)."""
    assert message.key is not None
    return (murmur2(message.key) & 0x7FFFFFFF) % partitions


def _revoked_partitions(stack: LocalStack, process: subprocess.Popen[bytes]) -> set[int]:
    """Every partition the worker logged giving up."""
    revoked: set[int] = set()
    for line in _log_lines(stack, process, '"partitions_revoked"'):
        revoked.update(json.loads(line)["partitions"])
    return revoked


def _group_size(settings: Settings) -> int:
    """Members of the workers' consumer group, as its coordinator has them now."""
    group = settings.worker.app_id
    admin = topics.admin_client(settings)  # held: the request dies with its client
    return len(admin.describe_consumer_groups([group])[group].result(timeout=10).members)


def _worker_log(stack: LocalStack, process: subprocess.Popen[bytes]) -> str:
    for pid_file in stack.run_dir.glob("worker-*.pid"):
        if pid_file.read_text().strip() == str(process.pid):
            return pid_file.with_suffix(".log").read_text(errors="replace")
    return ""


def _log_lines(stack: LocalStack, process: subprocess.Popen[bytes], *words: str) -> list[str]:
    return [line for line in _worker_log(stack, process).splitlines() if any(w in line for w in words)]


class _OpenTransactions:
    """Results partitions where a transaction is open: their last stable offset (as far as
    read_committed readers may go) is behind their high watermark."""

    def __init__(self, settings: Settings) -> None:
        config = probe.consumer_config(settings)
        self._stable = Consumer(config)
        self._high = Consumer({**config, "isolation.level": "read_uncommitted"})
        results = settings.topics.results
        self._partitions = [TopicPartition(results, p) for p in range(topics.partition_count(settings, results))]

    def __call__(self) -> list[TopicPartition]:
        open_now = []
        for tp in self._partitions:
            high = self._high.get_watermark_offsets(tp, timeout=10, cached=False)[1]
            stable = self._stable.get_watermark_offsets(tp, timeout=10, cached=False)[1]
            if stable < high:
                open_now.append(tp)
        return open_now

    def close(self) -> None:
        self._stable.close()
        self._high.close()


def _stall_past_session(
    zombie: subprocess.Popen[bytes], settings: Settings, zombie_port: int, peer_port: int
) -> Counter[str]:
    """Stop the zombie until its group has dropped it and the peer has taken its partitions (before the
    zombie could rejoin and take them back), continue it, wait until it has given them up; returns
    the aborts it counted meanwhile, by reason."""
    aborts_before = _aborts(zombie_port)
    revoked_before = _rebalanced(zombie_port, "revoked")
    assigned_before = _rebalanced(peer_port, "assigned")
    zombie.send_signal(signal.SIGSTOP)
    try:
        _wait_until(lambda: _group_size(settings) == 1, 60, "the group dropping the stopped worker")
        # The peer's assignment waits out any transaction the zombie left open on those partitions'
        # results (the broker aborts it after transaction_timeout_ms): up to ~20 s.
        _wait_until(lambda: _rebalanced(peer_port, "assigned") > assigned_before, 120, "the peer taking the partitions")
    finally:
        zombie.send_signal(signal.SIGCONT)
    _wait_until(lambda: _rebalanced(zombie_port, "revoked") > revoked_before, 120, "the zombie giving them up")
    _eventually(lambda: sum(_aborts(zombie_port).values()) > sum(aborts_before.values()), 15)
    return _aborts(zombie_port) - aborts_before


# -- 1. zombie fencing ----------------------------------------------------------------------------------
def test_a_worker_stalled_past_its_session_is_fenced_when_it_resumes(stack, pipeline_settings, start_worker):
    """A worker stopped (SIGSTOP) until its group drops it is a zombie when it continues: it still holds
    scored batches of partitions that another worker now owns. Their late transaction must be refused
    (KIP-447: the coordinator refuses a stale member's offsets), so nothing is published twice.

    Every request names a reply address, so the zombie answers its callers when scored and gathers
    2 s of scored batches per transaction: a stop lands, all but surely, while it holds scored,
    uncommitted work. Stop and continue are repeated (up to 3 times) until a fenced abort is counted."""
    zombie_settings = pipeline_settings(
        session_timeout_ms=6000, transaction_linger_ms=2000, max_batches_per_transaction=1000, **_metrics_port()
    )
    peer_settings = zombie_settings.updated(worker={"session_timeout_ms": 10_000, **_metrics_port()})
    zombie_port, peer_port = zombie_settings.worker.metrics_port, peer_settings.worker.metrics_port
    mix = _mix(3000, "zombie-")
    start = _begin(zombie_settings)
    zombie = start_worker(zombie_settings)
    start_worker(peer_settings)
    reply_to = [(REPLY_TO, f"{zombie_settings.topics.replies}:0".encode())]
    publisher = _Background(_publish, zombie_settings, mix.messages, rate=100, headers=reply_to)
    _wait_for_results(zombie_settings, start, 300)

    aborted: Counter[str] = Counter()
    stops = 0
    while not aborted["fenced"] and stops < 3:
        stops += 1
        aborted += _stall_past_session(zombie, zombie_settings, zombie_port, peer_port)

    publisher.join()
    collected = _collect_all(zombie_settings, start, mix)
    aborts = _log_lines(stack, zombie, "transaction_aborted", "transaction_stalled")
    assert aborted["fenced"] > 0, (
        f"no late transaction of the zombie was fenced in {stops} stops: {aborted}, {aborts[-3:]}"
    )
    _assert_exactly_once(mix, collected)
    assert zombie.poll() is None, "the zombie carried on (it rejoined the group) rather than crashing"


# -- 2. an abort's rewind and reload inside a running worker -----------------------------------------
def test_a_transaction_the_broker_aborted_is_rewound_and_reloaded_by_the_same_worker(
    stack, pipeline_settings, start_worker
):
    """A worker stopped while a transaction of it is open at the broker, for longer than its
    transaction timeout (2 s; its session, 45 s, outlasts the stop): the broker aborts the
    transaction. On SIGCONT the same process must count the abort, rewind to its first uncommitted
    records, reload its dedup state from the results and carry on: no rebalance takes part.

    The stop must land while a transaction is open: each try stops the worker as a result is written
    or at a random moment, whichever comes first, and continues it at once unless some results
    partition has a transaction open (its last stable offset behind its high watermark); then it
    waits, stopped, until the broker has aborted it. The aborted results' events
    were already in the dedup state (put when scored): had it not been reloaded, their requests,
    fetched again after the rewind, would pass for repeats and never get a result."""
    settings = pipeline_settings(transaction_timeout_ms=2000, session_timeout_ms=45_000, **_metrics_port())
    port = settings.worker.metrics_port
    mix = _mix(3000, "rewind-")
    start = _begin(settings)
    worker = start_worker(settings)
    publisher = _Background(probe.publish, settings, mix.messages, rate=150)
    _wait_for_results(settings, start, 200)
    assigned = _rebalanced(port, "assigned")

    open_transactions = _OpenTransactions(settings)
    follower = ResultsFollower(settings, range(topics.partition_count(settings, settings.topics.results)))
    caught: list[TopicPartition] = []
    aborted = False
    tries, found_open, sightings = 0, 0, 0
    try:
        while not aborted and tries < 50:
            tries += 1
            aborts_before = sum(_aborts(port).values())
            worker.send_signal(signal.SIGSTOP)
            try:
                follower.skip(0.3)  # what it had sent reaches the broker
                caught = open_transactions()
                if caught:
                    found_open += 1
                    _wait_until(
                        lambda: not open_transactions(), 60, "the broker aborting the stopped worker's transaction"
                    )
            finally:
                worker.send_signal(signal.SIGCONT)
            # A stop that met a commit already on its way finds it open, then committed: no abort; go on.
            aborted = bool(caught) and _eventually(lambda n=aborts_before: sum(_aborts(port).values()) > n, 30)
            if not aborted:
                sightings += follower.until_written(random.uniform(0.1, 0.6))
    finally:
        open_transactions.close()
        follower.close()
    assert aborted, (
        f"no stop in {tries} landed while a transaction was open, to be aborted by the broker ({sightings} came "
        f"as a result was written; {found_open} found a transaction open)"
    )

    publisher.join()
    collected = _collect_all(settings, start, mix)
    _assert_exactly_once(mix, collected)
    assert worker.poll() is None, "the same process carried on"
    assert _rebalanced(port, "revoked") == 0 and _rebalanced(port, "assigned") == assigned, (
        "no rebalance: the worker's own rewind recovered, not a new owner"
    )


# -- 3. several transaction lanes --------------------------------------------------------------------------
def test_three_lanes_each_commit_and_a_worker_killed_mid_stream_loses_and_doubles_nothing(
    pipeline_settings, start_worker
):
    lanes = 3
    settings = pipeline_settings(transaction_lanes=lanes, transaction_timeout_ms=5000, **_metrics_port())
    mix = _mix(4000, "lanes-")
    start = _begin(settings)
    first = start_worker(settings)
    publisher = _Background(probe.publish, settings, mix.messages, rate=400)
    _wait_for_results(settings, start, len(mix.requests) // 4)
    committed_first = [
        metric(settings.worker.metrics_port, "pipeline_transactions_total", lane=str(i)) for i in range(lanes)
    ]

    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    restarted = settings.updated(worker=_metrics_port())
    start_worker(restarted)
    publisher.join()
    collected = _collect_all(settings, start, mix)

    _assert_exactly_once(mix, collected)
    committed_restarted = [
        metric(restarted.worker.metrics_port, "pipeline_transactions_total", lane=str(i)) for i in range(lanes)
    ]
    assert all(n > 0 for n in committed_first), f"every lane of the first worker committed: {committed_first}"
    assert all(n > 0 for n in committed_restarted), f"every lane of the restarted one committed: {committed_restarted}"


# -- 4. partitions revoked while their batch is scored ----------------------------------------------------
def test_partitions_revoked_while_their_batch_waits_for_triton_are_scored_once_by_their_new_owner(
    stack, pipeline_settings, start_worker
):
    """Triton is down, so the owner's batch waits in its retry loop; a second worker joins the group
    and cooperative-sticky moves half the partitions to it while that batch still waits. When Triton
    is back the owner must drop the moved partitions' records from the batch it hands over, and the
    new owner scores them.

    Which partitions move is up to the assignor: librdkafka's cooperative-sticky moves a sole owner's
    first six (0-5) to a member that joins. The requests published during the outage are those of
    partitions 0-5 only, so whatever the owner's waiting batch holds is of partitions that move; the
    test checks that they did (the owner logs the partitions it gives up)."""
    owner_settings = pipeline_settings(retry_max_ms=1000, retry_budget_s=240, **_metrics_port())
    peer_settings = owner_settings.updated(worker=_metrics_port())
    owner_port, peer_port = owner_settings.worker.metrics_port, peer_settings.worker.metrics_port
    partitions = topics.partition_count(owner_settings, owner_settings.topics.requests)
    moving = set(range(partitions // 2))
    mix = _mix(1500, "handover-")
    before, middle = mix.messages[:500], mix.messages[500:1000]
    burst = [m for m in middle if _partition(m, partitions) in moving]
    # In the order published, partition by partition: each key's repeats still follow their original.
    after = [m for m in middle if _partition(m, partitions) not in moving] + mix.messages[1000:]
    start = _begin(owner_settings)
    owner = start_worker(owner_settings)
    probe.publish(owner_settings, before)
    _wait_until(lambda: _events(owner_port) >= len(before), 120, "the first part processed")

    stack.stop_triton()
    try:
        probe.publish(owner_settings, burst)
        _wait_until(lambda: metric(owner_port, "pipeline_retries_total") > 0, 120, "the owner's batch retrying")
        waiting = metric(owner_port, "pipeline_queue_wait_seconds_count") - len(before)
        peer = start_worker(peer_settings)
        _wait_until(lambda: _rebalanced(owner_port, "revoked") > 0, 120, "the owner giving up partitions")
        retries_while_waiting = metric(owner_port, "pipeline_retries_total")
        completed_while_waiting = _events(owner_port)
    finally:
        stack.start_triton()
    probe.publish(owner_settings, after)
    collected = _collect_all(owner_settings, start, mix)

    _assert_exactly_once(mix, collected)
    revoked = _revoked_partitions(stack, owner)
    assert revoked == moving, f"premise: the partitions of the waiting batch moved (the owner gave up {revoked})"
    assert waiting >= 1 and completed_while_waiting == len(before), "a batch of them was waiting when they moved"
    assert retries_while_waiting > 0, "the batch waited in its retry loop"
    assert _rebalanced(peer_port, "assigned") == len(moving), "the peer took the moved partitions"
    assert sum(_aborts(owner_port).values()) == 0 and sum(_aborts(peer_port).values()) == 0, "no rewind re-scored"
    assert _rebalanced(peer_port, "revoked") == 0
    # Processed by both, exactly the waiting batch's requests: scored by the owner, dropped as revoked
    # when it handed the batch over, and scored again by their new owner.
    # (and the sentinels `_collect_all` published, one per partition)
    processed = _events(owner_port) + _events(peer_port) - partitions
    assert processed == len(mix.messages) + waiting, (
        f"{processed:g} processed for {len(mix.messages)} published and {waiting:g} in the waiting batch: "
        "the owner did not drop (only) the waiting batch's records of the partitions it lost"
    )
    assert peer.poll() is None and owner.poll() is None


# -- 5. nothing new is taken while a batch is retried ------------------------------------------------------
RETRY_TURNS = 4  # retries of the waiting batches (one a second each, at most) between two readings


def _retried(port: int, turns: int) -> None:
    """Until the worker has retried its waiting batches `turns` more times."""
    before = metric(port, "pipeline_retries_total")
    _wait_until(lambda: metric(port, "pipeline_retries_total") >= before + turns, 60, f"{turns} more retries")


def test_nothing_new_is_taken_while_a_batch_waits_for_triton(stack, pipeline_settings, start_worker):
    """While Triton is down a batch waits in its retry loop, and the worker prepares the next beside it
    (two batches in scoring, the most the loop allows) and takes nothing more: of the requests published
    meanwhile, at most two batches are started (validated, their queue wait observed), however many
    wait. Once Triton is back, everything is scored exactly once."""
    batch = 32
    settings = pipeline_settings(batch_size=batch, retry_max_ms=1000, retry_budget_s=240, **_metrics_port())
    port = settings.worker.metrics_port
    mix = _mix(1200, "held-")
    before, during = mix.messages[:300], mix.messages[300:]
    start = _begin(settings)
    worker = start_worker(settings)
    probe.publish(settings, before)
    _wait_until(lambda: _events(port) >= len(before), 120, "the first part processed")

    def started() -> tuple[float, float]:
        """Batches started (validated) and requests started (their queue wait observed)."""
        return (
            metric(port, "pipeline_stage_seconds_count", stage="validate"),
            metric(port, "pipeline_queue_wait_seconds_count"),
        )

    stack.stop_triton()
    try:
        batches_before, records_before = started()
        completed_before = (_events(port), metric(port, "pipeline_batch_size_count"))
        publisher = _Background(probe.publish, settings, during, rate=300)
        _wait_until(lambda: metric(port, "pipeline_retries_total") > 0, 120, "a batch retrying")
        publisher.join()
        # Every request of `during` is on the broker. Whether the worker would take more shows in its
        # loop's next turns, not in a pause of ours: the waiting batches' retries (at most retry_max_ms
        # apart) are such turns, so the counts are read after a few of them, then after a few more.
        _retried(port, RETRY_TURNS)
        taken = started()
        _retried(port, RETRY_TURNS)
        taken_later = started()
        completed = (_events(port), metric(port, "pipeline_batch_size_count"))
    finally:
        stack.start_triton()
    collected = _collect_all(settings, start, mix)

    _assert_exactly_once(mix, collected)
    assert "inference_failed" not in collected.dead_letter_codes()
    batches, records = taken[0] - batches_before, taken[1] - records_before
    assert 1 <= batches <= 2, f"{batches:g} batches started while one waited for Triton (at most it and the next)"
    assert records <= 2 * batch < len(during), f"{records:g} of {len(during)} requests taken while a batch waited"
    assert taken_later == taken, "nothing more was taken later in the outage"
    assert completed == completed_before, "no batch completed while Triton was down"
    assert worker.poll() is None
