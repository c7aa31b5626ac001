"""`pipeline gateway`: the HTTP bridge (FastAPI). Routes, auth and limits; Kafka work is in `bridge`,
error answers in `refusals`.

Content types: a request body is read only when it is declared JSON (`application/json` or
`application/*+json`, whatever the parameters); any other type, or none, is a 415
`unsupported_media_type` naming it. The bridge does not read JSON whatever the header says, because:

- a body sent as another type is nearly always a client's mistake (`curl -d` without `-H` sends
  `application/x-www-form-urlencoded`): a 415 naming the type and the fix says so at once, where
  guessing would leave the header meaningless and a real form body a puzzling validation error;
- browsers send `text/plain`, form and untyped POSTs to any origin without a CORS preflight: reading
  them as JSON would let any web page its users visit publish requests to an open (keyless) bridge;
- the OpenAPI document declares `application/json` only; clients generated from it send that, and
  FastAPI's own strict content-type check refuses untyped bodies for the same reason.

Order of judgement: route and method (404, 405), body size (413), API key (401), content type (415),
JSON (422 `invalid_json`), the request itself (422 `invalid_request`), rate and in-flight limits (429).
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send

from pipeline import heap, metrics, tracing
from pipeline.contract import PredictBody
from pipeline.gateway.auth import ApiKeys
from pipeline.gateway.bridge import Answer, Bridge
from pipeline.gateway.limits import BodySizeLimit, InFlight, RateLimits
from pipeline.gateway.refusals import (
    JSON_TYPE,
    JsonBodyRoute,
    Refused,
    error_body,
    install_handlers,
    internal_error,
    media_type,
    unauthorized,
)
from pipeline.settings import GatewaySettings, Settings
from pipeline.tracing import SpanKind

log = structlog.get_logger(__name__)

PREDICT = "/v1/predict"
PREDICT_BATCH = "/v1/predict:batch"
_PREDICT_ERRORS: dict[int | str, dict[str, Any]] = {401: {}, 413: {}, 415: {}, 422: {}, 429: {}}


class BatchBody(BaseModel):
    requests: list[PredictBody] = Field(min_length=1, max_length=1000)


def create_app(settings: Settings) -> PredictFastPath:
    gateway = settings.gateway
    bridge = Bridge(settings)
    keys = ApiKeys(gateway.api_keys)
    rates = RateLimits(gateway.rate_limit_per_s, gateway.rate_limit_burst)
    admission = Admission(keys, rates, InFlight(gateway.max_in_flight))
    app = FastAPI(
        title="Streaming inference pipeline — HTTP bridge",
        version="1",
        lifespan=_lifespan(bridge, keys, gateway),
        strict_content_type=True,  # an untyped body stays bytes, refused as such (refusals.invalid_body)
    )
    app.router.route_class = JsonBodyRoute
    app.state.bridge = bridge
    app.add_middleware(BodySizeLimit, max_bytes=gateway.max_body_bytes)
    install_handlers(app, admission.authorized)
    serve_predict = predict_handler(bridge, admission, gateway.timeout_s)
    _add_predict_routes(app, bridge, admission, serve_predict, gateway.timeout_s)
    _add_operations_routes(app, bridge)
    return PredictFastPath(app, serve_predict, gateway.max_body_bytes)


Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def _lifespan(bridge: Bridge, keys: ApiKeys, gateway: GatewaySettings) -> Lifespan:
    """Start the bridge's Kafka side before the first request, stop it after the last."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not keys.enabled:
            log.warning("gateway_open", reason="no API key configured: every caller is accepted")
        await bridge.start()
        heap.freeze_startup()
        log.info("gateway_ready", reply_address=bridge.replies.address, api_keys=len(gateway.api_keys))
        try:
            yield
        finally:
            await bridge.stop()
            tracing.flush()  # uvicorn ends the process by its signal again: no exit handlers run

    return lifespan


class Admission:
    """Whether a request is taken now: a valid API key, its rate limit, the bound on requests in flight."""

    def __init__(self, keys: ApiKeys, rates: RateLimits, in_flight: InFlight) -> None:
        self._keys, self._rates, self._in_flight = keys, rates, in_flight

    def authorized(self, headers: Mapping[str, str]) -> bool:
        return self._keys.identify(headers) is not None

    def admit(self, headers: Mapping[str, str], cost: int) -> None:
        """Take `cost` requests in flight (give them back with `release`), or raise Refused."""
        key_id = self._keys.identify(headers)
        if key_id is None:
            raise unauthorized()
        wait_s = self._rates.retry_after(key_id, cost)
        if wait_s > 0:
            retry = str(max(1, math.ceil(wait_s))) if math.isfinite(wait_s) else "60"
            raise Refused(429, "rate_limited", "rate limit reached for this API key", {"Retry-After": retry})
        if not self._in_flight.try_acquire(cost):
            raise Refused(429, "overloaded", "too many requests in flight; retry shortly", {"Retry-After": "1"})

    def release(self, cost: int) -> None:
        self._in_flight.release(cost)


PredictHandler = Callable[[Mapping[str, str], PredictBody], Awaitable[tuple[int, bytes, dict[str, str]]]]


