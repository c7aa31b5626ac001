from __future__ import annotations

import asyncio

import pytest
from confluent_kafka import KafkaError

from pipeline.gateway.publisher import PublishFailed, _settle


async def test_delivery_reports_settle_their_callers_futures():
    loop = asyncio.get_running_loop()
    written, refused, abandoned = loop.create_future(), loop.create_future(), loop.create_future()
    abandoned.cancel()  # its caller went away: the report is dropped, not raised
    _settle([(written, None), (refused, KafkaError(KafkaError._MSG_TIMED_OUT)), (abandoned, None)])

    assert written.result() is None
    with pytest.raises(PublishFailed):
        refused.result()
    assert abandoned.cancelled()
