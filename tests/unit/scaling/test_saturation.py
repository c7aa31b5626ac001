"""The policy's step that must pay, on recorded sequences: a step whose workers add little is taken
back (to what its measured rate supports) and held with its cause; one that adds is kept; a trial
is dropped when it cannot be judged; a cold start takes one step; a rate learnt before a restart
is used."""

from __future__ import annotations

from dataclasses import replace

from pipeline.scaling.learnt import Learnt, due
from pipeline.scaling.policy import Limits, Observation, State, decide
from pipeline.scaling.rates import RateMeter

# 12 partitions, at most 6 workers (steps 1, 2, 3, 4, 6); quick enough for a recorded sequence.
LIMITS = Limits(partitions=12, max_workers=6, drain_s=10, up_cooldown_s=10, down_window_s=300, restore_s=2, start_s=3)
BACKLOG = 1_000_000  # far more than any count drains within the target: every reading wants the top


def busy(at: float, members: int, group_per_s: float, **more) -> Observation:
    """A reading while the group drains a backlog: its rate measured at `members` workers."""
    per_worker = more.pop("per_worker", group_per_s / members)
    return Observation(at, BACKLOG, 0.0, per_worker, group_per_s=group_per_s, members=members, **more)


def stepped(**before) -> State:
    """1 worker measured at 10,000/s, then a step to the top (6) under trial."""
    decision, state = decide(LIMITS, State(workers=1), busy(0.0, 1, 10_000.0, **before))
    assert decision.workers == 6 and state.trial is not None and state.trial.before_per_s == 10_000.0
    return state


def judged(state: State, group_per_s: float, **after) -> tuple:
    """Two settled readings of the 6 workers at `group_per_s`: the decision after the second."""
    _, state = decide(LIMITS, state, busy(8.0, 6, group_per_s, per_worker=10_000.0, **after))
    assert state.trial is not None, "one reading is no verdict"
    return decide(LIMITS, state, busy(9.0, 6, group_per_s, per_worker=10_000.0, **after))


def test_a_step_whose_workers_add_little_is_taken_back_and_held_with_its_cause():
    state = stepped(cpu_busy=0.6)
    # The new workers are still joining: no verdict yet, and no further step meanwhile.
    decision, state = decide(LIMITS, state, Observation(5.0, BACKLOG, 0.0, 10_000.0, members=2))
    assert decision.workers == 6 and state.trial is not None
    # In and settled: 6 workers drain 12,000/s, where 1 drained 10,000/s: 4% of the 50,000/s expected.
    decision, state = judged(state, 12_000.0, cpu_busy=0.97)
    assert decision.workers == 1 and decision.saturated == "CPU"
    assert decision.reason.startswith("saturated: CPU (97% of the usable CPUs busy)"), decision.reason
    assert "back to 1" in decision.reason and round(state.gain, 2) == 0.04
    # Held there while the backlog lasts, saying why, well past the cooldown.
    for at in (12.0, 60.0, 300.0):
        decision, state = decide(LIMITS, state, busy(at, 1, 10_200.0))
        assert decision.workers == 1 and decision.saturated == "CPU", decision.reason
    # The hold ends (saturated_hold_s): the demand is tried again.
    decision, state = decide(LIMITS, state, busy(9.0 + LIMITS.hold_s, 1, 10_000.0, cpu_busy=0.5))
    assert decision.workers == 6 and decision.saturated is None, decision.reason


def test_a_step_that_paid_in_part_goes_back_to_the_count_its_rate_supports():
    # 6 workers drain 20,000/s where 1 drained 10,000/s: the broker gives two workers' worth.
    decision, state = judged(stepped(), 20_000.0)
    assert decision.workers == 2 and decision.saturated == "broker", decision.reason
    assert state.saturated is not None and state.saturated.workers == 2


def test_a_step_whose_workers_add_their_rate_is_kept():
    decision, state = judged(stepped(), 46_000.0)
    assert decision.workers == 6 and decision.saturated is None
    assert round(state.gain, 2) == 0.72 and state.trial is None and state.saturated is None


def test_the_cause_is_tritons_queue_when_it_grew_with_the_workers_else_the_broker():
    def cause(**after) -> str | None:
        decision, _ = judged(stepped(triton_queue_s=0.001), 11_000.0, **after)
        assert decision.workers == 1
        return decision.saturated

    assert cause(triton_queue_s=0.02) == "Triton queue", "from 1 ms to 20 ms per request"
    assert cause(triton_queue_s=0.0015, cpu_busy=0.5) == "broker", "neither the CPUs nor the queue"
    assert cause(triton_queue_s=0.02, cpu_busy=0.95) == "CPU", "busy CPUs first: Triton shares them"
    decision, _ = judged(stepped(), 11_000.0, triton_queue_s=0.02)
    assert decision.saturated == "broker", "no queue measured before: 20 ms is not known to have grown"


