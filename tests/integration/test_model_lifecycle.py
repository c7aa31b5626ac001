"""Changing a model's version under a live stream, on the real broker and Triton (explicit model
control): `pipeline models publish`, `share`, `promote`, `rollback`, `list` and `history`.

Each test works on a model of its own: a copy of the fraud scorer under another name in the session's
model repository, its version 1 the fraud scorer's stable version and its version 2 trained here (on
other rows, so its scores differ). The oracle for every score is the exported version's TorchScript
model run in the test (`reference_scores`), and for every arm the routing's bucket rule written out
here from the contract (BLAKE2b-64 with personalisation, modulo 10,000), not the worker's code.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from confluent_kafka import TopicPartition

from pipeline import topics
from pipeline.bench.memory import status_mib
from pipeline.inference.repository import TritonRepository
from pipeline.local import probe, traffic
from pipeline.models import routing_log, train
from pipeline.models.rollout import Rollout
from pipeline.models.routing import Routing
from pipeline.settings import Settings
from pipeline.topics import TopicSpec
from tests.conftest import free_port, metric, with_replay_topics
from tests.integration.models import models_cli, ok, pipeline_cli, served_copy
from tests.integration.reference import reference_scores
from tests.integration.streams import Stream, requests_for

pytestmark = pytest.mark.integration


def contract_bucket(event_id: str, salt: bytes) -> int:
    """docs/contract.md#model-routing: the BLAKE2b-64 hash of the event_id, modulo 10,000."""
    digest = hashlib.blake2b(event_id.encode(), digest_size=8, person=salt).digest()
    return int.from_bytes(digest, "big") % 10_000


@pytest.fixture
def own_model(stack, pipeline_settings) -> Iterator[tuple[Settings, str]]:
    """Fresh settings and a model of this test's own (`tests.integration.models.served_copy`)."""
    settings = pipeline_settings().updated(models={"unload_grace_s": 2.0})
    with served_copy(settings) as name:
        yield settings, name


def routings_of(settings: Settings, model: str) -> list[Routing]:
    """The model's routing after each of its changes, in order (the changes as the topic holds them)."""
    history = routing_log.read(settings)
    assert not history.skipped.get(model), history.skipped[model]
    routing, found = Routing(model), []
    for change in history.changes[model]:
        routing = routing.apply(change)
        found.append(routing)
    return found


def expected_route(routing: Routing, event_id: str) -> tuple[str, str, bool]:
    """(version, arm, shadowed) by the contract's bucket rule."""
    if routing.candidate is None:
        return routing.stable, "stable", False
    if contract_bucket(event_id, b"arm") < round(routing.canary_share * 10_000):
        return routing.candidate, "canary", False
    return routing.stable, "stable", contract_bucket(event_id, b"shadow") < round(routing.shadow_share * 10_000)


