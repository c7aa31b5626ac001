"""The model of the bench's routed scenarios (a 10% canary, a 100% shadow): the fraud scorer's stable
version served as versions 1 (stable) and 2 (the candidate) under a name of the bench's own, and per
run a routing topic of the run's own (docs/performance.md#model-changes).

The candidate is the stable version's network: a run measures what the routing and the second model
call cost, not what other weights would.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline import topics
from pipeline.inference.repository import TritonRepository
from pipeline.models import routing_log
from pipeline.models.rollout import Rollout, now
from pipeline.models.routing import Change
from pipeline.settings import Settings

BY = "pipeline bench"


@contextmanager
def bench_model(settings: Settings) -> Iterator[str]:
    """A model of the bench's own in Triton's repository, its two versions on disk; unloaded and
    removed on exit."""
    repository = settings.triton.model_repository
    source = repository / settings.default_model
    stable = routing_log.read(settings).routing(settings.default_model).stable or "1"
    name = f"bench_{settings.default_model}_{uuid.uuid4().hex[:6]}"
    (repository / name).mkdir()
    try:
        config = (source / "config.pbtxt").read_text()
        (repository / name / "config.pbtxt").write_text(
            config.replace(f'name: "{settings.default_model}"', f'name: "{name}"')
        )
        for version in ("1", "2"):
            shutil.copytree(source / stable, repository / name / version)
        yield name
    finally:
        _unload(settings, name)
        shutil.rmtree(repository / name, ignore_errors=True)


def routed(settings: Settings, model: str, canary: float, shadow: float) -> Settings:
    """`settings` (a run's, with topics of its own) scoring `model` by default under a routing topic of
    the run's own: version 1 stable, version 2 the candidate at these shares, both ready in Triton."""
    own = settings.updated(topics={"model_routing": f"{settings.worker.app_id}.routing"})
    own = own.model_copy(update={"default_model": model})
    topics.apply(own, [spec for spec in topics.load_specs(own) if spec.name == own.topics.model_routing])
    routing_log.append(own, Change(model, "init", version="1", by=BY, at=now(), why="the bench's stable version"))
    rollout = Rollout(own)
    try:
        rollout.publish(model, "2", by=BY, why="the bench's candidate")
        rollout.share(model, canary, shadow, by=BY, why=f"canary {canary:g}, shadow {shadow:g}")
    finally:
        rollout.close()
    return own


def _unload(settings: Settings, model: str) -> None:
    triton = TritonRepository(settings.triton)
    try:
        loaded = [v.version for v in triton.index().get(model, [])]
        if loaded:
            triton.unload(model)
            triton.wait_gone(model, loaded, timeout_s=60)
    finally:
        triton.close()
