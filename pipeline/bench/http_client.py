"""The load generator's HTTP/1.1 client: keep-alive connections that POST JSON
(docs/performance.md#bench-http-client)."""

from __future__ import annotations

import asyncio


class Connections:
    """A pool of keep-alive HTTP/1.1 connections that POST JSON and read `Content-Length` answers.

    The load generator shares the machine with what it measures, where a general-purpose client's
    CPU per request would saturate a core at a few hundred req/s (docs/performance.md#bench-http-client),
    so the bench speaks the few lines of HTTP/1.1 the bridge needs itself (uvicorn always answers
    with a Content-Length).
    """

    def __init__(self, host: str, port: int, timeout_s: float, max_connections: int = 1024) -> None:
        self._host, self._port, self._timeout_s = host, port, timeout_s
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        # Like any client's pool, a bounded one: past it, a request waits for a connection (and
        # that wait counts in its latency), rather than opening sockets until the OS refuses.
        self._slots = asyncio.Semaphore(max_connections)

    async def post(self, path: str, body: bytes) -> int:
        async with self._slots:
            return await self._post(path, body)

    async def _post(self, path: str, body: bytes) -> int:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self._host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        while self._idle:
            try:  # a pooled connection the server closed while idle fails before any answer: try the next
                return await self._exchange(self._idle.pop(), head + body)
            except (asyncio.IncompleteReadError, ConnectionResetError) as e:
                if isinstance(e, asyncio.IncompleteReadError) and e.partial:
                    raise
        return await self._exchange(await asyncio.open_connection(self._host, self._port), head + body)

    async def _exchange(self, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes) -> int:
        reader, writer = connection
        try:
            writer.write(request)
            status, length = await asyncio.wait_for(_read_head(reader), self._timeout_s)
            await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        self._idle.append(connection)
        return status

    async def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, int]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, length
