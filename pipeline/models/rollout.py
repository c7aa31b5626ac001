"""Changing which version of a model scores events: the routing topic (`routing_log`) and Triton's
repository API (`inference.repository`) kept in step, for `pipeline models publish|share|promote|
rollback` and for the stack that serves each model's routed versions when it starts.

Every change is checked against the model's current routing before anything moves (a change that
cannot apply leaves everything as it was). A version a change routes to is loaded and ready in Triton
before the change is written, so no worker routes an event to a version that cannot score it; a
version a change no longer routes to is unloaded `unload_grace_s` after it, once the batches routed
before the change are done (docs/model.md#versions-and-rollouts).
"""

from __future__ import annotations

import getpass
import socket
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import structlog

from pipeline.errors import ConfigurationError
from pipeline.inference.repository import LoadFailed, TritonRepository, model_names
from pipeline.models import routing_log, versions
from pipeline.models.routing import Change, Routing, RoutingRefused
from pipeline.settings import Settings

log = structlog.get_logger(__name__)


def operator() -> str:
    """Who makes a change from this shell: user@host."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Rollout:
    def __init__(self, settings: Settings, say: Callable[[str], None] = lambda line: None) -> None:
        self._settings = settings
        self._say = say
        self._triton = TritonRepository(settings.triton, timeout_s=settings.models.load_timeout_s)

    def close(self) -> None:
        self._triton.close()

    # -- changes -----------------------------------------------------------------------------------
    def publish(self, model: str, version: str, by: str, why: str) -> Routing:
        self._check_version(model, version)
        return self._change(Change(model, "publish", version=version, by=by, at=now(), why=why))

    def share(self, model: str, canary: float | None, shadow: float | None, by: str, why: str) -> Routing:
        return self._change(Change(model, "share", canary_share=canary, shadow_share=shadow, by=by, at=now(), why=why))

    def promote(self, model: str, by: str, why: str) -> Routing:
        return self._change(Change(model, "promote", by=by, at=now(), why=why))

    def rollback(self, model: str, by: str, why: str, expect_candidate: str | None = None) -> Routing:
        """`expect_candidate`: roll back only that candidate (the guard's, judged a moment ago)."""
        return self._change(Change(model, "rollback", by=by, at=now(), why=why), expect_candidate)

    def serve(self, models: Iterable[str] | None = None, by: str = "pipeline stack") -> dict[str, Routing]:
        """Each model of the repository (or these of them) served as routed (Triton just started
        knows none). A model without a routing gets one: its highest version on disk becomes its
        first stable version."""
        history = routing_log.read(self._settings)
        served = {}
        for model in models if models is not None else model_names(self._settings.triton.model_repository):
            self._check_model(model)
            routing = history.routing(model)
            if not routing.stable:
                on_disk = versions.versions(self._settings.triton.model_repository, model)
                if not on_disk:
                    raise ConfigurationError(f"{model} has no trained version: run `pipeline models train {model}`")
                first = Change(model, "init", version=str(on_disk[-1].number), by=by, at=now(), why="first served")
                routing = routing.apply(first)
                routing_log.append(self._settings, first)
            self._load(model, routing.versions())
            served[model] = routing
        return served

    def _change(self, change: Change, expect_candidate: str | None = None) -> Routing:
        model = change.model
        self._check_model(model)
        before = routing_log.read(self._settings).routing(model)
        if expect_candidate is not None and before.candidate != expect_candidate:
            raise RoutingRefused(f"{model}'s candidate is now {before.candidate or 'none'}, not {expect_candidate}")
        after = before.apply(change)  # RoutingRefused: nothing moved
        self._load(model, before.versions() | after.versions(), unless_ready=True)
        routing_log.append(self._settings, change)
        dropped = before.versions() - after.versions()
        if dropped:
            self._say(
                f"{model}: unloading version {', '.join(sorted(dropped))} in {self._settings.models.unload_grace_s:g} s"
            )
            time.sleep(self._settings.models.unload_grace_s)
            self._load(model, after.versions())
        log.info("routing_changed", model=model, action=change.action, by=change.by, why=change.why)
        return after

    # -- checks and loading ------------------------------------------------------------------------
    def _check_model(self, model: str) -> None:
        known = model_names(self._settings.triton.model_repository)
        if model not in known:
            raise ConfigurationError(f"unknown model {model!r}: one of {', '.join(known)}")

    def _check_version(self, model: str, version: str) -> None:
        self._check_model(model)
        on_disk = [str(v.number) for v in versions.versions(self._settings.triton.model_repository, model)]
        if version not in on_disk:
            raise ConfigurationError(
                f"{model} has no version {version!r} in {self._settings.triton.model_repository} "
                f"(versions: {', '.join(on_disk) or 'none'}; `pipeline models train {model}` writes the next)"
            )

    def _load(self, model: str, wanted: set[str], unless_ready: bool = False) -> None:
        """Triton serves exactly `wanted` of `model`, each ready. `unless_ready`: nothing is asked
        when all of them are ready already (another load request would load them again)."""
        if unless_ready:
            ready = {v.version for v in self._triton.index().get(model, []) if v.state == "READY"}
            if wanted <= ready:
                return
        self._triton.load(model, [int(v) for v in wanted])
        deadline = time.monotonic() + self._settings.models.load_timeout_s
        for version in sorted(wanted):
            while not self._triton.ready(model, version):
                if time.monotonic() > deadline:
                    raise LoadFailed(
                        f"{model} version {version} is not ready after {self._settings.models.load_timeout_s:g} s"
                    )
                time.sleep(0.2)
