"""The worker's batching decisions, driven from facts alone (docs/architecture.md#held-records)."""

from __future__ import annotations

import pytest

from pipeline.worker.batching import Advance, Batching, Facts, FollowGate, LaneState, Rewind, Settle

Record = tuple[int, int]  # (partition, offset)
IDLE = LaneState()
COMMITTING = LaneState(committing=True)
BATCH = 4
LINGER = 0.05


def machine(awaits_answer: bool | None = None, **kwargs: object) -> Batching[Record]:
    return Batching(
        batch_size=BATCH,
        max_batches=3,
        linger_s=LINGER,
        partition=lambda r: r[0],
        awaits_answer=None if awaits_answer is None else (lambda records: awaits_answer),
        **kwargs,  # type: ignore[arg-type]
    )


def facts(*lanes: LaneState, now: float = 100.0, owned: set[int] | None = None, **kwargs: object) -> Facts:
    return Facts(now=now, lanes=lanes or (IDLE,), owned={0, 1, 2, 3} if owned is None else owned, **kwargs)  # type: ignore[arg-type]


def records(partition: int, count: int, first: int = 0) -> list[Record]:
    return [(partition, first + i) for i in range(count)]


def test_an_idle_worker_fetches_a_batch_and_waits_for_it():
    batching = machine()
    assert batching.decide(facts()) == Advance(fetch=BATCH)
    assert batching.decide(facts()) == Advance(), "one fetch at a time"


def test_a_lone_record_is_scored_at_once_not_held_to_fill_a_batch():
    batching = machine()
    batching.decide(facts())
    batching.fetched(records(0, 1))
    assert batching.decide(facts()) == Advance(fetch=BATCH - 1, score=[(0, 0)])
    assert batching.held == []


def test_a_batch_scored_without_a_backlog_is_committed_at_once():
    batching = machine(fetching=True)
    pending = LaneState(pending=1, pending_since=99.99)
    assert batching.decide(facts(pending, now=100.0)) == Advance(commit=(0,))


def test_under_a_backlog_transactions_gather_batches_until_ripe():
    batching = machine()
    batching.decide(facts())
    batching.fetched(records(0, BATCH))  # full: a backlog
    assert batching.backlog
    decision = batching.decide(facts(LaneState(pending=1, pending_since=100.0), now=100.0))
    assert decision == Advance(score=records(0, BATCH)), "a full batch is scored, not committed yet"

    waiting = batching.decide(facts(LaneState(pending=1, pending_since=100.0), now=100.02))
    assert isinstance(waiting, Advance) and waiting.commit == () and waiting.score is None
    assert waiting.wake_in == pytest.approx(0.03), "woken when the oldest batch is linger old"

    assert batching.decide(facts(LaneState(pending=1, pending_since=100.0), now=100.06)).commit == (0,)
    assert batching.decide(facts(LaneState(pending=3, pending_since=100.0), now=100.0)).commit == (0,), "lane full"


def test_a_gathering_lane_with_max_batches_waiting_is_due_at_once_and_the_oldest_batch_sets_the_time():
    batching = machine(fetching=True, backlog=True, held=records(0, 1))
    decision = batching.decide(facts(IDLE, COMMITTING, LaneState(pending=2, pending_since=99.98), scoring=True))
    assert decision == Advance(wake_in=pytest.approx(0.03))
    assert machine(fetching=True, backlog=True).decide(facts(LaneState(pending=3, pending_since=100.0))).commit == (0,)


def test_callers_answered_ahead_of_their_commit_make_transactions_gather_for_linger():
    batching = machine(fetching=True)
    lane = LaneState(pending=1, pending_since=100.0)
    assert batching.decide(facts(lane, now=100.01, answered_at=99.99)).commit == ()
    assert batching.decide(facts(lane, now=100.01, answered_at=99.9)).commit == (0,)


def test_while_every_lane_commits_what_trickles_in_is_held_for_one_batch_later():
    batching = machine()
    batching.decide(facts(COMMITTING, COMMITTING))
    batching.fetched(records(1, 2))
    decision = batching.decide(facts(COMMITTING, COMMITTING))
    assert decision == Advance(fetch=BATCH - 2), "held, a fetch for the rest"
    assert batching.held == records(1, 2)
    batching.fetched(records(2, 1))
    assert batching.decide(facts(IDLE, COMMITTING)).score == records(1, 2) + records(2, 1), "a lane freed up"


