"""The bridge's app in-process (no broker: its Kafka side is never started): every error a caller can
provoke before a request is published comes in the contract's shape, JSON, with a code and a message
naming the problem, and never echoes the API key."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import orjson
import pytest

from pipeline.gateway.app import PREDICT, PREDICT_BATCH, PredictFastPath, create_app
from pipeline.gateway.bridge import Bridge
from pipeline.settings import GatewaySettings, Settings

KEY = "test-secret-key-123"
AUTH = {"x-api-key": KEY}
JSON = {"content-type": "application/json"}
REQUEST = {
    "entity": {"account_id": 42},
    "features": {
        "amount": 1.0, "merchant_category": 5411, "hour_of_day": 3,
        "is_foreign": 0, "card_present": 1, "distance_from_home_km": 2.5,
    },
}  # fmt: skip
VALID = orjson.dumps(REQUEST)
DEEP = b"[" * 100_000 + b"]" * 100_000


def bridge_app(**gateway: object) -> PredictFastPath:
    return create_app(Settings(gateway=GatewaySettings.model_validate({"api_keys": [KEY]} | gateway)))


@pytest.fixture
async def gateway() -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    """A factory: a client of a fresh in-process bridge app with one API key. Its lifespan is not
    run, so the bridge's Kafka side never starts; errors the app raises come back as responses."""
    clients: list[httpx.AsyncClient] = []

    def make(app: PredictFastPath | None = None, **gateway: object) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app or bridge_app(**gateway), raise_app_exceptions=False)
        clients.append(httpx.AsyncClient(transport=transport, base_url="http://bridge"))
        return clients[-1]

    yield make
    for client in clients:
        await client.aclose()


