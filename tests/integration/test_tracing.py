"""Traces across every hop on the real services: HTTP callers of the bridge each send their own trace
(a `traceparent` header), the worker scores their requests, and the fraud consumer's velocity rule
alerts on their account. Each process writes its spans to a file (OpenTelemetry's console exporter);
read after the processes stop, one caller's trace runs from its HTTP request through the publish and
the scoring of its event to the rules its result went through and the alert they raised, each span
the child of the one before, and the worker's batch (its feature read and Triton call) and commit
are linked to that event's span."""

from __future__ import annotations

import secrets
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from pipeline.local import traffic
from tests.conftest import free_port

pytestmark = pytest.mark.integration

VELOCITY = 3  # results of one account within the window that raise a velocity alert


def _spans(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _alerted(path: Path) -> bool:
    return path.exists() and any(s["name"].startswith("alert ") for s in _spans(path))


def _hex(value: str) -> str:
    return value.removeprefix("0x")


def test_one_http_request_is_traced_to_its_result_and_the_alert_that_followed(
    stack, pipeline_settings, processes, tmp_path
):
    files = {name: tmp_path / f"{name}.spans" for name in ("gateway", "worker", "fraud")}
    settings = pipeline_settings(metrics_port=free_port()).updated(
        consumers={"metrics_port": free_port(), "fraud": {"velocity_count": VELOCITY, "velocity_window_s": 600.0}},
        tracing={"enabled": True},
    )
    processes.worker(settings.updated(tracing={"file": files["worker"]}))
    processes.gateway(settings.updated(tracing={"file": files["gateway"]}))
    group = f"fraud-{uuid.uuid4().hex[:6]}"
    processes.started.append(
        stack.start_consumer(settings.updated(tracing={"file": files["fraud"]}), "fraud", group, "--group-id", group)
    )

    # VELOCITY requests of one account, each in a trace of its caller's (the caller's span: `parent`).
    account = 4_242
    callers: dict[str, tuple[str, str]] = {}  # event_id -> (trace id, the caller's span id)
    for request in traffic.valid_requests(VELOCITY, prefix=f"traced-{uuid.uuid4().hex[:6]}-"):
        request["entity"] = {"account_id": account}
        trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
        response = httpx.post(
            f"http://127.0.0.1:{settings.gateway.port}/v1/predict",
            json=request,
            headers={"traceparent": f"00-{trace_id}-{parent}-01"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        callers[str(request["event_id"])] = (trace_id, parent)
        time.sleep(0.2)  # one result after the other: the last one decides the alert

    # The alert, published once the last result is read; then every process stopped (spans flushed).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _alerted(files["fraud"]):
        time.sleep(1)
    processes.stop_all()
    spans = {name: _spans(path) for name, path in files.items()}
    by_id = {_hex(s["context"]["span_id"]): s for found in spans.values() for s in found}

    [alert] = [s for s in spans["fraud"] if s["name"] == "alert velocity"]
    assert alert["attributes"]["rule"] == "velocity" and alert["attributes"]["account_id"] == str(account)
    trace_id = _hex(alert["context"]["trace_id"])
    [event_id] = [e for e, (t, _) in callers.items() if t == trace_id]

    def parent_of(span: dict[str, Any]) -> dict[str, Any]:
        parent = by_id[_hex(span["parent_id"])]
        assert _hex(parent["context"]["trace_id"]) == trace_id, "one trace"
        return parent

    rules = parent_of(alert)
    assert rules["name"] == "fraud rules" and rules["kind"] == "SpanKind.CONSUMER"
    score = parent_of(rules)
    assert score["name"] == "score fraud_scorer" and score["attributes"]["messaging.message.id"] == event_id
    assert score["resource"]["attributes"]["service.name"] == "pipeline-worker"
    publish = parent_of(score)
    assert publish["name"] == f"publish {settings.topics.requests}" and publish["kind"] == "SpanKind.PRODUCER"
    server = parent_of(publish)
    assert server["name"] == "POST /v1/predict" and server["kind"] == "SpanKind.SERVER"
    assert server["attributes"]["http.response.status_code"] == 200
    assert _hex(server["parent_id"]) == callers[event_id][1], "the caller's span is the request's parent"
    assert server["resource"]["attributes"]["service.name"] == "pipeline-gateway"

    # The batch that scored it: linked from the event's span, its feature read and Triton call within.
    [batch_link] = score["links"]
    batch = by_id[_hex(batch_link["context"]["span_id"])]
    assert batch["name"] == "process batch"
    assert any(_hex(link["context"]["trace_id"]) == trace_id for link in batch["links"]), "linked back"
    batch_id = _hex(batch["context"]["span_id"])
    children = {s["name"] for s in spans["worker"] if s.get("parent_id") and _hex(s["parent_id"]) == batch_id}
    assert {"features", "triton infer"} <= children
    # Its transaction: linked to the event's span.
    commits = [
        s
        for s in spans["worker"]
        if s["name"] == "commit transaction"
        and any(_hex(link["context"]["span_id"]) == _hex(score["context"]["span_id"]) for link in s["links"])
    ]
    assert len(commits) == 1
    # The time order a user reads in a trace view.
    assert server["start_time"] <= publish["start_time"] <= score["start_time"] <= rules["start_time"]
