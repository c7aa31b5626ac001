from __future__ import annotations

import os
import time

from structlog.testing import capture_logs

from pipeline.scaling.pool import WorkerPool, restart_delay
from pipeline.settings import Settings


def test_the_restart_delay_doubles_with_each_exit_in_a_row_up_to_its_cap():
    assert [restart_delay(n, 2.0, 60.0) for n in range(8)] == [0.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_a_worker_that_cannot_start_is_restarted_ever_later_not_every_interval(tmp_path):
    settings = Settings().updated(
        scaling={"run_dir": tmp_path / "run", "restart_backoff_s": 0.3, "restart_backoff_max_s": 30.0},
        worker={"state_dir": tmp_path / "state"},
    )
    # A real `pipeline worker` that exits at once: its settings do not parse.
    pool = WorkerPool(settings, {**os.environ, "PIPELINE_WORKER__BATCH_SIZE": "many"})
    seen, restarted = [], []  # when each exit was noticed, when each restart came
    with capture_logs() as logs:
        pool.resize(1)
        deadline = time.monotonic() + 60
        while len(seen) < 3 and time.monotonic() < deadline:
            before = _exits(logs)
            started = pool.restart_exited()
            now = time.monotonic()
            seen += [now] * (len(_exits(logs)) - len(before))
            restarted += [now] * len(started)
            time.sleep(0.05)
        pool.close()

    exited = _exits(logs)
    delays = [e["restart_in_s"] for e in exited[:3]]
    assert delays == [0.3, 0.6, 1.2]
    assert len(restarted) == 2, "started again after each delay, and not before"
    assert all(again - exit >= delay - 0.05 for exit, again, delay in zip(seen, restarted, delays, strict=False))
    assert all(e["exit_code"] != 0 for e in exited)
    assert "many" in (tmp_path / "run" / f"{exited[0]['instance']}.log").read_text(), "its log says why"


def _exits(logs: list[dict]) -> list[dict]:
    return [e for e in logs if e["event"] == "worker_exited"]