def test_publish_share_promote_and_rollback_under_a_live_stream_fail_no_request(
    own_model, start_worker, start_gateway, tmp_path
):
    settings, name = own_model
    start_worker(settings)
    start_gateway(settings)
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    shadow_start = probe.end_offsets(settings, [settings.topics.shadow_results])
    stream = Stream(settings, rate=400, model=name)

    time.sleep(2)
    ok(settings, "publish", name, "2", "--why", "trained on new rows")
    ok(settings, "share", name, "--canary", "0.3", "--shadow", "0.5", "--why", "canary and shadow")
    time.sleep(4)
    ok(settings, "promote", name, "--why", "canary healthy")
    time.sleep(3)
    ok(settings, "rollback", name, "--why", "back to 1")
    time.sleep(2)
    requests = stream.stop()
    collected = probe.collect(
        settings, start, lambda c: c.distinct_results >= len(requests), timeout_s=300,
        sentinels=probe.publish_sentinels(settings),
    )  # fmt: skip

    # No request failed: no dead letter, every HTTP call answered with a result.
    assert collected.dead_letters == [], collected.dead_letter_codes()
    assert stream.http and {status for _, status, _ in stream.http} == {200}, stream.http[-3:]
    for request, _, body in stream.http:  # the caller got the event's one result
        assert body == collected.results[str(request["event_id"])][0]
    # Each event (the HTTP callers' too) scored once, by the version and arm a routing of the history
    # sent it to, in order.
    ids = {str(r["event_id"]) for r in requests}
    assert set(collected.results) == ids
    assert collected.repeated_results == 0
    routings = routings_of(settings, name)
    assert [(r.stable, r.candidate, r.canary_share, r.shadow_share) for r in routings] == [
        ("1", None, 0.0, 0.0),
        ("1", "2", 0.0, 0.0),
        ("1", "2", 0.3, 0.5),
        ("2", None, 0.0, 0.0),
        ("1", None, 0.0, 0.0),
    ]
    # Each partition's results in offset order (its requests' order): the routing each needs never
    # goes back.
    results_start = {tp: offset for tp, offset in start.items() if tp.topic == settings.topics.results}
    by_partition: dict[int, list[dict]] = defaultdict(list)
    probe.read(
        settings,
        results_start,
        lambda message, value: by_partition[message.partition()].append(value),
        until=lambda: sum(map(len, by_partition.values())) >= len(ids),
        timeout_s=60,
    )
    last = 0
    for partition, results in by_partition.items():
        at, moved_by = 0, None  # the routing the worker was under for this partition, and the result that said so
        for result in results:
            event_id, got = result["event_id"], (result["model_version"], result["arm"])
            compatible = [i for i, r in enumerate(routings) if expected_route(r, event_id)[:2] == got and i >= at]
            assert compatible, f"partition {partition}: {result} fits no routing from {at} on, as {moved_by} did"
            if compatible[0] > at:
                at, moved_by = compatible[0], result
        last = max(last, at)
    assert last == len(routings) - 1, "results came after the rollback"
    arms = {(r[0]["model_version"], r[0]["arm"]) for r in collected.results.values()}
    assert arms == {("1", "stable"), ("2", "canary"), ("2", "stable")}, arms
    # Every score is its version's.
    for version in ("1", "2"):
        scored = [r for r in requests if collected.results[str(r["event_id"])][0]["model_version"] == version]
        got = [collected.results[str(r["event_id"])][0]["score"] for r in scored]
        np.testing.assert_allclose(got, reference_scores(settings, scored, name, version), atol=1e-5, rtol=0)
    # The shadow: version 2's results on stable events in its shadow buckets, on their own topic only.
    shadow = probe.read_to_end(settings, shadow_start)
    assert shadow, "the candidate shadowed some events"
    shadowed = [s["event_id"] for s in shadow]
    assert len(shadowed) == len(set(shadowed)), "one shadow result per shadowed event"
    by_id = {str(r["event_id"]): r for r in requests}
    for record in shadow:
        live = collected.results[record["event_id"]][0]
        assert (record["arm"], record["model_version"]) == ("shadow", "2")
        assert (live["arm"], live["model_version"]) == ("stable", "1")
        assert contract_bucket(record["event_id"], b"shadow") < 5_000
    np.testing.assert_allclose(
        [s["score"] for s in shadow],
        reference_scores(settings, [by_id[e] for e in shadowed], name, "2"),
        atol=1e-5,
        rtol=0,
    )
    # `models compare`: the shadow against the live results of the same events, as counted here.
    report = tmp_path / "compare.json"
    printed = ok(settings, "compare", name, "--output", str(report))
    figures = orjson.loads(report.read_bytes())
    live = [collected.results[e][0] for e in shadowed]
    agree = sum(a["label"] == b["label"] for a, b in zip(live, shadow, strict=True))
    shifts = [b["score"] - a["score"] for a, b in zip(live, shadow, strict=True)]
    assert (figures["stable"], figures["candidate"], figures["events"]) == ("1", "2", len(shadow))
    assert figures["agreement"] == pytest.approx(agree / len(shadow))
    assert figures["score_shift"]["mean"] == pytest.approx(float(np.mean(shifts)), abs=1e-9)
    assert f"{figures['events']:,}" in printed and "labels agree" in printed
    # Triton serves the routed version only, once the grace is over; list and history say so.
    triton = TritonRepository(settings.triton)
    try:
        triton.wait_gone(name, ["2"], timeout_s=30)
        assert triton.ready(name, "1")
    finally:
        triton.close()
    listed = {row[1]: row for row in (line.split() for line in ok(settings, "list").splitlines()) if row[0] == name}
    assert listed["1"][2:4] == ["READY", "stable"], listed
    assert listed["2"][2] != "READY" and "-" in listed["2"], listed
    history = ok(settings, "history", name)
    for why in ("trained on new rows", "canary and shadow", "canary healthy", "back to 1"):
        assert why in history


