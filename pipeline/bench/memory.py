"""Resident memory of processes, from /proc: peak (VmHWM) and current (VmRSS), in MiB."""

from __future__ import annotations

import threading
from pathlib import Path


def status_mib(pid: int, field: str) -> float | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return parse_status(text, field)


def parse_status(text: str, field: str) -> float | None:
    """Pure: a `VmHWM:   123456 kB` line of /proc/<pid>/status → MiB."""
    for line in text.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return None


class RssSampler:
    """Samples VmRSS of some processes every `interval_s` in a thread; keeps every sample."""

    def __init__(self, pids: dict[str, int], interval_s: float = 1.0) -> None:
        self.pids = pids
        self.samples: dict[str, list[float]] = {name: [] for name in pids}
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def track(self, name: str, pid: int) -> None:
        self.samples[name] = []
        self.pids = {**self.pids, name: pid}  # replaced, not mutated: the sampling thread reads it

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            for name, pid in self.pids.items():
                if (rss := status_mib(pid, "VmRSS")) is not None:
                    self.samples[name].append(rss)

    def stop(self) -> dict[str, float]:
        """Peak RSS (MiB) of each process: the kernel's high-water mark while it is alive."""
        self._stop.set()
        self._thread.join(5)
        peaks = {}
        for name, pid in self.pids.items():
            peak = status_mib(pid, "VmHWM")
            if peak is None and self.samples[name]:
                peak = max(self.samples[name])
            if peak is not None:
                peaks[name] = round(peak, 1)
        return peaks
