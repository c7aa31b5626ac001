"""The pipeline on a secured broker (deploy/kafka/kafka.sh with KAFKA_SECURED: SASL_SSL with SCRAM,
the StandardAuthorizer, a CA of its own): every client of a worker and a bridge connects through the
one connection block (pipeline/kafka/), and no secret reaches a log."""

from __future__ import annotations

import dataclasses
import functools
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pytest
from confluent_kafka import TopicPartition
from pydantic import SecretStr

from pipeline.kafka import access, acls
from pipeline.local import probe, traffic
from pipeline.local.stack import LocalStack, free_port, settings_env
from pipeline.settings import Settings
from tests.conftest import SECURED_KAFKA_PORT, TEST_PORTS, Processes, make_settings, route_as_served, with_replay_topics
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
        route_as_served(stack, local.settings())
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


# -- each component under a principal of its own, with the ACL recipe's grants only ------------------


@pytest.fixture(scope="module")
def principals(secured: LocalStack) -> dict[str, str]:
    """A SCRAM user per component (`User:pipeline-<component>`) and one with no grant (`nobody`), each
    with a password of its own: user → password."""
    passwords = {f"pipeline-{c}": secrets.token_urlsafe(18) for c in [*acls.COMPONENTS, "nobody"]}
    access.upsert_users(secured.settings(), passwords)
    return passwords


def _as(settings: Settings, principals: dict[str, str], component: str) -> Settings:
    user = f"pipeline-{component}"
    return settings.updated(kafka={"username": user, "password": SecretStr(principals[user]), "password_file": None})


def _pipeline(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(settings)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], env=env, capture_output=True, text=True, timeout=180
    )


def _until(what: str, found, timeout_s: float = 90, every_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while not (value := found()):
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:g} s"
        time.sleep(every_s)
    return value


def _json(url: str) -> dict | None:
    try:
        response = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def test_every_component_works_under_its_own_principal_with_only_the_acl_recipe(secured, principals):
    admin = with_replay_topics(make_settings(secured))
    applied = _pipeline(admin, "topics", "acls", "--apply")
    assert applied.returncode == 0 and "applied" in applied.stdout, applied.stderr
    as_ = functools.partial(_as, admin, principals)
    started = Processes(secured)
    requests = traffic.valid_requests(400, prefix=f"acl-{uuid.uuid4().hex[:6]}-", seed=21)
    poison = [traffic.malformed("unknown_model", requests[0], f"acl-poison-{i}") for i in range(10)]
    messages = [traffic.message_for(r) for r in requests]
    metrics_port, serve_port = free_port(), free_port()
    try:
        started.worker(as_("worker"))
        started.gateway(as_("bridge"))
        consumers = {}
        for consumer in ("fraud", "anomaly", "drift", "guard"):  # side by side, each as its own principal
            own = as_(consumer).updated(
                consumers={"metrics_port": metrics_port if consumer == "fraud" else free_port()}
            )
            name = f"acl-{consumer}"
            consumers[name] = secured.spawn(name, own, "consumers", consumer, "--from-beginning")
            started.started.append(consumers[name])
            started.names.append(name)
        for name, process in consumers.items():
            secured.wait_for_log(name, "consumer_ready", process)
        start = probe.end_offsets(admin, [admin.topics.results, admin.topics.dlq])
        probe.publish(admin, messages + messages[:80] + poison)  # 80 repeats
        collected = probe.collect(
            admin, start, lambda c: c.distinct_results >= len(requests) and len(c.dead_letters) >= 10,
            timeout_s=180, sentinels=probe.publish_sentinels(admin),
        )  # fmt: skip
        caller = dict(traffic.valid_requests(1, prefix="acl-http-", seed=9)[0])
        response = httpx.post(f"http://127.0.0.1:{admin.gateway.port}/v1/predict", json=caller, timeout=30)

        scores = dict(zip([r["event_id"] for r in requests], reference_scores(admin, requests), strict=True))
        high = admin.consumers.fraud.hard_threshold
        surely = {e for e, s in scores.items() if s >= high + 1e-4}
        assert surely, "some events over the hard threshold, for the fraud consumer to alert on"

        def high_score_alerts() -> set[str]:
            alerts = probe.read_to_end(admin, _from_start(admin, admin.topics.alerts))
            return {e for a in alerts if a["rule"] == "high_score" for e in a["event_ids"]}

        alerted = _until("alert for every event over the threshold", lambda: surely <= (a := high_score_alerts()) and a)

        redriven = _pipeline(as_("redrive"), "dlq", "redrive", "--code", "unknown_model")
        again = probe.collect(
            admin, start, lambda c: len(c.dead_letters) >= 20, timeout_s=120, sentinels=probe.publish_sentinels(admin)
        )

        serve = as_("scale").updated(scaling={"serve_port": serve_port, "interval_s": 1.0})
        service = secured.spawn(f"acl-serve-{uuid.uuid4().hex[:6]}", serve, "scale", "--serve")
        started.started.append(service)
        desired = _until("scale decision", lambda: _json(f"http://127.0.0.1:{serve_port}/desired"), 60)

        backfill_log = f"acl-backfill-{uuid.uuid4().hex[:6]}"
        started.started.append(secured.start_worker(as_("backfill"), backfill_log, backfill=True))
        since = datetime.now(UTC) - timedelta(hours=1)
        replayed = _pipeline(as_("replay"), "replay", "--replay-id", "acl-r1", "--since", since.isoformat())
        backfilled = _backfilled(admin, len(requests) + 1)
        history = _pipeline(as_("models"), "models", "history", "fraud_scorer")
    finally:
        started.stop_all()

    assert collected.distinct_results == len(requests) and collected.repeated_results == 0
    assert collected.dead_letter_codes() == {"unknown_model": 10}
    got = np.array([collected.results[r["event_id"]][0]["score"] for r in requests])
    np.testing.assert_allclose(got, [scores[r["event_id"]] for r in requests], atol=1e-5, rtol=0)
    assert response.status_code == 200, response.text
    assert alerted <= {e for e, s in scores.items() if s >= high - 1e-4}, "alerts only over the threshold"
    assert redriven.returncode == 0 and "re-published 10 dead letter(s)" in redriven.stdout, redriven.stderr
    assert again.dead_letter_codes() == {"unknown_model": 20} and again.repeated_results == 0
    assert desired["group_members"] == 1 and desired["desired_workers"] >= 1, desired
    assert replayed.returncode == 0, replayed.stderr
    # The live requests since then: the 400, the HTTP caller's, the sentinels, the poison and its redrive.
    assert {r["event_id"] for r in requests} | {caller["event_id"]} <= backfilled
    assert history.returncode == 0 and "init" in history.stdout, history.stderr
    logs = "".join((secured.run_dir / f"{name}.log").read_text(errors="replace") for name in started.names)
    assert not [p for p in principals.values() if p in logs], "a password in a log"
    # The broker's authorizer logs each refusal: the recipe left none of these calls refused.
    broker = (secured.run_dir / "kafka" / "broker.out").read_text(errors="replace")
    assert not [line for line in broker.splitlines() if " is Denied operation" in line], "a call refused"


