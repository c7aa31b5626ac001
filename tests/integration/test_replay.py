"""`pipeline replay` on the real broker, with a live worker and a backfill worker: a time range and
files are re-scored into the backfill results, once per replay id, never into the live results;
a second run of a replay adds nothing, a SIGKILLed one resumes without duplicates; live traffic
during a replay is scored once and its repeats dropped; the diff's figures are the expected ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline import topics
from pipeline.contract import REPLAY_ID
from pipeline.local import probe, traffic
from pipeline.local.stack import PROJECT_ROOT, free_port, settings_env
from tests.conftest import with_replay_topics

pytestmark = pytest.mark.integration


@pytest.fixture
def replay_settings(pipeline_settings):
    """Fresh live and backfill topics, a live group and a backfill group of their own."""
    return with_replay_topics(pipeline_settings())


def _backfill_worker(processes, settings) -> Path:
    """A backfill worker, started and ready; the path of its log."""
    name = f"backfill-{uuid.uuid4().hex[:8]}"
    processes.started.append(processes.stack.start_worker(settings, name, backfill=True))
    return processes.stack.run_dir / f"{name}.log"


def _cli(settings, *args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "replay", *args],
        env={**os.environ, **settings_env(settings)},
        capture_output=True,
        text=True,
        cwd=cwd or PROJECT_ROOT,
        timeout=300,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def _live(settings, requests, expect: int):
    """Publish live requests and wait for `expect` distinct live results."""
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    probe.publish(settings, [traffic.message_for(r) for r in requests])
    return probe.collect(settings, start, lambda c: c.distinct_results >= expect, timeout_s=120, settle_s=0)


def _from_start(settings, *names: str) -> dict[TopicPartition, int]:
    return {TopicPartition(name, p): 0 for name in names for p in range(topics.partition_count(settings, name))}


def _replay_of(message) -> str:
    return dict(message.headers() or {}).get(REPLAY_ID, b"").decode()


def _replayed(
    settings,
    expect: int,
    timeout_s: float = 120,
    topic: str | None = None,
    sentinels: bool = True,
    times: dict[str, int] | None = None,
) -> Counter[tuple[str, str]]:
    """(replay id, event_id) of every committed backfill result (or record of `topic`), once `expect`
    are there and (`sentinels`) the backfill workers have scored sentinels published now, after all
    that was replayed: nothing more can come (`probe.collect`). `times`: filled with each event_id's
    Kafka timestamp."""
    topic = topic or settings.topics.backfill_results
    backfill = settings.backfill()
    found: Counter[tuple[str, str]] = Counter()

    def record(message, value) -> None:
        if message.topic() == topic:
            found[_replay_of(message), value["event_id"]] += 1
            if times is not None:
                times.setdefault(value["event_id"], message.timestamp()[1])

    probe.read(
        settings,
        _from_start(settings, topic, backfill.topics.results, backfill.topics.dlq),
        record,
        until=lambda: sum(found.values()) >= expect,
        sentinels=probe.publish_sentinels(backfill) if sentinels else None,
        timeout_s=timeout_s,
        report=lambda: f"{sum(found.values())} of {expect} records on {topic}",
    )
    return found


def _live_results(settings) -> Counter[str]:
    """How many live results each event_id has, from the start of the results topic, up to live
    sentinels published now."""
    start = _from_start(settings, settings.topics.results, settings.topics.dlq)
    collected = probe.collect(settings, start, sentinels=probe.publish_sentinels(settings))
    return Counter({e: len(r) for e, r in collected.results.items()})


def test_a_time_range_is_scored_once_per_replay_id_never_into_the_live_results(replay_settings, processes):
    settings = replay_settings
    processes.worker(settings)
    _backfill_worker(processes, settings)
    early = traffic.valid_requests(300, prefix="range-early-")
    late = traffic.valid_requests(200, prefix="range-late-", seed=11)
    live_scores = _live(settings, early, 300).results
    time.sleep(1.0)
    since = datetime.now(UTC)
    time.sleep(0.5)
    live_scores |= _live(settings, late, 200).results

    first = _cli(settings, "--replay-id", "r1", "--since", since.isoformat())
    assert "published 200" in first.stdout and "complete: 200 published" in first.stdout
    replayed = _replayed(settings, 200)
    assert replayed == Counter({("r1", r["event_id"]): 1 for r in late}), "the range, each event once"

    again = _cli(settings, "--replay-id", "r1", "--since", since.isoformat())
    assert "is complete" in again.stdout
    other = _cli(settings, "--replay-id", "r2", "--since", since.isoformat())
    assert "published 200" in other.stdout
    replayed = _replayed(settings, 400)
    assert replayed == Counter({(rid, r["event_id"]): 1 for r in late for rid in ("r1", "r2")}), (
        "r1 run twice added nothing; r2 scored each event once more"
    )

    # Live dedup is untouched: a live repeat of a replayed event gets no second live result.
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    probe.publish(settings, [traffic.message_for(late[0])])
    assert probe.collect(settings, start, sentinels=probe.publish_sentinels(settings)).distinct_results == 0
    assert _live_results(settings) == Counter({r["event_id"]: 1 for r in early + late}), "live results untouched"

    # The same model, the same features: the diff finds every event matched with no shift.
    diff = _cli(settings, "diff", "r1", "--output", str(Path(processes.stack.run_dir) / "r1.diff.json"))
    figures = orjson.loads((Path(processes.stack.run_dir) / "r1.diff.json").read_bytes())
    assert figures["published"] == figures["replayed"] == figures["matched"] == 200, diff.stdout
    assert figures["missing_in_replay"] == figures["missing_in_original"] == 0
    assert figures["mean_abs_shift"] == 0.0 and figures["label_flips"] == {}
    assert len({live_scores[e][0]["score"] for _, e in replayed}) > 1, "real, varied scores"


def test_a_parquet_replay_counts_its_rejects_and_the_diff_finds_what_was_never_scored_live(
    replay_settings, processes, tmp_path
):
    settings = replay_settings
    processes.worker(settings)
    _backfill_worker(processes, settings)
    scored_live = traffic.valid_requests(100, prefix="pq-live-")
    never_live = traffic.valid_requests(50, prefix="pq-outage-", seed=13)  # dead-lettered in an outage, say
    _live(settings, scored_live, 100)
    rows = [
        {
            "event_id": r["event_id"],
            "model": None,
            "entity": orjson.dumps(r["entity"]).decode(),
            "features": orjson.dumps(r["features"]).decode(),
        }
        for r in scored_live + never_live
    ]
    bad = [dict(rows[0], event_id=f"pq-bad-{i}", features='{"amount": "ten"}') for i in range(5)]
    path = tmp_path / "history.parquet"
    pq.write_table(pa.Table.from_pylist(rows[:60] + bad + rows[60:]), path)

    dry = _cli(settings, "--replay-id", "p1", "--file", str(path), "--dry-run", cwd=tmp_path)
    assert "would publish 150" in dry.stdout and "skipped 5 invalid (invalid_request 5)" in dry.stdout
    done = _cli(settings, "--replay-id", "p1", "--file", str(path), cwd=tmp_path)
    assert "published 150" in done.stdout, done.stdout
    rejects = [orjson.loads(line) for line in (tmp_path / "replay-p1.rejects.jsonl").read_bytes().splitlines()]
    assert [r["position"] for r in rejects] == [60, 61, 62, 63, 64]
    assert {r["reason"] for r in rejects} == {"invalid_request: features.amount: not a number"}
    assert _replayed(settings, 150) == Counter({("p1", r["event_id"]): 1 for r in scored_live + never_live})

    _cli(settings, "diff", "p1", "--output", str(tmp_path / "p1.json"))
    figures = orjson.loads((tmp_path / "p1.json").read_bytes())
    assert (figures["published"], figures["replayed"], figures["matched"]) == (150, 150, 100)
    assert (figures["missing_in_original"], figures["missing_in_replay"]) == (50, 0)
    assert figures["mean_shift"] == 0.0 and figures["label_flips"] == {}


def test_an_exported_range_replays_in_parts_with_a_limit_and_resumes(replay_settings, processes, tmp_path):
    settings = replay_settings
    processes.worker(settings)
    _backfill_worker(processes, settings)
    requests = traffic.valid_requests(120, prefix="export-")
    _live(settings, requests, 120)
    exported = tmp_path / "requests.parquet"
    out = _cli(settings, "export", "--output", str(exported))
    assert "exported 120 record(s)" in out.stdout
    table = pq.read_table(exported)
    assert sorted(table.column("event_id").to_pylist()) == sorted(r["event_id"] for r in requests)

    part = _cli(settings, "--replay-id", "e1", "--file", str(exported), "--limit", "45", cwd=tmp_path)
    assert "published 45" in part.stdout and "75 row(s) left" in part.stdout
    rest = _cli(settings, "--replay-id", "e1", "--file", str(exported), cwd=tmp_path)
    assert "published 75" in rest.stdout and "complete: 120 published" in rest.stdout
    assert _replayed(settings, 120) == Counter({("e1", r["event_id"]): 1 for r in requests})


def test_a_replay_killed_midway_resumes_and_live_traffic_meanwhile_is_scored_once(replay_settings, processes, tmp_path):
    settings = replay_settings
    processes.worker(settings)
    _backfill_worker(processes, settings)
    history = traffic.valid_requests(20_000, prefix="kill-")
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in history))
    args = [sys.executable, "-m", "pipeline", "replay", "--replay-id", "k1", "--file", str(path), "--rate", "4000"]
    env = {**os.environ, **settings_env(settings)}
    replay = subprocess.Popen(args, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    live = traffic.valid_requests(400, prefix="kill-live-", seed=17)
    repeats = live[:40]
    time.sleep(2.5)
    probe.publish(settings, [traffic.message_for(r) for r in live + repeats], rate=400)
    replay.send_signal(signal.SIGKILL)
    replay.wait(10)
    # No sentinels here: the killed replay's transaction, open on the backfill requests, holds back
    # what follows it there until the broker aborts it (or the resumed replay fences it).
    partial = _replayed(settings, 1, sentinels=False)
    assert 0 < sum(partial.values()) < 20_000, "killed midway"

    resumed = _cli(settings, "--replay-id", "k1", "--file", str(path), cwd=tmp_path)
    assert "complete: 20000 published" in resumed.stdout, resumed.stdout
    assert _replayed(settings, 20_000) == Counter({("k1", r["event_id"]): 1 for r in history}), (
        "every event scored exactly once for the replay, across the kill"
    )
    assert _live_results(settings) == Counter({r["event_id"]: 1 for r in live}), "live: once each, repeats dropped"


def test_ctrl_c_commits_what_is_under_way_and_says_how_to_go_on(replay_settings, processes, tmp_path):
    settings = replay_settings
    _backfill_worker(processes, settings)
    history = traffic.valid_requests(10_000, prefix="sigint-")
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in history))
    args = [sys.executable, "-m", "pipeline", "replay", "--replay-id", "c1", "--file", str(path), "--rate", "1000"]
    env = {**os.environ, **settings_env(settings)}
    replay = subprocess.Popen(args, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert sum(_replayed(settings, 1, timeout_s=60, sentinels=False).values()) >= 1, "publishing has begun"
    replay.send_signal(signal.SIGINT)
    out, _ = replay.communicate(timeout=30)
    assert replay.returncode == 130, out
    assert "row(s) left: run the same command again to continue" in out

    resumed = _cli(settings, "--replay-id", "c1", "--file", str(path), cwd=tmp_path)
    assert "complete: 10000 published" in resumed.stdout
    assert _replayed(settings, 10_000) == Counter({("c1", r["event_id"]): 1 for r in history})


def test_backfill_waits_while_the_live_workers_lag_and_goes_on_once_they_catch_up(replay_settings, processes, tmp_path):
    max_lag = 500
    settings = replay_settings.updated(replay={"live_max_lag": max_lag, "live_check_s": 0.5})
    log = _backfill_worker(processes, settings)
    # A live backlog of 2,000 requests and no live worker yet: the live group lags by all of them.
    backlog = traffic.valid_requests(2_000, prefix="lag-live-")
    live_start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    probe.publish(settings, [traffic.message_for(r) for r in backlog])
    history = traffic.valid_requests(300, prefix="lag-history-", seed=19)
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in history))
    _until_logged(log, "backfill_yielding")
    assert "published 300" in _cli(settings, "--replay-id", "w1", "--file", str(path), cwd=tmp_path).stdout

    processes.worker(settings)  # the live workers catch up
    replayed_ms: dict[str, int] = {}
    assert _replayed(settings, 300, times=replayed_ms) == Counter({("w1", r["event_id"]): 1 for r in history})
    assert "backfill_resumed" in log.read_text()
    # Nothing scored while live lags: the live group lagged by more than max_lag until its
    # (2,000 - max_lag)th result was committed, and the first replayed result came after that one was
    # produced, though the replay was on the backfill topic for all the time the live worker took to start.
    live = probe.collect(settings, live_start, expect=[str(r["event_id"]) for r in backlog], settle_s=0)
    lagging_until_ms = sorted(live.result_times_ms.values())[len(backlog) - max_lag - 1]
    assert min(replayed_ms.values()) >= lagging_until_ms, "a replayed request was scored while live lagged"


def _until_logged(log: Path, text: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{text} not in {log} within {timeout_s:g} s"
        time.sleep(0.2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--replay-id", "x", "--file", "/no/such/file.parquet"], "no such file"),
        (["--replay-id", "x", "--range", "3:10"], "PARTITION:START-END"),
        (["--replay-id", "x", "--filter", "account_id>=3"], "only = and !="),
        (["--replay-id", "bad id!"], "letters, digits"),
    ],
)
def test_bad_input_is_a_one_line_error_and_a_non_zero_exit(stack, args, message):
    done = _cli(stack.settings(), *args, check=False)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


def test_an_unreachable_broker_is_a_one_line_error(stack):
    settings = stack.settings().updated(kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}"})
    done = _cli(settings, "--replay-id", "x", "--since", "2026-01-01T00:00:00Z", check=False)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    where = settings.kafka.bootstrap_servers
    assert len(lines) == 1 and f"kafka at {where}: no broker answered" in lines[0], done.stderr


def test_a_replay_with_a_results_topic_of_its_own_gets_each_result_there_and_its_dead_letters_apart(
    replay_settings, processes, tmp_path
):
    settings = replay_settings
    _backfill_worker(processes, settings)
    requests = traffic.valid_requests(100, prefix="own-")
    unknown = dict(requests[0], event_id="own-unknown-model", model="no_such_model")
    path = tmp_path / "own.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in [*requests, unknown]) + b"\n")
    own = f"{settings.topics.results}.own"

    done = _cli(settings, "--replay-id", "own1", "--file", str(path), "--results-topic", own)
    assert f"results on {own}" in done.stdout
    expected = Counter({("own1", r["event_id"]): 1 for r in requests})
    assert _replayed(settings, 100, topic=own) == expected, "every result in the replay's own topic, once"
    assert _replayed(settings, 100) == expected, "and in the backfill results, the workers' dedup changelog"
    dead = _replayed(settings, 1, topic=settings.topics.backfill_dlq)
    assert dead == Counter({("own1", "own-unknown-model"): 1}), "a replay's dead letter, with its replay id"
    assert sum(probe.end_offsets(settings, [settings.topics.dlq]).values()) == 0, "none in the live dead letters"

    diff = _cli(settings, "diff", "own1", "--output", str(tmp_path / "own1.json"))
    assert orjson.loads((tmp_path / "own1.json").read_bytes())["replayed"] == 100, diff.stdout
    moved = _cli(settings, "--replay-id", "own1", "--file", str(path), "--results-topic", "elsewhere", check=False)
    assert moved.returncode != 0 and f"writes its results to {own}" in moved.stderr
    assert len(moved.stderr.strip().splitlines()) == 1


def test_a_refused_replay_leaves_no_results_topic_behind(replay_settings):
    settings = replay_settings
    own = f"refused-{uuid.uuid4().hex[:8]}"
    backwards = ["--since", "2026-02-01T00:00:00Z", "--until", "2026-01-01T00:00:00Z"]
    done = _cli(settings, "--replay-id", "x", *backwards, "--results-topic", own, check=False)
    assert done.returncode != 0 and "is not after" in done.stderr, done.stderr
    assert own not in topics.admin_client(settings).list_topics(timeout=10).topics


def test_requests_for_a_results_topic_deleted_before_they_are_scored_are_dead_lettered_with_the_reason(
    replay_settings, processes, tmp_path
):
    settings = replay_settings
    requests = traffic.valid_requests(20, prefix="gone-")
    path = tmp_path / "gone.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in requests) + b"\n")
    own = f"{settings.topics.results}.gone"
    _cli(settings, "--replay-id", "gone1", "--file", str(path), "--results-topic", own)  # no backfill worker yet
    admin = topics.admin_client(settings)
    admin.delete_topics([own], operation_timeout=30)[own].result()
    deadline = time.monotonic() + 30
    while own in admin.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline, f"{own} was not deleted"
        time.sleep(0.2)

    _backfill_worker(processes, settings)

    dead = _replayed(settings, 20, topic=settings.topics.backfill_dlq)
    assert dead == Counter({("gone1", r["event_id"]): 1 for r in requests}), "each one dead-lettered, once"
    reader = Consumer(probe.consumer_config(settings))
    reader.assign([TopicPartition(settings.topics.backfill_dlq, p, 0) for p in range(12)])
    [message] = [m for m in reader.consume(1000, 5) if m.error() is None][:1]
    reader.close()
    error = orjson.loads(message.value())["error"]
    assert error["code"] == "invalid_request" and f"'{own}': no such topic" in error["message"]
    assert _replayed(settings, 0) == Counter(), "none scored"
    assert own not in admin.list_topics(timeout=10).topics, "the worker did not create it again"
