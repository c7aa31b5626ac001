"""The Kafka side of the HTTP bridge: publish a request with a reply address, await its answer."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from pipeline import metrics, tracing
from pipeline.contract import ANSWER_TO, CORRELATION_ID, DEADLINE, REPLY_TO, PredictBody, request_key
from pipeline.gateway.answer_server import AnswerServer
from pipeline.gateway.replies import Reply, ReplyRouter
from pipeline.kafka import clients
from pipeline.settings import Settings
from pipeline.tracing import SpanKind


@dataclass(frozen=True)
class Answer:
    event_id: str
    status: int  # 200 result, 422 dead letter, 503 not published, 504 no answer in time
    body: bytes


class Bridge:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.replies = ReplyRouter(settings)
        self.answers = AnswerServer(settings.gateway, self.replies) if settings.gateway.direct_answers else None
        self.started = False

    async def start(self) -> None:
        # Kafka clients bind to the running loop, so they are made here, not in __init__.
        self.producer = request_producer(self.settings)
        if self.answers is not None:
            await self.answers.start()
        await self.replies.start()
        await self.producer.start()
        self.started = True

    async def stop(self) -> None:
        self.started = False
        if self.answers is not None:
            await self.answers.stop()
        await self.replies.stop()
        await self.producer.stop()

    async def submit(self, bodies: list[PredictBody], timeout_s: float) -> list[Answer]:
        """Publish every request, then wait (one deadline for all) for each one's answer, in order."""
        deadline_ms = int((time.time() + timeout_s) * 1000)
        pending = [self._publish(body, deadline_ms) for body in bodies]
        began = time.perf_counter()
        sent = await asyncio.gather(*pending, return_exceptions=True)
        published = time.perf_counter()
        metrics.GATEWAY_STAGE_SECONDS.labels("publish").observe(published - began)
        metrics.GATEWAY_IN_FLIGHT.inc(len(bodies))
        try:
            futures = [s[2] for s in sent if not isinstance(s, BaseException)]
            if futures:
                await asyncio.wait(futures, timeout=timeout_s)
                metrics.GATEWAY_STAGE_SECONDS.labels("await_answer").observe(time.perf_counter() - published)
            return [self._answer(s, timeout_s) for s in sent]
        finally:
            for s in sent:
                if not isinstance(s, BaseException):
                    self.replies.forget(s[1])
            metrics.GATEWAY_IN_FLIGHT.dec(len(bodies))

    async def _publish(self, body: PredictBody, deadline_ms: int) -> tuple[str, str, asyncio.Future[Reply]]:
        event_id = body.event_id or f"http-{uuid.uuid4().hex}"
        address = self.replies.address
        if not self.replies.ready or address is None:
            raise NotPublished(event_id, "this bridge has no reply partition yet (see /readyz)")
        correlation_id = uuid.uuid4().hex
        future = self.replies.expect(correlation_id)
        payload = body.model_dump(mode="json", exclude_none=True) | {"event_id": event_id}
        headers = [
            (CORRELATION_ID, correlation_id.encode()),
            (REPLY_TO, address.encode()),
            (DEADLINE, str(deadline_ms).encode()),
        ]
        if self.answers is not None and self.answers.address is not None:
            headers.append((ANSWER_TO, self.answers.address.encode()))
        topic, value, key = self.settings.topics.requests, orjson.dumps(payload), request_key(body)
        try:
            if tracing.ENABLED:
                await self._send_traced(topic, value, key, headers, event_id)
            else:
                await self.producer.send_and_wait(topic, value, key=key, headers=headers)
        except KafkaError as e:
            self.replies.forget(correlation_id)
            raise NotPublished(event_id, str(e)) from e
        return event_id, correlation_id, future

    async def _send_traced(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]], event_id: str
    ) -> None:
        """The publish as a producer span of the caller's request, named in the `traceparent` header."""
        attributes = {
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
            "messaging.message.id": event_id,
        }
        with tracing.tracer().start_as_current_span(
            f"publish {topic}", kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            if (traceparent := tracing.header(span)) is not None:
                headers.append(traceparent)
            await self.producer.send_and_wait(topic, value, key=key, headers=headers)

    @staticmethod
    def _answer(sent: tuple[str, str, asyncio.Future[Reply]] | BaseException, timeout_s: float) -> Answer:
        if isinstance(sent, NotPublished):
            return Answer(sent.event_id, 503, _error("unavailable", f"could not publish: {sent}", sent.event_id))
        if isinstance(sent, BaseException):
            raise sent
        event_id, _, future = sent
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


def request_producer(settings: Settings) -> AIOKafkaProducer:
    """The bridge's producer of requests. aiokafka's default partitioner is Java's (murmur2), the
    one every producer of the requests topic uses (contract.REQUESTS_PARTITIONER)."""
    return clients.aio_producer(
        settings,
        client_id=f"{settings.kafka.client_id}-gateway",
        acks="all",
        enable_idempotence=True,
        linger_ms=0,  # a caller is waiting: no lingering (what is queued meanwhile still shares a request)
    )


class NotPublished(Exception):
    def __init__(self, event_id: str, reason: str) -> None:
        super().__init__(reason)
        self.event_id = event_id


def _error(code: str, message: str, event_id: str | None = None) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, "event_id": event_id}})
