"""The Kafka side of the HTTP bridge: publish a request with a reply address, await its answer."""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from dataclasses import dataclass

import orjson

from pipeline import metrics
from pipeline.contract import CORRELATION_ID, DEADLINE, REPLY_TO, PredictBody, request_key
from pipeline.gateway.publisher import RequestPublisher
from pipeline.gateway.replies import Reply, ReplyRouter
from pipeline.settings import Settings


@dataclass(frozen=True)
class Answer:
    event_id: str
    status: int  # 200 result, 422 dead letter, 503 not published, 504 no answer in time
    body: bytes


class Bridge:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.replies = ReplyRouter(settings)
        self.publisher = RequestPublisher(settings)
        self.started = False

    async def start(self) -> None:
        await self.replies.start()
        await self.publisher.start()
        self.started = True

    async def stop(self) -> None:
        self.started = False
        await self.replies.stop()
        await self.publisher.stop()

    async def submit(self, bodies: list[PredictBody], timeout_s: float) -> list[Answer]:
        """Publish every request, then wait (one deadline for all) for each one's answer, in order.

        A request's answer is awaited from the moment it is handed to the producer, not from its
        delivery report: the report only says what the answer already shows (the worker read the
        request), and it comes back through another thread, so waiting for it first would put
        that thread's turn at the GIL in every request's latency. A failed delivery still ends the
        wait at once, with 503.
        """
        deadline_ms = int((time.time() + timeout_s) * 1000)
        began = time.perf_counter()
        sent: list[tuple[str, str, asyncio.Future[Reply]] | NotPublished] = []
        for body in bodies:
            try:
                sent.append(self._publish(body, deadline_ms, began))
            except NotPublished as e:
                sent.append(e)
        metrics.GATEWAY_IN_FLIGHT.inc(len(bodies))
        try:
            futures = [s[2] for s in sent if not isinstance(s, NotPublished)]
            if futures:
                await asyncio.wait(futures, timeout=timeout_s)
                metrics.GATEWAY_STAGE_SECONDS.labels("await_answer").observe(time.perf_counter() - began)
            return [self._answer(s, timeout_s) for s in sent]
        finally:
            for s in sent:
                if not isinstance(s, NotPublished):
                    self.replies.forget(s[1])
            metrics.GATEWAY_IN_FLIGHT.dec(len(bodies))

    def _publish(self, body: PredictBody, deadline_ms: int, began: float) -> tuple[str, str, asyncio.Future[Reply]]:
        event_id = body.event_id or f"http-{uuid.uuid4().hex}"
        address = self.replies.address
        if not self.replies.ready or address is None:
            raise NotPublished(event_id, "this bridge has no reply partition yet (see /readyz)")
        correlation_id = uuid.uuid4().hex
        future = self.replies.expect(correlation_id)
        payload = body.model_dump(mode="json", exclude_none=True) | {"event_id": event_id}
        headers = (
            (CORRELATION_ID, correlation_id.encode()),
            (REPLY_TO, address.encode()),
            (DEADLINE, str(deadline_ms).encode()),
        )
        value = orjson.dumps(payload)
        delivery = self.publisher.publish(self.settings.topics.requests, value, request_key(body), headers)
        delivery.add_done_callback(functools.partial(_delivered, future, event_id, began))
        return event_id, correlation_id, future

    @staticmethod
    def _answer(sent: tuple[str, str, asyncio.Future[Reply]] | NotPublished, timeout_s: float) -> Answer:
        if isinstance(sent, NotPublished):
            return Answer(sent.event_id, 503, _error("unavailable", f"could not publish: {sent}", sent.event_id))
        event_id, _, future = sent
        if future.done() and not future.cancelled() and isinstance(error := future.exception(), NotPublished):
            return Answer(event_id, 503, _error("unavailable", f"could not publish: {error}", event_id))
        if not future.done():
            future.cancel()
            message = (
                f"no answer within {timeout_s:g} s; once processed, its outcome is on the results "
                "or dead-letter topic under this event_id (work past its deadline is dead-lettered)"
            )
            return Answer(event_id, 504, _error("timeout", message, event_id))
        reply = future.result()
        if reply.kind == "dead_letter":
            letter = orjson.loads(reply.value)
            return Answer(event_id, 422, orjson.dumps({"error": letter["error"], "event_id": event_id}))
        return Answer(event_id, 200, reply.value)


class NotPublished(Exception):
    def __init__(self, event_id: str, reason: str) -> None:
        super().__init__(reason)
        self.event_id = event_id


def _delivered(answer: asyncio.Future[Reply], event_id: str, began: float, delivery: asyncio.Future[None]) -> None:
    """A request's delivery report: timed, and a failure ends its caller's wait."""
    metrics.GATEWAY_STAGE_SECONDS.labels("publish").observe(time.perf_counter() - began)
    if delivery.cancelled() or (error := delivery.exception()) is None or answer.done():
        return
    answer.set_exception(NotPublished(event_id, str(error)))


def _error(code: str, message: str, event_id: str | None = None) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, "event_id": event_id}})
