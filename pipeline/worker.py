"""`pipeline worker`: the Faust app. Wiring only: consume a micro-batch → BatchProcessor → Delivery."""

from __future__ import annotations

import time
from typing import Any

import faust
import structlog
from prometheus_client import start_http_server

from pipeline import topics
from pipeline.contract import Source
from pipeline.dedup import TableDedupStore
from pipeline.delivery import Delivery
from pipeline.features import FeatureLookup
from pipeline.inference import TritonScorer
from pipeline.processor import BatchProcessor, Inbound
from pipeline.retry import Backoff
from pipeline.settings import Settings

log = structlog.get_logger(__name__)


def create_app(settings: Settings) -> faust.App:
    # The dedup table must be co-partitioned with the requests topic: read its real partition count.
    partitions = topics.partition_count(settings, settings.topics.requests)
    worker = settings.worker
    app = faust.App(
        worker.app_id,
        broker=[f"kafka://{server}" for server in settings.kafka.bootstrap_servers.split(",")],
        store="memory://",
        datadir=str(worker.data_dir),
        web_enabled=False,
        topic_partitions=partitions,
        topic_replication_factor=1,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        key_serializer="raw",
        value_serializer="raw",
    )
    requests = app.topic(settings.topics.requests, key_serializer="raw", value_serializer="raw")
    table = app.Table(worker.dedup_table, partitions=partitions, key_type=bytes, value_type=bytes)
    dedup = TableDedupStore(table)
    backoff = Backoff(worker.retry_initial_ms / 1000, worker.retry_max_ms / 1000, worker.retry_budget_s)

    @app.agent(requests)
    async def score(stream: faust.StreamT[Any]) -> None:
        scorer = TritonScorer(settings.triton)
        features = FeatureLookup(settings.feast.repo_path)
        processor = BatchProcessor(settings.topics, settings.default_model, scorer, features, dedup, backoff)
        delivery = Delivery(app.producer, dedup)
        async for events in stream.take_events(worker.batch_size, within=worker.batch_timeout_ms / 1000):
            outcome = await processor.process([_inbound(event) for event in events])
            await delivery.deliver(outcome)
            log.debug("batch", size=len(events), scored=outcome.scored, duplicates=outcome.duplicates)

    return app


def _inbound(event: Any) -> Inbound:
    message = event.message
    raw_headers = message.headers or []
    items = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
    headers = {k: (v.encode() if isinstance(v, str) else v) for k, v in items if v is not None}
    return Inbound(
        value=message.value,
        key=message.key,
        headers=headers,
        source=Source(message.topic, message.partition, message.offset),
        received=time.monotonic(),
    )


def run(settings: Settings) -> None:
    settings.worker.data_dir.mkdir(parents=True, exist_ok=True)
    server, _ = start_http_server(settings.worker.metrics_port, addr=settings.worker.metrics_host)
    log.info("worker_starting", app_id=settings.worker.app_id, metrics_port=server.server_port)
    app = create_app(settings)
    faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True).execute_from_commandline()
