"""`pipeline scale`: every `interval_s`, read the workers' backlog, decide a count, and act on it.

The supervisor runs the workers itself (`pool`); with `--serve` it runs none and only publishes
the count (`service`, for KEDA's metrics-api scaler on Kubernetes), taking the group's members as
the workers there are. Either way the same policy (`policy.decide`) decides, from the same readings:
lag in records and seconds (`lag`), arrival and per-worker rates (`rates`), how busy the usable CPUs
are where it runs the workers (`cpus`) and Triton's queue time (`triton_queue`). One worker's rate,
once measured, is kept in Kafka (`learnt`) and read back at the next start. Each change is logged
with its reason, and where nothing changes the decision is logged every `scaling.status_every_s`.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from pipeline import metrics, topics
from pipeline.errors import PipelineError
from pipeline.kafka import clients
from pipeline.scaling import cpus
from pipeline.scaling.lag import Backlog, BacklogReader, LagUnreadable
from pipeline.scaling.learnt import Learnt, LearntRates
from pipeline.scaling.members import GroupMembers
from pipeline.scaling.policy import Decision, Limits, Observation, State, decide
from pipeline.scaling.pool import WorkerPool
from pipeline.scaling.rates import RateMeter, Rates, worker_rates
from pipeline.scaling.triton_queue import TritonQueue
from pipeline.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Status:
    """The latest decision and what it was made from (GET /desired)."""

    desired_workers: int
    workers: int  # the supervisor's processes; with --serve, the group's members
    group_members: int | None  # workers in the group (None: not read)
    reason: str
    lag_records: int | None
    lag_seconds: float | None
    arrival_per_s: float
    consume_per_s: float
    per_worker_per_s: float
    per_worker_measured: bool
    worker_rates: dict[str, float]  # each group member's consume rate, by its client id
    worker_start_s: float | None  # a worker's start to its joining, as measured (None: not yet)
    max_workers: int  # the most the policy may ask for
    saturated: str | None  # what holds the count ("CPU", "Triton queue", "broker"), or None
    marginal_gain: float | None  # the last judged step up's added rate over its workers' expected rate
    cpu_busy: float | None  # share of the usable CPUs busy (the supervisor's own machine; None with --serve)
    triton_queue_s: float | None  # Triton's queue time per request over the last interval
    at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Autoscaler:
    def __init__(self, settings: Settings, pool: WorkerPool | None) -> None:
        scaling = settings.scaling
        self._settings, self._pool = settings, pool
        self._topic, self._group = settings.topics.requests, settings.worker.app_id
        partitions = topics.partition_count(settings, self._topic)
        self.partitions = range(partitions)
        self.limits = Limits(
            partitions=partitions,
            min_workers=scaling.min_workers,
            max_workers=most_workers(settings, partitions, local=pool is not None),
            drain_s=scaling.drain_s,
            up_cooldown_s=scaling.up_cooldown_s,
            down_window_s=scaling.down_window_s,
            restore_s=scaling.restore_s,
            start_s=scaling.start_s,
            measure_s=scaling.measure_s,
            min_gain=scaling.min_gain,
            hold_s=scaling.saturated_hold_s,
            cpu_busy_limit=scaling.cpu_busy_limit,
            triton_queue_s=scaling.triton_queue_s,
        )
        connection = clients.config(settings)
        self._reader = BacklogReader(connection, self._group, self._topic)
        self._members = GroupMembers(connection, self._group, self._topic)
        self._meter = RateMeter(scaling.worker_rate_per_s, settle_s=scaling.restore_s + scaling.interval_s)
        self._learnt = LearntRates(settings, self._group)
        if (learnt := self._learnt.load()) is not None:
            self._meter.learnt(learnt.per_worker_per_s)
            log.info("worker_rate_read_back", per_worker_per_s=learnt.per_worker_per_s, measured_at=learnt.at)
        # The CPUs are the workers' only where this process runs them; Triton's queue wherever it is.
        self._cpu = cpus.CpuMeter() if pool is not None else None
        self._triton = TritonQueue(settings.triton.metrics_url)
        first = self.limits.steps()[0]
        if pool is None:  # serving: the group's members are the workers there are
            first = max(len(self._assignment() or {}), first)
        self.state = State(workers=first)
        self.status: Status | None = None  # None until the first decision
        self._logged: tuple[int, float] = (-1, 0.0)  # (count, when) last logged
        self._members_seen: int | None = None
        self._last: Backlog | None = None  # the previous reading, for each worker's rate
        self._rated: set[str] = set()  # the workers with a rate series
        # A scale-up under way (when decided, to how many, the members then) and a worker's measured start.
        self._joining: tuple[float, int, int | None] | None = None
        self.start_s: float | None = None

    def step(self) -> Decision:
        """One reading, one decision, acted on."""
        now = time.time()
        # Workers in the group: a process still starting takes no requests and is no measure of one.
        assignment = self._assignment()
        members = len(assignment) if assignment is not None else None
        workers = self._pool.size if self._pool is not None else (members or self.state.workers)
        try:
            backlog: Backlog | None = self._reader.read(self.partitions)
        except LagUnreadable as e:
            metrics.SCALING_LAG_UNREADABLE.inc()
            log.warning("lag_unreadable", error=e.message, holding=self.state.workers)
            backlog = None
        if members is not None and members != self._members_seen:  # a rebalance: rates pause meanwhile
            self._members_seen = members
            self._meter.changed(now)
        # Members unknown: arrival and consumption are still read, but no worker's rate is measured (the
        # processes running are no measure of the workers in the group).
        rates = self._meter.update(backlog, members or 0) if backlog is not None else self._meter.rates or Rates()
        if backlog is not None and rates.group_per_s is not None and members:
            self._learnt.save(Learnt(rates.per_worker_per_s, now, members))
        cpu_busy = self._cpu.read() if self._cpu is not None else None
        triton_queue_s = self._triton.read()
        each: dict[str, float] = {}
        if backlog is not None:
            if self._last is not None and assignment is not None:
                each = worker_rates(self._last, backlog, assignment)
            self._last = backlog
        observation = Observation(
            at=now,
            lag=backlog.lag if backlog is not None else None,
            arrival_per_s=rates.arrival_per_s,
            per_worker_per_s=rates.per_worker_per_s,
            start_s=self.start_s,
            measured=rates.measured,
            group_per_s=rates.group_per_s if backlog is not None else None,
            members=members,
            cpu_busy=cpu_busy,
            triton_queue_s=triton_queue_s,
        )
        before = self.state.workers
        decision, self.state = decide(self.limits, self.state, observation)
        if decision.workers != before:
            self._meter.changed(now)
            metrics.SCALING_EVENTS.labels("up" if decision.workers > before else "down").inc()
            self._joining = (now, decision.workers, members) if decision.workers > before else None
        else:
            self._measure_start(members, now)
        if self._pool is not None:
            self._pool.resize(decision.workers)
            self._pool.restart_exited()
            workers = self._pool.size
        self._publish(decision, workers, members, backlog, rates, each, now, cpu_busy, triton_queue_s)
        return decision

    def _publish(
        self,
        decision: Decision,
        workers: int,
        members: int | None,
        backlog: Backlog | None,
        rates: Rates,
        each: dict[str, float],
        now: float,
        cpu_busy: float | None,
        triton_queue_s: float | None,
    ) -> None:
        self.status = Status(
            desired_workers=decision.workers,
            workers=workers,
            group_members=members,
            reason=decision.reason,
            lag_records=backlog.lag if backlog is not None else None,
            lag_seconds=round(backlog.lag_s, 3) if backlog is not None else None,
            arrival_per_s=round(rates.arrival_per_s, 1),
            consume_per_s=round(rates.consume_per_s, 1),
            per_worker_per_s=round(rates.per_worker_per_s, 1),
            per_worker_measured=rates.measured,
            worker_rates={worker: round(rate, 1) for worker, rate in each.items()},
            worker_start_s=round(self.start_s, 1) if self.start_s is not None else None,
            max_workers=self.limits.max_workers,
            saturated=decision.saturated,
            marginal_gain=round(self.state.gain, 3) if self.state.gain is not None else None,
            cpu_busy=round(cpu_busy, 3) if cpu_busy is not None else None,
            triton_queue_s=round(triton_queue_s, 6) if triton_queue_s is not None else None,
            at=now,
        )
        metrics.SCALING_DESIRED.set(decision.workers)
        metrics.SCALING_MAX_WORKERS.set(self.limits.max_workers)
        for cause in metrics.SATURATION_CAUSES:
            metrics.SCALING_SATURATED.labels(cause).set(1 if decision.saturated == cause else 0)
        gain = self.state.gain
        metrics.SCALING_MARGINAL_GAIN.set(gain if gain is not None else math.nan)  # NaN: not known
        metrics.SCALING_CPU_BUSY.set(cpu_busy if cpu_busy is not None else math.nan)
        metrics.SCALING_TRITON_QUEUE.set(triton_queue_s if triton_queue_s is not None else math.nan)
        metrics.SCALING_WORKERS.set(workers)
        if members is not None:
            metrics.SCALING_GROUP_MEMBERS.set(members)
        for gone in self._rated - each.keys():  # members come and go: only the current ones
            metrics.SCALING_WORKER_RATE.remove(gone)
        for worker, rate in each.items():
            metrics.SCALING_WORKER_RATE.labels(worker).set(rate)
        self._rated = set(each)
        metrics.SCALING_RATE.labels("arrival").set(rates.arrival_per_s)
        metrics.SCALING_RATE.labels("consumed").set(rates.consume_per_s)
        metrics.SCALING_RATE.labels("worker").set(rates.per_worker_per_s)
        if backlog is not None:
            metrics.SCALING_LAG.set(backlog.lag)
            metrics.SCALING_LAG_SECONDS.set(backlog.lag_s)
        count, when = self._logged
        if decision.workers != count or now - when >= self._settings.scaling.status_every_s:
            self._logged = (decision.workers, now)
            fields = self.status.to_dict()
            fields.pop("at")
            log.info("scale_decision", **fields)

    def _measure_start(self, members: int | None, now: float) -> None:
        """Once a scale-up's workers are all in the group: how long that took (the estimate moves halfway)."""
        if self._joining is None or members is None:
            return
        _, target, then = self._joining
        if members < target or (then is not None and members <= then):  # none of them joined yet
            return
        took = now - self._joining[0]
        self.start_s = took if self.start_s is None else (self.start_s + took) / 2
        self._joining = None
        metrics.SCALING_WORKER_START.set(self.start_s)
        log.info("workers_joined", members=members, after_s=round(took, 1), start_s=round(self.start_s, 1))

    def _assignment(self) -> dict[str, list[int]] | None:
        """Each member of the workers' group (by client id) and its partitions of the requests topic;
        None: not known."""
        return self._members.read()

    def close(self) -> None:
        self._reader.close()
        self._members.close()
        self._learnt.close()
        self._triton.close()


