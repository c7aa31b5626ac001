"""The HTTP bridge's peer: a request-response scoring service, as a team would write one without Kafka.

Per call, what the plain microservice in front of a feature store and a model server does: a FastAPI
route takes the request, reads its entity's features from Feast and scores one row on Triton, through
the clients the worker uses (`FeatureLookup`, its cache and TTL included; `TritonScorer`), and answers
with the result. Nothing is durable: no Kafka, no dedup, no transaction; a crash loses what is in
flight and a retried call is scored again. `pipeline bench-peer request-response` serves it on
PIPELINE_GATEWAY__PORT at the bridge's `POST /v1/predict`, so the bench's HTTP load runs against both
alike (docs/performance.md#http).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from pipeline.contract import InferenceRequest, PredictBody, result_record
from pipeline.errors import PipelineError
from pipeline.features.lookup import FeatureLookup
from pipeline.gateway.app import serve
from pipeline.inference import scoring
from pipeline.inference.triton import TritonScorer
from pipeline.settings import Settings

log = structlog.get_logger(__name__)


class _Clients:
    """Made on the server's event loop: the gRPC client is bound to the loop it is made on."""

    scorer: TritonScorer
    features: FeatureLookup


def create_app(settings: Settings) -> FastAPI:
    clients = _Clients()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        clients.scorer = TritonScorer(settings.triton)
        clients.features = FeatureLookup.from_settings(settings.feast)
        await clients.scorer.spec(settings.default_model)  # connected and the model's config read up front
        log.info("peer_ready", kind="request-response", port=settings.gateway.port)
        try:
            yield
        finally:
            clients.features.close()
            await clients.scorer.close()

    app = FastAPI(title="Request-response scoring (the bench's peer)", lifespan=lifespan)

    @app.exception_handler(PipelineError)
    async def refused(_: Request, exc: PipelineError) -> JSONResponse:
        status = 503 if exc.retriable else 422
        return JSONResponse({"error": {"code": exc.code, "message": str(exc)}}, status_code=status)

    @app.post("/v1/predict")
    async def predict(body: PredictBody) -> Response:
        started = time.perf_counter()
        scorer, features = clients.scorer, clients.features
        spec = await scorer.spec(body.model or settings.default_model)
        # `scoring` reads entity, features and event_id (None taken in its errors), which PredictBody has
        # as InferenceRequest has them (the same `_Request`): only event_id's type differs.
        request = cast(InferenceRequest, body)
        entity = scoring.entity_id(request, spec)
        rows = await features.fetch(spec, [entity])
        row = rows.get(entity)
        if row is None:
            return JSONResponse({"error": {"code": "unknown_entity", "message": f"no features for {entity}"}}, 422)
        scores, version = await scorer.score(spec, scoring.feature_matrix(spec, [request], [row]))
        record = result_record(
            event_id=body.event_id or "",
            model=spec.name,
            model_version=version,
            score=float(scores[0]),
            threshold=spec.threshold,
            labels=spec.labels,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            entity=body.entity,
        )
        return Response(orjson.dumps(record), media_type="application/json")

    @app.get("/readyz")
    async def readyz() -> dict[str, bool]:
        return {"ready": True}

    return app


def run(settings: Settings) -> None:
    serve(create_app(settings), settings.gateway)
