"""Interleaved rounds: how the bench repeats what it measures, so that its figures compare.

One unrecorded round first (a fresh broker's JIT compiler takes minutes to reach steady state, and on
two cores its compile threads would slow whichever level ran first), then each level once per
recorded round, in the same order, so that a slow spell of the host falls on every level alike
(docs/performance.md#bench-warm-up). The load generator's collector is kept quiet before a measured
run (docs/performance.md#bench-load-generator-gc).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import structlog

from pipeline import heap

log = structlog.get_logger(__name__)

WARMUP = -1  # the unrecorded round's number
Figures = dict[str, Any]
Level = Callable[[int], Figures | None]  # one run in the round numbered so (WARMUP first); None: skipped
_LOGGED = ("events_per_s", "p50", "p99")  # what a run's log line shows of its figures


def interleaved(repetitions: int, levels: Mapping[str, Level], warm_up: bool = True) -> dict[str, list[Figures]]:
    """Each level's figures in each recorded round, after the warm-up round (unless not `warm_up`)."""
    recorded: dict[str, list[Figures]] = {name: [] for name in levels}
    for repetition in range(WARMUP if warm_up else 0, repetitions):
        for name, level in levels.items():
            figures = level(repetition)
            if figures is None:
                continue
            shown = {key: figures[key] for key in _LOGGED if key in figures}
            if repetition == WARMUP:
                log.info("bench_warmup_round", scenario=name, **shown)
            else:
                recorded[name].append(figures)
                log.info("bench_run", scenario=name, repetition=repetition, **shown)
    return recorded


def quiet_collector() -> None:
    """Before a measured run: collect, and keep what is alive out of later collections. The load
    generator's own full collections walk everything it holds, and an HTTP request's latency counts
    from its scheduled start, so each pause would be charged to the bridge."""
    heap.freeze_startup()