def _from_start(settings: Settings, topic: str) -> dict[TopicPartition, int]:
    return {tp: 0 for tp in probe.end_offsets(settings, [topic])}


def _backfilled(settings: Settings, expect: int) -> set[str]:
    """The event_ids of the committed backfill results, once at least `expect` are in."""
    found: set[str] = set()
    topic = settings.topics.backfill_results
    probe.read(
        settings,
        _from_start(settings, topic),
        lambda message, value: found.add(value["event_id"]),
        until=lambda: len(found) >= expect,
        timeout_s=180,
        report=lambda: f"{len(found)} of {expect} backfill results",
    )
    return found


def test_a_missing_acl_is_named_in_one_line_and_the_process_exits_non_zero(secured, principals):
    admin = with_replay_topics(make_settings(secured))
    assert _pipeline(admin, "topics", "acls", "--apply").returncode == 0
    nobody = _as(admin, principals, "nobody")  # a user the cluster knows, granted nothing
    t = admin.topics
    runs = {
        "worker": (_pipeline(nobody, "worker"), f"READ on topic {t.requests}"),
        "bridge": (_pipeline(nobody, "gateway"), f"WRITE on topic {t.requests}"),
        "redrive": (_pipeline(nobody, "dlq", "redrive"), f"READ on topic {t.dlq}"),
        # Another component's principal: what it holds is not what a replay needs.
        "replay": (
            _pipeline(_as(admin, principals, "models"), "replay", "--replay-id", "x", "--since", "2026-01-01"),
            f"WRITE on topic {t.backfill_requests}",
        ),
    }
    for component, (done, named) in runs.items():
        assert done.returncode == 1, (component, done.stderr[-2000:])
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, (component, done.stderr[-2000:])
        assert named in errors[0] and f"which the {component} needs" in errors[0], (component, errors[0])
        assert not [p for p in principals.values() if p in done.stdout + done.stderr], "a password printed"