def predict_handler(bridge: Bridge, admission: Admission, timeout_s: float) -> PredictHandler:
    async def serve_predict(headers: Mapping[str, str], body: PredictBody) -> tuple[int, bytes, dict[str, str]]:
        """One request: status, JSON body and extra headers. Shared by the route and its fast path."""
        started = time.perf_counter()
        try:
            admission.admit(headers, 1)
        except Refused as e:
            metrics.GATEWAY_REQUESTS.labels(PREDICT, str(e.status)).inc()
            return e.status, orjson.dumps(error_body(e.code, e.message)), e.headers
        try:
            [answer] = await bridge.submit([body], timeout_s)
        finally:
            admission.release(1)
        metrics.GATEWAY_LATENCY.labels(PREDICT).observe(time.perf_counter() - started)
        metrics.GATEWAY_REQUESTS.labels(PREDICT, str(answer.status)).inc()
        return answer.status, answer.body, {}

    async def serve_traced(headers: Mapping[str, str], body: PredictBody) -> tuple[int, bytes, dict[str, str]]:
        """The same as the server span of the caller's trace (or of a new one)."""
        caller = tracing.http_context(headers)
        with tracing.tracer().start_as_current_span(f"POST {PREDICT}", context=caller, kind=SpanKind.SERVER) as span:
            status, payload, extra = await serve_predict(headers, body)
            span.set_attribute("http.response.status_code", status)
            return status, payload, extra

    return serve_traced if tracing.ENABLED else serve_predict


def _add_predict_routes(
    app: FastAPI, bridge: Bridge, admission: Admission, serve_predict: PredictHandler, timeout_s: float
) -> None:
    @app.post(PREDICT, responses=_PREDICT_ERRORS | {503: {}, 504: {}})
    async def predict(request: Request, body: PredictBody) -> Response:
        status, payload, headers = await serve_predict(request.headers, body)
        return Response(payload, status_code=status, headers=headers, media_type=JSON_TYPE)

    @app.post(PREDICT_BATCH, responses=_PREDICT_ERRORS)
    async def predict_batch(request: Request, body: BatchBody) -> Response:
        """Up to 1,000 requests; one response with each one's result (or error) in order."""
        started = time.perf_counter()
        admission.admit(request.headers, len(body.requests))
        try:
            with tracing.span(f"POST {PREDICT_BATCH}", SpanKind.SERVER, context=tracing.http_context(request.headers)):
                answers = await bridge.submit(body.requests, timeout_s)
        finally:
            admission.release(len(body.requests))
        metrics.GATEWAY_LATENCY.labels(PREDICT_BATCH).observe(time.perf_counter() - started)
        metrics.GATEWAY_REQUESTS.labels(PREDICT_BATCH, "200").inc()
        return Response(_batch_body(answers), media_type=JSON_TYPE)


def _add_operations_routes(app: FastAPI, bridge: Bridge) -> None:
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ready = bridge.started and bridge.replies.ready
        answers = None if bridge.answers is None else bridge.answers.address
        body = {"ready": ready, "reply_address": bridge.replies.address, "answer_address": answers}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class PredictFastPath:
    """ASGI: `POST /v1/predict` with a JSON body that validates is served without FastAPI's routing,
    middleware and dependency machinery, much of the bridge's CPU per request, which on a shared box
    is everyone's latency (docs/performance.md#fastapi-fast-path). Anything else (other routes,
    other content types, bodies that do not validate or are too large) goes to the FastAPI app,
    whose handlers (`refusals`) word every error; the body already read is replayed to it."""

    def __init__(self, app: FastAPI, serve: PredictHandler, max_bytes: int) -> None:
        self.app, self._serve, self._max_bytes = app, serve, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PREDICT or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if media_type(headers.get("content-type")) != JSON_TYPE:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more and size <= self._max_bytes:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
        body = b"".join(chunks)
        parsed = _parse(body) if size <= self._max_bytes else None
        if parsed is None:
            await self.app(scope, _replay(body, more, receive), send)
            return
        try:
            status, payload, extra = await self._serve(headers, parsed)
        except Exception:
            crash = internal_error()  # as FastAPI's handler answers; raised again for the server to log
            await _respond(send, crash.status, orjson.dumps(error_body(crash.code, crash.message)), {})
            raise
        await _respond(send, status, payload, extra)


async def _respond(send: Send, status: int, payload: bytes, extra: Mapping[str, str]) -> None:
    headers = [(b"content-type", JSON_TYPE.encode()), (b"content-length", str(len(payload)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _parse(body: bytes) -> PredictBody | None:
    try:
        return PredictBody.model_validate_json(body)
    except ValidationError:
        return None


def _replay(body: bytes, more: bool, receive: Receive) -> Receive:
    """A `receive` that hands over the body read so far, then the rest from the client."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": more}

    return replay


def _batch_body(answers: list[Answer]) -> bytes:
    items = b",".join(
        b'{"status":%d,"event_id":%s,"body":%s}' % (a.status, orjson.dumps(a.event_id), a.body) for a in answers
    )
    return b'{"results":[' + items + b"]}"


def run(settings: Settings) -> None:
    serve(create_app(settings), settings.gateway)


def serve(app: Any, gateway: GatewaySettings) -> None:
    """Serve an ASGI app on the gateway's host and port, with its keep-alive (the bridge; the bench's
    request-response peer alike)."""
    import uvicorn

    uvicorn.run(
        app,
        host=gateway.host,
        port=gateway.port,
        log_level="warning",
        timeout_keep_alive=int(gateway.keep_alive_s),
    )
