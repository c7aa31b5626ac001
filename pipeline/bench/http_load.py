"""HTTP load: closed loop (fixed concurrency) and open loop (fixed arrival rate) against a bridge or
its peer, each run's figures (with the CPU its path spent per request, where metered), and a direct
Triton call for one row, so the bridge's own overhead is visible beside the model's."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from pipeline.bench.cpu import CpuMeter, WaitMeter
from pipeline.bench.http_client import Connections
from pipeline.bench.rounds import quiet_collector
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


def measured(load: Coroutine[Any, Any, LoadResult]) -> dict[str, Any]:
    """One load run's figures, with the load generator's collector quiet first."""
    quiet_collector()
    return asyncio.run(load).figures()


def metered(load: Coroutine[Any, Any, LoadResult], pids: dict[str, int]) -> dict[str, Any]:
    """One load run's figures, with the CPU every process on its path spent per request answered, and
    the time its threads waited for a core meanwhile."""
    meter, waits = CpuMeter(pids).start(), WaitMeter(pids).start()
    figures = measured(load)
    spent, waited = meter.stop(), waits.stop()
    answered = figures["statuses"].get("200", 0)
    for name, seconds in (("cpu", spent), ("run_queue_wait", waited)):
        figures[f"{name}_ms_per_request"] = _per_request(sum(seconds.values()), answered)
        figures[f"{name}_ms_per_request_by_process"] = {n: _per_request(s, answered) for n, s in seconds.items()}
    return figures


def _per_request(seconds: float, answered: int) -> float:
    return round(seconds * 1000 / answered, 3) if answered else float("nan")
