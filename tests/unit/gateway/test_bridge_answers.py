"""How the bridge turns a request's reply, or its failed delivery, into an HTTP answer."""

from __future__ import annotations

import asyncio

import orjson

from pipeline.gateway.bridge import Bridge, _delivered
from pipeline.gateway.publisher import PublishFailed
from pipeline.gateway.replies import Reply


async def test_a_failed_delivery_ends_the_callers_wait_with_503_naming_the_event():
    loop = asyncio.get_running_loop()
    answer, delivery = loop.create_future(), loop.create_future()
    delivery.add_done_callback(lambda d: _delivered(answer, "txn-1", 0.0, d))
    delivery.set_exception(PublishFailed("Broker: Message size too large"))
    await asyncio.wait([answer], timeout=1)  # woken by the report, not by the timeout

    result = Bridge._answer(("txn-1", "c1", answer), timeout_s=10)
    assert result.status == 503
    assert orjson.loads(result.body)["error"] == {
        "code": "unavailable",
        "message": "could not publish: Broker: Message size too large",
        "event_id": "txn-1",
    }


async def test_a_reply_that_came_first_is_the_answer_whatever_the_report_says_later():
    loop = asyncio.get_running_loop()
    answer, delivery = loop.create_future(), loop.create_future()
    delivery.add_done_callback(lambda d: _delivered(answer, "txn-2", 0.0, d))
    answer.set_result(Reply("result", b'{"event_id": "txn-2", "score": 0.1}'))
    delivery.set_exception(PublishFailed("timed out"))
    await asyncio.sleep(0)

    result = Bridge._answer(("txn-2", "c2", answer), timeout_s=10)
    assert result.status == 200 and result.body == b'{"event_id": "txn-2", "score": 0.1}'


async def test_no_reply_within_the_timeout_is_a_504_and_the_late_report_is_ignored():
    loop = asyncio.get_running_loop()
    answer, delivery = loop.create_future(), loop.create_future()
    delivery.add_done_callback(lambda d: _delivered(answer, "txn-3", 0.0, d))

    result = Bridge._answer(("txn-3", "c3", answer), timeout_s=0.5)
    delivery.set_result(None)
    await asyncio.sleep(0)
    assert result.status == 504 and orjson.loads(result.body)["error"]["code"] == "timeout"
