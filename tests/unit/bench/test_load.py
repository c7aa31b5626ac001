"""The throughput group's warm-up (pipeline/bench/load.py)."""

from __future__ import annotations

from pipeline.bench import load
from pipeline.contract import parse_request
from pipeline.local import traffic


def test_the_warm_up_is_completed_with_one_valid_request_for_each_account_it_does_not_name():
    warmup = load.requests(50, prefix="w-")
    named = {int(m.key) for m in warmup if m.key is not None}
    rest = load.every_account(warmup, 200, prefix="a-")

    accounts = [parse_request(m.value).entity["account_id"] for m in rest]
    assert sorted(accounts) == [a for a in range(1, 201) if a not in named]
    assert [int(m.key) for m in rest if m.key is not None] == accounts  # keyed as the contract keys them
    event_ids = [m.event_id for m in rest]
    assert len(set(event_ids)) == len(rest) and not set(event_ids) & {m.event_id for m in warmup}


def test_a_warm_up_naming_every_account_needs_nothing_more():
    every = [
        traffic.message_for(
            {**traffic.valid_requests(1, prefix="x")[0], "event_id": f"x{a}", "entity": {"account_id": a}}
        )
        for a in range(1, 6)
    ]
    assert load.every_account(every, 5, prefix="a-") == []
