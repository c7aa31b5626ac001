"""The dedup state's life beyond one worker's run, on the real services: a state directory in use
by a live worker is refused to a second one; a results topic deleted and recreated under a kept state
directory is detected, and the state of its partitions rebuilt from what the new topic holds; and a
store of millions of entries stays within the memory and disk the docs state for it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import pytest

from pipeline import topics
from pipeline.local import probe, traffic
from pipeline.local.stack import PROJECT_ROOT, settings_env
from pipeline.worker.store import StateStore
from tests.conftest import free_port, metric

pytestmark = pytest.mark.integration


# -- helpers ------------------------------------------------------------------------------------------
def _worker_to_its_end(settings, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """`pipeline worker` with `settings`, until it exits by itself; one that gets ready instead is stopped
    and fails the test."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "worker"],
            env={**os.environ, **settings_env(settings)},
            cwd=PROJECT_ROOT,
            stdout=out,
            stderr=err,
            text=True,
        )
        deadline = time.monotonic() + timeout_s
        try:
            while process.poll() is None:
                err.seek(0)
                assert "worker_ready" not in err.read(), "the second worker started"
                assert time.monotonic() < deadline, f"the second worker still running after {timeout_s:g} s"
                time.sleep(0.2)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(process.args, process.returncode, out.read(), err.read())


def _sentinels(requests, prefix: str) -> list[dict[str, object]]:
    """A fresh event per request, for the same entity: published after repeats of `requests`, on their
    partitions (same key), its result committed means every repeat before it was handled."""
    return [dict(r, event_id=f"{prefix}{i:07d}") for i, r in enumerate(requests)]


def _score(settings, requests, start, timeout_s: float = 120) -> probe.Collected:
    """Publish `requests` and read results from `start` until each of them has one."""
    wanted = {str(r["event_id"]) for r in requests}
    probe.publish(settings, [traffic.message_for(r) for r in requests])
    return probe.collect(settings, start, lambda c: wanted <= c.results.keys(), timeout_s=timeout_s, settle_s=1)


def _repeat_then_sentinels(settings, repeats, start, prefix: str) -> probe.Collected:
    """Publish `repeats`, then a sentinel per repeat (same entity, new event); read from `start` until
    every sentinel's result is in, so that any result a repeat got is in too."""
    sentinels = _sentinels(repeats, prefix)
    wanted = {str(s["event_id"]) for s in sentinels}
    probe.publish(settings, [traffic.message_for(r) for r in [*repeats, *sentinels]])
    collected = probe.collect(settings, start, lambda c: wanted <= c.results.keys(), timeout_s=120, settle_s=1)
    assert wanted <= collected.results.keys(), "every sentinel scored"
    return collected


def _ids(requests) -> list[str]:
    return [str(r["event_id"]) for r in requests]


def _results_per_partition(settings) -> dict[int, int]:
    ends = probe.end_offsets(settings, [settings.topics.results])
    return {tp.partition: offset for tp, offset in ends.items()}


def _recreate_results_topic(settings, timeout_s: float = 60) -> None:
    """Delete the results topic, wait until the broker no longer lists it, create it again (same name,
    partitions and config, from topics/topics.yaml)."""
    admin = topics.admin_client(settings)
    name = settings.topics.results
    for future in admin.delete_topics([name], operation_timeout=30).values():
        future.result()
    deadline = time.monotonic() + timeout_s
    while name in admin.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline, f"{name} still listed {timeout_s:g} s after its deletion"
        time.sleep(0.2)
    assert name in topics.apply(settings).created
    assert set(_results_per_partition(settings).values()) == {0}, "a new, empty results topic"


