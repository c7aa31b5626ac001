"""The drift monitor (`pipeline consumers drift`): per model, each request feature (from the requests
topic) and the score (from the results) over sliding windows against the training reference
(`reference.json`) of the model's stable version (a score: of the version that gave it), as
Prometheus gauges; one event on `drift.alerts` per upward crossing
of a level (warning, alert), not one per event.

Its windows live in the process: each member of the group sees the partitions it owns, a random
share of the stream (requests are keyed by entity), and a restarted one fills its windows again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import faust
import orjson
import structlog

from pipeline import metrics
from pipeline.consumers.app import guarded
from pipeline.consumers.drift_window import Measured, ModelDrift
from pipeline.consumers.fraud_rules import alert_id
from pipeline.contract import parse_request, utc_timestamp
from pipeline.errors import ConfigurationError, PipelineError
from pipeline.models import reference
from pipeline.models.routing import Routing
from pipeline.models.routing_log import RoutingFollower
from pipeline.settings import Settings

log = structlog.get_logger(__name__)


class _Models:
    """Each model version's windows, made on its first event from that version's training reference.
    A score is compared with the reference of the version that gave it; request features with the
    reference of the model's stable version (the routing's; before any, its newest with one)."""

    def __init__(self, settings: Settings, inputs: str, routings: Callable[[], Mapping[str, Routing]]) -> None:
        self.settings, self.inputs, self._routings = settings, inputs, routings  # inputs: "features" or "score"
        self._drifts: dict[tuple[str, str], tuple[str, ModelDrift] | None] = {}

    def get(self, model: str, version: str | None = None) -> tuple[str, ModelDrift] | None:
        if version is None:
            routing = self._routings().get(model)
            version = routing.stable if routing is not None else ""
        if (model, version) not in self._drifts:
            model_dir = self.settings.triton.model_repository / model
            if version and (model_dir / version / reference.FILE).exists():
                found: tuple[str, dict[str, reference.Reference]] | None = (
                    version,
                    reference.load(model_dir / version),
                )
            else:
                found = reference.latest(model_dir) if not version else None
            if found is None:
                log.warning("no_training_reference", model=model, version=version)
                self._drifts[(model, version)] = None
            else:
                chosen = {k: v for k, v in found[1].items() if (k == "score") == (self.inputs == "score")}
                drift = self.settings.consumers.drift
                self._drifts[(model, version)] = (
                    found[0],
                    ModelDrift(chosen, drift.window_events, drift.every_events, drift.warning, drift.alert),
                )
        return self._drifts[(model, version)]


def check_reference(settings: Settings) -> None:
    """The default model's training reference must be there (`pipeline models train` writes it)."""
    model = settings.default_model
    if reference.latest(settings.triton.model_repository / model) is None:
        raise ConfigurationError(
            f"no training reference ({reference.FILE}) for model {model} under "
            f"{settings.triton.model_repository}: run `pipeline models train`"
        )


def install(app: faust.App, settings: Settings) -> None:
    requests = app.topic(settings.topics.requests, key_type=bytes, value_type=bytes, value_serializer="raw")
    results = app.topic(settings.topics.results, key_type=bytes, value_type=bytes, value_serializer="raw")
    alerts = app.topic(settings.topics.drift_alerts, key_type=bytes, value_type=bytes, value_serializer="raw")
    follower = RoutingFollower(settings, f"{app.conf.id}-routing")
    follower.wait_caught_up(settings.models.routing_wait_s)
    features, scores = _Models(settings, "features", follower.routings), _Models(settings, "score", follower.routings)

    async def publish(model: str, version: str, crossed: list[Measured], event: Any) -> None:
        source = {"topic": event.message.topic, "partition": event.message.partition, "offset": event.message.offset}
        for m in crossed:
            record = _alert(model, version, m, source)
            await (await alerts.send(key=record["alert_id"].encode(), value=orjson.dumps(record)))
            metrics.ALERTS.labels("drift", record["rule"]).inc()
            log.info("drift_alert", model=model, feature=m.feature, psi=round(m.psi, 4), crossed=m.level)

    async def observe(
        models: _Models, model: str, values: dict[str, float], event: Any, version: str | None = None
    ) -> None:
        found = models.get(model, version)
        if found is None:
            return
        version, drift = found
        if drift.observe(values):
            measured, crossed = drift.measure()
            for m in measured:
                metrics.DRIFT_PSI.labels(model, m.feature).set(m.psi)
                if m.ks is not None:
                    metrics.DRIFT_KS.labels(model, m.feature).set(m.ks)
            await publish(model, version, crossed, event)

    async def request_features(event: Any) -> None:
        try:
            request = parse_request(event.value)
        except PipelineError:
            metrics.CONSUMED_RESULTS.labels("drift", "invalid").inc()
            return
        metrics.CONSUMED_RESULTS.labels("drift", "read").inc()
        await observe(features, request.model or settings.default_model, request.features, event)

    async def result_scores(event: Any) -> None:
        try:
            record = orjson.loads(event.value)
            model, score, version = str(record["model"]), float(record["score"]), str(record["model_version"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            metrics.CONSUMED_RESULTS.labels("drift", "invalid").inc()
            return
        await observe(scores, model, {"score": score}, event, version)

    app.agent(requests, name="drift-features")(guarded("drift-features", request_features))
    app.agent(results, name="drift-scores")(guarded("drift-scores", result_scores))


def _alert(model: str, version: str, m: Measured, source: dict[str, Any]) -> dict[str, Any]:
    rule = f"psi_{m.level}"
    alert: dict[str, Any] = {
        "alert_id": alert_id(
            "drift", model, version, m.feature, m.level, source["topic"], source["partition"], source["offset"]
        ),
        "kind": "drift",
        "rule": rule,
        "reason": f"{m.feature} of {model}: PSI {m.psi:.3f} over the last {m.events} events ({m.level})",
        "model": model,
        "model_version": version,
        "created_at": utc_timestamp(),
        "feature": m.feature,
        "psi": round(m.psi, 6),
        "level": m.level,
        "window": {"events": m.events, "last": source},
    }
    if m.ks is not None:
        alert["ks"] = {"d": round(m.ks, 6), "p": m.ks_p}
    return alert
