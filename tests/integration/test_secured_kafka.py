"""The pipeline on a secured broker (deploy/kafka/kafka.sh with KAFKA_SECURED: SASL_SSL with SCRAM,
the StandardAuthorizer, a CA of its own): every client of a worker and a bridge connects through the
one connection block (pipeline/kafka/), and no secret reaches a log."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from pipeline import topics
from pipeline.local import probe, traffic
from pipeline.local.stack import LocalStack, settings_env
from pipeline.models import routing_log
from pipeline.models.rollout import now
from pipeline.models.routing import Change
from tests.conftest import SECURED_KAFKA_PORT, TEST_PORTS, Processes, make_settings
from tests.integration.reference import reference_scores

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def secured(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A secured broker of the module's own beside the session's Triton; its settings connect as the
    broker's `admin` over SASL_SSL, and the fraud scorer is routed to the version the session serves."""
    ports = dataclasses.replace(TEST_PORTS, kafka=SECURED_KAFKA_PORT)
    local = LocalStack(tmp_path_factory.mktemp("secured"), ports, own_ports=True, secured=True)
    local.model_repository = stack.model_repository
    local.start_kafka()
    try:
        settings = local.settings()
        topics.apply(settings)
        stable = routing_log.read(stack.settings()).routing("fraud_scorer").stable
        served = Change("fraud_scorer", "init", version=stable, by="test", at=now(), why="the session's Triton")
        routing_log.append(settings, served)
        yield local
    finally:
        local.stop_kafka()


def test_a_stream_is_scored_once_and_a_caller_answered_over_sasl_ssl_with_no_secret_in_a_log(secured):
    settings = make_settings(secured)
    assert settings.kafka.security_protocol == "SASL_SSL" and settings.kafka.password_file is not None
    started = Processes(secured)
    try:
        started.worker(settings)
        started.gateway(settings)
        requests = traffic.valid_requests(400, prefix="secured-")
        messages = [traffic.message_for(r) for r in requests]
        start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
        probe.publish(settings, messages + messages[:80])  # 80 repeats
        collected = probe.collect(
            settings, start, lambda c: c.distinct_results >= len(requests), timeout_s=180,
            sentinels=probe.publish_sentinels(settings),
        )  # fmt: skip
        caller = dict(traffic.valid_requests(1, prefix="secured-http-", seed=9)[0])
        response = httpx.post(f"http://127.0.0.1:{settings.gateway.port}/v1/predict", json=caller, timeout=30)
    finally:
        started.stop_all()

    assert collected.distinct_results == len(requests) and collected.repeated_results == 0
    assert collected.dead_letters == []
    got = np.array([collected.results[r["event_id"]][0]["score"] for r in requests])
    np.testing.assert_allclose(got, reference_scores(settings, requests), atol=1e-5, rtol=0)
    assert response.status_code == 200, response.text
    assert response.json()["score"] == pytest.approx(reference_scores(settings, [caller])[0], abs=1e-5)
    password = settings.kafka.secret()
    assert password
    logs = {name: (secured.run_dir / f"{name}.log").read_text(errors="replace") for name in started.names}
    assert all('"event": "worker_ready"' in text or "gateway_ready" in text for text in logs.values())
    assert not [name for name, text in logs.items() if password in text], "the Kafka password in a log"


def _topics_apply(settings) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(settings)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "topics", "apply"], env=env, capture_output=True, text=True, timeout=120
    )


def test_a_wrong_password_and_an_untrusted_certificate_each_get_one_line_naming_the_cause(secured):
    settings = secured.settings()
    right = settings.kafka.secret()
    assert right and _topics_apply(settings).returncode == 0, "the admin's own credentials work"
    tls = secured.secrets / "tls"
    wrong = settings.updated(kafka={"password_file": None, "password": SecretStr("not-the-password")})
    untrusted = settings.updated(kafka={"ssl_ca_file": tls / "rogue-ca.pem"})

    refused, unverified = _topics_apply(wrong), _topics_apply(untrusted)

    for done in (refused, unverified):
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
        assert right not in done.stderr + done.stdout and "not-the-password" not in done.stderr + done.stdout
    assert "authentication failed for user 'admin'" in refused.stderr and "kafka.password" in refused.stderr
    assert "TLS handshake failed" in unverified.stderr and "kafka.ssl_ca_file" in unverified.stderr
