"""When each feature view was last materialised, as Feast's registry records it: the signal for a
worker that holds feature rows until the next materialisation.

`feast materialize` (and `materialize-incremental`) writes a view's rows to the online store, then
records the interval it wrote in the registry. A worker asks the registry every `poll_s` and drops
the rows it holds once any view's latest interval has moved: a materialised value is used within
`poll_s` of its record, as with a TTL of `poll_s`, and between materialisations no row is read twice.
Writes that bypass materialisation (`push`, `write_to_online_store`) leave no record: a view with a
stream source is read under the TTL instead (`fed_by_push`), and a team that writes batch views
directly turns holding off (docs/performance.md#feature-cache).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime
from typing import Any

Marks = dict[str, datetime | None]


def latest(views: Iterable[Any]) -> Marks:
    """Pure: each view's latest materialised end (None: never materialised)."""
    return {view.name: max((end for _, end in view.materialization_intervals), default=None) for view in views}


def fed_by_push(view: Any) -> bool:
    """Pure: the view's online rows can change with no materialisation recorded (a stream source)."""
    return getattr(view, "stream_source", None) is not None


class Materialisations:
    """The registry's materialisation marks, looked at every `poll_s`."""

    def __init__(self, store: Any, poll_s: float) -> None:
        self._store, self.poll_s = store, poll_s
        self._seen: Marks | None = None
        self._looked_at = -math.inf

    def due(self, now: float) -> bool:
        return now - self._looked_at >= self.poll_s

    def moved(self, now: float) -> bool:
        """Whether a view was materialised since the last look (the first look sets the marks). Reads
        the registry, uncached: blocking."""
        self._looked_at = now
        marks = latest(self._store.registry.list_feature_views(self._store.project, allow_cache=False))
        moved = self._seen is not None and marks != self._seen
        self._seen = marks
        return moved
