"""`pipeline gateway`: the HTTP bridge (FastAPI). Routes, auth and limits; Kafka work is in `bridge`."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send

from pipeline import heap, metrics
from pipeline.contract import PredictBody, describe_error
from pipeline.gateway.auth import ApiKeys
from pipeline.gateway.bridge import Answer, Bridge
from pipeline.gateway.limits import BodySizeLimit, InFlight, RateLimits
from pipeline.settings import GatewaySettings, Settings

log = structlog.get_logger(__name__)

PREDICT = "/v1/predict"
PREDICT_BATCH = "/v1/predict:batch"


class BatchBody(BaseModel):
    requests: list[PredictBody] = Field(min_length=1, max_length=1000)


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def create_app(settings: Settings) -> PredictFastPath:
    gateway = settings.gateway
    bridge = Bridge(settings)
    keys = ApiKeys(gateway.api_keys)
    rates = RateLimits(gateway.rate_limit_per_s, gateway.rate_limit_burst)
    in_flight = InFlight(gateway.max_in_flight)

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

    app = FastAPI(title="Streaming inference pipeline — HTTP bridge", version="1", lifespan=lifespan)
    app.state.bridge = bridge
    app.add_middleware(BodySizeLimit, max_bytes=gateway.max_body_bytes)

    def admit(headers: Mapping[str, str], cost: int) -> None:
        key_id = keys.identify(headers)
        if key_id is None:
            raise Refused(401, "unauthorized", "a valid API key is required (Authorization: Bearer or X-API-Key)")
        wait_s = rates.retry_after(key_id, cost)
        if wait_s > 0:
            retry = str(max(1, math.ceil(wait_s))) if math.isfinite(wait_s) else "60"
            raise Refused(429, "rate_limited", "rate limit reached for this API key", {"Retry-After": retry})
        if not in_flight.try_acquire(cost):
            raise Refused(429, "overloaded", "too many requests in flight; retry shortly", {"Retry-After": "1"})

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        metrics.GATEWAY_REQUESTS.labels(request.url.path, str(exc.status)).inc()
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        if keys.identify(request.headers) is None:  # authentication comes before validation
            return await refused(request, Refused(401, "unauthorized", "a valid API key is required"))
        errors = list(exc.errors())
        code = "invalid_json" if errors and errors[0].get("type") == "json_invalid" else "invalid_request"
        message = describe_error(dict(errors[0])) if errors else "invalid body"
        metrics.GATEWAY_REQUESTS.labels(request.url.path, "422").inc()
        return JSONResponse(error_body(code, message), status_code=422)

    async def serve_predict(headers: Mapping[str, str], body: PredictBody) -> tuple[int, bytes, dict[str, str]]:
        """One request: status, JSON body and extra headers. Shared by the route and its fast path."""
        started = time.perf_counter()
        try:
            admit(headers, 1)
        except Refused as e:
            metrics.GATEWAY_REQUESTS.labels(PREDICT, str(e.status)).inc()
            return e.status, orjson.dumps(error_body(e.code, e.message)), e.headers
        try:
            [answer] = await bridge.submit([body], gateway.timeout_s)
        finally:
            in_flight.release(1)
        metrics.GATEWAY_LATENCY.labels(PREDICT).observe(time.perf_counter() - started)
        metrics.GATEWAY_REQUESTS.labels(PREDICT, str(answer.status)).inc()
        return answer.status, answer.body, {}

    @app.post(PREDICT, responses={401: {}, 413: {}, 422: {}, 429: {}, 503: {}, 504: {}})
    async def predict(request: Request, body: PredictBody) -> Response:
        status, payload, headers = await serve_predict(request.headers, body)
        return Response(payload, status_code=status, headers=headers, media_type="application/json")

    @app.post(PREDICT_BATCH, responses={401: {}, 413: {}, 422: {}, 429: {}})
    async def predict_batch(request: Request, body: BatchBody) -> Response:
        """Up to 1,000 requests; one response with each one's result (or error) in order."""
        started = time.perf_counter()
        admit(request.headers, len(body.requests))
        try:
            answers = await bridge.submit(body.requests, gateway.timeout_s)
        finally:
            in_flight.release(len(body.requests))
        metrics.GATEWAY_LATENCY.labels(PREDICT_BATCH).observe(time.perf_counter() - started)
        metrics.GATEWAY_REQUESTS.labels(PREDICT_BATCH, "200").inc()
        return Response(_batch_body(answers), media_type="application/json")

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

    return PredictFastPath(app, serve_predict, gateway.max_body_bytes)


class PredictFastPath:
    """ASGI: `POST /v1/predict` with a JSON body that validates is served without FastAPI's routing,
    middleware and dependency machinery, much of the bridge's CPU per request, which on a shared box
    is everyone's latency (docs/performance.md#fastapi-fast-path). Anything else (other routes,
    other content types, bodies that do not validate or are too large) goes to the FastAPI app,
    which owns every error's wording; the body already read is replayed to it."""

    def __init__(self, app: FastAPI, serve: PredictHandler, max_bytes: int) -> None:
        self.app, self._serve, self._max_bytes = app, serve, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PREDICT or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
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
        status, payload, extra = await self._serve(headers, parsed)
        response_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        response_headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": payload})


PredictHandler = Callable[[Mapping[str, str], PredictBody], Awaitable[tuple[int, bytes, dict[str, str]]]]


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
