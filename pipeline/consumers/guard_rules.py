"""The rollout guard's rules, pure: a canary arm judged against the stable arm over the same window.

Over each window, each arm's events (results and dead letters), its failures (dead letters with a
code of the model's doing, not the request's), its latencies and its scores. The canary is unhealthy
in a window when, with enough events in both arms:

- its failure rate exceeds the stable arm's by more than `failure_excess`;
- its p99 latency is more than `latency_ratio` times the stable arm's;
- its score distribution has drifted from the stable arm's in the same window: PSI over the stable
  scores' deciles (`drift_stats`, as the drift monitor measures) at or above `score_psi`.

`windows` unhealthy windows in a row roll it back; a healthy window resets the count, and a window
without enough events in either arm neither counts nor resets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.consumers.drift_stats import psi
from pipeline.models.reference import reference_for


@dataclass(frozen=True)
class ArmWindow:
    """One arm's outcomes over one window."""

    events: int  # results and dead letters
    failures: int  # of those, failed by the model (inference_failed and the like)
    latencies_ms: Sequence[float]
    scores: Sequence[float]

    @property
    def failure_rate(self) -> float:
        return self.failures / self.events if self.events else 0.0


@dataclass(frozen=True)
class Thresholds:
    min_events: int = 200  # per arm and window, before a window is judged
    failure_excess: float = 0.02  # canary failure rate minus stable failure rate
    latency_ratio: float = 2.0  # canary p99 / stable p99
    score_psi: float = 1.0  # well above a good retrain's shift (GuardSettings.score_psi)
    windows: int = 2  # unhealthy windows in a row that roll the canary back


def reasons(stable: ArmWindow, canary: ArmWindow, limits: Thresholds) -> list[str] | None:
    """Why the canary is unhealthy in this window (empty: healthy), or None when either arm has too
    few events to judge."""
    if min(stable.events, canary.events) < limits.min_events:
        return None
    found = []
    excess = canary.failure_rate - stable.failure_rate
    if excess > limits.failure_excess:
        found.append(
            f"failure rate {canary.failure_rate:.1%} against the stable arm's {stable.failure_rate:.1%}"
            f" (more than {limits.failure_excess:.1%} above)"
        )
    if len(stable.latencies_ms) and len(canary.latencies_ms):
        stable_p99 = float(np.percentile(stable.latencies_ms, 99))
        canary_p99 = float(np.percentile(canary.latencies_ms, 99))
        if stable_p99 > 0 and canary_p99 > limits.latency_ratio * stable_p99:
            found.append(
                f"p99 latency {canary_p99:.1f} ms against the stable arm's {stable_p99:.1f} ms"
                f" (more than {limits.latency_ratio:g} times)"
            )
    if len(stable.scores) and len(canary.scores):
        shift = psi(reference_for(np.asarray(stable.scores)), np.asarray(canary.scores))
        if shift >= limits.score_psi:
            found.append(f"score PSI {shift:.2f} against the stable arm's scores (at or above {limits.score_psi:g})")
    return found


@dataclass
class Guard:
    """One model's canary under watch: the unhealthy windows in a row so far."""

    limits: Thresholds
    unhealthy: int = 0
    last: list[str] | None = None  # the last window's reasons (None: too few events to judge)

    @property
    def verdict(self) -> str:
        """The last window's: "too_few", "healthy" or "unhealthy"."""
        return "too_few" if self.last is None else "unhealthy" if self.last else "healthy"

    def judge(self, stable: ArmWindow, canary: ArmWindow) -> list[str] | None:
        """After one window: the reasons to roll the canary back now, or None to keep it."""
        self.last = found = reasons(stable, canary, self.limits)
        if found is None:
            return None
        self.unhealthy = self.unhealthy + 1 if found else 0
        return found if self.unhealthy >= self.limits.windows else None


@dataclass
class Tally:
    """One arm's outcomes as they come, until the window closes (`close`)."""

    events: int = 0
    failures: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def result(self, score: float, latency_ms: float) -> None:
        self.events += 1
        self.scores.append(score)
        self.latencies_ms.append(latency_ms)

    def failure(self) -> None:
        self.events += 1
        self.failures += 1

    def close(self) -> ArmWindow:
        return ArmWindow(self.events, self.failures, self.latencies_ms, self.scores)