# -- one worker per state directory ---------------------------------------------------------------------
@pytest.mark.parametrize("topics_of", ["its own", "another"])
def test_a_second_worker_on_a_live_workers_state_directory_exits_naming_it_and_the_first_keeps_scoring(
    pipeline_settings, start_worker, tmp_path, topics_of
):
    """Same app id and state directory; with the same topics, or (a misconfigured second deployment)
    others, for which the directory would not be trusted: refused all the same, and nothing wiped."""
    settings = pipeline_settings(state_dir=tmp_path / "state", metrics_port=free_port())
    start = probe.end_offsets(settings, [settings.topics.results])
    first = start_worker(settings)
    before = traffic.valid_requests(12, prefix="held-")
    _score(settings, before, start)

    second = settings if topics_of == "its own" else pipeline_settings().updated(worker=settings.worker.model_dump())
    refused = _worker_to_its_end(second.updated(worker={"metrics_port": free_port()}))

    assert refused.returncode != 0, refused.stderr[-2000:]
    directory = tmp_path / "state" / settings.worker.app_id
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: configuration_error: the state directory {directory} is in use by another worker; "
        "give each worker its own PIPELINE_WORKER__STATE_DIR"
    ], refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr
    assert first.poll() is None, "the first worker is still running"
    # The first still scores, and its state is whole: new events get one result each, repeats of
    # those scored before the refused start none (sentinels after them, on their partitions).
    after = traffic.valid_requests(12, prefix="after-refusal-")
    _score(settings, after, start)
    collected = _repeat_then_sentinels(settings, before + after, start, "sentinel-refusal-")
    assert {e: len(r) for e, r in collected.results.items() if len(r) > 1} == {}, "no repeat scored twice"
    assert set(_ids(before + after)) <= collected.results.keys()


# -- a results topic recreated under a kept state directory ---------------------------------------------
def _stop(process) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0


def test_a_recreated_results_topic_is_detected_and_the_state_rebuilt_from_the_new_topic(
    pipeline_settings, start_worker, tmp_path
):
    """The state is what the results topic holds within the window. A directory recorded for a results
    topic since deleted is not trusted (every partition restored cold), so events scored before the
    deletion, whose results went with the old topic, are scored again once; events scored after it
    are deduplicated as always."""
    settings = pipeline_settings(state_dir=tmp_path / "state", metrics_port=free_port())
    first = start_worker(settings)
    old = traffic.valid_requests(40, prefix="old-topic-")
    _score(settings, old, probe.end_offsets(settings, [settings.topics.results]))
    _stop(first)
    assert any(_results_per_partition(settings).values()), "the old topic held results"
    _recreate_results_topic(settings)

    restarted = settings.updated(worker={"metrics_port": free_port()})
    start_worker(restarted)
    port = restarted.worker.metrics_port
    assert metric(port, "pipeline_state_restores_total", mode="cold") == 12
    assert metric(port, "pipeline_state_restores_total", mode="warm") == 0
    assert metric(port, "pipeline_state_restored_entries_total") == 0, "nothing on the new topic to read"

    start = probe.end_offsets(settings, [settings.topics.results])
    new = traffic.valid_requests(40, prefix="new-topic-")
    _score(settings, new, start)
    # Each repeated twice: a new event's repeats get nothing; an old event's first repeat is scored
    # (its entry went with its result) and its second gets nothing.
    collected = _repeat_then_sentinels(settings, new + old + new + old, start, "sentinel-recreated-")

    counts = {e: len(r) for e, r in collected.results.items()}
    not_once = {e: counts.get(e, 0) for e in _ids(new) if counts.get(e) != 1}
    assert not not_once, f"events scored after the recreation: one result each, their repeats none: {not_once}"
    not_once = {e: counts.get(e, 0) for e in _ids(old) if counts.get(e) != 1}
    assert not not_once, f"events scored before it: scored again once on the new topic, then no more: {not_once}"


