"""Which version of a model scores an event: a model's routing, the changes that make it, and the
arm an event lands on. Pure: the routing topic, the worker and the CLI build on it.

A model's routing is its stable version, at most one candidate, the candidate's canary share (of
all events, scored by the candidate instead of the stable version) and its shadow share (of the
stable arm's events, also scored by the candidate, its results kept apart). It is the fold of the
model's changes in order (`Routing.apply`); each change says who made it, when and why.

The arm is a function of the `event_id` alone: a stable hash into `BUCKETS` buckets, the canary
holding the lowest `canary_share * BUCKETS` of them. A retry, a redelivery after a crash or a replay
of the same event lands on the same version under the same routing, and raising the share only adds
buckets. Whether a stable event is shadowed is decided the same way by a second, independent hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Literal

import orjson
import pydantic

from pipeline.errors import ConfigurationError

BUCKETS = 10_000

Action = Literal["init", "publish", "share", "promote", "rollback"]


class RoutingRefused(ConfigurationError):
    """A routing change that cannot apply (the routing is left as it was); the message says why."""


class Arm(StrEnum):
    STABLE = "stable"
    CANARY = "canary"
    SHADOW = "shadow"  # a candidate's result on a stable event it also scored, kept apart
    BACKTEST = "backtest"  # a replayed event scored by the version its replay chose


@dataclass(frozen=True)
class Route:
    """Where one event goes: the version that scores it, its arm, and the version that also scores
    it in the shadow (None: not shadowed)."""

    version: str
    arm: Arm
    shadow: str | None = None


@dataclass(frozen=True)
class Change:
    """One change of a model's routing, as kept on the routing topic."""

    model: str
    action: Action
    version: str | None = None  # init: the first stable version; publish: the candidate
    canary_share: float | None = None  # share: the new shares (None: unchanged)
    shadow_share: float | None = None
    by: str = ""
    at: str = ""  # ISO 8601, UTC
    why: str = ""


def pinned(header: bytes | None) -> tuple[str, str] | None:
    """A `model-version` header's (model, version), or None when absent or not MODEL:VERSION."""
    if not header:
        return None
    model, _, version = header.decode(errors="replace").rpartition(":")
    return (model, version) if model and version.isdigit() else None


def bucket(event_id: str, salt: bytes = b"arm") -> int:
    """The event's bucket in [0, BUCKETS): the same for the same id on every machine and run."""
    digest = hashlib.blake2b(event_id.encode(), digest_size=8, person=salt).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def _share(value: float, name: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise RoutingRefused(f"{name} must be within [0, 1], not {value:g}")
    return value


@dataclass(frozen=True)
class Routing:
    """A model's routing. Before its first change (`init`) the stable version is "": whatever
    Triton serves of the model."""

    model: str
    stable: str = ""
    candidate: str | None = None
    canary_share: float = 0.0
    shadow_share: float = 0.0
    earlier: tuple[str, ...] = ()  # the stable versions before this one, latest last: rollback's way back
    # The shares in buckets, worked out once (the worker routes every event).
    _canary_buckets: int = field(init=False, repr=False, compare=False)
    _shadow_buckets: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_canary_buckets", round(self.canary_share * BUCKETS))
        object.__setattr__(self, "_shadow_buckets", round(self.shadow_share * BUCKETS))

    def route(self, event_id: str) -> Route:
        if self.candidate is None:
            return Route(self.stable, Arm.STABLE)
        if bucket(event_id) < self._canary_buckets:
            return Route(self.candidate, Arm.CANARY)
        shadowed = bucket(event_id, b"shadow") < self._shadow_buckets
        return Route(self.stable, Arm.STABLE, self.candidate if shadowed else None)

    def versions(self) -> set[str]:
        """The versions this routing sends events to (what must be loaded)."""
        routed = {self.stable} if self.stable else set()
        return routed | ({self.candidate} if self.candidate is not None else set())

    def apply(self, change: Change) -> Routing:
        """The routing after `change`; `RoutingRefused` (saying why in one line) if it cannot apply."""
        if change.model != self.model:
            raise RoutingRefused(f"a change of {change.model} does not apply to {self.model}")
        if change.action == "init":
            if self.stable:
                raise RoutingRefused(f"{self.model} already has a stable version ({self.stable})")
            if not change.version:
                raise RoutingRefused(f"the first stable version of {self.model} needs the version")
            return Routing(self.model, change.version)
        if self.stable == "":
            raise RoutingRefused(f"{self.model} has no stable version yet (the stack serves one when it starts)")
        if change.action == "publish":
            return self._publish(change.version)
        if change.action == "share":
            return self._shared(change.canary_share, change.shadow_share)
        if change.action == "promote":
            if self.candidate is None:
                raise RoutingRefused(f"{self.model} has no candidate to promote")
            return Routing(self.model, self.candidate, earlier=(*self.earlier, self.stable))
        if change.action == "rollback":
            return self._rolled_back()
        raise RoutingRefused(f"unknown routing action {change.action!r}")

    def _publish(self, version: str | None) -> Routing:
        if not version:
            raise RoutingRefused(f"publishing a version of {self.model} needs the version")
        if version == self.stable:
            raise RoutingRefused(f"{self.model} version {version} is already the stable version")
        return replace(self, candidate=version, canary_share=0.0, shadow_share=0.0)

    def _shared(self, canary: float | None, shadow: float | None) -> Routing:
        if self.candidate is None:
            raise RoutingRefused(f"{self.model} has no candidate to share events with (publish one first)")
        return replace(
            self,
            canary_share=self.canary_share if canary is None else _share(canary, "the canary share"),
            shadow_share=self.shadow_share if shadow is None else _share(shadow, "the shadow share"),
        )

    def _rolled_back(self) -> Routing:
        """With a candidate: the candidate goes (the canary rolled back). Without: back to the stable
        version before this one."""
        if self.candidate is not None:
            return replace(self, candidate=None, canary_share=0.0, shadow_share=0.0)
        if not self.earlier:
            raise RoutingRefused(f"{self.model} has no candidate and no earlier stable version to roll back to")
        return Routing(self.model, self.earlier[-1], earlier=self.earlier[:-1])


_CHANGE = pydantic.TypeAdapter(Change)


def encode(change: Change) -> bytes:
    """A change as the routing topic holds it: one JSON object."""
    return orjson.dumps(asdict(change))


def decode(value: bytes) -> Change:
    """A change read from the routing topic; `RoutingRefused` if it is not one."""
    try:
        return _CHANGE.validate_json(value)
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the value"
        raise RoutingRefused(f"not a routing change: {where}: {first['msg']}") from e


def fold(initial: Routing, changes: Iterable[Change]) -> tuple[Routing, list[tuple[Change, str]]]:
    """The routing after `changes` in order, from `initial`, and the changes that could not apply
    with why (skipped: every reader of the same history skips the same ones, so all agree)."""
    routing, skipped = initial, []
    for change in changes:
        try:
            routing = routing.apply(change)
        except RoutingRefused as e:
            skipped.append((change, str(e)))
    return routing, skipped
