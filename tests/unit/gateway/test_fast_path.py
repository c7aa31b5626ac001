"""The bridge's fast path for POST /v1/predict: valid JSON is served by the shared handler; anything
else reaches the FastAPI app with the body intact, so FastAPI keeps owning every error."""

from __future__ import annotations

import asyncio

import orjson

from pipeline.contract import PredictBody
from pipeline.gateway.app import PREDICT, PredictFastPath

VALID = orjson.dumps(
    {
        "event_id": "e1",
        "entity": {"account_id": 42},
        "features": {
            "amount": 1.0, "merchant_category": 5411, "hour_of_day": 3,
            "is_foreign": 0, "card_present": 1, "distance_from_home_km": 2.5,
        },
    }
)  # fmt: skip


class Recorder:
    """Stands in for the FastAPI app: records what reached it, answers 418."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope, receive, send) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def _call(path: str, chunks: list[bytes], content_type: bytes = b"application/json", max_bytes: int = 1000):
    app, served, sent = Recorder(), [], []

    async def serve(headers, body: PredictBody):
        served.append((headers.get("x-api-key"), body))
        return 429, b'{"error":{}}', {"Retry-After": "1"}

    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(b"content-type", content_type), (b"x-api-key", b"k1")],
    }
    asyncio.run(PredictFastPath(app, serve, max_bytes)(scope, receive, send))  # type: ignore[arg-type]
    return app.bodies, served, sent


def test_a_valid_request_is_served_by_the_handler_with_its_status_and_headers():
    reached_app, served, sent = _call(PREDICT, [VALID[:40], VALID[40:]])
    assert reached_app == []
    assert [(key, body.event_id, body.entity) for key, body in served] == [("k1", "e1", {"account_id": 42})]
    start, body = sent
    assert start["status"] == 429
    headers = dict(start["headers"])
    assert headers == {b"content-type": b"application/json", b"content-length": b"12", b"retry-after": b"1"}
    assert body["body"] == b'{"error":{}}'


def test_what_does_not_validate_reaches_fastapi_with_the_whole_body():
    broken = VALID.replace(b'"amount":1.0', b'"amount":"lots"')
    for chunks in ([b"{not json"], [broken[:10], broken[10:]]):
        reached_app, served, sent = _call(PREDICT, chunks)
        assert reached_app == [b"".join(chunks)] and served == [] and sent[0]["status"] == 418


def test_a_body_over_the_limit_reaches_fastapi_whole_for_its_413():
    chunks = [VALID[:30], VALID[30:60], VALID[60:]]
    reached_app, served, _ = _call(PREDICT, chunks, max_bytes=40)
    assert reached_app == [VALID] and served == []


def test_other_routes_and_content_types_are_fastapis():
    assert _call("/v1/predict:batch", [VALID])[0] == [VALID]
    assert _call(PREDICT, [VALID], content_type=b"text/plain")[0] == [VALID]
    assert _call(PREDICT, [VALID], content_type=b"application/json; charset=utf-8")[1] != []
