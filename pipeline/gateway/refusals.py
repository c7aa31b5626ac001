"""How the bridge says no: every HTTP error in the contract's shape `{"error": {"code", "message"}}`.

FastAPI and Starlette answer routing misses, parse failures and crashes in their own shapes
(`{"detail": ...}`, plain text); the handlers installed here answer each in the contract's, with a
message naming the problem and never anything secret (API keys, bodies, query strings).

Request bodies are JSON only (see `pipeline.gateway.app` for why): a body declared as any other type,
or not declared, is a 415 naming the type; one that is not UTF-8 JSON is a 422 `invalid_json` saying
where it fails. Bodies are parsed with orjson, as the worker's classification does, so that a body
nested past orjson's depth limit or not UTF-8 is an answer, not a parser failure.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.responses import Response

from pipeline import metrics
from pipeline.contract import describe_error
from pipeline.errors import (
    InvalidJson,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PipelineError,
    UnsupportedMediaType,
)
from pipeline.gateway.limits import BODY_TOO_LARGE

JSON_TYPE = "application/json"
EMPTY_BODY = "body is empty; expected a JSON object"
_SHOWN_CHARS = 200  # of a path or a media type echoed back in a message


class Refused(Exception):
    """A request the bridge answers with an error: HTTP status, the contract's code, a message."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers: dict[str, str] = dict(headers or {})


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def error_response(refused: Refused) -> JSONResponse:
    return JSONResponse(error_body(refused.code, refused.message), status_code=refused.status, headers=refused.headers)


def unauthorized() -> Refused:
    return Refused(401, "unauthorized", "a valid API key is required (Authorization: Bearer or X-API-Key)")


# --- the content-type rule -------------------------------------------------------------------------


def media_type(content_type: str | None) -> str:
    """`application/json` of `Application/JSON; charset=utf-8`; "" when absent."""
    return (content_type or "").split(";")[0].strip().lower()


def is_json(content_type: str | None) -> bool:
    """`application/json` or `application/<anything>+json`, with any parameters: the types FastAPI
    parses as JSON, so that a body FastAPI validates is never one this rule refuses."""
    main, _, sub = media_type(content_type).partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def unsupported_media_type(content_type: str | None) -> Refused:
    declared = media_type(content_type)[:_SHOWN_CHARS]
    told = f"Content-Type {declared} is not supported" if declared else "Content-Type is missing"
    return Refused(415, UnsupportedMediaType.code, f"{told}; send the body as JSON with Content-Type: {JSON_TYPE}")


# --- JSON bodies -----------------------------------------------------------------------------------


def loads(body: bytes) -> Any:
    """The JSON value of a body; a `json.JSONDecodeError` whose `msg` names the problem otherwise
    (FastAPI turns that class, and only it, into a validation error rather than a bare 400)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise json.JSONDecodeError(describe_json_error(body, e), "", 0) from e


def describe_json_error(body: bytes, error: orjson.JSONDecodeError) -> str:
    """orjson's reason, said of the body: `body is not JSON: unexpected end of data (line 1, column 3)`."""
    if not body.strip():
        return EMPTY_BODY
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"body is not valid UTF-8 (byte offset {e.start}); JSON must be UTF-8"
    if error.msg == "depth limit exceeded":
        return "body nests arrays or objects over 1024 levels deep; JSON this deep is not read"
    return f"body is not JSON: {error.msg} (line {error.lineno}, column {error.colno})"


class JsonRequest(Request):
    async def json(self) -> Any:
        return loads(await self.body())


class JsonBodyRoute(APIRoute):
    """A route whose JSON body is parsed by `loads` (FastAPI's documented way to change the Request)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_json(request: Request) -> Response:
            return await handle(JsonRequest(request.scope, request.receive))

        return handle_json


def invalid_body(content_type: str | None, errors: Sequence[Any]) -> Refused:
    """What a body FastAPI could not validate gets. A body not declared JSON always lands here: FastAPI
    (strict content type) hands the route its raw bytes, which never validate as a model."""
    if not is_json(content_type):
        return unsupported_media_type(content_type)
    first: dict[str, Any] = dict(errors[0]) if errors else {}
    kind, loc = first.get("type"), tuple(first.get("loc", ("body",)))
    if kind == "json_invalid":
        return Refused(422, InvalidJson.code, str(first.get("ctx", {}).get("error", "body is not JSON")))
    if loc == ("body",):  # the body as a whole: none, or JSON but not an object
        return Refused(422, InvalidJson.code, EMPTY_BODY if kind == "missing" else "body is not a JSON object")
    return Refused(422, InvalidRequest.code, describe_error(first))


# --- routing and crashes ---------------------------------------------------------------------------


def from_http_exception(method: str, path: str, exc: HTTPException) -> Refused:
    """Starlette's and FastAPI's own HTTP errors (no route, wrong method, ...) in the contract's shape."""
    shown = path[:_SHOWN_CHARS]
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        return Refused(404, NotFound.code, f"no route at {shown}; the routes are listed at /openapi.json")
    if exc.status_code == 405:
        allowed = headers.get("Allow", "")
        return Refused(405, MethodNotAllowed.code, f"{method} is not allowed on {shown}; allowed: {allowed}", headers)
    if exc.status_code == 413:
        return Refused(413, BODY_TOO_LARGE, str(exc.detail), headers)
    code = PipelineError.code if exc.status_code >= 500 else InvalidRequest.code
    return Refused(exc.status_code, code, str(exc.detail), headers)


def internal_error() -> Refused:
    return Refused(500, PipelineError.code, "internal error; the bridge logged it")


def install_handlers(app: FastAPI, authorized: Callable[[Mapping[str, str]], bool]) -> None:
    """Answer every error of `app` in the contract's shape, counted by path and status.
    `authorized`: whether a request's headers carry a valid key; authentication comes before any
    judgement of the body, so a caller without a key learns nothing of it."""

    def answer(request: Request, refused: Refused) -> JSONResponse:
        metrics.GATEWAY_REQUESTS.labels(_route_label(request), str(refused.status)).inc()
        return error_response(refused)

    @app.exception_handler(Refused)
    async def on_refused(request: Request, exc: Refused) -> JSONResponse:
        return answer(request, exc)

    @app.exception_handler(RequestValidationError)
    async def on_invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        if not authorized(request.headers):
            return answer(request, unauthorized())
        return answer(request, invalid_body(request.headers.get("content-type"), exc.errors()))

    @app.exception_handler(HTTPException)
    async def on_http_exception(request: Request, exc: HTTPException) -> JSONResponse:
        return answer(request, from_http_exception(request.method, request.url.path, exc))

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> JSONResponse:
        # Starlette raises the exception again once this is sent, and the server logs it, traceback and all.
        return answer(request, internal_error())


def _route_label(request: Request) -> str:
    """The route's own path, or "unmatched": paths nobody routes are unbounded, a metric's labels must not be."""
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
