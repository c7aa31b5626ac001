"""The CPUs this process may use, and how busy they are: the local supervisor's ceiling and one of its
saturation signals.

The usable count is the fewest of the CPUs the scheduler lets the process run on (its affinity) and
the cgroup's quota rounded up (v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), never the
host's count: a container limited to two CPUs on a 64-core node has two. Busy, between two
readings: under a quota, the cgroup's own CPU time over the quota's (`/proc/stat` is the host's, and
a quota does not narrow the affinity); otherwise `/proc/stat`'s lines of the CPUs of the affinity.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

_CGROUP = Path("/sys/fs/cgroup")


def quota_cpus(cpu_max: str | None = None, cfs_quota: str | None = None, cfs_period: str | None = None) -> float | None:
    """Pure: the CPUs a cgroup quota allows (None: no quota). v2's `cpu.max` is "<quota|max> <period>";
    v1 gives the quota (-1: none) and the period apart."""
    if cpu_max is not None:
        quota, _, period = cpu_max.strip().partition(" ")
        if quota != "max" and period:
            return int(quota) / int(period)
        return None
    if cfs_quota is not None and cfs_period is not None and int(cfs_quota) > 0:
        return int(cfs_quota) / int(cfs_period)
    return None


def usable(affinity: int, quota: float | None) -> int:
    """Pure: whole CPUs a process may keep busy: its affinity, capped by the quota rounded up."""
    return max(1, min(affinity, math.ceil(quota)) if quota is not None else affinity)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def allowed() -> set[int]:
    return set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def quota() -> float | None:
    """The cgroup's CPU quota in CPUs (None: none, or not Linux)."""
    found = quota_cpus(_read(_CGROUP / "cpu.max")) if (_CGROUP / "cpu.max").exists() else None
    if found is None:
        v1 = _CGROUP / "cpu"
        found = quota_cpus(None, _read(v1 / "cpu.cfs_quota_us"), _read(v1 / "cpu.cfs_period_us"))
    return found


def count() -> int:
    """The CPUs this process may use (see the module)."""
    return usable(len(allowed()), quota())


def usage_s(cpu_stat: str | None = None, cpuacct_usage: str | None = None) -> float | None:
    """Pure: the cgroup's CPU seconds used, from v2 `cpu.stat` (usage_usec) or v1 `cpuacct.usage` (ns)."""
    if cpu_stat is not None:
        for line in cpu_stat.splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
    if cpuacct_usage is not None and cpuacct_usage.strip():
        return int(cpuacct_usage) / 1e9
    return None


def _cgroup_usage_s() -> float | None:
    return usage_s(_read(_CGROUP / "cpu.stat"), _read(_CGROUP / "cpuacct" / "cpuacct.usage"))


@dataclass(frozen=True)
class Ticks:
    busy: int
    total: int


def ticks(stat: str, cpus: set[int]) -> Ticks:
    """Pure: busy and total ticks of `cpus` from `/proc/stat` (idle and iowait are not busy)."""
    busy = total = 0
    for line in stat.splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(values)
        busy += sum(values) - values[3] - values[4]
    return Ticks(busy, total)


def busy_fraction(before: Ticks, after: Ticks) -> float | None:
    """Pure: the share of the CPUs' time that was busy between two readings (None: no time passed)."""
    elapsed = after.total - before.total
    return (after.busy - before.busy) / elapsed if elapsed > 0 else None


class CpuMeter:
    """How busy the usable CPUs were since the last reading (None at the first, or off Linux)."""

    def __init__(self) -> None:
        self._cpus, self._quota = allowed(), quota()
        self._last: Ticks | None = None
        self._used: tuple[float, float] | None = None  # (monotonic s, cgroup CPU s) at the last reading

    def read(self) -> float | None:
        if self._quota is not None and (used := _cgroup_usage_s()) is not None:
            now, last = time.monotonic(), self._used
            self._used = (now, used)
            if last is None or now <= last[0]:
                return None
            return min(1.0, (used - last[1]) / ((now - last[0]) * self._quota))
        stat = _read(Path("/proc/stat"))
        if stat is None:
            return None
        previous, self._last = self._last, ticks(stat, self._cpus)
        return busy_fraction(previous, self._last) if previous is not None else None