def test_a_full_batch_is_scored_even_while_every_lane_commits():
    batching = machine()
    batching.decide(facts(COMMITTING))
    batching.fetched(records(0, BATCH))
    assert batching.decide(facts(COMMITTING)).score == records(0, BATCH)


def test_a_lane_started_in_the_same_decision_counts_as_committing():
    batching = machine()
    batching.decide(facts())
    batching.fetched(records(0, 1))
    decision = batching.decide(facts(LaneState(pending=1, pending_since=99.0)))
    assert decision == Advance(commit=(0,), fetch=BATCH - 1), "held: the only lane is now committing"


def test_while_a_batch_is_being_scored_records_are_held_until_a_full_batch():
    batching = machine()
    batching.decide(facts())
    batching.fetched(records(0, 2))
    assert batching.decide(facts(scoring=True)).score is None
    batching.fetched(records(0, 2, first=2))
    assert batching.decide(facts(scoring=True)).score == records(0, BATCH)


def test_a_caller_waiting_for_a_held_record_is_not_held_for_a_commit():
    batching = machine(awaits_answer=True)
    batching.decide(facts(COMMITTING))
    batching.fetched(records(0, 1))
    assert batching.callers_held
    assert batching.decide(facts(COMMITTING)).score == records(0, 1)
    assert not batching.callers_held, "cleared with the batch it was for"


def test_callers_answered_at_commit_are_held_like_any_record():
    batching = machine(awaits_answer=None)
    batching.decide(facts(COMMITTING))
    batching.fetched(records(0, 1))
    assert not batching.callers_held
    assert batching.decide(facts(COMMITTING)).score is None


def test_a_caller_does_not_jump_a_batch_being_scored():
    batching = machine(awaits_answer=True)
    batching.decide(facts())
    batching.fetched(records(0, 1))
    assert batching.decide(facts(scoring=True)).score is None


def test_records_of_partitions_not_owned_are_not_scored():
    batching = machine()
    batching.decide(facts())
    batching.fetched([(0, 1), (5, 1), (1, 2)])
    decision = batching.decide(facts(owned={0, 1}))
    assert isinstance(decision, Advance) and decision.score == [(0, 1), (1, 2)]
    assert batching.held == [], "a revoked partition's records are for its next owner"


def test_a_finished_transaction_is_settled_before_anything_else():
    batching = machine()
    decision = batching.decide(facts(IDLE, LaneState(finished=True), LaneState(committing=True, pending=3)))
    assert decision == Settle((1, 2)), "finished, and committing with max_batches waiting behind"
    assert batching.decide(facts(LaneState(committing=True, pending=2))) == Advance(fetch=BATCH)


def test_an_aborted_lane_is_rewound_and_what_was_held_of_its_partitions_dropped():
    batching = machine(held=[(0, 5), (1, 7), (2, 9)])
    assert batching.decide(facts(LaneState(rewinding=True, pending=2))) == Rewind()
    batching.rewound({0, 2})
    assert batching.held == [(1, 7)]
    assert isinstance(batching.decide(facts(LaneState(pending=2))), Advance)


def test_a_rewinding_lane_does_not_commit():
    batching = machine(fetching=True)
    assert batching.decide(facts(IDLE, LaneState(rewinding=True, pending=1))) == Rewind()


def test_a_backfill_worker_pauses_while_the_live_workers_lag_and_resumes_after():
    batching = machine()
    assert batching.decide(facts(gate=True)) == FollowGate(pause=True)
    assert batching.paused
    assert batching.decide(facts(gate=True)) == Advance(fetch=BATCH), "followed once"
    assert batching.decide(facts(gate=False)) == FollowGate(pause=False)
    assert not batching.paused
    assert isinstance(machine().decide(facts(gate=None)), Advance), "a live worker has no gate"


def test_the_fetch_asks_only_for_what_a_batch_lacks_and_none_when_a_batch_is_held():
    batching = machine()
    batching.decide(facts())
    batching.fetched(records(0, 3))
    assert batching.decide(facts(scoring=True)).fetch == 1
    batching.fetched(records(0, 1, first=3))
    assert batching.backlog, "a fetch that filled what the batch lacked: more may be waiting"
    full = machine(held=records(0, BATCH))
    assert full.decide(facts(scoring=True)).fetch == 0
