"""Fuzz the bridge from its own OpenAPI document (schemathesis): whatever arrives, no 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.conftest import Processes, make_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bridge_url(stack):
    pipeline = make_settings(stack)
    started = Processes(stack)
    try:
        started.worker(pipeline)
        started.gateway(pipeline)
        yield f"http://127.0.0.1:{pipeline.gateway.port}"
    finally:
        started.stop_all()


def test_no_input_makes_the_bridge_fail(bridge_url):
    # schemathesis' own pytest plugin does not load under pytest 9: drive its strategies directly.
    schema = schemathesis.openapi.from_url(f"{bridge_url}/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/predict", "/v1/predict:batch"}

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case):
        response = case.call(timeout=30)
        if response.status_code >= 500:
            failures.append(f"{case.method} {case.path} → {response.status_code}: {response.text[:200]}")

    for operation in operations:
        given(case=operation.as_strategy())(fuzz)()
    assert failures == []