def test_a_recreated_results_topic_grown_past_the_recorded_offsets_is_not_taken_for_the_old_one(
    pipeline_settings, start_worker, tmp_path
):
    """While a worker is away, the results topic is recreated and another worker (a state directory of
    its own) writes past the offsets the first one recorded: offsets alone cannot tell the topics
    apart. Back on its directory, the first must still rebuild from the new topic, or the results
    written below its recorded offsets are missed and their repeats scored again."""
    settings = pipeline_settings(state_dir=tmp_path / "a", metrics_port=free_port())
    first = start_worker(settings)
    old = traffic.valid_requests(24, prefix="grown-old-")
    _score(settings, old, probe.end_offsets(settings, [settings.topics.results]))
    _stop(first)
    recorded = _results_per_partition(settings)
    _recreate_results_topic(settings)

    second = start_worker(settings.updated(worker={"state_dir": tmp_path / "b", "metrics_port": free_port()}))
    # The same entities (so the same partitions), three times over: past every recorded offset.
    middle = [dict(r, event_id=f"grown-middle-{k}-{i}") for k in range(3) for i, r in enumerate(old)]
    _score(settings, middle, probe.end_offsets(settings, [settings.topics.results]))
    _stop(second)
    grown = _results_per_partition(settings)
    assert all(grown[p] >= end for p, end in recorded.items()), f"recorded {recorded}, now {grown}"

    back = settings.updated(worker={"metrics_port": free_port()})
    start_worker(back)
    assert metric(back.worker.metrics_port, "pipeline_state_restores_total", mode="cold") == 12
    start = dict.fromkeys(probe.end_offsets(settings, [settings.topics.results]), 0)  # the new topic's start
    collected = _repeat_then_sentinels(settings, middle, start, "sentinel-grown-")
    doubled = {e: len(collected.results[e]) for e in _ids(middle) if len(collected.results[e]) != 1}
    assert not doubled, f"events scored on the new topic while the worker was away, scored again: {doubled}"


def test_a_store_recorded_for_another_results_topic_id_is_wiped_and_an_unknown_id_trusted(tmp_path):
    """The rule the two tests above rest on, at the store: the id is compared only when both the
    directory and the opener know it (directories written before ids were recorded, and tools that
    ask no broker, keep their entries)."""
    identity = {"app_id": "a", "requests": "r", "results": "s", "partitions": 12}

    def reopened(changelog_id: str | None) -> tuple[int | None, str | None]:
        store = StateStore(tmp_path, identity, 3600.0, 8 << 20, changelog_id)
        try:
            offset = store.offset(0)
            store.write(0, [("e", 6, time.time())], 7)
        finally:
            store.close()
        return offset, orjson.loads((tmp_path / "identity.json").read_bytes()).get("changelog_id")

    assert reopened(None) == (None, None)
    assert reopened("topic-1") == (7, "topic-1"), "an id first known: recorded, the entries kept"
    assert reopened(None) == (7, "topic-1"), "opened without it: kept, and so is the recorded id"
    assert reopened("topic-1") == (7, "topic-1")
    assert reopened("topic-2") == (None, "topic-2"), "another topic under the name: wiped"


# -- memory and disk at millions of entries -------------------------------------------------------------
ENTRIES = 3_000_000
BATCH = 1_024  # a worker's batch, one partition's share of a commit
MEMTABLES_MIB = 2 * 32  # store._options: two write buffers of 32 MiB
MARGIN_MIB = 32  # allocator arenas of RocksDB's threads, flush and compaction buffers, a batch in Python

