"""Load shedding for the HTTP bridge: per-key token buckets, a bound on requests in flight, and a
request-body size limit. Callers are told to back off (429 + Retry-After, 413) instead of queueing."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from starlette.exceptions import HTTPException

BODY_TOO_LARGE = "body_too_large"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class TokenBucket:
    """`rate` tokens per second, up to `burst`. Pure apart from the clock, which tests can pass in."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens, self._at = burst, clock()

    def take(self, tokens: float = 1.0) -> float:
        """0 when granted; else the seconds to wait before `tokens` would be available."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if tokens <= self._tokens:
            self._tokens -= tokens
            return 0.0
        return (tokens - self._tokens) / self.rate if self.rate > 0 else math.inf


class RateLimits:
    def __init__(self, rate: float, burst: float) -> None:
        self._rate, self._burst = rate, burst
        self._buckets: dict[str, TokenBucket] = {}

    def retry_after(self, key_id: str, cost: float = 1.0) -> float:
        if self._rate <= 0:
            return 0.0
        bucket = self._buckets.setdefault(key_id, TokenBucket(self._rate, self._burst))
        return bucket.take(cost)


class InFlight:
    def __init__(self, limit: int) -> None:
        self.limit, self.current = limit, 0

    def try_acquire(self, count: int = 1) -> bool:
        if self.current + count > self.limit:
            return False
        self.current += count
        return True

    def release(self, count: int = 1) -> None:
        self.current -= count


class BodySizeLimit:
    """ASGI middleware: 413 once a request body passes `max_bytes` (declared or streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _too_large(send, self.max_bytes)
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _too_large(send, self.max_bytes)


class BodyTooLarge(HTTPException):
    """A streamed body passed the limit. An HTTPException, so that FastAPI's body reading, which turns
    any other exception into a 400, lets it through to the app's handler for its 413."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, _too_large_message(max_bytes))


def _too_large_message(max_bytes: int) -> str:
    return f"request body over {max_bytes} bytes"


async def _too_large(send: Send, max_bytes: int) -> None:
    body = orjson.dumps({"error": {"code": BODY_TOO_LARGE, "message": _too_large_message(max_bytes)}})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
