"""What a worker's parts hand each other: a fetched record, a consumed request, a message to publish, a
dedup entry.

One batch's way: the loop turns fetched `Record`s into `Inbound`s, the processor turns those into
`Outbound`s (results, dead letters, answers) and `DedupEntry`s, the lanes carry both to their
transaction (`delivery`), and a committed transaction's entries reach the dedup store (`dedup`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from pipeline.contract import Source


class Record(Protocol):
    """A record fetched from a subscribed topic (librdkafka's `Message`, whose partition and offset
    are never None there): what the batching, the lanes and delivery read of it."""

    def topic(self) -> str: ...
    def partition(self) -> int: ...
    def offset(self) -> int: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> list[tuple[str, bytes]] | None: ...
    def timestamp(self) -> tuple[int, int]: ...


@dataclass(slots=True)  # not frozen: one is built per event (docs/performance.md#per-event-objects)
class Inbound:
    """One consumed request."""

    value: bytes | None
    key: bytes | None
    headers: Mapping[str, bytes]
    source: Source
    received: float  # time.monotonic() at consume


@dataclass(slots=True)
class Outbound:
    """One message to publish: a result, a dead letter, or an answer to a caller."""

    source_partition: int  # the input partition whose transaction carries this message
    topic: str
    key: bytes | None
    value: bytes
    partition: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    answer_to: bytes | None = None  # an answer's direct address (see answer_wire); never published


class DedupEntry(NamedTuple):
    """A scored event, remembered so that its repeats get no second result."""

    key: str  # the dedup key: the event_id, within its replay if any (`contract.dedup_key`)
    partition: int  # the input partition it came from (its results partition too)
    result: bytes  # the result a repeat gets back
