"""`pipeline gateway`: the HTTP bridge (FastAPI). Routes, auth and limits; Kafka work is in `bridge`."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from pipeline import metrics
from pipeline.contract import PredictBody, describe_error
from pipeline.gateway.auth import ApiKeys
from pipeline.gateway.bridge import Answer, Bridge
from pipeline.gateway.limits import BodySizeLimit, InFlight, RateLimits
from pipeline.settings import Settings

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


def create_app(settings: Settings) -> FastAPI:
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
        log.info("gateway_ready", reply_address=bridge.replies.address, api_keys=len(gateway.api_keys))
        try:
            yield
        finally:
            await bridge.stop()

    app = FastAPI(title="Streaming inference pipeline — HTTP bridge", version="1", lifespan=lifespan)
    app.state.bridge = bridge
    app.add_middleware(BodySizeLimit, max_bytes=gateway.max_body_bytes)

    def admit(request: Request, cost: int) -> None:
        key_id = keys.identify(request.headers)
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

    @app.post(PREDICT, responses={401: {}, 413: {}, 422: {}, 429: {}, 503: {}, 504: {}})
    async def predict(request: Request, body: PredictBody) -> Response:
        started = time.perf_counter()
        admit(request, 1)
        try:
            [answer] = await bridge.submit([body], gateway.timeout_s)
        finally:
            in_flight.release(1)
        metrics.GATEWAY_LATENCY.labels(PREDICT).observe(time.perf_counter() - started)
        metrics.GATEWAY_REQUESTS.labels(PREDICT, str(answer.status)).inc()
        return Response(answer.body, status_code=answer.status, media_type="application/json")

    @app.post(PREDICT_BATCH, responses={401: {}, 413: {}, 422: {}, 429: {}})
    async def predict_batch(request: Request, body: BatchBody) -> Response:
        """Up to 1,000 requests; one response with each one's result (or error) in order."""
        started = time.perf_counter()
        admit(request, len(body.requests))
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
        body = {"ready": ready, "reply_address": bridge.replies.address}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def _batch_body(answers: list[Answer]) -> bytes:
    items = b",".join(
        b'{"status":%d,"event_id":%s,"body":%s}' % (a.status, orjson.dumps(a.event_id), a.body) for a in answers
    )
    return b'{"results":[' + items + b"]}"


def run(settings: Settings) -> None:
    import uvicorn

    uvicorn.run(create_app(settings), host=settings.gateway.host, port=settings.gateway.port, log_level="warning")
