from __future__ import annotations

from pipeline.scaling.cpus import Ticks, busy_fraction, quota_cpus, ticks, usable, usage_s


def test_the_usable_cpus_are_the_affinity_capped_by_the_quota_rounded_up():
    assert quota_cpus("max 100000\n") is None
    assert quota_cpus("150000 100000\n") == 1.5
    assert quota_cpus(None, "-1\n", "100000\n") is None
    assert quota_cpus(None, "200000\n", "100000\n") == 2.0
    assert usable(64, 1.5) == 2, "a 1.5 CPU quota on a 64-core node"
    assert usable(2, 8.0) == 2, "a quota above the affinity"
    assert usable(4, None) == 4
    assert usable(4, 0.2) == 1


STAT = """cpu  300 0 100 600 0 0 0 0 0 0
cpu0 100 0 50 300 0 0 0 0 0 0
cpu1 200 0 50 300 0 0 0 0 0 0
intr 1 2 3
"""
LATER = """cpu  500 0 140 680 0 0 0 0 0 0
cpu0 110 0 55 375 10 0 0 0 0 0
cpu1 390 0 85 305 0 0 0 0 0 0
intr 1 2 3
"""


def test_busy_is_the_share_of_the_usable_cpus_time_not_idle():
    assert ticks(STAT, {0, 1}) == Ticks(busy=400, total=1000)
    assert busy_fraction(ticks(STAT, {1}), ticks(LATER, {1})) == 225 / 230, "cpu1 alone: its own time"
    assert busy_fraction(ticks(STAT, {0}), ticks(LATER, {0})) == 15 / 100, "iowait is not busy"
    assert busy_fraction(ticks(STAT, {0}), ticks(STAT, {0})) is None


def test_a_cgroups_cpu_time_comes_from_v2_cpu_stat_or_v1_cpuacct():
    assert usage_s("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n") == 2.5
    assert usage_s(None, "3000000000\n") == 3.0
    assert usage_s(None, None) is None
