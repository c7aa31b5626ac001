"""The policy's step that must pay, on recorded sequences: a step whose workers add little is taken
back and held with its cause; one that adds is kept; a cold start takes one step; a rate learnt
before a restart is used at once."""

from __future__ import annotations

from pipeline.scaling.learnt import Learnt, due
from pipeline.scaling.policy import Limits, Observation, State, decide
from pipeline.scaling.rates import RateMeter

# 12 partitions, at most 4 workers (steps 1, 2, 3, 4); quick enough for a recorded sequence.
LIMITS = Limits(partitions=12, max_workers=4, drain_s=10, up_cooldown_s=10, down_window_s=300, restore_s=2, start_s=3)
BACKLOG = 1_000_000  # far more than any count drains within the target: every reading wants the top


def busy(at: float, members: int, group_per_s: float, **more) -> Observation:
    """A reading while the group drains a backlog: its rate measured at `members` workers."""
    per_worker = more.pop("per_worker", group_per_s / members)
    return Observation(at, BACKLOG, 0.0, per_worker, group_per_s=group_per_s, members=members, **more)


def test_a_step_whose_workers_add_little_is_taken_back_and_held_with_its_cause():
    state = State(workers=1)
    decision, state = decide(LIMITS, state, busy(0.0, 1, 10_000.0, cpu_busy=0.6))
    assert decision.workers == 4, decision.reason
    assert state.trial is not None and state.trial.before_per_s == 10_000.0
    # The new workers are still joining: no verdict yet, and no further step meanwhile.
    decision, state = decide(LIMITS, state, Observation(5.0, BACKLOG, 0.0, 10_000.0, members=2))
    assert decision.workers == 4 and state.trial is not None
    # In and settled: 4 workers drain 12,000/s, where 1 drained 10,000/s: 7% of the 30,000/s expected.
    decision, state = decide(LIMITS, state, busy(9.0, 4, 12_000.0, per_worker=10_000.0, cpu_busy=0.97))
    assert decision.workers == 1 and decision.saturated == "CPU"
    assert decision.reason.startswith("saturated: CPU (97% of the usable CPUs busy)"), decision.reason
    assert "back to 1" in decision.reason and round(state.gain, 2) == 0.07
    # Held there while the backlog lasts, saying why, well past the cooldown.
    for at in (12.0, 60.0, 300.0):
        decision, state = decide(LIMITS, state, busy(at, 1, 10_200.0))
        assert decision.workers == 1 and decision.saturated == "CPU", decision.reason
    # The hold ends (saturated_hold_s): the demand is tried again.
    decision, state = decide(LIMITS, state, busy(9.0 + LIMITS.hold_s, 1, 10_000.0, cpu_busy=0.5))
    assert decision.workers == 4 and decision.saturated is None, decision.reason


def test_a_step_whose_workers_add_their_rate_is_kept():
    state = State(workers=1)
    _, state = decide(LIMITS, state, busy(0.0, 1, 10_000.0))
    decision, state = decide(LIMITS, state, busy(9.0, 4, 36_000.0, per_worker=10_000.0))
    assert decision.workers == 4 and decision.saturated is None
    assert round(state.gain, 2) == 0.87 and state.trial is None and state.saturated is None


def test_the_cause_is_tritons_queue_when_it_grew_with_the_workers_else_the_broker():
    def judged(**after) -> str | None:
        state = State(workers=1)
        _, state = decide(LIMITS, state, busy(0.0, 1, 10_000.0, triton_queue_s=0.001))
        decision, _ = decide(LIMITS, state, busy(9.0, 4, 11_000.0, per_worker=10_000.0, **after))
        assert decision.workers == 1
        return decision.saturated

    assert judged(triton_queue_s=0.02) == "Triton queue", "from 1 ms to 20 ms per request"
    assert judged(triton_queue_s=0.0015, cpu_busy=0.5) == "broker", "neither the CPUs nor the queue"
    assert judged(triton_queue_s=0.02, cpu_busy=0.95) == "CPU", "busy CPUs first: Triton shares them"


def test_no_worker_is_added_to_busy_cpus_or_a_long_triton_queue():
    decision, _ = decide(LIMITS, State(workers=1), busy(0.0, 1, 10_000.0, cpu_busy=0.95))
    assert decision.workers == 1 and decision.saturated == "CPU"
    assert "a worker more would only share them" in decision.reason
    decision, _ = decide(LIMITS, State(workers=1), busy(0.0, 1, 10_000.0, triton_queue_s=0.08))
    assert decision.workers == 1 and decision.saturated == "Triton queue"
    assert "Triton instances or GPUs" in decision.reason


def test_a_held_count_is_tried_again_once_its_rate_measured_again_has_moved():
    state = State(workers=1)
    _, state = decide(LIMITS, state, busy(0.0, 1, 10_000.0))
    _, state = decide(LIMITS, state, busy(9.0, 4, 10_500.0, per_worker=10_000.0))
    assert state.saturated is not None and state.saturated.cause == "broker"
    decision, state = decide(LIMITS, state, busy(12.0, 1, 11_000.0))
    assert decision.workers == 1 and decision.saturated == "broker", "10% more: the same conditions"
    decision, state = decide(LIMITS, state, busy(30.0, 1, 14_000.0))
    assert decision.workers == 4 and state.saturated is None, "40% more at one worker: something changed"


def test_a_cold_start_waits_for_a_measure_then_takes_one_step_on_the_prior():
    prior = Observation(0.0, BACKLOG, 0.0, 5_000.0, measured=False)
    decision, state = decide(LIMITS, State(workers=1), prior)
    assert decision.workers == 1 and "measuring one worker's rate" in decision.reason
    decision, state = decide(LIMITS, state, Observation(LIMITS.measure_s, BACKLOG, 0.0, 5_000.0, measured=False))
    assert decision.workers == 2, "one step, not the 4 the prior asks for"
    assert "one worker's rate is not measured yet" in decision.reason
    decision, _ = decide(LIMITS, state, Observation(LIMITS.measure_s + 30, BACKLOG, 0.0, 5_000.0, measured=False))
    assert decision.workers == 2, "still no measure: no second step"


def test_a_rate_learnt_before_a_restart_is_used_at_once():
    kept = Learnt(per_worker_per_s=20_000.0, at=1.0, workers=2)
    meter = RateMeter(prior_per_worker_s=5_000, settle_s=3)
    meter.learnt(Learnt.decode(kept.encode()).per_worker_per_s)
    assert meter.rates is not None and meter.rates.measured and meter.rates.per_worker_per_s == 20_000
    # 600,000 waiting, drain within 10 s: 60,000/s, 3 workers of 20,000/s; no wait for a measure.
    observation = Observation(0.0, 600_000, 0.0, meter.rates.per_worker_per_s, measured=meter.rates.measured)
    decision, _ = decide(LIMITS, State(workers=1), observation)
    assert decision.workers == 3, decision.reason


def test_a_measure_is_written_when_it_moved_or_a_minute_passed():
    last = Learnt(10_000.0, 0.0, 1)
    assert due(None, last)
    assert not due(last, Learnt(10_500.0, 30.0, 1))
    assert due(last, Learnt(12_000.0, 30.0, 1))
    assert due(last, Learnt(10_000.0, 60.0, 1))
