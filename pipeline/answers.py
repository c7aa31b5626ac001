"""Answers to HTTP callers, sent as soon as their requests are scored (`worker.reply_when = "scored"`).

A caller waiting on the bridge needs its result, not the transaction that records it: that
transaction is most of a request's time under load (the worker alternates scoring and committing,
so a request otherwise waits for the cycle in progress, then its own scoring and commit). So the
replies of a scored batch are published at once, outside the transaction, on an idempotent producer
of their own, while the results, dead letters and offsets keep their transaction.

Why this loses nothing: the request was appended to the requests topic before the bridge waited, and
its offset is only committed with its result, so every answered request also gets its one committed
result (or dead letter). If that transaction aborts, the request is scored again and answered again;
the bridge has already resolved the caller and drops the second answer. The answer and the committed
result can differ only if the feature rows or the model changed between those two attempts.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from confluent_kafka import KafkaError, Message, Producer

from pipeline import metrics
from pipeline.delivery import produce_draining
from pipeline.processor import Outbound
from pipeline.settings import Settings

log = structlog.get_logger(__name__)


class AnswerProducer:
    def __init__(self, settings: Settings) -> None:
        self._timeout_s = settings.worker.transaction_timeout_ms / 1000
        self._producer = Producer(
            {
                "bootstrap.servers": settings.kafka.bootstrap_servers,
                "client.id": f"{settings.kafka.client_id}-worker-answers",
                "enable.idempotence": True,
                "linger.ms": 0,  # a caller is waiting
                # A caller gives up after its deadline (the bridge's timeout); later is no answer.
                "message.timeout.ms": max(1000, int(settings.gateway.timeout_s * 1000)),
                **settings.kafka.extra,
            }
        )

    def send(self, answers: Sequence[Outbound]) -> None:
        """Queue the answers (librdkafka sends them from its own threads) and serve delivery reports.
        Non-blocking unless librdkafka's local queue is full."""
        for answer in answers:
            produce_draining(self._producer, answer, on_delivery=_delivered)
        self._producer.poll(0)
        metrics.ANSWERS.inc(len(answers))

    def close(self) -> None:
        self._producer.flush(self._timeout_s)


def _delivered(error: KafkaError | None, message: Message) -> None:
    if error is not None:
        # The caller gets a 504 naming its event_id; the result itself is committed regardless.
        metrics.ANSWERS_FAILED.inc()
        log.warning("answer_not_delivered", topic=message.topic(), partition=message.partition(), error=str(error))
