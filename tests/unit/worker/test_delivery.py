"""A transactional producer that cannot be made is replaced for a bounded time, then the worker stops
(a real librdkafka producer, pointed at an address where no broker listens)."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.errors import ProducerUnavailable
from pipeline.settings import Settings
from pipeline.worker import delivery
from pipeline.worker.delivery import BatchCommit, TransactionalDelivery


async def test_a_producer_that_no_broker_answers_stops_the_commit_with_producer_unavailable(monkeypatch):
    settings = Settings().updated(kafka={"bootstrap_servers": "127.0.0.1:1"}, worker={"transaction_timeout_ms": 1000})
    monkeypatch.setattr(delivery, "_REPLACE_FOR_S", 2.0)
    lane = TransactionalDelivery(settings, "requests")

    # The guard only keeps a hang from stalling the suite: the promise is the error, not its timing.
    with pytest.raises(ProducerUnavailable, match="no transactional producer could be made"):
        await asyncio.wait_for(lane.commit(BatchCommit([], {0: 1}, None)), timeout=60)
