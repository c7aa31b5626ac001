"""A scenario group of `pipeline bench`: what it runs on (`Context`) and what it gives the runner (`Group`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.request import urlopen

from pipeline.bench.memory import status_mib
from pipeline.bench.options import Options
from pipeline.local.stack import LocalStack
from pipeline.settings import Settings

Report = dict[str, Any]  # the bench's whole report: each group's figures under its key, the summary


@dataclass(frozen=True)
class Context:
    """The local stack, its services up, the settings it runs them with, and the bench's options."""

    stack: LocalStack
    settings: Settings
    options: Options

    def service_pids(self) -> dict[str, int]:
        """The broker's and Triton's process ids (those running)."""
        pids = {}
        for name, pid_file in (("kafka", "kafka/kafka.pid"), ("tritonserver", "triton/triton.pid")):
            path = self.stack.run_dir / pid_file
            if path.exists():
                pids[name] = int(path.read_text().strip())
        return pids

    def services_rss(self) -> dict[str, float]:
        """Peak RSS (MiB) of each service so far."""
        peaks = {}
        for name, pid in self.service_pids().items():
            if (peak := status_mib(pid, "VmHWM")) is not None:
                peaks[name] = round(peak, 1)
        return peaks

    def stop(self, names: Iterable[str]) -> None:
        for name in names:
            self.stack.stop_process(name)


@dataclass(frozen=True)
class Group:
    """One scenario group: `name` as --only names it, `key` of its figures in the report, how it runs
    (its figures) and its block of the table, read from the report (the summary's figures too)."""

    name: str
    key: str
    run: Callable[[Context], Any]
    lines: Callable[[Report], list[str]]


def scrape(port: int) -> str:
    """The /metrics page a bench process serves on `port`."""
    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())
