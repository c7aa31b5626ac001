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
- **Measured, not assumed.** A step up waits up to `measure_s` for the group's drain rate measured
  at the current count since the demand rose (the baseline it will be judged against). Until one
  worker's rate has been measured at all, it then takes at most one step on the configured prior.
- **A step must pay.** A step up from a measured baseline is a trial: once the new workers are in
  the group and settled, the group's drain rate is measured again (the mean of two readings). The
  count goes back to what the measured rate supports when the added workers add less than
  `min_gain` of what they were expected to add (one worker's rate each), and is held there,
  `saturated` with the cause (the usable CPUs busy, Triton's queue grown, else the broker), for
  `hold_s`, or until the rate at that count, measured again, has moved by more than `rate_change`.
  A trial not judged before `expires_at` (the backlog ran out, workers never joined), or across a
  change of count, is dropped. Before any step up, CPUs busy past `cpu_busy_limit` or a Triton
  queue past `triton_queue_s` add no worker: they would only share what is already saturated.
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
    cpu_busy_limit: float = 0.9  # the usable CPUs busier than this: no worker more (1: never)
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
    """The group's drain rate measured at a count, smoothed over the readings since the count was
    reached (`readings` of them), and Triton's queue then."""

    workers: int
    per_s: float
    at: float
    queue_s: float | None = None
    readings: int = 1


@dataclass(frozen=True)
class Trial:
    """A step up under test: from `before` workers, which drained `before_per_s`."""

    before: int
    after: int
    at: float
    before_per_s: float
    per_worker_per_s: float  # what each added worker was expected to add
    before_queue_s: float | None
    expires_at: float  # dropped unjudged past this
    samples: tuple[float, ...] = ()  # the group's drain rate at `after`, settled


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
    wanted_since: float | None = None  # since when the demand has been above the count
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
    state = _observe(limits, state, observation)
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
        if state.wanted_since is None:
            state = replace(state, wanted_since=now)
        decision, state = _up(limits, state, observation, step, f"{load}: {needed:.1f} needed")
    else:
        state = replace(state, wanted_since=None)
        decision, state = _down(limits, state, observation, step, load, needed)
    if decision.saturated is None and (cause := _cause(state, now)) is not None:
        decision = replace(decision, saturated=cause)
    return decision, state


def _down(
    limits: Limits, state: State, observation: Observation, step: int, load: str, needed: float
) -> tuple[Decision, State]:
    current, now = state.workers, observation.at
    lower = max(step, max(n for _, n in state.steady))
    if lower >= current or now - state.last_change_at < limits.down_window_s:
        return Decision(current, f"{load}: {needed:.1f} needed, {current} kept"), state
    if not _worth_it(limits, observation, lower):
        return Decision(current, f"{load}: {lower} would not drain what a rebalance piles up; {current} kept"), state
    state = replace(state, workers=lower, last_change_at=now, trial=None)
    down = f"{load}: at most {lower} needed for {limits.down_window_s:.0f} s, down to {lower}"
    return Decision(lower, down), state


def _observe(limits: Limits, state: State, observation: Observation) -> State:
    """The state with this reading's drain rate at the current count (smoothed over the readings
    since the count was reached, each within `measure_s` of the last), and no longer on the prior
    once a worker's rate is measured."""
    if observation.group_per_s is not None and observation.members == state.workers:
        last, per_s, readings = state.busy, observation.group_per_s, 1
        recent = last is not None and last.at >= max(state.last_change_at, observation.at - limits.measure_s)
        if last is not None and recent and last.workers == state.workers:
            per_s, readings = (last.per_s + per_s) / 2, last.readings + 1
        busy = Busy(state.workers, per_s, observation.at, observation.triton_queue_s, readings)
        state = replace(state, busy=busy)
    if observation.measured and state.on_prior:
        state = replace(state, on_prior=False)
    return state


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
    if (busy := observation.cpu_busy) is not None and busy > limits.cpu_busy_limit:
        detail = f"{busy:.0%} of the usable CPUs busy"
        return Decision(current, f"saturated: CPU ({detail}): a worker more would only share them", "CPU"), state
    if (queue := observation.triton_queue_s) is not None and queue >= limits.triton_queue_s:
        detail = f"{queue * 1000:.0f} ms per request: the rate needs Triton instances or GPUs, not workers"
        return Decision(current, f"saturated: Triton queue ({detail})", "Triton queue"), state
    waited = now - (state.wanted_since if state.wanted_since is not None else now)
    baseline = state.busy
    fresh = baseline is not None and baseline.workers == current and baseline.at >= now - waited
    note, trial = "", None
    if not observation.measured:
        if waited < limits.measure_s:
            return Decision(current, f"{load}: measuring one worker's rate before a step"), state
        if state.on_prior:
            return Decision(current, f"{load}: one step taken on the prior rate; measuring before another"), state
        step, note = min(step, _next(limits, current)), " (one step: one worker's rate is not measured yet)"
        state = replace(state, on_prior=True)
    elif not fresh and waited < limits.measure_s:
        return Decision(current, f"{load}: measuring the drain rate of {current} before a step"), state
    elif fresh and baseline is not None:
        expires = now + _ready_in(limits, observation) + limits.up_cooldown_s
        per_worker = observation.per_worker_per_s
        trial = Trial(current, step, now, baseline.per_s, per_worker, baseline.queue_s, expires)
    state = replace(state, workers=step, last_up_at=now, last_change_at=now, trial=trial)
    return Decision(step, f"{load}, up to {step}{note}"), state


def _judge(limits: Limits, state: State, observation: Observation) -> tuple[Decision | None, State]:
    """A step up under test, once its workers are in and settled (two readings): kept, or taken back
    to the count its measured rate supports (saturated). Dropped unjudged past its time."""
    trial = state.trial
    assert trial is not None
    now = observation.at
    if state.workers != trial.after or now > trial.expires_at:
        return None, replace(state, trial=None)
    if observation.group_per_s is None or observation.members is None or observation.members < trial.after:
        return None, state
    samples = (*trial.samples, observation.group_per_s)
    if len(samples) < 2:
        return None, replace(state, trial=replace(trial, samples=samples))
    per_s = sum(samples) / len(samples)
    expected = max(trial.per_worker_per_s, 1e-9)
    gain = (per_s - trial.before_per_s) / ((trial.after - trial.before) * expected)
    state = replace(state, trial=None, gain=gain)
    if gain >= limits.min_gain:
        return None, state
    # As many workers as the measured rate supports: the baseline's, plus one per worker's rate added.
    supported = trial.before + max(0.0, per_s - trial.before_per_s) / expected
    back = max([n for n in limits.steps() if trial.before <= n <= supported], default=trial.before)
    cause, detail = _saturation(limits, trial, observation)
    held = Saturation(
        back, cause, detail, now, now + limits.hold_s, trial.before_per_s if back == trial.before else per_s
    )
    state = replace(state, workers=back, last_change_at=now, saturated=held)
    reason = (
        f"saturated: {cause} ({detail}): {trial.after} workers drained {per_s:.0f}/s against "
        f"{trial.before_per_s:.0f}/s with {trial.before}, {gain:.0%} of what the added ones were expected "
        f"to add; back to {back}"
    )
    return Decision(back, reason, cause), state


def _saturation(limits: Limits, trial: Trial, observation: Observation) -> tuple[str, str]:
    """Why added workers did not add: the usable CPUs busy, Triton's queue grown, else the broker."""
    if (busy := observation.cpu_busy) is not None and busy > limits.cpu_busy_limit:
        return "CPU", f"{busy:.0%} of the usable CPUs busy"
    queue, before = observation.triton_queue_s, trial.before_queue_s
    # Grown with the workers: doubled, and past a tenth of the limit (a queue of microseconds doubling
    # is the dynamic batcher's delay, not a bottleneck). Without a queue measured before, only the limit.
    grew = queue is not None and before is not None and queue >= 2 * before and queue >= limits.triton_queue_s / 10
    if queue is not None and (queue >= limits.triton_queue_s or grew):
        was = f", from {before * 1000:.1f} ms" if before is not None else ""
        return "Triton queue", (
            f"{queue * 1000:.1f} ms per request{was}: the rate needs Triton instances or GPUs, not workers"
        )
    return "broker", "neither the CPUs nor Triton's queue: the brokers (or the feature store) serve no faster"


def _lifted(limits: Limits, state: State, held: Saturation, now: float) -> bool:
    """A saturation is lifted after `hold_s`, or once the held count's rate, measured again, moved."""
    if now >= held.until:
        return True
    busy = state.busy  # two readings at least, smoothed: one noisy interval lifts nothing
    return (
        busy is not None
        and busy.at > held.at
        and busy.readings >= 2
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