# Run in a process of its own (the test session's heap stays out of its RSS): the worker's own state
# objects, opened as a worker opens them (startup.open_store, default settings; given the directory, it
# asks no broker for the results topic's id), filled as commits fill them (put_many when scored,
# committed after), then read as a worker reads. Measured here: 61-97 MiB over a ~58 MiB baseline.
_FILL = """
import json, random, sys, time
from pathlib import Path


def mib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024


from pipeline.settings import Settings
from pipeline.worker import startup
from pipeline.worker.dedup import DedupState
from pipeline.worker.messages import DedupEntry

entries, batch, partitions = int(sys.argv[1]), int(sys.argv[2]), 12  # the store's directory: sys.argv[3]
settings = Settings()
baseline = mib("VmRSS")
state = DedupState(startup.open_store(settings, partitions, Path(sys.argv[3])))
rng = random.Random(7)
offsets = dict.fromkeys(range(partitions), 0)
result = b'{"model":"fraud_scorer","model_version":"1","score":0.123456,"label":"legit","threshold":0.5}'
kept = []  # one stored event per batch, looked up at the end
for first in range(0, entries, batch):
    partition = (first // batch) % partitions
    scored = [
        DedupEntry(f"{rng.getrandbits(128):032x}", partition, result + b"%d" % i)
        for i in range(first, min(entries, first + batch))
    ]
    state.put_many(scored)
    offsets[partition] += len(scored) + 1  # the results and the commit marker
    state.committed(scored, {partition: offsets[partition]})
    kept.append((partition, scored[-1].key))
store = state.store
busy = ("compaction-pending", "num-running-compactions", "num-running-flushes")
while any(store.properties()[name] for name in busy):
    time.sleep(0.2)
found = sum(v is not None for v in state.get_many(kept, time.time()))
misses = [[(rng.randrange(partitions), f"{rng.getrandbits(128):032x}") for _ in range(batch)] for _ in range(200)]
false_hits = sum(v is not None for keys in misses for v in state.get_many(keys, time.time()))
print(json.dumps({
    "baseline_mib": baseline, "peak_mib": mib("VmHWM"), "kept": len(kept), "found": found,
    "false_hits": false_hits, "uncommitted": state.uncommitted(), "cache_mib": settings.worker.state_cache_mib,
    "keys": store.estimated_entries(),
}))
store.close()
"""


def _disk_bytes(directory: Path) -> int:
    """What `du` counts: the allocated blocks of every file under `directory`."""
    return sum(os.lstat(Path(root) / name).st_blocks * 512 for root, _, files in os.walk(directory) for name in files)


def test_a_store_of_millions_of_entries_stays_within_the_stated_memory_and_disk(tmp_path):
    """README: the state is on disk, "bounded memory", ~55 MB (of disk) per million entries;
    architecture.md: its memory is the block cache (STATE_CACHE_MIB) and two small memtables whatever
    the number of entries. So the process's peak RSS above its baseline must stay within the cache,
    two 32 MiB memtables and a margin; held in Python instead (the overlay not emptied on commit, a
    dict of entries: ~333 bytes each, docs/performance.md) 3M entries would take ~950 MiB."""
    state_dir = tmp_path / "state"
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _FILL, str(ENTRIES), str(BATCH), str(state_dir)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = orjson.loads(done.stdout.strip().splitlines()[-1])
    seconds = time.monotonic() - began

    # The store holds them: every kept entry found, no never-stored one, nothing left in the overlay.
    assert figures["found"] == figures["kept"] == -(-ENTRIES // BATCH)
    assert figures["false_hits"] == 0 and figures["uncommitted"] == 0
    assert abs(figures["keys"] - ENTRIES) < ENTRIES * 0.01, figures
    budget = figures["cache_mib"] + MEMTABLES_MIB + MARGIN_MIB
    grown = figures["peak_mib"] - figures["baseline_mib"]
    assert grown <= budget, f"peak RSS {figures['peak_mib']:.0f} MiB, {grown:.0f} over its baseline: {figures}"
    # ~55 MB per million entries on disk (README; 52.4 MiB per million at 10M in docs/performance.md), plus
    # what does not grow with the entries: the write-ahead log of at most two unflushed memtables. An
    # entry holding its result rather than where it is would take ~79 MiB per million (performance.md).
    disk_mb = _disk_bytes(state_dir) / 1e6
    allowance_mb = MEMTABLES_MIB * 2**20 / 1e6
    assert disk_mb <= 55 * ENTRIES / 1e6 + allowance_mb, f"{disk_mb:.0f} MB on disk for {ENTRIES:,} entries"
    print(f"{ENTRIES:,} entries in {seconds:.1f} s: peak RSS +{grown:.0f} MiB, {disk_mb:.0f} MB on disk")
