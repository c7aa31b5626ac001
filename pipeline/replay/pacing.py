"""How a replay keeps to `--rate`, pure: how long to wait before the next transaction, and how many
requests one transaction may hold so that a slow rate still commits often."""

from __future__ import annotations

import math

SPAN_S = 0.5  # at a capped rate, a transaction holds about this much of it


def wait_s(published: int, rate: float | None, elapsed_s: float) -> float:
    """Seconds to wait so that `published` requests took at least published / rate seconds."""
    if not rate:
        return 0.0
    return max(0.0, published / rate - elapsed_s)


def transaction_rows(rate: float | None, chunk: int) -> int:
    """Rows per transaction: a source chunk, or half a second of a capped rate (at least one)."""
    if not rate:
        return chunk
    return max(1, min(chunk, math.ceil(rate * SPAN_S)))
