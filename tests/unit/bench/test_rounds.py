"""Interleaved rounds after an unrecorded warm-up round (pipeline/bench/rounds.py)."""

from __future__ import annotations

from typing import Any

from pipeline.bench import rounds


def test_every_level_runs_once_a_round_in_order_and_the_warmup_round_is_not_recorded():
    ran: list[tuple[str, int]] = []

    def level(name: str) -> rounds.Level:
        def one(repetition: int) -> dict[str, Any]:
            ran.append((name, repetition))
            return {"p50": float(repetition)}

        return one

    recorded = rounds.interleaved(2, {"a": level("a"), "b": level("b")})

    assert ran == [("a", -1), ("b", -1), ("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    assert recorded == {"a": [{"p50": 0.0}, {"p50": 1.0}], "b": [{"p50": 0.0}, {"p50": 1.0}]}


def test_a_level_may_sit_a_round_out():
    recorded = rounds.interleaved(1, {"slow": lambda rep: None if rep == rounds.WARMUP else {"events_per_s": 1.0}})

    assert recorded == {"slow": [{"events_per_s": 1.0}]}


def test_without_the_warm_up_round_only_recorded_rounds_run():
    ran: list[int] = []
    recorded = rounds.interleaved(2, {"a": lambda rep: ran.append(rep) or {"p50": float(rep)}}, warm_up=False)

    assert ran == [0, 1]
    assert recorded == {"a": [{"p50": 0.0}, {"p50": 1.0}]}
