"""A short-lived cache of feature rows per entity, so hot entities are read from the store once per TTL.

Online features change when they are materialised (minutes to hours apart), so a few seconds of
reuse does not change what a model sees in practice, and it takes the store read (the largest cost
of a worker's batch) off most events. A TTL of 0 turns it off.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

_ABSENT = object()


class TtlCache:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        # Insertion order is expiry order (every entry lives ttl_s), so expiry pops from the front.
        self._entries: dict[Hashable, tuple[float, Any]] = {}

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

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
        for key, value in values.items():
            self._entries.pop(key, None)
            self._entries[key] = (expires, value)

    def _expire(self, now: float) -> None:
        while self._entries:
            key = next(iter(self._entries))
            if self._entries[key][0] > now:
                return
            del self._entries[key]