def test_bad_changes_get_one_line_and_a_non_zero_exit_and_leave_the_routing_as_it_was(own_model):
    settings, name = own_model
    repository = settings.triton.model_repository
    broken = repository / name / "3"
    shutil.copytree(repository / name / "2", broken)
    (broken / "model.pt").write_bytes(b"not a TorchScript archive")
    before = routing_log.read(settings).changes[name]

    refusals = {
        ("publish", name, "9"): "has no version '9'",
        ("publish", "no_such_model", "1"): "unknown model 'no_such_model'",
        ("share", name, "--canary", "1.5"): "no candidate",
        ("promote", name): "has no candidate to promote",
        ("publish", name, "3"): "PytorchStreamReader failed reading zip archive",
    }
    for args, reason in refusals.items():
        done = models_cli(settings, *args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and reason in lines[0], (args, lines)
    ok(settings, "publish", name, "2")
    done = models_cli(settings, "share", name, "--canary", "1.5")
    assert done.returncode == 1 and "within [0, 1], not 1.5" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1

    after = routing_log.read(settings).changes[name]
    assert [c.action for c in after[len(before) :]] == ["publish"], "only the good publish was written"
    triton = TritonRepository(settings.triton)
    try:
        assert triton.ready(name, "1") and triton.ready(name, "2"), "the broken version left the others serving"
        ready = httpx.get(f"http://{settings.triton.http_url}/v2/health/ready")
        assert ready.status_code == 200, "and the server ready for the workers (a failed load is not unreadiness)"
    finally:
        triton.close()


def test_the_canary_takes_its_share_of_20000_events_within_one_and_a_half_points(own_model, start_worker):
    settings, name = own_model
    ok(settings, "publish", name, "2", "--canary", "0.1")
    settings = settings.updated(worker={"metrics_port": free_port()})
    start_worker(settings)
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    requests = requests_for(name, 20_000, prefix=f"share-{uuid.uuid4().hex[:6]}-")
    probe.publish(settings, [traffic.message_for(r) for r in requests])
    collected = probe.collect(
        settings, start, lambda c: c.distinct_results >= len(requests), timeout_s=300,
        sentinels=probe.publish_sentinels(settings),
    )  # fmt: skip

    canary = [e for e, r in collected.results.items() if r[0]["arm"] == "canary"]
    assert abs(len(canary) / len(requests) - 0.1) <= 0.015, len(canary)
    assert all(collected.results[e][0]["model_version"] == "2" for e in canary)
    assert set(canary) == {str(r["event_id"]) for r in requests if contract_bucket(str(r["event_id"]), b"arm") < 1_000}
    # The worker's count of events scored by version and arm (the rollout dashboard's) is the results'.
    port = settings.worker.metrics_port
    assert metric(port, "pipeline_scored_total", model=name, version="2", arm="canary") == len(canary)
    assert metric(port, "pipeline_scored_total", model=name, version="1", arm="stable") == len(requests) - len(canary)


def test_the_guard_rolls_back_a_bad_canary_within_its_windows_and_keeps_a_good_one(own_model, processes, start_worker):
    settings, name = own_model
    port = free_port()
    settings = settings.updated(
        topics={"drift_alerts": f"{settings.topics.requests}.guard"},
        consumers={"metrics_port": port, "guard": {"window_s": 4.0, "min_events": 200, "windows": 2}},
    )
    topics.apply(settings, [TopicSpec(settings.topics.drift_alerts, 1)])
    repository = settings.triton.model_repository
    bad = train.train(repository, rows=20_000, epochs=4, seed=11, shuffle_labels=True, name=name)
    good = train.train(repository, seed=12, name=name)
    start_worker(settings)
    group = f"guard-{uuid.uuid4().hex[:6]}"
    processes.started.append(processes.stack.start_consumer(settings, "guard", group, "--group-id", group))
    stream = Stream(settings, rate=500, model=name, http=False)
    try:
        ok(settings, "publish", name, str(bad.version), "--canary", "0.2", "--why", "fitted to shuffled labels")
        _until(lambda: metric(port, "pipeline_guard_rollbacks_total", model=name) >= 1, 120, "the guard's rollback")
        assert routing_log.read(settings).routing(name).candidate is None
        unhealthy = metric(port, "pipeline_guard_windows_total", model=name, verdict="unhealthy")
        healthy = metric(port, "pipeline_guard_windows_total", model=name, verdict="healthy")
        rolled_back = metric(port, "pipeline_guard_rollbacks_total", model=name)

        ok(settings, "publish", name, str(good.version), "--canary", "0.2", "--why", "retrained")
        _until(
            lambda: metric(port, "pipeline_guard_windows_total", model=name, verdict="healthy") >= healthy + 4,
            120,
            "four healthy windows of the good canary",
        )
        after_good = routing_log.read(settings).routing(name)
    finally:
        stream.stop()

    assert (unhealthy, healthy, rolled_back) == (2, 0, 1), "rolled back after exactly the windows the settings give"
    last = routing_log.read(settings).changes[name]
    rollback = next(c for c in last if c.action == "rollback")
    assert rollback.by == "pipeline guard" and "score PSI" in rollback.why, rollback
    assert f"canary {bad.version} unhealthy in 2 windows" in rollback.why
    [alert] = [a for a in probe.read_to_end(settings, _from_start(settings, settings.topics.drift_alerts))]
    assert (alert["kind"], alert["model"], alert["model_version"]) == ("rollback", name, str(bad.version))
    assert alert["stable_version"] == "1" and any("score PSI" in r for r in alert["reasons"])
    # The good canary stays: healthy windows, no second rollback.
    assert after_good.candidate == str(good.version) and after_good.canary_share == 0.2
    assert metric(port, "pipeline_guard_rollbacks_total", model=name) == 1
    # One window of a good canary may be unhealthy on a loaded box (a p99 of a few hundred events is its
    # slowest batch): two in a row, which `windows` takes to roll back, may not.
    windows = [
        line
        for line in _events(processes.stack.run_dir / f"{group}.log")
        if line.get("event") == "guard_window" and line.get("candidate") == str(good.version)
    ]
    verdicts = "".join("u" if w["verdict"] == "unhealthy" else "." for w in windows if w["verdict"] != "too_few")
    assert "uu" not in verdicts and verdicts.count("u") <= 1, [w["reasons"] for w in windows]


def _events(log: Path) -> list[dict]:
    return [orjson.loads(line) for line in log.read_text(errors="replace").splitlines() if line.startswith("{")]


def _from_start(settings: Settings, topic: str) -> dict[TopicPartition, int]:
    return {tp: 0 for tp in probe.end_offsets(settings, [topic])}


def _until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:g} s"
        time.sleep(0.5)


