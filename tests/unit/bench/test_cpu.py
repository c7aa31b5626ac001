"""CPU seconds from /proc (pipeline/bench/cpu.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from pipeline.bench import cpu

STAT = "4242 (tritonserver (x) ) S 1 4242 4242 0 -1 4194560 9 0 0 0 250 50 7 3 20 0 1 0 100 0 0"


def test_a_stat_line_gives_user_plus_system_seconds_whatever_the_command_name_holds():
    ticks = os.sysconf("SC_CLK_TCK")
    assert cpu.parse_stat(STAT) == (250 + 50) / ticks
    assert cpu.parse_ppid(STAT) == 1


def test_a_busy_child_counts_towards_its_parent_unless_asked_not_to_and_a_gone_process_is_none():
    busy = "import time\ninput()\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\ninput()"
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {busy!r}])"],
        stdin=subprocess.PIPE,
    )
    assert parent.stdin is not None
    try:
        meter = cpu.CpuMeter({"parent": parent.pid}).start()
        alone = cpu.CpuMeter({"parent": parent.pid}, with_descendants=False).start()
        parent.stdin.write(b"spin\n")  # the grandchild spins once the meter has started
        parent.stdin.flush()
        for _ in range(100):
            spent = meter.stop()["parent"]
            if spent >= 0.25:
                break
            subprocess.run([sys.executable, "-c", "import time; time.sleep(0.05)"], check=True)
        assert spent >= 0.25, "the child's CPU is the parent's"
        assert alone.stop()["parent"] < 0.1, "the parent alone only waits for its child"
    finally:
        parent.stdin.close()
        parent.wait(10)
    assert cpu.cpu_seconds(parent.pid) is None


def test_per_million_events():
    assert cpu.per_million({"worker": 2.5, "kafka": 1.0}, 500_000) == {"worker": 5.0, "kafka": 2.0}
