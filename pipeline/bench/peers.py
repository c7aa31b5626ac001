"""What a user might run instead of the pipeline, each as one consumer process: the bench's peers.

- `passthrough`: copies requests to the results topic with aiokafka, no work: the limit.
- `passthrough-librdkafka`: the same copy on confluent-kafka (librdkafka), the pipeline's client.
- `naive`: per event, one Feast read for one entity and one Triton call for one row, then produce.
- `monolith`: the pipeline's own worker loop (validation, dedup, transactions) around the
  TorchScript model and the feature table in the process, instead of Triton and Feast.
- `monolith-at-least-once`: the same model and table in a plain confluent-kafka loop, no dedup or
  transactions.

Each reads the settings' requests topic in its own consumer group and writes the results topic; all
but `monolith` at-least-once (produce, flush, commit). What each measures: docs/performance.md#throughput.
Each logs `peer_ready` once it holds partitions, as a worker logs `worker_ready`: the bench starts the
processes of a scenario one after another, each once the one before is ready, so its timed run never
pays a group's rebalance.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeAlias

import numpy as np
import orjson
import pandas as pd
import structlog
from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.structs import ConsumerRecord
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from pipeline.contract import InferenceRequest, parse_request, result_record
from pipeline.errors import PipelineError, UnknownModel
from pipeline.features.demo_data import PARQUET
from pipeline.inference import scoring
from pipeline.inference.scoring import EntityId
from pipeline.kafka import clients
from pipeline.models.spec import ModelSpec, load_spec_file
from pipeline.settings import Settings

log = structlog.get_logger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]
Handler = Callable[[list[Record], AIOKafkaProducer], Awaitable[None]]
PEERS = ("passthrough", "passthrough-librdkafka", "naive", "monolith", "monolith-at-least-once")
SyncHandler = Callable[[list[Message], Producer], None]


def run(settings: Settings, kind: str) -> None:
    if kind == "monolith":
        asyncio.run(_monolith(settings))
    elif kind in ("passthrough-librdkafka", "monolith-at-least-once"):
        _run_librdkafka(settings, kind)
    else:
        asyncio.run(_main(settings, kind))


async def _monolith(settings: Settings) -> None:
    """The pipeline's worker, scoring with the model and the features in this process."""
    from pipeline.worker.loop import Worker

    scorer = InProcessScorer(settings)
    features = TableFeatures(FeatureTable.load(settings, scorer.model_spec))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = Worker(settings, scorer, features)
    running = asyncio.create_task(worker.run(stop))
    ready = asyncio.create_task(worker.ready.wait())
    await asyncio.wait({running, ready}, return_when=asyncio.FIRST_COMPLETED)
    if ready.done():
        log.info("peer_ready", kind="monolith")
    ready.cancel()
    await running


class InProcessScorer:
    """The TorchScript model, run in this process (one thread: the box's other core is the broker's)."""

    def __init__(self, settings: Settings) -> None:
        import torch

        torch.set_num_threads(1)
        self._torch = torch
        folder = settings.triton.model_repository / settings.default_model
        self.model_spec = load_spec_file(folder / "config.pbtxt")
        self._version = stable_version(settings)
        self._model = torch.jit.load(str(folder / self._version / "model.pt")).eval()

    async def spec(self, model: str) -> ModelSpec:
        if model != self.model_spec.name:
            raise UnknownModel(f"model {model!r} is not served")
        return self.model_spec

    async def score(self, spec: ModelSpec, matrix: np.ndarray, version: str = "") -> tuple[np.ndarray, str]:
        with self._torch.inference_mode():
            return self._model(self._torch.from_numpy(matrix)).reshape(-1).numpy(), self._version

    async def close(self) -> None:
        return None


class TableFeatures:
    def __init__(self, table: FeatureTable) -> None:
        self._table = table

    async def fetch(self, spec: ModelSpec, entity_ids: Sequence[EntityId]) -> dict[EntityId, np.ndarray | None]:
        return {entity: self._table.get(entity) for entity in entity_ids}

    def close(self) -> None:
        return None


