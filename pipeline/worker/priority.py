"""Live traffic first: a backfill worker reads replayed requests only while the live workers keep up.

A thread reads the live group's lag on the live requests topic every `interval_s`
(`scaling.lag.records_lag`); above `max_lag` records the backfill worker pauses its partitions (it
stays in its group, so nothing is rebalanced), and below half of it resumes them. A lag that
cannot be read holds the last decision and says so: never read as no lag.
"""

from __future__ import annotations

import threading

import structlog

from pipeline import metrics, topics
from pipeline.errors import PipelineError
from pipeline.scaling.lag import records_lag
from pipeline.settings import Settings

log = structlog.get_logger(__name__)


def yields(lag: int, max_lag: int, yielding: bool) -> bool:
    """Pure: whether to hold backfill work back, with hysteresis (resume only below half of max)."""
    return lag > max_lag or (yielding and lag > max_lag // 2)


class LiveFirst:
    def __init__(self, settings: Settings, live_group: str, live_topic: str) -> None:
        replay = settings.replay
        self.max_lag, self.interval_s = replay.live_max_lag, replay.live_check_s
        self._admin = topics.admin_client(settings)
        self._group, self._topic = live_group, live_topic
        self._partitions = range(topics.partition_count(settings, live_topic))
        self.yielding = False
        self.lag: int | None = None
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
            lag = sum(records_lag(self._admin, self._group, self._topic, self._partitions).values())
        except PipelineError as e:
            log.warning("live_lag_unreadable", error=e.message, yielding=self.yielding)
            return
        now = yields(lag, self.max_lag, self.yielding)
        if now != self.yielding:
            log.info("backfill_yielding" if now else "backfill_resumed", live_lag=lag, max_lag=self.max_lag)
        self.yielding, self.lag = now, lag
        metrics.BACKFILL_YIELDING.set(1 if now else 0)
        metrics.LIVE_LAG.set(lag)

    def stop(self) -> None:
        self._stop.set()
