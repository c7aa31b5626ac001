"""What the bench ran on: its figures compare within one run on one machine, never across them."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    cpu, memory_kib = _proc_field("/proc/cpuinfo", "model name"), _proc_field("/proc/meminfo", "MemTotal")
    return {
        "cpu": platform.processor() if cpu is None else cpu,
        "cores": os.cpu_count(),
        "memory_mib": int(memory_kib.split()[0]) // 1024 if memory_kib else 0,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu": "none" if not Path("/dev/nvidia0").exists() else "nvidia",
        "note": "Kafka, Triton, the workers, the peers and the load generator all share this machine",
    }


def _proc_field(path: str, name: str) -> str | None:
    """The value of the first `name: value` line of a /proc file, if any."""
    for line in Path(path).read_text().splitlines():
        if line.startswith(name):
            return line.split(":", 1)[1].strip()
    return None
