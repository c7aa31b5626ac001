"""When a worker fetches, holds, scores and commits: a pure state machine.

Facts go in (what was fetched, the lanes' states, whether a batch is being scored, the partitions
whose state is restored, the backfill gate, the clock) and one decision comes out; the loop acts on
it and comes back. No Kafka, no tasks, no clock of its own: every decision is unit-tested from
facts (tests/unit/worker/test_batching.py). The rules, in the order they are applied:

1. A backfill worker follows its gate: its partitions are paused while the live workers lag.
2. A lane whose transaction has finished, or that has `max_batches` waiting behind the one in
   flight, is settled first: its outcome decides what may be committed next.
3. After an aborted transaction, what is fetched or being scored is taken in, then the lane's
   partitions are rewound (`delivery`, step 5) and what was held of them is dropped.
4. Transactions gather batches while a backlog waits (the last fetch came back full) and for
   `linger` after callers were answered ahead of their commit; a lane commits when not gathering
   or once ripe (`max_batches` waiting, or its oldest batch `linger` old). Otherwise each lane
   commits what it has at once, for the stream's readers.
5. Records are fetched while fewer than a batch are held.
6. What is held is scored unless scoring is busy and less than a full batch is held: busy is a batch
   still being scored, or every lane committing (what trickles in is then gathered into one batch
   for when a lane frees up), unless a caller waits for something held.
7. Records of partitions not owned (revoked, or still restoring) are not scored.
In full: docs/architecture.md#held-records.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

R = TypeVar("R")  # a fetched record: anything whose partition the machine is told how to read


@dataclass(frozen=True, slots=True)
class LaneState:
    committing: bool = False  # a transaction in flight, not finished
    finished: bool = False  # its transaction has finished and is not yet settled
    pending: int = 0  # scored batches waiting for the next transaction
    pending_since: float = 0.0  # when the oldest of them was scored (monotonic s)
    rewinding: bool = False  # aborted: waits for its partitions to be rewound


@dataclass(frozen=True, slots=True)
class Facts:
    now: float  # monotonic s
    lanes: Sequence[LaneState]
    owned: Collection[int]  # partitions whose dedup state is restored
    scoring: bool = False  # a batch is being scored
    answered_at: float = float("-inf")  # when callers were last answered ahead of their commit
    gate: bool | None = None  # a backfill worker's: whether the live workers need it to yield


@dataclass(frozen=True, slots=True)
class FollowGate:
    """Pause (or resume) every owned partition."""

    pause: bool


@dataclass(frozen=True, slots=True)
class Settle:
    """Wait for these lanes' transactions."""

    lanes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Rewind:
    """Take in the fetch under way and the batch being scored, then rewind the aborted lanes'
    partitions and tell the machine which (`rewound`)."""


@dataclass(frozen=True, slots=True)
class Advance(Generic[R]):
    """Start these lanes' transactions, then a fetch of `fetch` records (0: none), then score
    `score`, or, when it is None, wait for a fetch, a transaction or a score to finish, or for
    `wake_in` seconds (None: no limit)."""

    commit: tuple[int, ...] = ()
    fetch: int = 0
    score: list[R] | None = None
    wake_in: float | None = None


Decision = FollowGate | Settle | Rewind | Advance[R]


@dataclass(slots=True)
class Batching(Generic[R]):
    """The loop's state between decisions: what is held, whether a fetch is under way, whether the
    last one came back full, whether a caller waits for something held, and the gate followed."""

    batch_size: int
    max_batches: int  # per transaction
    linger_s: float
    partition: Callable[[R], int]
    # Whether a caller answered as soon as scored waits for one of these records; None: callers are
    # answered at commit, and nothing is scored early for them.
    awaits_answer: Callable[[list[R]], bool] | None = None
    held: list[R] = field(default_factory=list)
    fetching: bool = False
    backlog: bool = False
    callers_held: bool = False
    paused: bool = False

    def decide(self, facts: Facts) -> Decision[R]:
        if facts.gate is not None and facts.gate != self.paused:
            self.paused = facts.gate
            return FollowGate(facts.gate)
        if settle := tuple(i for i, lane in enumerate(facts.lanes) if self._backed_up(lane)):
            return Settle(settle)
        if any(lane.rewinding for lane in facts.lanes):
            return Rewind()
        return self._advance(facts)

    def fetched(self, records: list[R]) -> None:
        """A fetch came back (maybe empty)."""
        self.fetching = False
        self.backlog = len(records) >= self.batch_size - len(self.held)
        self.held += records
        if self.awaits_answer is not None and not self.backlog and not self.callers_held:  # full: scored at once
            self.callers_held = self.awaits_answer(records)

    def rewound(self, partitions: Collection[int]) -> None:
        """These partitions start again from their first uncommitted record: what was held of them goes."""
        self.held = [r for r in self.held if self.partition(r) not in partitions]

    def _backed_up(self, lane: LaneState) -> bool:
        return lane.finished or (lane.committing and lane.pending >= self.max_batches)

    def _advance(self, facts: Facts) -> Advance[R]:
        gathering = self.backlog or facts.now - facts.answered_at < self.linger_s
        commit = tuple(
            i
            for i, lane in enumerate(facts.lanes)
            if self._can_commit(lane) and (not gathering or self._ripe(lane, facts.now))
        )
        fetch = 0
        if not self.fetching and len(self.held) < self.batch_size:
            fetch, self.fetching = self.batch_size - len(self.held), True
        every_lane_committing = all(lane.committing or i in commit for i, lane in enumerate(facts.lanes))
        busy = facts.scoring or (every_lane_committing and not self.callers_held)
        if not self.held or (busy and len(self.held) < self.batch_size):
            due = [self._ripe_in(lane, facts.now) for i, lane in enumerate(facts.lanes) if i not in commit]
            wake_in = min((t for t in due if t is not None), default=None) if gathering else None
            return Advance(commit, fetch, None, wake_in)
        batch = [r for r in self.held if self.partition(r) in facts.owned]
        self.held, self.callers_held = [], False
        return Advance(commit, fetch, batch)

    @staticmethod
    def _can_commit(lane: LaneState) -> bool:
        return not lane.committing and not lane.finished and lane.pending > 0 and not lane.rewinding

    def _ripe(self, lane: LaneState, now: float) -> bool:
        return lane.pending >= self.max_batches or now - lane.pending_since >= self.linger_s

    def _ripe_in(self, lane: LaneState, now: float) -> float | None:
        """Seconds until the lane's waiting batches are ripe, if it could start a transaction then."""
        if not self._can_commit(lane):
            return None
        if lane.pending >= self.max_batches:
            return 0.0
        return max(0.0, lane.pending_since + self.linger_s - now)
