"""Which topics exist, for the copies a backfill worker writes to a replay's own results topic.

A request naming a topic that does not exist is dead-lettered rather than scored: a copy produced
to a missing topic fails its whole transaction, and the lane would abort and rewind to it without
end (a replay's topic deleted while it runs, on a broker that does not create topics itself).
A topic once found is trusted until a transaction aborts (`forget`); one not found is asked about
again after `recheck_s`, so a topic created meanwhile is seen without a lookup per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TopicCatalog:
    def __init__(
        self, lookup: Callable[[str], bool], recheck_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lookup = lookup
        self._recheck_s = recheck_s
        self._clock = clock
        self._found: set[str] = set()
        self._missing: dict[str, float] = {}  # name -> when it was last found missing

    def exists(self, name: str) -> bool:
        if name in self._found:
            return True
        now = self._clock()
        if (since := self._missing.get(name)) is not None and now - since < self._recheck_s:
            return False
        if self._lookup(name):
            self._found.add(name)
            self._missing.pop(name, None)
            return True
        self._missing[name] = now
        return False

    def forget(self) -> None:
        """After an aborted transaction: a topic found before may be gone, so each is asked again."""
        self._found.clear()