CYCLES = 20
# Measured here: 43 → 43 MiB over 20 cycles (the Python stubs are processes of their own, started and
# ended with each version); the bound leaves room for allocator noise, not for a leak per cycle.
RSS_GROWTH_MIB = 32
SHM_PREFIX = "triton_python_backend_shm_region"


def test_twenty_publish_and_rollback_cycles_leave_every_version_ready_and_tritons_memory_bounded(stack, own_model):
    settings, name = own_model
    settings = settings.updated(models={"unload_grace_s": 0.2})
    triton_pid = int((stack.run_dir / "triton" / "triton.pid").read_text())
    rollout = Rollout(settings)
    triton = TritonRepository(settings.triton)

    def cycle() -> None:
        published = rollout.publish(name, "2", "test", "cycle")
        assert published.candidate == "2" and triton.ready(name, "1") and triton.ready(name, "2")
        rolled_back = rollout.rollback(name, "test", "cycle")
        assert rolled_back.candidate is None and triton.ready(name, "1")
        triton.wait_gone(name, ["2"], timeout_s=30)

    def orphan_regions() -> set[str]:
        """Stubs' shared memory that no process maps: left behind (another session's Triton may hold
        regions of its own meanwhile)."""
        regions = {p.name for p in Path("/dev/shm").iterdir() if p.name.startswith(SHM_PREFIX)}
        return regions - _mapped_shm()

    try:
        cycle()  # the first load of each version's libraries is not growth
        before, orphans = status_mib(triton_pid, "VmRSS"), orphan_regions()
        started = time.monotonic()
        for _ in range(CYCLES):
            cycle()
        after, left = status_mib(triton_pid, "VmRSS"), orphan_regions()
        seconds = time.monotonic() - started
    finally:
        rollout.close()
        triton.close()
    assert before is not None and after is not None
    print(f"Triton RSS {before:.0f} → {after:.0f} MiB over {CYCLES} cycles in {seconds:.0f} s")
    assert after - before < RSS_GROWTH_MIB, f"Triton's RSS grew {after - before:.0f} MiB over {CYCLES} cycles"
    assert left <= orphans, f"{len(left - orphans)} stub shared-memory regions left in /dev/shm"


def _mapped_shm() -> set[str]:
    """The /dev/shm files some running process maps."""
    mapped = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:  # the process ended, or is not ours to read
            continue
        mapped |= {line.rsplit("/", 1)[-1] for line in text.splitlines() if "/dev/shm/" in line}
    return mapped


