"""The supervisor's worker processes: `pipeline worker`, numbered like a StatefulSet's pods.

Worker `i` is `<host>-<i>`: its instance id (so a restarted one fences its predecessor's open
transaction at once), its state directory `<worker.state_dir>/<host>-<i>` (kept across stops, so a
worker started again reads only its changelog's tail) and its log `<scaling.run_dir>/<host>-<i>.log`.
Workers are added at the top index and removed from the top, so the same indices keep coming back.
A stop is SIGTERM: the worker finishes its batch, commits it and leaves the group; one still running
after `stop_timeout_s` is killed, and its open transaction aborts (its requests are scored again by
their next owner, once). A worker that exits on its own is started again, after a delay that
doubles while it keeps exiting soon after its start (`restart_delay`): a worker that cannot start
(a broker gone, a bad setting) is not restarted every interval.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import structlog

from pipeline import metrics
from pipeline.settings import PROJECT_ROOT, Settings

log = structlog.get_logger(__name__)


def restart_delay(exits: int, base_s: float, max_s: float) -> float:
    """How long a worker that exited waits to start again: none after a long run (`exits` 0), then
    `base_s` for its first exit soon after a start, doubling with each one in a row up to `max_s`."""
    return 0.0 if exits <= 0 else min(max_s, base_s * 2 ** (exits - 1))


def instance(index: int) -> str:
    """Worker `index`'s instance id: unique across the supervisors of a group, each on its own host."""
    return f"{socket.gethostname().split('.')[0]}-{index}"


class WorkerPool:
    def __init__(self, settings: Settings, env: Mapping[str, str] | None = None) -> None:
        self._settings = settings
        self._env = dict(os.environ if env is None else env)
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        self._started: dict[int, float] = {}
        self._exits: dict[int, int] = {}  # exits in a row, each soon after its start
        self._due: dict[int, float] = {}  # workers that exited, waiting out their delay: when to start
        settings.scaling.run_dir.mkdir(parents=True, exist_ok=True)

    @property
    def size(self) -> int:
        return len(self._processes)

    def log_path(self, index: int) -> Path:
        return self._settings.scaling.run_dir / f"{instance(index)}.log"

    def resize(self, count: int) -> dict[str, float]:
        """Start or stop workers to `count`; the stop time of each one stopped. A worker waiting out
        its restart delay is started by `restart_exited` when it is due."""
        for index in [i for i in self._due if i >= count]:
            del self._due[index]  # its streak of exits is kept: started again, it waits as long
        for index in range(count):
            if index not in self._processes and index not in self._due:
                self._start(index)
        return self.stop([i for i in sorted(self._processes) if i >= count])

    def _start(self, index: int) -> None:
        scaling, worker = self._settings.scaling, self._settings.worker
        name = instance(index)
        port = scaling.worker_metrics_port + index if scaling.worker_metrics_port else 0
        env = {
            **self._env,
            "PIPELINE_WORKER__INSTANCE_ID": name,
            "PIPELINE_WORKER__STATE_DIR": str(worker.state_dir / name),
            "PIPELINE_WORKER__METRICS_PORT": str(port),
        }
        with open(self.log_path(index), "ab") as out:
            self._processes[index] = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "worker"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=PROJECT_ROOT,
                start_new_session=True,  # a Ctrl-C at the supervisor's terminal reaches the workers as its SIGTERM
            )
        self._started[index] = time.monotonic()
        log.info("worker_started", instance=name, pid=self._processes[index].pid, metrics_port=port)

    def stop(self, indices: list[int]) -> dict[str, float]:
        """SIGTERM to each at once, then wait for each (SIGKILL past the timeout); their stop times."""
        started = time.monotonic()
        stopping = {i: self._processes.pop(i) for i in indices if i in self._processes}
        for index in stopping:
            self._exits.pop(index, None)  # it ran until stopped: a later start begins a new streak
        for process in stopping.values():
            process.send_signal(signal.SIGTERM)
        deadline = started + self._settings.scaling.stop_timeout_s
        times = {}
        for index, process in stopping.items():
            killed = False
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                killed = True
            elapsed = time.monotonic() - started
            times[instance(index)] = elapsed
            metrics.WORKER_STOP_SECONDS.observe(elapsed)
            log.info(
                "worker_stopped",
                instance=instance(index),
                stop_s=round(elapsed, 3),
                exit_code=process.returncode,
                killed=killed,
            )
        return times

    def restart_exited(self) -> list[str]:
        """Start again each worker that exited without being stopped, once its delay is over; the
        instances started."""
        scaling, now = self._settings.scaling, time.monotonic()
        for index in [i for i, process in self._processes.items() if process.poll() is not None]:
            code = self._processes.pop(index).returncode
            ran = now - self._started[index]
            exits = self._exits.get(index, 0) + 1 if ran < scaling.restart_backoff_max_s else 0
            self._exits[index] = exits
            delay = restart_delay(exits, scaling.restart_backoff_s, scaling.restart_backoff_max_s)
            self._due[index] = now + delay
            metrics.SCALING_WORKER_EXITS.inc()
            log.warning(
                "worker_exited",
                instance=instance(index),
                exit_code=code,
                ran_s=round(ran, 1),
                restart_in_s=delay,
                log=str(self.log_path(index)),
            )
        due = sorted(i for i, at in self._due.items() if at <= now)
        for index in due:
            del self._due[index]
            self._start(index)
        return [instance(i) for i in due]

    def close(self) -> dict[str, float]:
        return self.stop(sorted(self._processes))
