"""`pipeline gateway`: the HTTP bridge (FastAPI). POST /v1/predict → requests topic → reply → response."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline import metrics
from pipeline.contract import CORRELATION_ID, DEADLINE, REPLY_TO, PredictBody, describe_error, request_key
from pipeline.gateway.replies import ReplyRouter
from pipeline.settings import Settings

PREDICT = "/v1/predict"


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


class Bridge:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.replies = ReplyRouter(settings)
        self.started = False

    async def start(self) -> None:
        # Kafka clients bind to the running loop, so they are made here, not in __init__.
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka.bootstrap_servers,
            client_id=f"{self.settings.kafka.client_id}-gateway",
            acks="all",
            enable_idempotence=True,
            linger_ms=1,
        )
        await self.replies.start()
        await self.producer.start()
        await self.replies.start()
        self.started = True

    async def stop(self) -> None:
        self.started = False
        await self.replies.stop()
        await self.producer.stop()

    async def predict(self, body: PredictBody) -> Response:
        event_id = body.event_id or f"http-{uuid.uuid4().hex}"
        payload = body.model_dump(mode="json", exclude_none=True) | {"event_id": event_id}
        correlation_id = uuid.uuid4().hex
        timeout_s = self.settings.gateway.timeout_s
        deadline_ms = int((time.time() + timeout_s) * 1000)
        future = self.replies.expect(correlation_id)
        metrics.GATEWAY_IN_FLIGHT.inc()
        try:
            await self.producer.send_and_wait(
                self.settings.topics.requests,
                orjson.dumps(payload),
                key=request_key(body),
                headers=[
                    (CORRELATION_ID, correlation_id.encode()),
                    (REPLY_TO, self.replies.address.encode()),
                    (DEADLINE, str(deadline_ms).encode()),
                ],
            )
            reply = await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            message = f"no result within {timeout_s:g} s; it can still be read from the results topic"
            return JSONResponse(error_body("timeout", message, event_id=event_id), status_code=504)
        except KafkaError as e:
            message = f"could not publish the request: {e}"
            return JSONResponse(error_body("unavailable", message, event_id=event_id), status_code=503)
        finally:
            self.replies.forget(correlation_id)
            metrics.GATEWAY_IN_FLIGHT.dec()
        if reply.kind == "dead_letter":
            letter = orjson.loads(reply.value)
            return JSONResponse({"error": letter["error"], "event_id": event_id}, status_code=422)
        return Response(reply.value, media_type="application/json")


def create_app(settings: Settings) -> FastAPI:
    bridge = Bridge(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await bridge.start()
        try:
            yield
        finally:
            await bridge.stop()

    app = FastAPI(title="Streaming inference pipeline — HTTP bridge", version="1", lifespan=lifespan)
    app.state.bridge = bridge

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        code = "invalid_json" if errors and errors[0].get("type") == "json_invalid" else "invalid_request"
        message = describe_error(dict(errors[0])) if errors else "invalid body"
        metrics.GATEWAY_REQUESTS.labels(request.url.path, "422").inc()
        return JSONResponse(error_body(code, message), status_code=422)

    @app.post(PREDICT, responses={422: {}, 504: {}})
    async def predict(body: PredictBody) -> Response:
        started = time.perf_counter()
        response = await bridge.predict(body)
        metrics.GATEWAY_LATENCY.labels(PREDICT).observe(time.perf_counter() - started)
        metrics.GATEWAY_REQUESTS.labels(PREDICT, str(response.status_code)).inc()
        return response

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


def run(settings: Settings) -> None:
    import uvicorn

    uvicorn.run(create_app(settings), host=settings.gateway.host, port=settings.gateway.port, log_level="warning")
