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


def test_a_schedstat_line_gives_the_run_queue_wait():
    assert cpu.parse_schedstat("5000000 1234567 42\n") == 1_234_567


def test_waits_count_threads_started_since_in_full_and_leave_out_those_ended():
    before = {1: 1_000_000_000, 2: 500_000_000}
    after = {1: 1_250_000_000, 3: 100_000_000}  # thread 2 ended, 3 began
    assert cpu.waited(before, after) == 0.35


def test_three_processes_spinning_on_one_core_each_wait_for_it_two_thirds_of_the_time():
    """The meter against the scheduler: three busy processes pinned to one core for 0.6 s of wall time
    each run ~0.2 s and wait ~0.4 s, so together ~1.2 s of waiting against ~0.6 s on the core (more
    waiting, less running, if other work shares the core): a meter that read CPU time would say 0.6."""
    core = min(os.sched_getaffinity(0))
    spin = (
        "import os, time\n"
        f"os.sched_setaffinity(0, {{{core}}})\n"
        "input()\n"
        "end = time.monotonic() + 0.6\n"
        "while time.monotonic() < end: pass\n"
        "print('spun', flush=True)\n"
        "input()\n"
    )
    spinners = [
        subprocess.Popen([sys.executable, "-c", spin], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    try:
        meter = cpu.WaitMeter({str(i): p.pid for i, p in enumerate(spinners)}).start()
        for spinner in spinners:
            assert spinner.stdin is not None
            spinner.stdin.write("go\n")
            spinner.stdin.flush()
        for spinner in spinners:
            assert spinner.stdout is not None and spinner.stdout.readline() == "spun\n"
        waited = meter.stop()  # each is still alive, waiting for its next line
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait(10)
    assert sum(waited.values()) >= 0.9, waited
    assert cpu.WaitMeter({"gone": spinners[0].pid}).start().stop() == {}, "a process gone is not measured"
