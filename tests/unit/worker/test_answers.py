"""A worker's direct answer links to a bridge's answer listener, over real local TCP (no Kafka):
callers resolved, and answers handed back for the replies topic whenever the bridge is out of reach."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.contract import CORRELATION_ID, REPLY_KIND
from pipeline.gateway.answer_server import AnswerServer
from pipeline.gateway.replies import Reply, ReplyRouter
from pipeline.settings import Settings
from pipeline.worker.answers import AnswerLinks
from pipeline.worker.messages import Outbound

SETTINGS = Settings().updated(worker={"answer_retry_s": 0.2})


def answer(correlation: str, address: str | None, kind: str = "result") -> Outbound:
    headers = ((REPLY_KIND, kind.encode()), (CORRELATION_ID, correlation.encode()))
    value = b'{"event_id":"%s"}' % correlation.encode()
    return Outbound(0, "replies", None, value, 0, headers, None if address is None else address.encode())


@pytest.fixture
async def bridge():
    router = ReplyRouter(SETTINGS)  # only its futures: no Kafka consumer is started
    server = AnswerServer(SETTINGS.gateway, router)
    await server.start()
    yield router, server
    await server.stop()


async def until(condition, timeout_s=5.0):
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def test_answers_resolve_their_callers_once_the_link_is_open(bridge):
    router, server = bridge
    links = AnswerLinks(SETTINGS.worker)
    waiting = {c: router.expect(c) for c in ("c1", "c2", "c3")}

    first = links.send([answer("c1", server.address)])  # no link yet: this one takes the topic
    assert [a.headers for a in first] == [answer("c1", server.address).headers]
    router.resolve("c1", Reply("result", first[0].value), route="topic")
    await until(lambda: links._links[server.address.encode()].transport is not None)
    assert links.send([answer("c2", server.address), answer("c3", server.address, "dead_letter")]) == []

    await until(lambda: all(f.done() for f in waiting.values()))
    assert waiting["c2"].result() == Reply("result", b'{"event_id":"c2"}')
    assert waiting["c3"].result() == Reply("dead_letter", b'{"event_id":"c3"}')
    links.close()


async def test_answers_without_an_address_or_to_a_stopped_bridge_go_back_for_the_topic(bridge):
    _, server = bridge
    links = AnswerLinks(SETTINGS.worker)
    address = server.address
    links.send([answer("warm", address)])
    await until(lambda: links._links[address.encode()].transport is not None)

    assert [a.answer_to for a in links.send([answer("plain", None)])] == [None]
    await server.stop()
    await until(lambda: links._links[address.encode()].transport.is_closing())
    late = [answer("late-1", address), answer("late-2", address)]
    assert links.send(late) == late, "nothing is written to a closed link"
    await asyncio.sleep(0.05)  # the reconnect fails: the address is skipped until answer_retry_s has passed
    assert links.send([answer("late-3", address)]) == [answer("late-3", address)]
    links.close()


async def test_an_address_that_refuses_is_retried_only_after_a_pause():
    links = AnswerLinks(SETTINGS.worker)
    nowhere = answer("x", "127.0.0.1:1/" + "0" * 32)
    assert links.send([nowhere]) == [nowhere]
    await until(lambda: links._links[nowhere.answer_to].connecting is None)
    link = links._links[nowhere.answer_to]
    assert link.transport is None and link.retry_at > 0
    assert links.send([nowhere]) == [nowhere] and link.connecting is None, "no new attempt before the pause ends"
    await asyncio.sleep(0.25)
    links.send([nowhere])
    assert link.connecting is not None, "tried again after answer_retry_s"
    links.close()


async def test_addresses_of_bridges_gone_for_good_are_forgotten():
    links = AnswerLinks(SETTINGS.worker)
    for port in range(1, 201):  # nothing listens on these: each bridge "restarted" elsewhere
        address = f"127.0.0.1:{port}/{'0' * 32}"
        links.send([answer(f"c{port}", address)])
        await until(lambda a=address: links._links[a.encode()].connecting is None)
    assert len(links._links) <= 64
    links.close()


async def test_another_bridge_at_the_same_address_is_not_taken_for_the_one_that_asked(bridge):
    router, server = bridge
    # Same host and port, another instance's token: a loopback address seen from another host, or
    # a bridge restarted on the same port.
    elsewhere = server.address.rpartition("/")[0] + "/" + "0" * 32
    links = AnswerLinks(SETTINGS.worker)
    waiting = router.expect("mine")

    links.send([answer("mine", elsewhere)])
    await until(lambda: links._links[elsewhere.encode()].connecting is None)

    assert not links._links[elsewhere.encode()].open
    assert links.send([answer("mine", elsewhere)]) == [answer("mine", elsewhere)], "it takes the replies topic"
    assert not waiting.done()
    links.close()


async def test_what_is_not_a_bridge_is_never_written_to():
    received = []

    async def listener(reader, writer):  # something that is not a bridge, listening quietly
        received.append(await reader.read(1024))
        writer.close()

    server = await asyncio.start_server(listener, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    links = AnswerLinks(SETTINGS.worker)
    plain = answer("x", f"{host}:{port}")  # no bridge token: not even a connection
    named = answer("y", f"{host}:{port}/{'0' * 32}")  # a token, but nobody greets with it

    assert links.send([plain, named]) == [plain, named]
    await until(lambda: all(links._links[a.answer_to].connecting is None for a in (plain, named)))
    assert links.send([plain, named]) == [plain, named]
    await until(lambda: received)
    assert received == [b""], "one connection, closed by the worker without a byte written"
    server.close()
    await server.wait_closed()
    links.close()
