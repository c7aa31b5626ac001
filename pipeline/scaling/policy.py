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
- **Measured, not assumed.** Until one worker's rate has been measured, a backlog waits `measure_s`
  for a measure, and then takes at most one step on the configured prior.
- **A step must pay.** A step up from a count whose drain rate was measured is a trial: once the new
  workers are in the group and settled, the group's drain rate is measured again. Workers that add
  less than `min_gain` of what they were expected to add (one worker's rate each) are taken back,
  and the count is held there, `saturated` with the cause (the usable CPUs busy, Triton's queue
  grown, else the broker), for `hold_s`, or until the rate at that count, measured again, has moved
  by more than `rate_change`. Before any step up, CPUs busy past `cpu_busy_limit` or a Triton queue
  past `triton_queue_s` add no worker: they would only share what is already saturated.
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
    measure_s: float = 5.0  # a backlog waits this long for one worker's rate before a step on the prior
    min_gain: float = 0.5  # a step's workers must add this share of their expected rate, or are taken back
    hold_s: float = 600.0  # a count found saturated is held this long ...
    rate_change: float = 0.25  # ... unless its rate, measured again, moved by more than this share
    cpu_busy_limit: float = 0.9  # the usable CPUs this busy: no worker more
    triton_queue_s: float = 0.05  # Triton's queue per request this long: no worker more

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
    measured: bool = True  # per_worker_per_s was measured (else it is the configured prior)
    # The group's drain rate over the last interval, where its workers were busy and settled (else None),
    # and the members it was measured with.
    group_per_s: float | None = None
    members: int | None = None
    cpu_busy: float | None = None  # share of the usable CPUs busy over the interval (None: not known)
    triton_queue_s: float | None = None  # Triton's queue time per request over the interval (None: not known)


@dataclass(frozen=True)
class Decision:
    workers: int
    reason: str
    saturated: str | None = None  # what holds the count: "CPU", "Triton queue" or "broker"

    def __str__(self) -> str:
        return f"{self.workers} worker(s): {self.reason}"


@dataclass(frozen=True)
class Busy:
    """The group's drain rate measured at a count (and Triton's queue then)."""

    workers: int
    per_s: float
    at: float
    queue_s: float | None = None


@dataclass(frozen=True)
class Trial:
    """A step up under test: from `before` workers, which drained `before_per_s`."""

    before: int
    after: int
    at: float
    before_per_s: float
    per_worker_per_s: float  # what each added worker was expected to add
    before_queue_s: float | None


@dataclass(frozen=True)
class Saturation:
    """A count found to be the best: the step above it did not pay, for `cause`."""

    workers: int
    cause: str
    detail: str
    at: float
    until: float
    per_s: float  # the count's drain rate when judged


@dataclass(frozen=True)
class State:
    workers: int
    last_up_at: float = -math.inf
    last_change_at: float = -math.inf
    # (at, the step the arrival rate alone needed) over the last down window
    steady: tuple[tuple[float, int], ...] = field(default_factory=tuple)
    busy: Busy | None = None  # the latest drain rate measured at the count then
    trial: Trial | None = None
    saturated: Saturation | None = None
    gain: float | None = None  # the last judged step's added rate over what its workers were expected to add
    backlog_since: float | None = None  # when the lag last went from none to some
    on_prior: bool = False  # a step was taken on the prior rate, not yet measured since


def demand(limits: Limits, observation: Observation) -> tuple[float, int]:
    """Workers the load needs (a fraction) and the even step that covers it."""
    assert observation.lag is not None
    return _step(limits, (observation.arrival_per_s + observation.lag / limits.drain_s) / _rate(observation))


def decide(limits: Limits, state: State, observation: Observation) -> tuple[Decision, State]:
    """The desired count now, and the state to decide the next one from."""
    current, now = state.workers, observation.at
    if observation.lag is None:
        return Decision(current, f"lag unreadable: holding {current}", _cause(state, now)), state
    state = _observe(state, observation)
    if state.trial is not None:
        judged, state = _judge(limits, state, observation)
        if judged is not None:
            return judged, state
    if (held := state.saturated) is not None and _lifted(limits, state, held, now):
        state = replace(state, saturated=None)
    needed, step = demand(limits, observation)
    steady = tuple((at, n) for at, n in state.steady if at > now - limits.down_window_s)
    steady += ((now, _step(limits, observation.arrival_per_s / _rate(observation))[1]),)
    state = replace(state, steady=steady)
    load = (
        f"lag {observation.lag}, {observation.arrival_per_s:.0f}/s arriving, "
        f"{observation.per_worker_per_s:.0f}/s per worker"
    )
    if step > current:
        return _up(limits, state, observation, step, f"{load}: {needed:.1f} needed")
    lower = max(step, max(n for _, n in steady))
    saturated = _cause(state, now)
    if lower >= current or now - state.last_change_at < limits.down_window_s:
        return Decision(current, f"{load}: {needed:.1f} needed, {current} kept", saturated), state
    if not _worth_it(limits, observation, lower):
        kept = f"{load}: {lower} would not drain what a rebalance piles up; {current} kept"
        return Decision(current, kept, saturated), state
    state = replace(state, workers=lower, last_change_at=now)
    down = f"{load}: at most {lower} needed for {limits.down_window_s:.0f} s, down to {lower}"
    return Decision(lower, down, _cause(state, now)), state


def _observe(state: State, observation: Observation) -> State:
    """The state with this reading's drain rate at the current count, and when the backlog began."""
    if observation.group_per_s is not None and observation.members == state.workers:
        busy = Busy(state.workers, observation.group_per_s, observation.at, observation.triton_queue_s)
        state = replace(state, busy=busy)
    if observation.measured and state.on_prior:
        state = replace(state, on_prior=False)
    if not observation.lag:
        return replace(state, backlog_since=None)
    return state if state.backlog_since is not None else replace(state, backlog_since=observation.at)


def _up(limits: Limits, state: State, observation: Observation, step: int, load: str) -> tuple[Decision, State]:
    current, now, held = state.workers, observation.at, state.saturated
    if held is not None and step > held.workers:
        step = held.workers
        if step <= current:
            until = f"held until {held.until - now:.0f} s from now or its rate moves"
            return Decision(current, f"saturated: {held.cause} ({held.detail}); {load}, {until}", held.cause), state
    if (pending := state.trial) is not None:
        testing = f"{load}: {pending.after} measured against {pending.before}'s {pending.before_per_s:.0f}/s first"
        return Decision(current, testing), state
    if now - state.last_up_at < limits.up_cooldown_s:
        return Decision(current, f"{load}, up to {step} after the cooldown"), state
    if (drained_in := _drain_time(observation, current)) <= (ready_in := _ready_in(limits, observation)):
        held_for = f"{load}: {current} drain it in {drained_in:.0f} s, before a new worker takes requests"
        return Decision(current, f"{held_for} ({ready_in:.0f} s)"), state
    if (busy := observation.cpu_busy) is not None and busy >= limits.cpu_busy_limit:
        detail = f"{busy:.0%} of the usable CPUs busy"
        return Decision(current, f"saturated: CPU ({detail}): a worker more would only share them", "CPU"), state
    if (queue := observation.triton_queue_s) is not None and queue >= limits.triton_queue_s:
        detail = f"{queue * 1000:.0f} ms per request: the rate needs Triton instances or GPUs, not workers"
        return Decision(current, f"saturated: Triton queue ({detail})", "Triton queue"), state
    note = ""
    if not observation.measured:
        since = state.backlog_since if state.backlog_since is not None else now
        if now - since < limits.measure_s:
            return Decision(current, f"{load}: measuring one worker's rate before a step"), state
        if state.on_prior:
            return Decision(current, f"{load}: one step taken on the prior rate; measuring before another"), state
        step, note = min(step, _next(limits, current)), " (one step: one worker's rate is not measured yet)"
        state = replace(state, on_prior=True)
    trial: Trial | None = None
    if (busy_then := state.busy) is not None and busy_then.workers == current and observation.measured:
        trial = Trial(current, step, now, busy_then.per_s, observation.per_worker_per_s, busy_then.queue_s)
    state = replace(state, workers=step, last_up_at=now, last_change_at=now, trial=trial)
    return Decision(step, f"{load}, up to {step}{note}", _cause(state, now)), state


def _judge(limits: Limits, state: State, observation: Observation) -> tuple[Decision | None, State]:
    """A step up under test, once its workers are in and settled: kept, or taken back (saturated)."""
    trial = state.trial
    assert trial is not None
    if not observation.lag:
        return None, replace(state, trial=None)  # drained before it could be judged
    if observation.group_per_s is None or (observation.members or 0) < trial.after:
        return None, state
    per_s = observation.group_per_s
    gain = (per_s - trial.before_per_s) / ((trial.after - trial.before) * max(trial.per_worker_per_s, 1e-9))
    state = replace(state, trial=None, gain=gain)
    if gain >= limits.min_gain:
        return None, state
    cause, detail = _saturation(limits, trial, observation)
    now = observation.at
    held = Saturation(trial.before, cause, detail, now, now + limits.hold_s, trial.before_per_s)
    state = replace(state, workers=trial.before, last_change_at=now, saturated=held)
    reason = (
        f"saturated: {cause} ({detail}): {trial.after} workers drained {per_s:.0f}/s against "
        f"{trial.before_per_s:.0f}/s with {trial.before}, {gain:.0%} of what the added ones were expected "
        f"to add; back to {trial.before}"
    )
    return Decision(trial.before, reason, cause), state


def _saturation(limits: Limits, trial: Trial, observation: Observation) -> tuple[str, str]:
    """Why added workers did not add: the usable CPUs busy, Triton's queue grown, else the broker."""
    if (busy := observation.cpu_busy) is not None and busy >= limits.cpu_busy_limit:
        return "CPU", f"{busy:.0%} of the usable CPUs busy"
    queue, before = observation.triton_queue_s, trial.before_queue_s or 0.0
    # Grown with the workers: doubled, and past a tenth of the limit (a queue of microseconds doubling
    # is the dynamic batcher's delay, not a bottleneck).
    grew = queue is not None and queue >= 2 * before and queue >= limits.triton_queue_s / 10
    if queue is not None and (queue >= limits.triton_queue_s or grew):
        return "Triton queue", (
            f"{queue * 1000:.1f} ms per request, from {before * 1000:.1f} ms: the rate needs Triton instances "
            "or GPUs, not workers"
        )
    return "broker", "neither the CPUs nor Triton's queue: the brokers (or the feature store) serve no faster"


def _lifted(limits: Limits, state: State, held: Saturation, now: float) -> bool:
    """A saturation is lifted after `hold_s`, or once the held count's rate, measured again, moved."""
    if now >= held.until:
        return True
    busy = state.busy
    return (
        busy is not None
        and busy.at > held.at
        and busy.workers == held.workers
        and abs(busy.per_s - held.per_s) > limits.rate_change * held.per_s
    )


def _cause(state: State, now: float) -> str | None:
    held = state.saturated
    return held.cause if held is not None and now < held.until else None


def _next(limits: Limits, current: int) -> int:
    steps = limits.steps()
    return next((n for n in steps if n > current), steps[-1])


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
