"""`pipeline replay` publishes each selected request exactly once per replay id, counted on the
topic it publishes to (read committed), not from the command's own output: through SIGKILLs in the
middle of its transactions, with its checkpoint's counts and its rejects file matching what the
source holds. No backfill worker runs here: its dedup would hide a request published twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline.contract import REPLAY_ID
from pipeline.local import probe, traffic
from pipeline.local.stack import PROJECT_ROOT, settings_env
from pipeline.replay import checkpoint
from pipeline.settings import Settings
from tests.conftest import with_replay_topics

pytestmark = pytest.mark.integration

VALID = 6_000
# The rows a replay refuses, by the code it counts them under (the others are the worker's to judge).
REFUSED = {"not_json": "invalid_json", "missing_event_id": "invalid_request", "non_numeric_feature": "invalid_request"}


@pytest.fixture
def settings(pipeline_settings) -> Settings:
    return with_replay_topics(pipeline_settings())


def _replay(settings: Settings, *args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "replay", *args],
        env={**os.environ, **settings_env(settings)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )


def _finished(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return out


def _published(settings: Settings) -> Counter[tuple[str, str]]:
    """(replay id, event_id) of every committed request on the backfill requests topic, read to its
    last stable offset."""
    topic = settings.topics.backfill_requests
    consumer = Consumer(probe.consumer_config(settings))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        assigned = [TopicPartition(topic, p, 0) for p in partitions]
        consumer.assign(assigned)
        found: Counter[tuple[str, str]] = Counter()
        deadline = time.monotonic() + 60
        while any(tp.offset < ends[tp.partition] for tp in consumer.position(assigned)):
            assert time.monotonic() < deadline, f"{topic} not read to its end {ends}"
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                if message.error() is None:
                    replay = dict(message.headers() or {}).get(REPLAY_ID, b"").decode()
                    found[replay, orjson.loads(message.value())["event_id"]] += 1
        return found
    finally:
        consumer.close()


def _committed_requests(settings: Settings) -> int:
    """Requests on the backfill topic that a read_committed reader can see so far (its ends)."""
    return sum(probe.end_offsets(settings, [settings.topics.backfill_requests]).values())


def test_a_replay_killed_mid_transaction_again_and_again_publishes_each_request_once_per_replay_id(settings, tmp_path):
    requests = traffic.valid_requests(VALID, prefix="once-", seed=23)
    refused = [traffic.malformed(kind, requests[i], f"once-bad-{i}") for i, kind in enumerate(list(REFUSED) * 100)]
    rows = [orjson.dumps(r) for r in requests] + [m.value for m in refused]
    rows = [rows[i] for i in sorted(range(len(rows)), key=lambda i: (i * 7919) % len(rows))]  # spread out
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"".join(row + b"\n" for row in rows))
    rejects = tmp_path / "rejects.jsonl"
    args = ("--replay-id", "k1", "--file", str(path), "--rejects", str(rejects))

    # Killed three times while publishing at a capped rate (a transaction every half second of it),
    # each once more of the replay is committed than at the last kill. A kill lands inside an open
    # transaction only by chance (the publisher commits before each pause of its rate).
    seen = 0
    for _ in range(3):
        process = _replay(settings, *args, "--rate", "600", cwd=tmp_path)
        try:
            deadline = time.monotonic() + 120
            while _committed_requests(settings) < seen + 500:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "the replay published nothing more"
                time.sleep(0.1)
            seen = _committed_requests(settings)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
    assert seen < VALID, "killed before it was done"
    assert "published" in _finished(_replay(settings, *args, cwd=tmp_path))
    assert "nothing more to publish" in _finished(_replay(settings, *args, cwd=tmp_path))
    other = ("--replay-id", "k2", "--file", str(path), "--rejects", str(tmp_path / "k2.jsonl"))
    _finished(_replay(settings, *other, cwd=tmp_path))

    expected = {str(r["event_id"]) for r in requests}
    published = _published(settings)
    assert published == Counter({(replay, e): 1 for replay in ("k1", "k2") for e in expected})

    last = checkpoint.latest(settings, "k1")
    assert last is not None and last.done
    assert last.counts["read"] == len(rows)
    assert last.counts["published"] == VALID and last.counts["rejected"] == len(refused)
    assert last.rejected == Counter(REFUSED[m.kind] for m in refused)
    lines = rejects.read_bytes().splitlines()
    assert len(lines) == len(set(lines)) == len(refused), "each refused row once"
    assert {orjson.loads(line)["payload"].encode() for line in lines} == {m.value for m in refused}


def test_until_and_an_exported_time_range_take_exactly_the_records_before_it(settings, tmp_path):
    before = traffic.valid_requests(300, prefix="early-", seed=29)
    after = traffic.valid_requests(200, prefix="late-", seed=31)
    since = datetime.now(UTC)
    probe.publish(settings, [traffic.message_for(r) for r in before])
    time.sleep(0.01)  # the next record's millisecond is past the boundary
    until = datetime.now(UTC)
    time.sleep(0.01)
    probe.publish(settings, [traffic.message_for(r) for r in after])

    window = ("--since", since.isoformat(), "--until", until.isoformat())
    _finished(_replay(settings, "--replay-id", "u1", *window, cwd=tmp_path))
    expected = {str(r["event_id"]) for r in before}
    assert _published(settings) == Counter({("u1", e): 1 for e in expected})

    output = tmp_path / "window.parquet"
    _finished(_replay(settings, "export", "--output", str(output), *window, cwd=PROJECT_ROOT))
    table = pq.read_table(output)
    assert sorted(table.column("event_id").to_pylist()) == sorted(expected)
    values = {orjson.loads(v)["event_id"]: v for v in table.column("value").to_pylist()}
    assert all(values[str(r["event_id"])] == orjson.dumps(r) for r in before), "byte for byte"
