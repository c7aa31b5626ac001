"""Fuzz the bridge from its own OpenAPI document (schemathesis): whatever arrives, no 5xx, and every
error in the contract's shape; and the malformed requests a caller meets first, on the real server."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.conftest import make_settings, running_pipeline

pytestmark = pytest.mark.integration

VALID = (
    b'{"entity":{"account_id":42},"features":{"amount":129.99,"merchant_category":5411,"hour_of_day":23,'
    b'"is_foreign":1,"card_present":0,"distance_from_home_km":812.4}}'
)


@pytest.fixture(scope="module")
def bridge_url(stack):
    with running_pipeline(stack, make_settings(stack)) as settings:
        yield f"http://127.0.0.1:{settings.gateway.port}"


def error_shape_problem(status: int, content_type: str, body: bytes) -> str | None:
    """Why an error response is not in the contract's shape (None when it is)."""
    if not content_type.startswith("application/json"):
        return f"{status} is {content_type or 'untyped'}, not JSON"
    try:
        error = httpx.Response(status, content=body).json().get("error")
    except ValueError:
        return f"{status} body is not JSON"
    if not isinstance(error, dict) or not all(isinstance(error.get(k), str) for k in ("code", "message")):
        return f"{status} body has no error code and message: {body[:200]!r}"
    return None


def test_no_input_makes_the_bridge_fail_and_every_error_has_the_contracts_shape(bridge_url):
    # schemathesis' own pytest plugin does not load under pytest 9: drive its strategies directly.
    schema = schemathesis.openapi.from_url(f"{bridge_url}/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/predict", "/v1/predict:batch"}

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case):
        response = case.call(timeout=30)
        where = f"{case.method} {case.path} → {response.status_code}"
        if response.status_code >= 500:
            failures.append(f"{where}: {response.text[:200]}")
        elif response.status_code >= 400 and case.path != "/readyz":  # /readyz: its own documented 503 body
            content_type = next(iter(response.headers.get("content-type", [])), "")
            if problem := error_shape_problem(response.status_code, content_type, response.content):
                failures.append(f"{where}: {problem}")

    for operation in operations:
        given(case=operation.as_strategy())(fuzz)()
        if operation.method.upper() == "POST":  # bodies that break the schema, each an error to shape
            given(case=operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))(fuzz)()
    assert failures == []


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "code", "named"),
    [
        ("POST", "/v1/predict", {"content-type": "application/json"}, b"[" * 100_000 + b"]" * 100_000,
         422, "invalid_json", "1024 levels"),
        ("POST", "/v1/predict", {"content-type": "application/json"}, b'{"entity":{"account_id":"\xff"}}',
         422, "invalid_json", "UTF-8"),
        ("POST", "/v1/predict", {"content-type": "text/plain"}, VALID,
         415, "unsupported_media_type", "text/plain"),
        ("POST", "/v1/predict", {"content-type": "application/x-www-form-urlencoded"}, VALID,
         415, "unsupported_media_type", "application/x-www-form-urlencoded"),
        ("POST", "/v1/predict", {}, VALID, 415, "unsupported_media_type", "missing"),
        ("GET", "/v1/nothing", {}, None, 404, "not_found", "/v1/nothing"),
        ("GET", "/v1/predict", {}, None, 405, "method_not_allowed", "allowed: POST"),
    ],
    ids=["deep", "not-utf8", "text-plain", "form", "untyped", "unknown-route", "wrong-method"],
)  # fmt: skip
def test_what_a_caller_gets_wrong_is_answered_in_the_contracts_shape(
    bridge_url, method, path, headers, body, status, code, named
):
    response = httpx.request(method, f"{bridge_url}{path}", headers=headers, content=body, timeout=30)
    assert response.status_code == status, response.text
    assert error_shape_problem(status, response.headers.get("content-type", ""), response.content) is None
    error = response.json()["error"]
    assert error["code"] == code and named in error["message"], error
    if status == 405:
        assert response.headers["allow"] == "POST"
