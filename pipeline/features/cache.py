"""Feature rows per entity, so that hot entities are not read from the store for every batch.

A row is kept `ttl_s` (0: nothing is kept), or, with `ttl_s` infinite, until `clear()`: the lookup
clears it when the registry records a new materialisation (`materialisations`). Insertion order is
expiry order (every entry lives as long), so expiry and eviction past `max_entries` pop from the front.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from typing import Any

_ABSENT = object()


class TtlCache:
    def __init__(self, ttl_s: float, max_entries: int | None = None) -> None:
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._entries: dict[Hashable, tuple[float, Any]] = {}

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0 and self.max_entries != 0

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(self, keys: Iterable[Hashable], now: float) -> tuple[dict[Hashable, Any], list[Hashable]]:
        """Values cached and fresh at `now`, and the keys to read from the store."""
        self._expire(now)
        found, missing = {}, []
        for key in keys:
            entry = self._entries.get(key, _ABSENT)
            if entry is _ABSENT:
                missing.append(key)
            else:
                found[key] = entry[1]  # type: ignore[index]
        return found, missing

    def put_many(self, values: dict[Hashable, Any], now: float) -> None:
        if not self.enabled:
            return
        expires = now + self.ttl_s
        entries = self._entries
        for key, value in values.items():
            entries.pop(key, None)
            entries[key] = (expires, value)
        if self.max_entries is not None:
            while len(entries) > self.max_entries:  # the oldest go first
                del entries[next(iter(entries))]

    def clear(self) -> None:
        self._entries.clear()

    def _expire(self, now: float) -> None:
        if math.isinf(self.ttl_s):
            return
        while self._entries:
            key = next(iter(self._entries))
            if self._entries[key][0] > now:
                return
            del self._entries[key]
