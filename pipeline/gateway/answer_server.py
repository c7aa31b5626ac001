"""Where workers hand this bridge its answers directly (see `pipeline.answer_wire`).

Each answer resolves the waiting caller exactly as one read from the replies topic does; whichever
of the two comes first counts. The listener greets every connection with this instance's token, which
the `answer-to` address also carries, so a worker never takes another bridge listening at the same
host and port (a loopback address seen from another host, a restarted instance) for this one.
"""

from __future__ import annotations

import asyncio
import uuid
from functools import partial
from typing import cast

import structlog

from pipeline.answer_wire import FrameError, FrameReader
from pipeline.gateway.replies import Reply, ReplyRouter
from pipeline.settings import GatewaySettings

log = structlog.get_logger(__name__)


class AnswerServer:
    def __init__(self, settings: GatewaySettings, router: ReplyRouter) -> None:
        self._settings = settings
        self._router = router
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Transport] = set()
        self._token = uuid.uuid4().hex
        self.address: str | None = None  # host:port/token, as sent in the answer-to header

    async def start(self) -> None:
        settings, token = self._settings, self._token.encode()
        connection = partial(_AnswerConnection, self._router, self._connections, token)
        self._server = await asyncio.get_running_loop().create_server(
            connection, settings.answer_host, settings.answer_port
        )
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = f"{settings.answer_advertise or f'{host}:{port}'}/{self._token}"
        log.info("answer_listener_started", answer_to=self.address)

    async def stop(self) -> None:
        self.address = None
        if self._server is not None:
            self._server.close()
            for transport in list(self._connections):  # workers' open connections would hold wait_closed
                transport.close()
            await self._server.wait_closed()


class _AnswerConnection(asyncio.Protocol):
    def __init__(self, router: ReplyRouter, connections: set[asyncio.Transport], token: bytes) -> None:
        self._router = router
        self._token = token
        self._connections = connections
        self._frames = FrameReader()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence a cast, not a check.
        self._transport = cast(asyncio.Transport, transport)
        self._connections.add(self._transport)
        self._transport.write(self._token)  # who answers here (see the module's docstring)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._connections.discard(self._transport)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._frames.feed(data)
        except FrameError as e:
            log.warning("answer_connection_dropped", peer=self._peer(), error=str(e))
            assert self._transport is not None
            self._transport.close()
            return
        for correlation_id, kind, value in frames:
            self._router.resolve(correlation_id, Reply(kind, value), route="direct")

    def _peer(self) -> str:
        return "" if self._transport is None else str(self._transport.get_extra_info("peername"))
