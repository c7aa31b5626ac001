"""Models of a test's own on the session's Triton, and the `pipeline` command line with a test's
settings."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.inference.repository import TritonRepository
from pipeline.local.stack import settings_env
from pipeline.models import routing_log, train
from pipeline.models.rollout import Rollout
from pipeline.settings import PROJECT_ROOT, Settings


def models_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return pipeline_cli(settings, "models", *args)


def pipeline_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """`pipeline ARGS` with these settings."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        env={**os.environ, **settings_env(settings)},
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=300,
    )


def ok(settings: Settings, *args: str) -> str:
    done = models_cli(settings, *args)
    assert done.returncode == 0, f"models {' '.join(args)}: {done.stderr}"
    return done.stdout


@contextmanager
def served_copy(settings: Settings) -> Iterator[str]:
    """A model of the caller's own, named here: the fraud scorer's stable version as its version 1,
    served as its first stable version, and a version 2 trained on other rows, not routed to.
    Unloaded and removed afterwards (a Triton restarted later serves only the session's models)."""
    repository = settings.triton.model_repository
    name = f"fraud_lc{uuid.uuid4().hex[:8]}"
    source = repository / "fraud_scorer"
    (repository / name).mkdir()
    config = (source / "config.pbtxt").read_text().replace('name: "fraud_scorer"', f'name: "{name}"')
    (repository / name / "config.pbtxt").write_text(config)
    shutil.copytree(source / routing_log.read(settings).routing("fraud_scorer").stable, repository / name / "1")
    rollout = Rollout(settings)
    try:
        rollout.serve([name])
    finally:
        rollout.close()
    train.train(repository, rows=20_000, epochs=4, seed=7, name=name)
    try:
        yield name
    finally:
        triton = TritonRepository(settings.triton)
        try:
            triton.unload(name)
            triton.wait_gone(name, [v.version for v in triton.index().get(name, [])], timeout_s=60)
        finally:
            triton.close()
        shutil.rmtree(repository / name)