def test_a_replay_lands_each_event_on_its_live_arm_and_a_backtest_scores_history_with_the_candidate(
    own_model, processes, start_worker, tmp_path
):
    settings, name = own_model
    settings = with_replay_topics(settings)
    ok(settings, "publish", name, "2", "--canary", "0.3")
    start_worker(settings)
    processes.started.append(processes.stack.start_worker(settings, f"backfill-{name}", backfill=True))
    requests = requests_for(name, 3_000, prefix=f"bt-{uuid.uuid4().hex[:6]}-")
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    probe.publish(settings, [traffic.message_for(r) for r in requests])
    stream = [  # the stream's offsets, not the sentinels' published after it
        f"{tp.partition}:0-{end}" for tp, end in probe.end_offsets(settings, [settings.topics.requests]).items() if end
    ]
    live = probe.collect(
        settings, start, lambda c: c.distinct_results >= len(requests), timeout_s=120,
        sentinels=probe.publish_sentinels(settings),
    ).results  # fmt: skip
    assert {r[0]["arm"] for r in live.values()} == {"stable", "canary"}

    backfill = settings.backfill()
    for replay_id, extra in (("as-routed", ()), ("backtest", ("--model-version", f"{name}:2"))):
        began = probe.end_offsets(backfill, [backfill.topics.results, backfill.topics.dlq])
        done = replay_cli(settings, "--replay-id", replay_id, *(f"--range={r}" for r in stream), *extra)
        assert done.returncode == 0 and f"published {len(requests)}" in done.stdout, done.stderr
        replayed = probe.collect(
            backfill, began, lambda c: c.distinct_results >= len(requests), timeout_s=120,
            sentinels=probe.publish_sentinels(backfill),
        ).results  # fmt: skip
        assert set(replayed) == set(live) and all(len(r) == 1 for r in replayed.values())
        if replay_id == "as-routed":  # the same arm and version as live, event by event
            assert all(
                (replayed[e][0]["arm"], replayed[e][0]["model_version"]) == (r[0]["arm"], r[0]["model_version"])
                for e, r in live.items()
            )
        else:  # every event scored by version 2, the score its model gives
            assert {(r[0]["arm"], r[0]["model_version"]) for r in replayed.values()} == {("backtest", "2")}
            got = [replayed[str(r["event_id"])][0]["score"] for r in requests]
            np.testing.assert_allclose(got, reference_scores(settings, requests, name, "2"), atol=1e-5, rtol=0)
    # `replay diff`: the backtest against the live results, event by event.
    diff = replay_cli(settings, "diff", "backtest", "--output", str(tmp_path / "diff.json"))
    assert diff.returncode == 0, diff.stderr
    figures = orjson.loads((tmp_path / "diff.json").read_bytes())
    live_versions = Counter(r[0]["model_version"] for r in live.values())
    assert figures["matched"] == len(requests)
    assert figures["model_versions"] == {f"{v}→2": n for v, n in sorted(live_versions.items())}
    # A version Triton has not loaded is refused before anything is published.
    refused = replay_cli(settings, "--replay-id", "not-loaded", "--model-version", f"{name}:9")
    assert refused.returncode == 1 and "is not loaded in Triton" in refused.stderr, refused.stderr


def replay_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return pipeline_cli(settings, "replay", *args)


def test_shadow_results_are_committed_with_their_live_results_through_a_worker_sigkill(own_model, start_worker):
    settings, name = own_model
    ok(settings, "publish", name, "2", "--shadow", "1.0")
    worker = start_worker(settings)
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    shadow_start = probe.end_offsets(settings, [settings.topics.shadow_results])
    stream = Stream(settings, rate=800, model=name, http=False)
    probe.collect(settings, start, lambda c: c.distinct_results >= 2_000, timeout_s=120, settle_s=0)
    worker.send_signal(signal.SIGKILL)  # mid-transaction, most likely: its open one is aborted
    worker.wait(timeout=30)
    start_worker(settings.updated(worker={"metrics_port": free_port()}))
    time.sleep(5)
    requests = stream.stop()
    collected = probe.collect(
        settings, start, lambda c: c.distinct_results >= len(requests), timeout_s=300,
        sentinels=probe.publish_sentinels(settings),
    )  # fmt: skip

    assert set(collected.results) == {str(r["event_id"]) for r in requests}
    assert collected.repeated_results == 0 and collected.dead_letters == []
    assert {(r[0]["arm"], r[0]["model_version"]) for r in collected.results.values()} == {("stable", "1")}
    # Every stable event shadowed (share 1.0), once: what an aborted transaction wrote is not read.
    shadow = probe.read_to_end(settings, shadow_start)
    assert Counter(s["event_id"] for s in shadow) == Counter(collected.results.keys())
    assert {(s["arm"], s["model_version"]) for s in shadow} == {("shadow", "2")}
