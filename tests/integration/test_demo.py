"""`make demo`'s job runs to completion (on the session's stack), alerts shown, so it cannot rot."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.local.stack import METRICS_OFFSETS, free_port, port_is_free, settings_env

pytestmark = pytest.mark.integration


def _consumers_base_port() -> int:
    """A base whose consumers' metrics ports (the base plus each one's offset) are all free now: a
    port past a free one may be another process's (an outgoing connection's, say)."""
    while True:
        base = free_port()
        if all(port_is_free(base + offset) for offset in METRICS_OFFSETS.values()):
            return base


def test_demo_runs_to_completion_and_scores_every_distinct_event(stack):
    settings = stack.settings()
    settings = settings.updated(
        gateway={"port": free_port()},
        worker={"app_id": "demo-worker"},
        consumers={"metrics_port": _consumers_base_port()},
    )
    env = {**os.environ, **settings_env(settings)}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "demo", "--events", "3000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "scored (distinct results)    2,820 of 2,820" in result.stdout
    assert "(0 repeated results)" in result.stdout
    assert "→ 200 {" in result.stdout
    # The fraud consumer's alerts, those of the patterns played after the stream among them.
    alerts = next(line for line in result.stdout.splitlines() if line.strip().startswith("fraud alerts"))
    assert "'velocity'" in alerts and "'repeated_high_scores'" in alerts, alerts
    assert "    fraud_scorer:" not in result.stdout, "transactions drawn like the training data: no drift"
    # Telemetry beside the transactions: every reading scored, anomalies flagged, one alert per machine.
    assert "readings scored              300 of 300" in result.stdout
    anomalies = next(line for line in result.stdout.splitlines() if line.strip().startswith("anomaly alerts"))
    assert int(anomalies.split()[2]) > 0, anomalies