def most_workers(settings: Settings, partitions: int, local: bool) -> int:
    """The most workers: as set, else the CPUs this process may use where it runs them (`local`, and
    at least `min_workers`), else the partitions; never more than the partitions."""
    given, fewest = settings.scaling.max_workers, settings.scaling.min_workers
    usable = cpus.count()
    if given is None:  # never below the fewest asked for
        return min(partitions, max(fewest, usable) if local else partitions)
    if local and given > usable:
        log.warning("max_workers_above_cpus", max_workers=given, cpus=usable)
    return min(partitions, given)


def run(settings: Settings, serve: bool) -> None:
    """Until SIGTERM or Ctrl-C: decide every `interval_s`; then stop the workers (not with `serve`)."""
    from pipeline.scaling import service

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    pool = None if serve else WorkerPool(settings)
    autoscaler = Autoscaler(settings, pool)
    server = service.start(settings.scaling.serve_host, settings.scaling.serve_port, lambda: autoscaler.status)
    log.info(
        "scale_starting",
        mode="serve" if serve else "supervise",
        group=settings.worker.app_id,
        topic=settings.topics.requests,
        steps=autoscaler.limits.steps(),
        max_workers=autoscaler.limits.max_workers,
        cpus=cpus.count(),
        port=server.server_port,
    )
    try:
        if pool is not None:
            pool.resize(autoscaler.state.workers)  # the fewest, before the first reading
        while not stop.is_set():
            started = time.monotonic()
            try:
                autoscaler.step()
            except PipelineError as e:  # the step is retried at the next interval
                log.warning("scale_step_failed", error=e.message, code=e.code)
            stop.wait(max(0.0, settings.scaling.interval_s - (time.monotonic() - started)))
    finally:
        if pool is not None:
            times = pool.close()
            log.info("workers_stopped", stop_s={k: round(v, 3) for k, v in times.items()})
        server.shutdown()
        server.server_close()
        autoscaler.close()
    log.info("scale_stopped")