def assert_error(response, status: int, code: str, *named: str) -> dict[str, str]:
    """The contract's error shape, as JSON, with `code` and a message naming each of `named`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    error = body["error"]
    assert error["code"] == code
    for part in named:
        assert part in error["message"], (part, error["message"])
    assert KEY not in response.text
    return error


@pytest.mark.parametrize("path", [PREDICT, PREDICT_BATCH])
@pytest.mark.parametrize(
    ("body", "named"),
    [
        (DEEP, ("1024 levels",)),
        (b'{"entity": {"account_id": "caf\xe9"}}', ("UTF-8", "byte offset 30")),
        (b'{"entity": {"account_id": 1}, "features": {"amount": 1.0', ("not JSON", "unexpected end of data")),
        (b'{"entity": {"account_id": 1}, "features": {"amount": NaN}}', ("not JSON", "line 1, column 54")),
        (b"", ("empty",)),
        (b"   ", ("empty",)),
        (b"[1, 2]", ("not a JSON object",)),
    ],
    ids=["deep", "not-utf8", "truncated", "nan", "empty", "blank", "array"],
)
async def test_a_body_that_is_no_json_object_is_422_invalid_json_saying_why(gateway, path, body, named):
    assert_error(await gateway().post(path, content=body, headers=JSON | AUTH), 422, "invalid_json", *named)


@pytest.mark.parametrize("path", [PREDICT, PREDICT_BATCH])
@pytest.mark.parametrize(
    ("content_type", "named"),
    [
        ("text/plain", "Content-Type text/plain is not supported"),
        ("application/x-www-form-urlencoded", "Content-Type application/x-www-form-urlencoded is not supported"),
        ("multipart/form-data; boundary=x", "Content-Type multipart/form-data is not supported"),
        ("application/xml; charset=utf-8", "Content-Type application/xml is not supported"),
        (None, "Content-Type is missing"),
    ],
)
async def test_a_json_body_declared_as_another_type_is_415_naming_it(gateway, path, content_type, named):
    headers = AUTH | ({"content-type": content_type} if content_type else {})
    body = VALID if path == PREDICT else orjson.dumps({"requests": [REQUEST]})
    response = await gateway().post(path, content=body, headers=headers)
    error = assert_error(response, 415, "unsupported_media_type", named)
    assert "Content-Type: application/json" in error["message"], "says what to send instead"


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", "application/vnd.pipeline+json"]
)
async def test_json_types_with_parameters_or_a_suffix_are_read_as_json(gateway, content_type):
    body = orjson.dumps(REQUEST | {"features": {"amount": "lots"}})
    response = await gateway().post(PREDICT, content=body, headers=AUTH | {"content-type": content_type})
    assert_error(response, 422, "invalid_request", "features.amount: not a number")


async def test_authentication_comes_before_any_judgement_of_the_body(gateway):
    client = gateway()
    for body, headers in [(VALID, {"content-type": "text/plain"}), (DEEP, JSON), (b"{", JSON), (b"[]", JSON)]:
        assert_error(await client.post(PREDICT, content=body, headers=headers), 401, "unauthorized", "API key")
        wrong_key = headers | {"x-api-key": "not-" + KEY}
        assert_error(await client.post(PREDICT, content=body, headers=wrong_key), 401, "unauthorized")


async def test_an_unknown_route_is_404_naming_the_path_but_not_the_query(gateway):
    client = gateway()
    response = await client.get("/v2/nothing-here", headers=AUTH)
    assert_error(response, 404, "not_found", "/v2/nothing-here", "/openapi.json")
    response = await client.post(f"/v1/predikt?api_key={KEY}", content=VALID, headers=JSON)
    assert_error(response, 404, "not_found", "/v1/predikt")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", PREDICT, "POST"),
        ("PUT", PREDICT_BATCH, "POST"),
        ("DELETE", "/healthz", "GET"),
        ("POST", "/metrics", "GET"),
    ],
)
async def test_a_wrong_method_is_405_naming_it_and_keeps_the_allow_header(gateway, method, path, allowed):
    response = await gateway().request(method, path, headers=AUTH)
    assert_error(response, 405, "method_not_allowed", f"{method} is not allowed on {path}", f"allowed: {allowed}")
    assert response.headers["allow"] == allowed


async def test_an_invalid_field_is_still_422_invalid_request_naming_it(gateway):
    client = gateway()
    body = orjson.dumps(REQUEST | {"entity": {}})
    assert_error(await client.post(PREDICT, content=body, headers=JSON | AUTH), 422, "invalid_request", "entity")
    batch = orjson.dumps({"requests": []})
    response = await client.post(PREDICT_BATCH, content=batch, headers=JSON | AUTH)
    assert_error(response, 422, "invalid_request", "requests")


@pytest.mark.parametrize("path", [PREDICT, PREDICT_BATCH])
@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
async def test_a_body_over_the_limit_is_413_whether_declared_or_streamed(gateway, path, content_type):
    client, headers = gateway(max_body_bytes=1000), AUTH | {"content-type": content_type}

    async def streamed() -> AsyncIterator[bytes]:  # chunked: no content-length to refuse up front
        for _ in range(4):
            yield b" " * 400

    for body in (DEEP, streamed()):
        response = await client.post(path, content=body, headers=headers)
        assert_error(response, 413, "body_too_large", "request body over 1000 bytes")


async def test_a_failure_inside_the_bridge_is_500_internal_error_telling_nothing_of_it(gateway):
    app = bridge_app()
    bridge: Bridge = app.app.state.bridge

    async def fail(*_: object) -> None:
        raise RuntimeError(f"boom with {KEY}")

    bridge.submit = fail  # type: ignore[method-assign]
    client = gateway(app)
    fast = await client.post(PREDICT, content=VALID, headers=JSON | AUTH)  # the fast path
    batch = await client.post(PREDICT_BATCH, content=orjson.dumps({"requests": [REQUEST]}), headers=JSON | AUTH)
    for response in (fast, batch):
        error = assert_error(response, 500, "internal_error", "internal error")
        assert "boom" not in error["message"]


async def test_errors_are_counted_by_route_and_unknown_paths_under_one_label(gateway):
    client = gateway()
    await client.get("/no-such-route-for-metrics")
    await client.post(PREDICT, content=VALID, headers={"content-type": "text/plain"} | AUTH)
    text = (await client.get("/metrics")).text
    assert 'gateway_requests_total{route="unmatched",status="404"}' in text
    assert 'gateway_requests_total{route="/v1/predict",status="415"}' in text
    assert "no-such-route-for-metrics" not in text