def _run_librdkafka(settings: Settings, kind: str) -> None:
    """The plain loop a user writes on confluent-kafka: consume a batch, handle, produce, flush, commit."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    handler = _sync_handler(settings, kind)
    consumer = clients.consumer(
        settings,
        {
            "group.id": settings.worker.app_id,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        },
    )
    assigned = threading.Event()

    def on_assign(_: Consumer, partitions: list[TopicPartition]) -> None:
        if partitions and not assigned.is_set():
            assigned.set()
            log.info("peer_ready", kind=kind)

    consumer.subscribe([settings.topics.requests], on_assign=on_assign)
    producer = clients.producer(settings, {"acks": "all", "linger.ms": 5})
    try:
        while not stop.is_set():
            records = [r for r in consumer.consume(settings.worker.batch_size, 0.02) if r.error() is None]
            if records:
                handler(records, producer)
                producer.flush()
                consumer.commit(asynchronous=True)
    finally:
        consumer.close()


def _sync_handler(settings: Settings, kind: str) -> SyncHandler:
    results = settings.topics.results
    if kind == "passthrough-librdkafka":

        def copy(records: list[Message], producer: Producer) -> None:
            for record in records:
                producer.produce(results, record.value(), record.key())

        return copy

    import torch

    spec = load_spec_file(settings.triton.model_repository / settings.default_model / "config.pbtxt")
    torch.set_num_threads(1)
    version = stable_version(settings)
    model = torch.jit.load(str(settings.triton.model_repository / settings.default_model / version / "model.pt")).eval()
    table = FeatureTable.load(settings, spec)

    def score_batch(records: list[Message], producer: Producer) -> None:
        requests = []
        for record in records:
            try:
                requests.append(parse_request(record.value()))
            except PipelineError:
                continue  # the peers are benchmarked on valid traffic only
        rows = [table.row(scoring.entity_id(r, spec)) for r in requests]
        matrix = scoring.feature_matrix(spec, requests, rows)
        with torch.inference_mode():
            scores = model(torch.from_numpy(matrix)).reshape(-1).numpy()
        for request, score in zip(requests, scores, strict=True):
            producer.produce(results, _result(spec, request, float(score), version), request.event_id.encode())

    return score_batch


async def _main(settings: Settings, kind: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    handler, close = await _handler(settings, kind)
    consumer = clients.aio_consumer(
        settings, group_id=settings.worker.app_id, auto_offset_reset="earliest", enable_auto_commit=False
    )
    assigned = _Assigned()
    consumer.subscribe([settings.topics.requests], listener=assigned)
    producer = clients.aio_producer(settings, acks="all", linger_ms=5)
    await consumer.start()
    await producer.start()
    await assigned.wait()  # the group's coordinator joins in the background meanwhile
    log.info("peer_ready", kind=kind)
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=20, max_records=settings.worker.batch_size)
            records = [r for rs in batches.values() for r in rs]
            if records:
                await handler(records, producer)
                await producer.flush()
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()
        await close()


class _Assigned(ConsumerRebalanceListener):
    """Set once the group has given this consumer partitions."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    async def on_partitions_revoked(self, revoked: object) -> None:
        return None

    async def on_partitions_assigned(self, assigned: object) -> None:
        if assigned:
            self._event.set()

    async def wait(self) -> None:
        await self._event.wait()


async def _handler(settings: Settings, kind: str) -> tuple[Handler, Callable[[], Awaitable[None]]]:
    results = settings.topics.results
    spec = load_spec_file(settings.triton.model_repository / settings.default_model / "config.pbtxt")

    async def nothing() -> None:
        return None

    if kind == "passthrough":

        async def copy(records: list[Record], producer: AIOKafkaProducer) -> None:
            for record in records:
                await producer.send(results, record.value, key=record.key)

        return copy, nothing

    if kind == "naive":
        import tritonclient.grpc.aio as grpcclient
        from feast import FeatureStore

        store = FeatureStore(repo_path=str(settings.feast.repo_path))
        client = grpcclient.InferenceServerClient(settings.triton.grpc_url)

        async def one_by_one(records: list[Record], producer: AIOKafkaProducer) -> None:
            for record in records:
                request = parse_request(record.value)
                entity = scoring.entity_id(request, spec)
                online = store.get_online_features(
                    features=list(spec.store_features), entity_rows=[{spec.entity_key: entity}]
                ).to_dict()
                row = np.asarray([online[name][0] for name in spec.store_feature_names], dtype=np.float32)
                matrix = scoring.feature_matrix(spec, [request], [row])
                infer_input = grpcclient.InferInput(spec.input_name, list(matrix.shape), "FP32")
                infer_input.set_data_from_numpy(matrix)
                response = await client.infer(spec.name, [infer_input])
                score = float(response.as_numpy(spec.output_name).reshape(-1)[0])
                value = _result(spec, request, score, response.get_response().model_version)
                await producer.send_and_wait(results, value, key=request.event_id.encode())

        return one_by_one, client.close

    raise ValueError(f"unknown peer {kind!r}; one of {', '.join(PEERS)}")


class FeatureTable:
    """The online features as an in-memory array, read from the Feast repo's source data."""

    def __init__(self, ids: np.ndarray, values: np.ndarray) -> None:
        self._index = {int(i): n for n, i in enumerate(ids)}
        self._values = values

    @classmethod
    def load(cls, settings: Settings, spec: ModelSpec) -> FeatureTable:
        frame = pd.read_parquet(settings.feast.repo_path / PARQUET)
        values = frame[list(spec.store_feature_names)].to_numpy(dtype=np.float32)
        return cls(frame[spec.entity_key].to_numpy(), values)

    def row(self, entity: int) -> np.ndarray:
        return self._values[self._index[entity]]

    def get(self, entity: EntityId) -> np.ndarray | None:
        index = self._index.get(int(entity))
        return None if index is None else self._values[index]


def stable_version(settings: Settings) -> str:
    """The default model's stable version, as the pipeline's workers score with it (before the stack
    first served it: its highest version on disk, the one it will serve)."""
    from pipeline.models import routing_log, versions

    model = settings.default_model
    stable = routing_log.read(settings).routing(model).stable
    return stable or str(versions.versions(settings.triton.model_repository, model)[-1].number)


def _result(spec: ModelSpec, request: InferenceRequest, score: float, version: str) -> bytes:
    """The result record the worker writes (its entity included), so every peer produces the same bytes."""
    record = result_record(
        event_id=request.event_id,
        model=spec.name,
        model_version=version,
        arm="stable",
        score=score,
        threshold=spec.threshold,
        labels=spec.labels,
        latency_ms=0.0,
        entity=request.entity,
    )
    return orjson.dumps(record)
