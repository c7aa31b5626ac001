from __future__ import annotations

from pipeline.replay.pacing import transaction_rows, wait_s


def test_without_a_rate_nothing_waits_and_transactions_take_whole_chunks():
    assert wait_s(1_000_000, None, 0.1) == 0.0
    assert transaction_rows(None, 10_000) == 10_000


def test_a_rate_is_kept_by_waiting_for_the_published_count():
    assert wait_s(500, 100.0, 2.0) == 3.0, "500 at 100/s take 5 s; 2 s have passed"
    assert wait_s(100, 100.0, 2.0) == 0.0, "behind the rate: no wait"


def test_a_slow_rate_commits_half_a_second_of_it_at_a_time():
    assert transaction_rows(100.0, 10_000) == 50
    assert transaction_rows(1.0, 10_000) == 1
    assert transaction_rows(1e9, 10_000) == 10_000
