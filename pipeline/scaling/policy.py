"""How many workers, pure: from lag, rates and the current count to a desired count, with its reason.

- **Demand.** Workers enough to take the arrival rate and drain the backlog within `drain_s`, at
  the measured rate of one worker: `(arrival + lag / drain_s) / per_worker`.
- **Even steps.** Only counts that split the partitions evenly (for 12: 1, 2, 3, 4, 6, 12), so no
  worker holds more partitions than another; a demand between steps goes up to the next one, and a
  demand past the top goes to the top step exactly (an HPA tolerance would leave it one short).
- **Up at once, down slowly.** Up as soon as the demand says so, at most once per `up_cooldown_s`.
  Down only `down_window_s` after the last change, to the step the arrival rate alone needed at its
  highest over that window (a backlog once drained is no reason to stay up; a lull shorter than
  the window does not undo a scale-up), in one step rather than one per expired demand.
- **A new worker takes time.** It starts (`start_s`, measured by the supervisor once it has seen
  one join) and its partitions' state is restored before it takes a request: a backlog the current
  workers drain before then gets no new worker, which would only take CPU and a rebalance from them.
- **A rebalance costs.** Each step moves partitions, whose dedup state must be restored before they
  are read again (`restore_s`), while requests keep arriving. A step down is taken only when the
  fewer workers still take the arrival rate and drain what piles up during the restore within
  `drain_s`: never down only to go up again.
- **Blind, hold.** When the lag cannot be read, the count is held and the reason says so; an error
  is never read as no lag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Limits:
    partitions: int
    min_workers: int = 1
    max_workers: int = 12
    drain_s: float = 30.0
    up_cooldown_s: float = 30.0
    down_window_s: float = 300.0
    restore_s: float = 5.0  # a moved partition's state restore, paused meanwhile
    start_s: float = 15.0  # from a worker's start to its joining the group, until one is measured

    def steps(self) -> list[int]:
        """The counts that split the partitions evenly, within the limits (at least the lowest one)."""
        top = min(self.max_workers, self.partitions)
        found = [n for n in range(1, top + 1) if self.partitions % n == 0 and n >= self.min_workers]
        return found or [top]


@dataclass(frozen=True)
class Observation:
    at: float  # epoch seconds
    lag: int | None  # records of work behind the group (None: could not be read)
    arrival_per_s: float  # records/s arriving on the topic
    per_worker_per_s: float  # records/s one worker takes (measured while busy)
    start_s: float | None = None  # a worker's start, as measured (None: the limits' own)


@dataclass(frozen=True)
class Decision:
    workers: int
    reason: str

    def __str__(self) -> str:
        return f"{self.workers} worker(s): {self.reason}"


@dataclass(frozen=True)
class State:
    workers: int
    last_up_at: float = -math.inf
    last_change_at: float = -math.inf
    # (at, the step the arrival rate alone needed) over the last down window
    steady: tuple[tuple[float, int], ...] = field(default_factory=tuple)


def demand(limits: Limits, observation: Observation) -> tuple[float, int]:
    """Workers the load needs (a fraction) and the even step that covers it."""
    assert observation.lag is not None
    return _step(limits, (observation.arrival_per_s + observation.lag / limits.drain_s) / _rate(observation))


def decide(limits: Limits, state: State, observation: Observation) -> tuple[Decision, State]:
    """The desired count now, and the state to decide the next one from."""
    current, now = state.workers, observation.at
    if observation.lag is None:
        return Decision(current, f"lag unreadable: holding {current}"), state
    needed, step = demand(limits, observation)
    steady = tuple((at, n) for at, n in state.steady if at > now - limits.down_window_s)
    steady += ((now, _step(limits, observation.arrival_per_s / _rate(observation))[1]),)
    state = replace(state, steady=steady)
    load = (
        f"lag {observation.lag}, {observation.arrival_per_s:.0f}/s arriving, "
        f"{observation.per_worker_per_s:.0f}/s per worker"
    )
    if step > current:
        if now - state.last_up_at < limits.up_cooldown_s:
            return Decision(current, f"{load}: {needed:.1f} needed, up to {step} after the cooldown"), state
        if (drained_in := _drain_time(observation, current)) <= (ready_in := _ready_in(limits, observation)):
            held = f"{load}: {current} drain it in {drained_in:.0f} s, before a new worker takes requests"
            held += f" ({ready_in:.0f} s)"
            return Decision(current, held), state
        state = replace(state, workers=step, last_up_at=now, last_change_at=now)
        return Decision(step, f"{load}: {needed:.1f} needed, up to {step}"), state
    lower = max(step, max(n for _, n in steady))
    if lower >= current or now - state.last_change_at < limits.down_window_s:
        return Decision(current, f"{load}: {needed:.1f} needed, {current} kept"), state
    if not _worth_it(limits, observation, lower):
        kept = f"{load}: {lower} would not drain what a rebalance piles up; {current} kept"
        return Decision(current, kept), state
    state = replace(state, workers=lower, last_change_at=now)
    down = f"{load}: at most {lower} needed for {limits.down_window_s:.0f} s, down to {lower}"
    return Decision(lower, down), state


def _drain_time(observation: Observation, workers: int) -> float:
    """Seconds `workers` take to drain the lag while requests keep arriving (inf: they never do)."""
    spare = workers * observation.per_worker_per_s - observation.arrival_per_s
    return (observation.lag or 0) / spare if spare > 0 else math.inf


def _ready_in(limits: Limits, observation: Observation) -> float:
    """Seconds from a scale-up until the new workers take requests: their start, then the restore."""
    start = observation.start_s if observation.start_s is not None else limits.start_s
    return start + limits.restore_s


def _rate(observation: Observation) -> float:
    return max(observation.per_worker_per_s, 1e-9)


def _step(limits: Limits, needed: float) -> tuple[float, int]:
    steps = limits.steps()
    return needed, next((n for n in steps if n >= needed), steps[-1])


def _worth_it(limits: Limits, observation: Observation, fewer: int) -> bool:
    """Whether `fewer` workers take the arrivals and, after a rebalance's restore, drain its backlog
    (plus the lag there is) within the drain target."""
    spare = fewer * observation.per_worker_per_s - observation.arrival_per_s
    piled = observation.arrival_per_s * limits.restore_s + (observation.lag or 0)
    return spare > 0 and piled / spare <= limits.drain_s


def naive(lag: int, lag_threshold: int, partitions: int) -> int:
    """KEDA's Kafka scaler, for comparison: ceil(total lag / lagThreshold), capped at the partitions."""
    return max(1, min(partitions, math.ceil(lag / lag_threshold)))