def test_no_worker_is_added_to_busy_cpus_or_a_long_triton_queue():
    decision, _ = decide(LIMITS, State(workers=1), busy(0.0, 1, 10_000.0, cpu_busy=0.95))
    assert decision.workers == 1 and decision.saturated == "CPU"
    assert "a worker more would only share them" in decision.reason
    decision, _ = decide(LIMITS, State(workers=1), busy(0.0, 1, 10_000.0, triton_queue_s=0.08))
    assert decision.workers == 1 and decision.saturated == "Triton queue"
    assert "Triton instances or GPUs" in decision.reason


def test_a_held_count_is_tried_again_once_its_rate_measured_again_has_moved():
    _, state = judged(stepped(), 10_500.0)
    assert state.saturated is not None and state.saturated.cause == "broker"
    for at in (12.0, 14.0):
        decision, state = decide(LIMITS, state, busy(at, 1, 11_000.0))
        assert decision.workers == 1 and decision.saturated == "broker", "10% more: the same conditions"
    decision, state = decide(LIMITS, state, busy(16.0, 1, 14_000.0))
    assert decision.workers == 1, "smoothed to 12,500/s: a quarter above the held rate, not more"
    decision, state = decide(LIMITS, state, busy(18.0, 1, 14_000.0))
    assert decision.workers == 6 and state.saturated is None, "13,250/s: moved by more than a quarter, tried again"


def test_a_trial_that_cannot_be_judged_is_dropped_and_blocks_nothing():
    # The new workers never all join (a pod Pending), or are never measured busy.
    state = stepped()
    assert state.trial is not None
    for at in (8.0, 12.0):
        _, state = decide(LIMITS, state, busy(at, 4, 40_000.0))
    assert state.trial is not None, "not yet past its time"
    _, state = decide(LIMITS, state, Observation(state.trial.expires_at + 1, BACKLOG, 0.0, 10_000.0, members=4))
    assert state.trial is None and state.saturated is None, "dropped unjudged, nothing held"
    # A count changed by a step down drops it too.
    state = replace(stepped(), last_change_at=-1_000.0)
    decision, state = decide(LIMITS, state, Observation(400.0, 0, 0.0, 10_000.0, members=6))
    assert decision.workers < 6 and state.trial is None


def test_an_unknown_membership_judges_nothing():
    state = stepped()
    for at in (8.0, 9.0, 10.0):
        decision, state = decide(LIMITS, state, Observation(at, BACKLOG, 0.0, 10_000.0, group_per_s=12_000.0))
        assert decision.workers == 6 and state.trial is not None and state.trial.samples == ()


def test_a_baseline_from_an_earlier_backlog_is_measured_again_before_a_step():
    state = State(workers=1)
    _, state = decide(LIMITS, state, busy(0.0, 1, 10_000.0, cpu_busy=0.95))  # measured, no step (busy CPUs)
    _, state = decide(LIMITS, state, Observation(100.0, 0, 0.0, 10_000.0, members=1))  # the backlog drained
    late = Observation(200.0, BACKLOG, 0.0, 10_000.0, members=1)
    decision, state = decide(LIMITS, state, late)
    assert decision.workers == 1 and "measuring the drain rate of 1" in decision.reason
    decision, state = decide(LIMITS, state, busy(202.0, 1, 5_000.0, per_worker=5_000.0))
    assert decision.workers == 6 and state.trial is not None and state.trial.before_per_s == 5_000.0


def test_a_cold_start_waits_for_a_measure_then_takes_one_step_on_the_prior():
    prior = Observation(0.0, BACKLOG, 0.0, 5_000.0, measured=False)
    decision, state = decide(LIMITS, State(workers=1), prior)
    assert decision.workers == 1 and "measuring one worker's rate" in decision.reason
    decision, state = decide(LIMITS, state, replace(prior, at=LIMITS.measure_s))
    assert decision.workers == 2, "one step, not the 6 the prior asks for"
    assert "one worker's rate is not measured yet" in decision.reason
    decision, _ = decide(LIMITS, state, replace(prior, at=LIMITS.measure_s + 30))
    assert decision.workers == 2, "still no measure: no second step"


def test_a_rate_learnt_before_a_restart_is_used():
    kept = Learnt(per_worker_per_s=20_000.0, at=1.0, workers=2)
    meter = RateMeter(prior_per_worker_s=5_000, settle_s=3)
    meter.learnt(Learnt.decode(kept.encode()).per_worker_per_s)
    assert meter.rates is not None and meter.rates.measured and meter.rates.per_worker_per_s == 20_000
    # 600,000 waiting, drain within 10 s: 60,000/s, 3 workers of 20,000/s, not one step on the prior.
    reading = Observation(0.0, 600_000, 0.0, meter.rates.per_worker_per_s, measured=meter.rates.measured, members=1)
    decision, state = decide(LIMITS, State(workers=1), reading)
    assert decision.workers == 1, "the group's own rate first, for a baseline"
    decision, _ = decide(LIMITS, state, replace(reading, at=LIMITS.measure_s))
    assert decision.workers == 3, decision.reason


def test_a_measure_is_written_when_it_moved_or_a_minute_passed():
    last = Learnt(10_000.0, 0.0, 1)
    assert due(None, last)
    assert not due(last, Learnt(10_500.0, 30.0, 1))
    assert due(last, Learnt(12_000.0, 30.0, 1))
    assert due(last, Learnt(10_000.0, 60.0, 1))
