"""The consumers' Faust app and how it runs (`pipeline consumers NAME`).

Faust reads with `read_committed` only under its exactly-once mode, which also makes a transactional
producer per partition; the consumers need neither, only to never see a result of an aborted
transaction, so the app's consumer is aiokafka's with its isolation level set (a private attribute
of aiokafka 0.14, read when the consumer starts). Faust's own stop has no time bound: with the
broker gone its last commit retries for ever, so a SIGTERM also arms a timer that ends the process
after `shutdown_timeout_s` (docs/architecture.md#consumers).
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import structlog
from faust.transport.drivers import aiokafka as faust_aiokafka
from prometheus_client import start_http_server

from pipeline import topics
from pipeline.errors import ConfigurationError
from pipeline.kafka import clients
from pipeline.settings import Settings

log = structlog.get_logger(__name__)

EX_SHUTDOWN_TIMED_OUT = 75  # EX_TEMPFAIL: stopped on time, but the last offsets may not be committed
EX_AGENT_FAILED = 70  # EX_SOFTWARE: an agent failed on a record, which is left uncommitted


def crash(code: int) -> None:
    """End the process now, committing nothing more: what was not committed is read again on restart."""
    logging.shutdown()
    os._exit(code)


class _ReadCommittedThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._isolation_level = "read_committed"
        return consumer


class _ReadCommittedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> Any:
        return _ReadCommittedThread(self, loop=self.loop, beacon=self.beacon)

    async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
        # Faust (0.15.3) is told of a gap in the offsets (a transaction's marker, aborted records) by
        # the record after it, and counts that record in the gap too: once acknowledged, its offset
        # is listed twice, which ends a run of consecutive offsets there, so each commit got past one
        # gap only: one worker transaction per commit interval. The gap is the offsets before it.
        await super()._add_gap(tp, offset_from, offset_to - 1)


class _Transport(faust_aiokafka.Transport):
    Consumer = _ReadCommittedConsumer


class ConsumerApp(faust.App):
    """A Faust app whose consumer reads committed records only."""

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)


def guarded(name: str, handle: Callable[[Any], Awaitable[None] | None]) -> Callable[[Any], Awaitable[None]]:
    """An agent body that passes each event of its stream to `handle` (sync or async) and ends the
    process on any failure: Faust would log it and go on, skipping the record in silence; restarted,
    the consumer reads the record again, its offset uncommitted."""
    is_async = inspect.iscoroutinefunction(handle)

    async def agent(stream: faust.StreamT) -> None:
        async for event in stream.events():
            try:
                if is_async:
                    await handle(event)  # type: ignore[misc]
                else:
                    handle(event)
            except Exception:  # any failure: see above
                message = event.message
                log.exception(
                    f"{name}_agent_failed", topic=message.topic, partition=message.partition, offset=message.offset
                )
                crash(EX_AGENT_FAILED)

    agent.__name__ = agent.__qualname__ = name.replace("-", "_")
    return agent


def results_topic(app: faust.App, settings: Settings) -> Any:
    """The results topic as the consumers read it: raw bytes, parsed by each consumer's rules."""
    return app.topic(
        settings.topics.results, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )


def published_alerts(app: faust.App, table: str, topic: str, partitions: int) -> Any:
    """A table keyed by `alert_id` whose changelog is the alerts topic `topic` itself: writing an
    alert publishes it, to the partition numbered like the result that decided it, and the member that
    owns a results partition reads back the alerts already published from it before it reads results
    (docs/architecture.md#consumers)."""
    changelog = app.topic(
        topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw", partitions=partitions
    )
    return app.Table(table, key_type=bytes, value_type=bytes, partitions=partitions, changelog_topic=changelog)


def check_partitions(settings: Settings, output: str) -> int:
    """The results topic's partition count; `output` (where a consumer's alerts go, numbered like the
    results' partitions) must have as many."""
    results = topics.partition_count(settings, settings.topics.results)
    found = topics.partition_count(settings, output)
    if found != results:
        raise ConfigurationError(
            f"{output} has {found} partitions, {settings.topics.results} {results}: an alert goes to the partition "
            "numbered like its result's; set them alike in topics/topics.yaml and run `pipeline topics apply`"
        )
    return results


def make_app(settings: Settings, group_id: str, from_beginning: bool, partitions: int) -> ConsumerApp:
    """`group_id` is Faust's app id: the Kafka group and the prefix of its tables' changelog topics.
    `from_beginning`: a group with no committed offsets starts at the topics' start, else at their end."""
    consumers = settings.consumers
    consumers.data_dir.mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
    return clients.faust_app(
        settings,
        group_id,
        ConsumerApp,
        env={},  # Faust's own environment variables would override these
        store="memory://",
        datadir=str(consumers.data_dir / f"{group_id}-data"),
        topic_partitions=partitions,
        consumer_auto_offset_reset="earliest" if from_beginning else "latest",
        web_enabled=False,
        topic_disable_leader=True,
        autodiscover=False,
        producer_acks=-1,
        producer_linger_ms=consumers.producer_linger_ms,
        producer_request_timeout=30.0,
        broker_commit_interval=consumers.commit_interval_s,
        broker_session_timeout=consumers.session_timeout_s,
        broker_heartbeat_interval=consumers.session_timeout_s / 4,
        stream_wait_empty=False,
        table_standby_replicas=0,
    )


class _Worker(faust.Worker):
    """Faust's worker, its stop bounded: a SIGTERM or SIGINT arms a timer that ends the process."""

    shutdown_timeout_s = 15.0

    def _arm(self) -> None:
        def expire() -> None:
            log.error("consumer_stop_timed_out", seconds=self.shutdown_timeout_s)
            crash(EX_SHUTDOWN_TIMED_OUT)

        timer = threading.Timer(self.shutdown_timeout_s, expire)
        timer.daemon = True
        timer.start()

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        log.info("consumer_ready", group_id=self.app.conf.id)

    def _on_sigterm(self) -> None:
        self._arm()
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self._arm()
        super()._on_sigint()


def run(app: ConsumerApp, settings: Settings, name: str) -> None:
    """Run the app's agents until SIGTERM or SIGINT; exits the process (0 once stopped cleanly)."""
    consumers = settings.consumers
    try:
        server, _ = start_http_server(consumers.metrics_port, addr=consumers.metrics_host)
    except OSError as e:
        raise ConfigurationError(
            f"metrics port {consumers.metrics_port} unavailable ({e.strerror}): give each consumer process "
            "its own PIPELINE_CONSUMERS__METRICS_PORT"
        ) from e
    log.info("consumer_starting", consumer=name, group_id=app.conf.id, metrics_port=server.server_port)
    app.finalize()
    app.worker_init()
    app.worker_init_post_autodiscover()
    worker = _Worker(
        app, loglevel=settings.log_level.upper(), quiet=True, redirect_stdouts=False, override_logging=False
    )
    worker.shutdown_timeout_s = consumers.shutdown_timeout_s
    worker.execute_from_commandline()  # exits
