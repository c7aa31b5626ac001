from __future__ import annotations

from dataclasses import replace

from pipeline.scaling.policy import Limits, Observation, State, decide, naive

LIMITS = Limits(partitions=12, max_workers=12, drain_s=30, up_cooldown_s=30, down_window_s=300, restore_s=5)


def measured(at: float, lag: int | None, arrival: float, per_worker: float, workers: int) -> Observation:
    """A reading of workers that scale linearly: with a backlog, the group drains `workers` times one
    worker's rate (so a step always pays)."""
    drained = per_worker * workers if lag else None
    return Observation(at, lag, arrival, per_worker, group_per_s=drained, members=workers)


def run(limits: Limits, ticks: list[tuple[float, int | None, float]], per_worker: float = 1_000.0, start: int = 1):
    """(at, lag, arrival/s) per tick → the count decided at each tick, and the decisions."""
    state, counts, decisions = State(workers=start), [], []
    for at, lag, arrival in ticks:
        decision, state = decide(limits, state, measured(at, lag, arrival, per_worker, state.workers))
        counts.append(decision.workers)
        decisions.append(decision)
    return counts, decisions


def changes(counts: list[int], start: int = 1) -> int:
    return sum(1 for before, after in zip([start, *counts], counts, strict=False) if before != after)


def test_only_even_steps_and_the_top_one_exactly():
    assert LIMITS.steps() == [1, 2, 3, 4, 6, 12]
    assert Limits(partitions=12, max_workers=10).steps() == [1, 2, 3, 4, 6]
    assert Limits(partitions=12, min_workers=3).steps() == [3, 4, 6, 12]
    counts, _ = run(LIMITS, [(0, 500_000, 1_000.0)])
    assert counts == [12], "a demand past the top goes to the top step, not one short"
    counts, _ = run(LIMITS, [(0, 120_000, 0.0)])
    assert counts == [4], "4 workers drain 120,000 in 30 s: 4 exactly"
    counts, _ = run(LIMITS, [(0, 130_000, 0.0)])
    assert counts == [6], "a demand of 4.3 goes to the next even step"


def test_a_burst_scales_up_at_once_and_down_only_after_the_window():
    # 100,000 requests at once, 100/s afterwards; one worker takes 1,000/s. Ticks every 5 s for 15 min.
    lags = {0: 100_000, 5: 80_000, 10: 60_000, 15: 40_000, 20: 20_000, 25: 0}
    ticks = [(float(t), lags.get(t, 0), 100.0) for t in range(0, 900, 5)]
    counts, decisions = run(LIMITS, ticks)
    assert counts[0] == 4 and "up to 4" in decisions[0].reason
    assert set(counts[: 300 // 5]) == {4}, "held through the stabilisation window"
    assert counts[-1] == 1 and changes(counts) == 2, "one step up, one step down"
    assert counts.index(1, 1) * 5 == 300, "down as soon as the window has passed"


def test_a_sequence_that_makes_the_naive_policy_flap_makes_two_changes_here():
    # Bursts of 6,000 every 20 s, drained between them: KEDA's ceil(lag / 1,000) flaps 6, 1, 6, 1...
    ticks = [(float(t), 6_000 if t % 20 == 0 else 0, 300.0) for t in range(0, 600, 5)]
    flapping = [naive(lag or 0, 1_000, 12) for _, lag, _ in ticks]
    assert changes(flapping) >= 40
    counts, _ = run(LIMITS, ticks)
    assert changes(counts) <= 2, counts


def test_the_cost_of_a_rebalance_keeps_a_count_that_a_step_down_could_not_sustain():
    # 3,500/s arriving at 6 workers of 1,000/s; the window's demands have all been 4 since long ago.
    state = State(workers=6, last_change_at=0.0)
    decision, state = decide(LIMITS, state, Observation(400.0, 0, 3_500.0, 1_000.0))
    assert decision.workers == 6, "4 workers would need 35 s to drain a 5 s restore's 17,500 requests"
    assert "would not drain" in decision.reason
    decision, _ = decide(LIMITS, State(workers=6, last_change_at=0.0), Observation(400.0, 0, 2_500.0, 1_000.0))
    assert decision.workers == 3, "at 2,500/s, 3 workers drain a restore's 12,500 requests in 25 s"


def test_a_scale_up_waits_for_the_cooldown():
    ticks = [(0, 60_000, 0.0), (10, 200_000, 0.0), (15, 200_000, 0.0), (31, 200_000, 0.0)]
    counts, decisions = run(LIMITS, ticks)
    assert counts == [2, 2, 2, 12]
    assert "2 measured against 1's 1000/s first" in decisions[1].reason, "the step up is judged first"
    assert "after the cooldown" in decisions[2].reason, "judged (it paid): then the cooldown"


def test_an_unreadable_lag_holds_the_count_and_says_so():
    counts, decisions = run(LIMITS, [(0, 200_000, 0.0), (5, None, 0.0), (400, None, 0.0)])
    assert counts == [12, 12, 12]
    assert decisions[1].reason == "lag unreadable: holding 12"


def test_a_backlog_drained_before_a_new_worker_could_help_gets_none():
    # Drain within 5 s; 1 worker of 10,000/s; a new one takes 15 s to start and 5 s to restore.
    limits = Limits(partitions=12, drain_s=5, start_s=15, restore_s=5)
    decision, _ = decide(limits, State(workers=1), measured(0.0, 150_000, 0.0, 10_000.0, 1))
    assert decision.workers == 1 and "drain it in 15 s, before a new worker takes requests (20 s)" in decision.reason
    decision, _ = decide(limits, State(workers=1), measured(0.0, 250_000, 0.0, 10_000.0, 1))
    assert decision.workers == 6, "25 s to drain alone: more workers help"
    quick = replace(measured(0.0, 150_000, 0.0, 10_000.0, 1), start_s=2.0)
    decision, _ = decide(limits, State(workers=1), quick)
    assert decision.workers == 3, "workers measured to start in 2 s are ready in 7 s"
