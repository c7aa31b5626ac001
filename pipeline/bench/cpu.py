"""CPU time of processes, from /proc: what a scenario's work costs, the figure that travels between
machines where rates move with the host's speed and load; and the time their threads waited for a
core (schedstat), what a latency made of several processes' hops pays on a busy box."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, with_descendants: bool = True) -> float | None:
    """User + system CPU seconds of every thread of a live process and (unless not
    `with_descendants`) of its live descendants (a Triton backend's stub processes, say); None once
    the process is gone."""
    own = _stat(pid)
    if own is None:
        return None
    if not with_descendants:
        return parse_stat(own)
    return parse_stat(own) + sum(parse_stat(text) for child in descendants(pid) if (text := _stat(child)))


def descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (text := _stat(int(entry.name))) is not None:
            parents.setdefault(parse_ppid(text), []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        children = parents.get(frontier.pop(), [])
        found += children
        frontier += children
    return found


def parse_stat(text: str) -> float:
    """Pure: utime + stime of a /proc/<pid>/stat line, in seconds. The command name (in parentheses)
    may hold spaces, so fields are counted after its closing one."""
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S  # fields 14 and 15 of proc(5)


def parse_ppid(text: str) -> int:
    return int(text[text.rindex(")") + 2 :].split()[1])


def _stat(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None


class CpuMeter:
    """CPU seconds each named process spends between `start()` and `stop()`, with its descendants'
    unless not `with_descendants` (the bench's own process, whose descendants are what it measures)."""

    def __init__(self, pids: dict[str, int], with_descendants: bool = True) -> None:
        self.pids = pids
        self._descendants = with_descendants
        self._began: dict[str, float] = {}

    def start(self) -> CpuMeter:
        self._began = {
            name: s for name, pid in self.pids.items() if (s := cpu_seconds(pid, self._descendants)) is not None
        }
        return self

    def stop(self) -> dict[str, float]:
        spent = {}
        for name, pid in self.pids.items():
            now = cpu_seconds(pid, self._descendants)
            if now is not None and name in self._began:
                spent[name] = round(now - self._began[name], 3)
        return spent


def parse_schedstat(text: str) -> int:
    """Pure: nanoseconds a thread has waited on a run queue, the second field of
    /proc/<pid>/task/<tid>/schedstat (time on the CPU, time waiting for one, timeslices run)."""
    return int(text.split()[1])


def run_queue_waits(pid: int, with_descendants: bool = True) -> dict[int, int]:
    """Each live thread's run-queue wait so far (ns), by thread id, of a process and (unless not
    `with_descendants`) its descendants; empty once the process is gone."""
    waits: dict[int, int] = {}
    for process in [pid, *(descendants(pid) if with_descendants else [])]:
        for task in Path(f"/proc/{process}/task").glob("*"):
            try:
                waits[int(task.name)] = parse_schedstat((task / "schedstat").read_text())
            except (OSError, ValueError, IndexError):  # the thread is gone, or no schedstat here
                continue
    return waits


def waited(before: dict[int, int], after: dict[int, int]) -> float:
    """Pure: seconds the threads waited for a core between two `run_queue_waits`: a thread started
    since counts from zero, one ended since is not counted (its last wait is not known)."""
    return sum(ns - before.get(tid, 0) for tid, ns in after.items()) / 1e9


class WaitMeter:
    """Seconds each named process's threads (and its descendants') spent runnable but waiting for a
    core between `start()` and `stop()`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._began: dict[str, dict[int, int]] = {}

    def start(self) -> WaitMeter:
        self._began = {name: run_queue_waits(pid) for name, pid in self.pids.items()}
        return self

    def stop(self) -> dict[str, float]:
        spent = {}
        for name, pid in self.pids.items():
            if (now := run_queue_waits(pid)) and self._began.get(name):
                spent[name] = round(waited(self._began[name], now), 3)
        return spent


def per_million(spent: dict[str, float], events: int) -> dict[str, float]:
    """Pure: CPU seconds per million events of each entry."""
    return {name: round(seconds * 1e6 / events, 2) if events else float("nan") for name, seconds in spent.items()}
