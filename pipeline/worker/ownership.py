"""Which input partitions a worker owns: only their records are scored.

A partition assigned is restored in the background (its dedup state from the results topic,
`changelog.Restorer`) and owned once its own state is in, while the others are scored; a state that
cannot be restored stops the worker, never scored without. A partition revoked is no longer owned at
once: what is still being scored of it is dropped when handed over (its next owner scores it again),
and what is scored is committed while the group still lets us (`release`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from pipeline import metrics
from pipeline.worker.changelog import Restorer

log = structlog.get_logger(__name__)


class Ownership:
    def __init__(
        self,
        restorer: Restorer,
        take: Callable[[int], Awaitable[None]],
        release: Callable[[list[int]], Awaitable[None]],
        on_ready: Callable[[], None],
    ) -> None:
        """`take(partition)`: start fetching a partition whose state is in; `release(partitions)`:
        commit what is scored of revoked partitions and forget what is not; `on_ready`: called once,
        when the first assignment is restored in full."""
        self._restorer, self._take, self._release, self._on_ready = restorer, take, release, on_ready
        self.owned: set[int] = set()
        self._restoring: dict[int, asyncio.Task[None]] = {}  # partitions being restored, by their task
        self.failed: BaseException | None = None  # why a restore failed; the loop raises it
        self._ready = False

    async def acquire(self, partitions: list[int]) -> None:
        """Restore the assigned partitions' state in the background, then take each one's records as
        soon as its own state is in."""
        metrics.REBALANCES.labels("assigned").inc(len(partitions))
        log.info("partitions_assigned", partitions=partitions)
        task = asyncio.create_task(self._restore(partitions), name=f"restore-{partitions}")
        task.add_done_callback(self._restored)
        for partition in partitions:
            self._restoring[partition] = task

    async def revoke(self, partitions: list[int]) -> None:
        if not partitions:
            return
        self.owned.difference_update(partitions)
        # A restore cut short keeps its progress in the store; one still restoring others goes on.
        cut = {task for p in partitions if (task := self._restoring.pop(p, None)) is not None}
        for task in cut - set(self._restoring.values()):
            task.cancel()
        await self._release(partitions)
        metrics.REBALANCES.labels("revoked").inc(len(partitions))
        log.info("partitions_revoked", partitions=partitions)

    async def reload(self, partitions: list[int]) -> None:
        """Owned partitions' stores brought up to their results partitions' ends, after an abort. A
        transaction the worker could not see end (a stalled commit whose producer was replaced, a
        commit timed out past its retries) may have committed at the broker: its results are then read
        into the state, and its records, fetched again, are repeats rather than scored twice. Of one
        that did abort, nothing is read (read_committed)."""
        async for partition, restored in self._restorer.restore(partitions):
            log.info("state_reloaded", partition=partition, **restored.fields())
            metrics.STATE_RESTORED_ENTRIES.labels("reload").inc(restored.entries)

    async def close(self) -> None:
        for task in set(self._restoring.values()):
            task.cancel()
        await self._restorer.close()

    def _restored(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("state_restore_failed", task=task.get_name(), error=str(error))
            self.failed = error

    async def _restore(self, partitions: list[int]) -> None:
        task = asyncio.current_task()
        restoring = self._restorer.restore(partitions, lambda p: self._restoring.get(p) is task)
        async for partition, restored in restoring:
            self._restoring.pop(partition, None)
            log.info("state_restored", partition=partition, **restored.fields())
            metrics.STATE_RESTORES.labels(restored.mode).inc()
            metrics.STATE_RESTORED_ENTRIES.labels(restored.mode).inc(restored.entries)
            self.owned.add(partition)
            await self._take(partition)
            if not self._ready and not self._restoring:
                self._ready = True
                self._on_ready()
