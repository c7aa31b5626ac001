"""Fuzz the bridge from its own OpenAPI document (schemathesis): whatever arrives, no 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.conftest import make_settings, running_pipeline

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bridge_url(stack):
    with running_pipeline(stack, make_settings(stack)) as settings:
        yield f"http://127.0.0.1:{settings.gateway.port}"


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
