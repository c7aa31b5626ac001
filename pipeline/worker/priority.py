"""Live traffic first: a backfill worker reads replayed requests only while the live workers keep up.

A thread reads the live group's lag on the live requests topic every `interval_s`
(`scaling.lag.records_lag`); above `max_lag` records the backfill worker pauses its partitions (it
stays in its group, so nothing is rebalanced), and below half of it resumes them. A lag that
cannot be read holds the last decision and says so, never read as no lag; for at most
`unreadable_s`: after that a paused backfill worker resumes until the lag is read again. The gate
orders CPU between live and replayed work; no delivery guarantee rests on it (each replayed request
is still scored once, in its transaction), and resumed, a backfill worker still runs behind the
live ones by its CPU niceness.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from pipeline import metrics, topics
from pipeline.errors import PipelineError
from pipeline.kafka import clients
from pipeline.scaling.lag import OffsetReader, records_lag
from pipeline.settings import Settings

log = structlog.get_logger(__name__)


def yields(lag: int, max_lag: int, yielding: bool) -> bool:
    """Pure: whether to hold backfill work back, with hysteresis (resume only below half of max)."""
    return lag > max_lag or (yielding and lag > max_lag // 2)


def unreadable_too_long(since: float | None, now: float, bound_s: float) -> bool:
    """Pure: whether a lag unreadable since `since` (None: read at the last try) has been so too long."""
    return since is not None and now - since >= bound_s


class LiveFirst:
    def __init__(
        self, settings: Settings, live_group: str, live_topic: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        replay = settings.replay
        self.max_lag, self.interval_s, self.unreadable_s = (
            replay.live_max_lag,
            replay.live_check_s,
            replay.live_unreadable_s,
        )
        self._offsets = OffsetReader(clients.config(settings), live_group, live_topic)
        self._partitions = range(topics.partition_count(settings, live_topic))
        self._clock = clock
        self.yielding = False
        self.lag: int | None = None
        self._unreadable_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="live-first", daemon=True)

    def start(self) -> LiveFirst:
        self._check()
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._check()

    def _check(self) -> None:
        try:
            lag = sum(records_lag(self._offsets, self._partitions).values())
        except PipelineError as e:
            self._unreadable(e.message)
            return
        self._unreadable_since = None
        now = yields(lag, self.max_lag, self.yielding)
        if now != self.yielding:
            log.info("backfill_yielding" if now else "backfill_resumed", live_lag=lag, max_lag=self.max_lag)
        self.yielding, self.lag = now, lag
        metrics.BACKFILL_YIELDING.set(1 if now else 0)
        metrics.LIVE_LAG.set(lag)

    def _unreadable(self, error: str) -> None:
        now = self._clock()
        if self._unreadable_since is None:
            self._unreadable_since = now
        metrics.LIVE_LAG_UNREADABLE.inc()
        if self.yielding and unreadable_too_long(self._unreadable_since, now, self.unreadable_s):
            log.warning("backfill_resumed_lag_unknown", error=error, unreadable_s=round(now - self._unreadable_since))
            self.yielding, self.lag = False, None
            metrics.BACKFILL_YIELDING.set(0)
            return
        log.warning("live_lag_unreadable", error=error, yielding=self.yielding)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 15)
        if not self._thread.is_alive():  # else still inside a read: the process's exit ends it
            self._offsets.close()
