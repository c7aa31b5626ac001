"""The rollout guard's rules (pipeline/consumers/guard_rules.py): a canary is rolled back after the
set number of unhealthy windows in a row, for its failures, its latency or its scores, with the
reason; a healthy canary never is."""

from __future__ import annotations

import numpy as np

from pipeline.consumers.guard_rules import ArmWindow, Guard, Tally, Thresholds, reasons

LIMITS = Thresholds(min_events=200, failure_excess=0.02, latency_ratio=2.0, score_psi=0.25, windows=2)


def _arm(seed: int, events: int = 1000, failures: int = 10, latency_ms: float = 20.0, scores=None) -> ArmWindow:
    rng = np.random.default_rng(seed)
    return ArmWindow(
        events=events,
        failures=failures,
        latencies_ms=rng.gamma(4.0, latency_ms / 4.0, events).tolist(),
        scores=(rng.beta(0.5, 4.0, events) if scores is None else scores).tolist(),
    )


def test_a_canary_like_the_stable_arm_is_healthy_in_every_window():
    guard = Guard(LIMITS)
    for window in range(10):
        stable, canary = _arm(2 * window), _arm(2 * window + 1)
        assert reasons(stable, canary, LIMITS) == []
        assert guard.judge(stable, canary) is None
    assert guard.unhealthy == 0


def test_failures_roll_the_canary_back_on_the_second_unhealthy_window_with_the_reason():
    guard = Guard(LIMITS)
    stable, failing = _arm(1, failures=10), _arm(2, failures=60)  # 1.0% against 6.0%
    assert guard.judge(stable, failing) is None, "one window is not enough"
    why = guard.judge(stable, failing)
    assert why == ["failure rate 6.0% against the stable arm's 1.0% (more than 2.0% above)"]


def test_a_healthy_window_between_resets_the_count_and_a_thin_one_neither_counts_nor_resets():
    guard = Guard(LIMITS)
    stable, failing = _arm(1), _arm(2, failures=100)
    assert guard.judge(stable, failing) is None
    assert guard.judge(stable, _arm(3)) is None and guard.unhealthy == 0, "reset"
    assert guard.judge(stable, failing) is None
    thin = _arm(4, events=50, failures=40)
    assert guard.judge(stable, thin) is None and guard.unhealthy == 1, "too few events to judge"
    assert guard.judge(stable, failing) is not None


def test_a_slow_canary_is_rolled_back_for_its_p99():
    stable, slow = _arm(1, latency_ms=20.0), _arm(2, latency_ms=80.0)
    found = reasons(stable, slow, LIMITS)
    assert found is not None and len(found) == 1 and found[0].startswith("p99 latency")
    p99s = [float(np.percentile(arm.latencies_ms, 99)) for arm in (slow, stable)]
    assert found[0] == f"p99 latency {p99s[0]:.1f} ms against the stable arm's {p99s[1]:.1f} ms (more than 2 times)"


def test_a_canary_whose_scores_moved_is_rolled_back_for_their_psi():
    rng = np.random.default_rng(7)
    # A model trained on shuffled labels scores about uniformly where the stable one scores most
    # events near 0.
    moved = _arm(2, scores=rng.uniform(0.0, 1.0, 1000))
    found = reasons(_arm(1), moved, LIMITS)
    assert found is not None and len(found) == 1 and found[0].startswith("score PSI ")
    assert float(found[0].split()[2]) >= 0.25


def test_each_window_leaves_its_verdict():
    guard = Guard(LIMITS)
    assert guard.verdict == "too_few" and guard.last is None
    guard.judge(_arm(1), _arm(2))
    assert guard.verdict == "healthy"
    guard.judge(_arm(1), _arm(2, failures=100))
    assert guard.verdict == "unhealthy" and guard.last and "failure rate" in guard.last[0]
    guard.judge(_arm(1), _arm(3, events=10, failures=0))
    assert guard.verdict == "too_few"


def test_a_tally_counts_results_and_failures_as_events_of_its_arm():
    tally = Tally()
    tally.result(0.2, 12.5)
    tally.result(0.9, 30.0)
    tally.failure()
    assert tally.close() == ArmWindow(events=3, failures=1, latencies_ms=[12.5, 30.0], scores=[0.2, 0.9])
