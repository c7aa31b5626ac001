"""The rollout guard (`pipeline consumers guard`): each model's canary arm against its stable arm, over
tumbling windows of `window_s`, rolled back past the thresholds (`guard_rules`) through the same
routing as `pipeline models rollback`, saying why in the routing history and on `drift.alerts`.

Results name their arm; a dead letter's arm is its `event_id`'s under the model's routing, which the
guard follows as the workers do (`models.routing_log.RoutingFollower`). Only outcomes of the current
routing's versions count: a window spans one candidate. Like the drift monitor, a member of the
group judges the partitions it owns, a share of the stream by `event_id`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
import structlog

from pipeline import metrics
from pipeline.consumers.app import guarded, results_topic
from pipeline.consumers.fraud_rules import alert_id
from pipeline.consumers.guard_rules import Guard, Tally, Thresholds
from pipeline.contract import utc_timestamp
from pipeline.errors import PipelineError
from pipeline.models.routing import Arm, Routing
from pipeline.models.routing_log import RoutingFollower
from pipeline.settings import Settings

log = structlog.get_logger(__name__)

BY = "pipeline guard"
# The dead letters of the model's doing (after retries, or a version that answered with an error);
# the others are the request's.
FAILURE_CODES = frozenset({"inference_failed"})


@dataclass
class _Watch:
    """One model's canary under watch: its candidate, the windows judged, this window's tallies."""

    candidate: str
    guard: Guard
    stable: Tally = field(default_factory=Tally)
    canary: Tally = field(default_factory=Tally)
    windows: int = 0
    rolling_back: bool = False


def thresholds(settings: Settings) -> Thresholds:
    guard = settings.consumers.guard
    return Thresholds(guard.min_events, guard.failure_excess, guard.latency_ratio, guard.score_psi, guard.windows)


class Watches:
    """The models with a canary now (a candidate with a canary share), each with its window."""

    def __init__(self, follower: RoutingFollower, limits: Thresholds) -> None:
        self._follower, self._limits = follower, limits
        self._watches: dict[str, _Watch] = {}

    def routing(self, model: str) -> Routing | None:
        return self._follower.routings().get(model)

    def of(self, model: str) -> tuple[Routing, _Watch] | None:
        routing = self.routing(model)
        if routing is None or routing.candidate is None or routing.canary_share <= 0:
            self._watches.pop(model, None)
            return None
        watch = self._watches.get(model)
        if watch is None or watch.candidate != routing.candidate:
            watch = self._watches[model] = _Watch(routing.candidate, Guard(self._limits))
            metrics.GUARD_ROLLBACKS.labels(model)  # exported at 0 while a canary is watched
        return routing, watch

    def items(self) -> list[tuple[str, _Watch]]:
        return list(self._watches.items())


def install(app: faust.App, settings: Settings) -> RoutingFollower:
    """The guard's agents and its window timer on `app`; the routing follower it reads (to close)."""
    dead_letters = app.topic(
        settings.topics.dlq, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    alerts = app.topic(settings.topics.drift_alerts, key_type=bytes, value_type=bytes, value_serializer="raw")
    follower = RoutingFollower(settings, f"{app.conf.id}-routing")
    follower.wait_caught_up(settings.models.routing_wait_s)
    watches = Watches(follower, thresholds(settings))

    def result(event: Any) -> None:
        try:
            record = orjson.loads(event.value)
            model, arm, version = str(record["model"]), record.get("arm"), str(record["model_version"])
            score, latency_ms = float(record["score"]), float(record["latency_ms"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            metrics.CONSUMED_RESULTS.labels("guard", "invalid").inc()
            return
        metrics.CONSUMED_RESULTS.labels("guard", "read").inc()
        if (found := watches.of(model)) is None:
            return
        routing, watch = found
        if arm == Arm.CANARY and version == watch.candidate:
            watch.canary.result(score, latency_ms)
        elif arm == Arm.STABLE and version == routing.stable:
            watch.stable.result(score, latency_ms)

    def dead_letter(event: Any) -> None:
        try:
            record = orjson.loads(event.value)
            code, event_id = record["error"]["code"], record.get("event_id")
            model = _requested_model(record.get("payload")) or settings.default_model
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return
        if code not in FAILURE_CODES or not isinstance(event_id, str) or (found := watches.of(model)) is None:
            return
        routing, watch = found
        (watch.canary if routing.route(event_id).arm is Arm.CANARY else watch.stable).failure()

    async def judge() -> None:
        for model, watch in watches.items():
            stable, canary = watch.stable.close(), watch.canary.close()
            watch.stable, watch.canary = Tally(), Tally()
            if watch.rolling_back:
                continue
            why = watch.guard.judge(stable, canary)
            verdict = watch.guard.verdict
            metrics.GUARD_WINDOWS.labels(model, verdict).inc()
            if verdict != "too_few":
                watch.windows += 1
            log.info(
                "guard_window",
                model=model,
                candidate=watch.candidate,
                verdict=verdict,
                stable_events=stable.events,
                canary_events=canary.events,
                reasons=watch.guard.last or [],
            )
            if why:
                watch.rolling_back = True
                await _roll_back(settings, alerts, model, watch, why)

    app.agent(results_topic(app, settings), name="guard-results")(guarded("guard-results", result))
    app.agent(dead_letters, name="guard-dead-letters")(guarded("guard-dead-letters", dead_letter))
    app.timer(interval=settings.consumers.guard.window_s, name="guard-windows")(judge)
    return follower


async def _roll_back(settings: Settings, alerts: Any, model: str, watch: _Watch, why: list[str]) -> None:
    from pipeline.models.rollout import Rollout

    windows = settings.consumers.guard.windows
    reason = f"canary {watch.candidate} unhealthy in {windows} windows in a row: {'; '.join(why)}"

    def roll_back() -> Routing:
        rollout = Rollout(settings)
        try:
            return rollout.rollback(model, BY, reason, expect_candidate=watch.candidate)
        finally:
            rollout.close()

    try:
        after = await asyncio.to_thread(roll_back)
    except PipelineError as e:  # the candidate changed meanwhile, or Triton or Kafka refused: say so
        log.warning("guard_rollback_failed", model=model, candidate=watch.candidate, error=e.message)
        watch.rolling_back = False
        return
    metrics.GUARD_ROLLBACKS.labels(model).inc()
    created_at = utc_timestamp()
    identity = alert_id("rollback", model, watch.candidate, created_at)
    record: dict[str, Any] = {
        "alert_id": identity,
        "kind": "rollback",
        "rule": "canary_unhealthy",
        "reason": f"{model}: {reason}; back to version {after.stable}",
        "model": model,
        "model_version": watch.candidate,
        "stable_version": after.stable,
        "reasons": why,
        "windows": windows,
        "created_at": created_at,
    }
    await (await alerts.send(key=identity.encode(), value=orjson.dumps(record)))
    metrics.ALERTS.labels("rollback", "canary_unhealthy").inc()
    log.warning("canary_rolled_back", model=model, candidate=watch.candidate, reasons=why)


def _requested_model(payload: Any) -> str | None:
    """The `model` a dead letter's request named, when its payload is a JSON object naming one."""
    if not isinstance(payload, str):
        return None
    try:
        request = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    model = request.get("model") if isinstance(request, dict) else None
    return model if isinstance(model, str) else None
