"""Progress of long CLI work: a bar with rate and ETA for a person at a terminal, plain log lines
every few seconds elsewhere (a job's log, a pipe)."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class Progress:
    def __init__(self, what: str, total: int | None, done: int = 0, every_s: float = 10.0) -> None:
        self.what, self.total, self.done, self.every_s = what, total, done, every_s
        self._began = time.monotonic()
        self._logged = self._began
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]:>10} ev/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._bar.start()
            self._task = self._bar.add_task(self.what, total=self.total, completed=self.done, rate="")
        return self

    def advance(self, count: int, **fields: Any) -> None:
        self.done += count
        now = time.monotonic()
        rate = (self.done / (now - self._began)) if now > self._began else 0.0
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, rate=f"{rate:,.0f}")
        elif now - self._logged >= self.every_s:
            self._logged = now
            remaining = (self.total - self.done) / rate if self.total and rate > 0 else None
            log.info(
                "progress",
                what=self.what,
                done=self.done,
                total=self.total,
                per_s=round(rate),
                eta_s=round(remaining) if remaining is not None else None,
                **fields,
            )

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
