"""HTTP bridge latency: closed loop (fixed concurrency) and open loop (fixed arrival rate), and a
direct Triton call for one row, so the bridge's own overhead is visible beside the model's."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from pipeline.bench.stats import percentiles_ms
from pipeline.local import traffic
from pipeline.models.spec import ModelSpec
from pipeline.settings import Settings


@dataclass
class LoadResult:
    mode: str  # "closed" or "open"
    offered: float  # req/s for open loop, concurrency for closed loop
    seconds: float
    latencies_s: list[float] = field(default_factory=list)  # accepted (200) requests only
    statuses: Counter[str] = field(default_factory=Counter)

    def figures(self) -> dict[str, Any]:
        sent = sum(self.statuses.values())
        errors = sum(n for s, n in self.statuses.items() if s != "200")
        return {
            "mode": self.mode,
            "offered": self.offered,
            "requests": sent,
            "achieved_per_s": round(self.statuses["200"] / self.seconds, 1) if self.seconds else 0.0,
            "errors": errors,
            "server_errors_5xx": sum(n for s, n in self.statuses.items() if s.startswith("5")),
            "statuses": dict(self.statuses),
            **percentiles_ms(self.latencies_s),
        }


class Bodies:
    """Unique, valid request bodies (a repeat would be answered from dedup, which is cheaper)."""

    def __init__(self, prefix: str, count: int) -> None:
        self._bodies = [orjson.dumps(r) for r in traffic.valid_requests(count, prefix=prefix, seed=8)]
        self._next = 0

    def take(self) -> bytes:
        body = self._bodies[self._next % len(self._bodies)]
        self._next += 1
        return body


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


def _connections(settings: Settings, max_connections: int = 1024) -> Connections:
    return Connections("127.0.0.1", settings.gateway.port, settings.gateway.timeout_s + 5, max_connections)


async def _post(connections: Connections, body: bytes, result: LoadResult, since: float) -> None:
    try:
        status = str(await connections.post("/v1/predict", body))
    except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as e:
        status = f"client:{type(e).__name__}"
    result.statuses[status] += 1
    if status == "200":
        result.latencies_s.append(time.perf_counter() - since)


async def closed_loop(settings: Settings, bodies: Bodies, concurrency: int, seconds: float) -> LoadResult:
    result = LoadResult("closed", concurrency, seconds)
    connections = _connections(settings)
    end = time.perf_counter() + seconds

    async def user() -> None:
        while time.perf_counter() < end:
            await _post(connections, bodies.take(), result, time.perf_counter())

    try:
        await asyncio.gather(*(user() for _ in range(concurrency)))
    finally:
        await connections.close()
    return result


async def open_loop(settings: Settings, bodies: Bodies, rate: float, seconds: float) -> LoadResult:
    """Requests start on a fixed schedule whatever the answers; latency counts from the scheduled
    start, so a slow server cannot hide queueing (no coordinated omission)."""
    result = LoadResult("open", rate, seconds)
    count = int(rate * seconds)
    connections = _connections(settings)
    start = time.perf_counter() + 0.1
    tasks = []
    try:
        for i in range(count):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_post(connections, bodies.take(), result, scheduled)))
        await asyncio.gather(*tasks)
    finally:
        await connections.close()
    return result


async def direct_triton(settings: Settings, spec: ModelSpec, calls: int) -> dict[str, Any]:
    """Latency of one-row infer calls straight to Triton (gRPC), one at a time."""
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(settings.triton.grpc_url)
    row = np.random.default_rng(1).random((1, spec.width), dtype=np.float32)
    latencies = []
    try:
        for i in range(calls + calls // 10):
            infer_input = grpcclient.InferInput(spec.input_name, [1, spec.width], "FP32")
            infer_input.set_data_from_numpy(row)
            began = time.perf_counter()
            await client.infer(spec.name, [infer_input])
            if i >= calls // 10:  # the first tenth is warm-up
                latencies.append(time.perf_counter() - began)
    finally:
        await client.close()
    return {"calls": len(latencies), **percentiles_ms(latencies)}
