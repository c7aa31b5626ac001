"""The garbage collector, set for a long-running process.

CPython's full collections walk every object the collector tracks. A worker starts with a great
many of them (Feast, protobuf, pyarrow, pydantic and the feature registry) that live as long as the
process, and a full collection walks them all again each time its heap grows by a quarter: long
pauses while a worker's dedup state fills (docs/performance.md#garbage-collector). What start-up
built is moved out of the collector's sight once, when the process is ready; what the stream
creates afterwards is collected as usual.
"""

from __future__ import annotations

import gc


def freeze_startup() -> int:
    """Collect start-up's garbage, then exempt everything still alive from later collections
    (`gc.freeze`). Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
