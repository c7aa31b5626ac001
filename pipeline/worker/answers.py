"""Answers to HTTP callers outside the transactions: as soon as scored (`worker.reply_when="scored"`,
the default), or over a direct link once their transaction commits.

A caller needs its result, not the transaction that records it, which is most of a request's time
under load (docs/performance.md#answer-when-scored). So a scored batch's replies go out at once, on
an idempotent producer of their own, or straight to the bridge over TCP when the request names a
direct address (`answer-to`, see `answer_wire`) that can be reached; the results, dead letters and
offsets keep their transaction. This loses nothing: a request's offset is committed only with its
result, so every answered request also gets its one committed result or dead letter, by the next
attempt if this one aborts (docs/architecture.md#answers-to-http-callers).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import cast

import structlog
from confluent_kafka import KafkaError, Message

from pipeline import answer_wire, metrics
from pipeline.contract import CORRELATION_ID, REPLY_KIND
from pipeline.kafka import clients
from pipeline.settings import Settings, WorkerSettings
from pipeline.worker.delivery import produce_draining
from pipeline.worker.messages import Outbound

log = structlog.get_logger(__name__)

_MAX_IDLE_LINKS = 64


class AnswerProducer:
    def __init__(self, settings: Settings) -> None:
        self._timeout_s = settings.worker.transaction_timeout_ms / 1000
        self._producer = clients.producer(
            settings,
            {
                "client.id": f"{settings.kafka.client_id}-worker-answers",
                "enable.idempotence": True,
                "linger.ms": 0,  # a caller is waiting
                # A caller gives up after its deadline (the bridge's timeout); later is no answer.
                "message.timeout.ms": max(1000, int(settings.gateway.timeout_s * 1000)),
                "error_cb": metrics.kafka_error_callback("answers"),
            },
        )
        self._links = AnswerLinks(settings.worker) if settings.worker.direct_answers else None

    def send(self, answers: Sequence[Outbound]) -> None:
        """Write the answers to their bridges' direct addresses, or queue them on the replies topic
        (librdkafka sends them from its own threads) and serve delivery reports. Must run on the
        event loop; non-blocking unless librdkafka's local queue is full."""
        metrics.ANSWERS.inc(len(answers))
        if self._links is not None:
            answers = self._links.send(answers)
        if answers:
            for answer in answers:
                produce_draining(self._producer, answer, on_delivery=_delivered)
            self._producer.poll(0)

    def split(self, answers: Sequence[Outbound]) -> tuple[list[Outbound], list[Outbound]]:
        """(answers whose bridge this worker has an open direct link to, the others)."""
        if self._links is None:
            return [], list(answers)
        direct: list[Outbound] = []
        others: list[Outbound] = []
        for answer in answers:
            linked = answer.answer_to is not None and self._links.usable(answer.answer_to)
            (direct if linked else others).append(answer)
        return direct, others

    def close(self) -> None:
        if self._links is not None:
            self._links.close()
        self._producer.flush(self._timeout_s)


class AnswerLinks:
    """This worker's connections to bridges' answer addresses, opened on first use. An address that
    cannot be reached is tried again `answer_retry_s` later; its answers take the replies topic."""

    def __init__(self, settings: WorkerSettings) -> None:
        self._retry_s = settings.answer_retry_s
        self._buffer_bytes = settings.answer_buffer_bytes
        self._links: dict[bytes, _Link] = {}

    def send(self, answers: Sequence[Outbound]) -> list[Outbound]:
        """Write what can go direct; returns the answers that must take the replies topic."""
        elsewhere: list[Outbound] = []
        frames: dict[bytes, list[bytes]] = defaultdict(list)
        sent: dict[bytes, list[Outbound]] = defaultdict(list)
        for answer in answers:
            address = answer.answer_to
            link = None if address is None else self._link(address)
            if link is None:
                elsewhere.append(answer)
                continue
            headers = dict(answer.headers)
            kind = headers.get(REPLY_KIND, b"result").decode()
            frames[link.address].append(answer_wire.encode(headers.get(CORRELATION_ID, b""), kind, answer.value))
            sent[link.address].append(answer)
        for address, chunks in frames.items():
            if self._links[address].write(b"".join(chunks), self._buffer_bytes):
                metrics.ANSWERS_DIRECT.inc(len(chunks))
            else:
                elsewhere += sent[address]
        return elsewhere

    def usable(self, address: bytes) -> bool:
        """Whether answers to this address go direct now (if not, a connection may be under way)."""
        return self._link(address) is not None

    def _link(self, address: bytes) -> _Link | None:
        link = self._links.get(address)
        if link is None:
            if len(self._links) >= _MAX_IDLE_LINKS:  # bridges restarted on new ports leave their old addresses
                self._links = {a: k for a, k in self._links.items() if k.open or k.connecting is not None}
            link = self._links[address] = _Link(address)
        if link.open:
            return link
        if link.connecting is None and time.monotonic() >= link.retry_at:
            link.connecting = asyncio.ensure_future(self._connect(link))
        return None  # these answers take the topic while it connects

    async def _connect(self, link: _Link) -> None:
        try:
            host_port, _, token = link.address.decode().partition("/")
            host, _, port = host_port.rpartition(":")
            if not token:  # not a bridge's address: nothing is written where no bridge named itself
                raise ValueError("no bridge token in the answer address")
            loop = asyncio.get_running_loop()
            transport, greeting = await asyncio.wait_for(
                loop.create_connection(lambda: _Greeting(len(token)), host, int(port)), timeout=2.0
            )
            try:
                # The bridge names itself first: another one listening at this host and port is not it,
                # and whatever else listens there is never written to.
                if await asyncio.wait_for(greeting.token, timeout=2.0) != token.encode():
                    raise ConnectionError("another bridge listens at this address")
            except BaseException:
                transport.close()
                raise
        except (OSError, ValueError, TimeoutError, UnicodeDecodeError) as e:
            link.retry_at = time.monotonic() + self._retry_s
            log.warning("answer_address_unreachable", answer_to=link.address.decode(errors="replace"), error=str(e))
        else:
            link.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport subclass
            log.info("answer_link_open", answer_to=link.address.decode())
        finally:
            link.connecting = None

    def close(self) -> None:
        for link in self._links.values():
            if link.connecting is not None:
                link.connecting.cancel()
            if link.transport is not None:
                link.transport.close()


class _Link:
    def __init__(self, address: bytes) -> None:
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.connecting: asyncio.Future[None] | None = None
        self.retry_at = 0.0

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def write(self, data: bytes, limit: int) -> bool:
        assert self.transport is not None
        buffered = self.transport.get_write_buffer_size()
        if buffered > limit:  # the bridge reads nothing: give up on it (reconnects on the next answer)
            log.warning("answer_link_backed_up", answer_to=self.address.decode(), buffered=buffered)
            self.transport.abort()
            self.transport = None
            return False
        self.transport.write(data)
        return True


class _Greeting(asyncio.Protocol):
    """Reads the bridge's token, the first bytes on an answer connection; the bridge sends nothing else."""

    def __init__(self, size: int) -> None:
        self._received = b""
        self._size = size
        self.token: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self._received += data
        if len(self._received) >= self._size and not self.token.done():
            self.token.set_result(self._received[: self._size])

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.token.done():
            self.token.set_exception(ConnectionError("closed before it named itself"))


def _delivered(error: KafkaError | None, message: Message) -> None:
    if error is not None:
        # The caller gets a 504 naming its event_id; the result itself is committed regardless.
        metrics.ANSWERS_FAILED.inc()
        log.warning("answer_not_delivered", topic=message.topic(), partition=message.partition(), error=str(error))
