"""`pipeline bench`: every scenario in one invocation on the local stack, interleaved, with warm-up and
repetitions; medians, ratios and targets in a table, a JSON file and a PNG chart."""

from __future__ import annotations

import asyncio
import math
import os
import platform
import resource
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import orjson
import structlog

from pipeline import heap, topics
from pipeline.bench import burst, consumers, http, load, replay, state
from pipeline.bench.cpu import CpuMeter, per_million
from pipeline.bench.memory import RssSampler, status_mib
from pipeline.bench.stats import (
    median,
    median_figures,
    percentiles_ms,
    ratio,
    sample_total,
    stage_summary,
    stage_totals,
    state_summary,
    steady_rate,
)
from pipeline.bench.summary import MIX, peer_kind, runs_workers, summarise, throughput_scenarios
from pipeline.local import traffic
from pipeline.local.stack import LocalStack, free_port
from pipeline.models.spec import load_spec_file
from pipeline.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Options:
    events: int = 100_000
    naive_events: int = 2_000  # the naive peer is hundreds of times slower: fewer events, same rate measure
    warmup: int = 2_000
    repetitions: int = 3
    workers: tuple[int, ...] = (1, 2)
    http_rates: tuple[float, ...] = (100.0, 500.0, 1000.0)
    http_seconds: float = 10.0
    closed_concurrency: int = 16
    capacity_concurrency: int = 256  # closed loop wide enough to saturate the bridge: its capacity
    overload_factor: float = 3.0
    # The overload run's bridge sheds past this many requests in flight (the default, 2,000, is
    # more than the load generator's 1,024 connections could ever hold open).
    overload_max_in_flight: int = 500
    triton_calls: int = 500
    # Also this open-loop rate against a second worker and bridge that answer callers only once the
    # transaction carrying their result commits (worker.reply_when="committed"), interleaved; 0: not run.
    committed_answer_rate: float = 500.0
    soak_s: float = 0.0
    soak_rate: float = 1000.0
    soak_dedup_window_s: float = 60.0
    # The state group: a store of this many entries (a full window at ~115 events/s for 24 h), looked
    # up this many times after a restart; a cold rebuild of one partition from this many results; the
    # dedup microbenchmark on states of this many entries, in rounds of batches of 1,024.
    state_entries: int = 10_000_000
    state_lookups: int = 200_000
    state_rebuild_entries: int = 500_000
    state_micro_entries: int = 1_000_000
    state_micro_batches: int = 100
    state_micro_rounds: int = 5
    state_restart_events: int = 20_000  # requests scored by the worker restarted on the full store
    # The consumer group: one fraud consumer through a backlog of this many results, then fed this
    # many results per second for this long (alert latency).
    consumer_results: int = 200_000
    consumer_rate: float = 1000.0
    consumer_seconds: float = 30.0
    # The replay group: `pipeline replay` publishing a Parquet file of this many requests; scoring
    # this many of them with a backfill worker; the live HTTP p99 at this rate (for http_seconds)
    # with and without a replay of this many requests.
    replay_events: int = 1_000_000
    replay_scored_events: int = 200_000
    replay_live_events: int = 100_000
    replay_http_rate: float = 100.0
    # The burst group: this many requests at once into an idle pipeline, drained by one worker, by
    # burst_max_workers, and by `pipeline scale` between the two.
    burst_events: int = 300_000
    burst_max_workers: int = 3


@dataclass
class Bench:
    stack: LocalStack
    settings: Settings
    options: Options
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    # -- throughput -------------------------------------------------------------------------------
    def throughput(self) -> None:
        o = self.options
        prefix = f"bench-{uuid.uuid4().hex[:6]}-"
        messages = load.requests(o.events + o.warmup, prefix=prefix)
        warm, timed = messages[: o.warmup], messages[o.warmup :]
        mixed = load.mixed(messages, prefix=f"{prefix}device-")
        mixed_warm, mixed_timed = mixed[: o.warmup], mixed[o.warmup :]
        _quiet_collector()
        # Round -1 is not recorded: a fresh broker's JIT compiler takes minutes to reach steady state,
        # and on two cores its compile threads would slow whichever scenario happens to run first.
        for rep in range(-1, o.repetitions):
            for scenario, processes in throughput_scenarios(o.workers):
                if rep < 0 and scenario == "naive":
                    continue
                events = timed[: o.naive_events] if scenario == "naive" else timed
                warmup = warm[: max(1, o.warmup // 20)] if scenario == "naive" else warm
                if scenario.startswith(MIX):
                    events, warmup = mixed_timed, mixed_warm
                if rep < 0:
                    events = events[: max(1, len(events) // 2)]
                figures = self._throughput_run(scenario, processes, warmup, events)
                if rep < 0:
                    log.info("bench_warmup_round", scenario=scenario, events_per_s=figures["events_per_s"])
                    continue
                figures["repetition"] = rep
                self.runs.setdefault(scenario, []).append(figures)
                log.info("bench_run", scenario=scenario, repetition=rep, events_per_s=figures["events_per_s"])

    def _throughput_run(
        self, scenario: str, count: int, warmup: list[traffic.Message], events: list[traffic.Message]
    ) -> dict[str, Any]:
        settings = load.fresh_topics(self.settings, scenario)
        counter = load.OutputCounter(settings, settings.topics.results)
        processes: dict[str, subprocess.Popen[bytes]] = {}
        metrics_ports: list[int] = []
        try:
            for i in range(count):
                port = free_port()
                own = settings.updated(worker={"metrics_port": port})
                name = f"bench-{scenario}-{i}"
                if runs_workers(scenario):
                    processes[name] = self.stack.start_worker(own, name)
                    metrics_ports.append(port)
                else:
                    processes[name] = self.stack.spawn(name, own, "bench-peer", peer_kind(scenario))
                    self.stack.wait_for_log(name, "peer_ready", processes[name])
            load.drive(settings, counter, warmup, timeout_s=300)
            before = stage_totals([_scrape(p) for p in metrics_ports])
            sampler = RssSampler({name: p.pid for name, p in processes.items()}, interval_s=0.5)
            path = self._path_meter(processes, triton=runs_workers(scenario) or scenario == "naive")
            generator = CpuMeter({"load_generator": os.getpid()}).start()
            run = load.drive(settings, counter, events, timeout_s=120 + len(events) / 100)
            cpu = {"path": path.stop(), **generator.stop()}
            peaks = sampler.stop()
            after = stage_totals([_scrape(p) for p in metrics_ports])
        finally:
            counter.close()
            self._stop(processes)
            load.drop_topics(settings)
        return {
            "events": run.count,
            "seconds": round(run.done_at - run.produced_at, 3),
            "events_per_s": round(run.events_per_s, 1),
            "steady_events_per_s": steady_rate(run.timeline, run.count),
            "peak_rss_mib": peaks,
            "cpu_s": cpu,
            "cpu_s_per_million": {
                "path": per_million(cpu["path"], run.count),
                "path_total": per_million({"all": sum(cpu["path"].values())}, run.count)["all"],
                "load_generator": per_million({"g": cpu.get("load_generator", 0.0)}, run.count)["g"],
            },
            "stages": stage_summary(after, before) if metrics_ports else {},
        }

    def _path_meter(self, processes: dict[str, subprocess.Popen[bytes]], triton: bool) -> CpuMeter:
        """A meter of the CPU of these processes and of the services on their path, started."""
        pids = {name: p.pid for name, p in processes.items()}
        services = self.service_pids()
        pids["kafka"] = services["kafka"]
        if triton:
            pids["tritonserver"] = services["tritonserver"]
        return CpuMeter(pids).start()

    def service_pids(self) -> dict[str, int]:
        pids = {}
        for name, pid_file in (("kafka", "kafka/kafka.pid"), ("tritonserver", "triton/triton.pid")):
            path = self.stack.run_dir / pid_file
            if path.exists():
                pids[name] = int(path.read_text().strip())
        return pids

    # -- HTTP bridge ------------------------------------------------------------------------------
    def http(self) -> dict[str, Any]:
        o = self.options
        settings = load.fresh_topics(self.settings, "http")
        # Ports of its own: the bench can run beside `pipeline stack up`.
        settings = settings.updated(gateway={"port": free_port()}, worker={"metrics_port": free_port()})
        processes: dict[str, subprocess.Popen[bytes]] = {}
        strict: Settings | None = None
        peer = settings.updated(gateway={"port": free_port()})
        name = "bench-http-request-response"
        try:  # what started is stopped even when a later start fails
            processes["bench-http-worker"] = self.stack.start_worker(settings, "bench-http-worker")
            processes["bench-http-gateway"] = self.stack.start_gateway(settings, "bench-http-gateway")
            if o.committed_answer_rate:
                strict = load.fresh_topics(self.settings, "http-committed").updated(
                    gateway={"port": free_port()}, worker={"metrics_port": free_port(), "reply_when": "committed"}
                )
                for role, start in (("worker", self.stack.start_worker), ("gateway", self.stack.start_gateway)):
                    processes[f"bench-http-committed-{role}"] = start(strict, f"bench-http-committed-{role}")
            # The request-response peer, served at the same route, loaded at the same rates in the same rounds.
            processes[name] = self.stack.spawn(name, peer, "bench-peer", "request-response")
            self.stack.wait_for_http(name, processes[name], peer.gateway.port)
        except BaseException:
            self._stop(processes)
            load.drop_topics(settings)
            if strict is not None:
                load.drop_topics(strict)
            raise
        services = self.service_pids()
        bridge_path = {n: processes[n].pid for n in ("bench-http-worker", "bench-http-gateway")} | services
        peer_path = {name: processes[name].pid, "tritonserver": services["tritonserver"]}
        spec = load_spec_file(settings.triton.model_repository / settings.default_model / "config.pbtxt")
        # Every body unique (a repeat is answered from dedup, which is cheaper); the overload run,
        # mostly refused with 429, is the only one that may wrap around.
        rates = sum(o.http_rates) + o.committed_answer_rate
        total = int(((o.repetitions + 1 + o.overload_factor) * rates) * o.http_seconds + 100_000)
        bodies = http.Bodies(f"bench-http-{uuid.uuid4().hex[:6]}-", min(total, 300_000))
        sampler = RssSampler({name: p.pid for name, p in processes.items()}, interval_s=0.5)
        try:
            # Like the throughput runs: one unrecorded round first (a fresh broker's JIT compiler),
            # then each load level once per repetition, interleaved, so the host's slow spells
            # fall on every level alike; medians reported, each repetition kept.
            closed_runs: list[dict[str, Any]] = []
            open_runs: dict[float, list[dict[str, Any]]] = {r: [] for r in o.http_rates}
            peer_runs: dict[float, list[dict[str, Any]]] = {r: [] for r in o.http_rates}
            committed_runs: list[dict[str, Any]] = []
            for rep in range(-1, o.repetitions):
                closed_run = _measured(http.closed_loop(settings, bodies, o.closed_concurrency, o.http_seconds))
                opened_runs, peered_runs = [], []
                for rate in o.http_rates:  # each rate on the bridge, then on the peer
                    opened_runs.append(_metered(http.open_loop(settings, bodies, rate, o.http_seconds), bridge_path))
                    peered_runs.append(_metered(http.open_loop(peer, bodies, rate, o.http_seconds), peer_path))
                committed_run = None
                if strict is not None:
                    committed_run = _measured(http.open_loop(strict, bodies, o.committed_answer_rate, o.http_seconds))
                if rep < 0:
                    log.info("bench_warmup_round", scenario="http", p50_ms=closed_run.figures()["p50"])
                    continue
                closed_runs.append(closed_run.figures())
                for rate, run, peered in zip(o.http_rates, opened_runs, peered_runs, strict=True):
                    open_runs[rate].append(run)
                    peer_runs[rate].append(peered)
                p50s = {f"p50_ms@{rate:g}": runs[-1]["p50"] for rate, runs in open_runs.items()}
                p50s |= {f"request_response_p50_ms@{rate:g}": runs[-1]["p50"] for rate, runs in peer_runs.items()}
                if committed_run is not None:
                    committed_runs.append(committed_run.figures())
                    p50s["p50_ms_answered_once_committed"] = committed_runs[-1]["p50"]
                log.info("bench_run", scenario="http", repetition=rep, **p50s)
            closed = median_figures(closed_runs)
            opened = [median_figures(open_runs[r]) for r in o.http_rates]
            peered = [median_figures(peer_runs[r]) for r in o.http_rates]
            saturated = _measured(http.closed_loop(settings, bodies, o.capacity_concurrency, o.http_seconds)).figures()
            capacity = max(1.0, saturated["achieved_per_s"])
            shedding = settings.updated(gateway={"port": free_port(), "max_in_flight": o.overload_max_in_flight})
            name = "bench-http-gateway-overload"
            processes[name] = self.stack.start_gateway(shedding, name)
            sampler.track(name, processes[name].pid)
            overload = _measured(
                http.open_loop(shedding, bodies, round(capacity * o.overload_factor), o.http_seconds)
            ).figures()
            direct = asyncio.run(http.direct_triton(settings, spec, o.triton_calls))
        finally:
            peaks = sampler.stop()
            self._stop(processes)
            load.drop_topics(settings)
            if strict is not None:
                load.drop_topics(strict)
        return {
            "closed_loop": closed,
            "open_loop": opened,
            # The request-response peer at the same rates, in the same rounds.
            "request_response_open_loop": peered,
            # The same open loop, callers answered only once their result is committed (reference).
            "open_loop_answered_once_committed": median_figures(committed_runs) if committed_runs else None,
            "capacity": saturated,
            "overload": overload
            | {"factor_of_capacity": o.overload_factor, "gateway_max_in_flight": o.overload_max_in_flight},
            "direct_triton_one_row": direct,
            "peak_rss_mib": peaks,
        }

    # -- dedup state on disk ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The store at full size, each memory figure from a process of its own (pipeline/bench/state.py),
        then a worker restarted on it."""
        o = self.options
        root = self.stack.run_dir / "bench-state"
        shutil.rmtree(root, ignore_errors=True)
        # The topics and app id of the worker restarted on the store: what it is written for.
        restart = load.fresh_topics(self.settings, "state").updated(worker={"state_dir": str(root)})
        try:
            store = root / restart.worker.app_id
            written = self._state_process("write", store, restart, entries=o.state_entries)
            disk = state.disk_bytes(store / "rocksdb")
            served = self._state_process("serve", store, restart, entries=o.state_entries, lookups=o.state_lookups)
            log.info("bench_run", scenario="state", rss_mib=served["rss_mib"], disk_mib=round(disk / 2**20))
            restarted = self._state_restart(restart, root)
            shutil.rmtree(store)
            micro = self._state_process(
                "micro",
                root / "micro",
                self.settings,
                entries=o.state_micro_entries,
                batches=o.state_micro_batches,
                rounds=o.state_micro_rounds,
            )
            rebuilt = self._state_rebuild(root / "rebuild")
        finally:
            load.drop_topics(restart)
            shutil.rmtree(root, ignore_errors=True)
        return {
            "write": written,
            "serve": served,
            "restart": restarted,
            "disk_bytes": disk,
            "rebuild": rebuilt,
            "dedup_cost": micro,
            "summary": state_summary(written, served, disk, rebuilt, micro, restarted),
        }

    def _state_process(self, role: str, directory: Path, settings: Settings, **options: int) -> dict[str, Any]:
        """Run `pipeline bench-state ROLE DIR` to its end; its figures."""
        name = f"bench-state-{role}"
        directory.mkdir(parents=True, exist_ok=True)
        flags = [part for key, value in options.items() for part in (f"--{key}", str(value))]
        process = self.stack.spawn(name, settings, "bench-state", role, str(directory), *flags)
        try:
            returncode = process.wait(timeout=300 + options.get("entries", 0) / 10_000)
        finally:
            self.stack.stop_process(name)
        if returncode != 0:
            raise RuntimeError(f"{name} exited {returncode}; see {self.stack.run_dir / name}.log")
        return dict(orjson.loads((directory / f"{role}.json").read_bytes()))

    def _state_restart(self, restart: Settings, root: Path) -> dict[str, Any]:
        """A worker started on the full store (every partition warm, nothing to read back), and, as the
        baseline, one on an empty state directory and topics of its own: from start to ready (every
        partition's state restored), its first result and its RSS through a run of requests."""
        empty = load.fresh_topics(self.settings, "state-empty").updated(worker={"state_dir": str(root / "empty")})
        try:
            baseline = self._restarted_worker(empty, "bench-state-empty")
        finally:
            load.drop_topics(empty)
        full = self._restarted_worker(restart, "bench-state-worker")
        return {"empty": baseline, "full": full, "ready_s_over_empty": round(full["ready_s"] - baseline["ready_s"], 3)}

    def _restarted_worker(self, settings: Settings, name: str) -> dict[str, Any]:
        port = free_port()
        own = settings.updated(worker={"metrics_port": port})
        counter = load.OutputCounter(own, own.topics.results)
        began = time.monotonic()
        process = self.stack.start_worker(own, name)
        try:
            ready_s = time.monotonic() - began
            restores = _scrape(port)
            sampler = RssSampler({name: process.pid}, interval_s=0.5)
            run = load.drive(own, counter, load.requests(self.options.state_restart_events, name), timeout_s=300)
            peaks = sampler.stop()
            rss = status_mib(process.pid, "VmRSS") or 0.0
        finally:
            counter.close()
            self._stop({name: process})
        first = run.timeline[0][0] - run.produced_at if run.timeline else float("nan")
        return {
            "ready_s": round(ready_s, 3),
            "restores": {m: int(sample_total(restores, RESTORES, mode=m)) for m in ("warm", "cold")},
            "first_result_s": round(first, 3),
            "events": run.count,
            "events_per_s": round(run.events_per_s, 1),
            "peak_rss_mib": peaks[name],
            "rss_mib": round(rss, 1),
        }

    def _state_rebuild(self, directory: Path) -> dict[str, Any]:
        """A cold `changelog.Restorer` rebuild of one partition of a fresh results topic, in this process."""
        entries = self.options.state_rebuild_entries
        settings = load.fresh_topics(self.settings, "state")
        try:
            state.publish_results(settings, entries)
            figures = asyncio.run(state.rebuild(settings, directory, entries))
        finally:
            load.drop_topics(settings)
        log.info("bench_run", scenario="state-rebuild", entries_per_s=figures["per_s"])
        return figures

    # -- consumers --------------------------------------------------------------------------------
    def consumers(self) -> dict[str, Any]:
        """One fraud consumer process: its capacity through a backlog, its alert latency at a steady rate."""
        o = self.options
        capacity = self._consumer_capacity(o.consumer_results)
        log.info("bench_run", scenario="consumer-capacity", results_per_s=capacity["results_per_s"])
        latency = self._consumer_latency(o.consumer_rate, o.consumer_seconds)
        log.info("bench_run", scenario="consumer-latency", p50_ms=latency["p50"], p99_ms=latency["p99"])
        return {"fraud_capacity": capacity, "fraud_alert_latency": latency}

    def _consumer_capacity(self, count: int) -> dict[str, Any]:
        """A backlog of `count` committed results, then one consumer from the beginning: results/s
        while its count went from 20% to 80% of them (start-up and tail apart), by its own metric."""
        settings = load.fresh_topics(self.settings, "consumer")
        group = f"{settings.worker.app_id}-fraud"
        port = free_port()
        own = settings.updated(consumers={"metrics_port": port})
        partitions = topics.partition_count(own, own.topics.results)
        rows = consumers.results(own, count, prefix=f"{group}-")
        publisher = consumers.ResultsPublisher(own, partitions)
        for start in range(0, count, 10_000):
            publisher.commit(rows[start : start + 10_000])
        name = "bench-consumer-fraud"
        timeline: list[tuple[float, int]] = []
        try:
            process = self.stack.start_consumer(own, "fraud", name, "--group-id", group, "--from-beginning")
            meter = CpuMeter({name: process.pid}).start()
            sampler = RssSampler({name: process.pid}, interval_s=0.5)
            deadline = time.monotonic() + 120 + count / 1000
            while (read := int(sample_total(_scrape(port), CONSUMED, consumer="fraud"))) < count:
                timeline.append((time.time(), read))
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the fraud consumer read {read} of {count} results")
                time.sleep(1.0)  # a scrape costs the consumer CPU: not too often
            timeline.append((time.time(), read))
            cpu, peaks = meter.stop(), sampler.stop()
            alerts = int(sample_total(_scrape(port), ALERTS, kind="fraud"))
        finally:
            self.stack.stop_process(name)
            load.drop_topics(settings)
            _drop_group_topics(settings, group)
        rate = steady_rate(timeline, count)
        if not math.isfinite(rate):  # read too fast for two scrapes past a fifth: the whole run's rate
            rate = round(count / max(1e-3, timeline[-1][0] - timeline[0][0]), 1)
        return {
            "results": count,
            "results_per_s": rate,
            "alerts": alerts,
            "cpu_s_per_million": per_million(cpu, count)[name],
            "peak_rss_mib": peaks[name],
        }

    def _consumer_latency(self, rate: float, seconds: float) -> dict[str, Any]:
        """One consumer fed `rate` results/s for `seconds`: each alert's latency from the commit of
        the result that decided it to its being read by a read_committed reader."""
        settings = load.fresh_topics(self.settings, "consumer-latency")
        group = f"{settings.worker.app_id}-fraud"
        own = settings.updated(consumers={"metrics_port": free_port()})
        rows = consumers.results(own, int(rate * seconds), prefix=f"{group}-", seed=12)
        publisher = consumers.ResultsPublisher(own, topics.partition_count(own, own.topics.results))
        name = "bench-consumer-fraud-latency"
        reader: consumers.AlertReader | None = None
        try:
            self.stack.start_consumer(own, "fraud", name, "--group-id", group)
            reader = consumers.AlertReader(own)
            began = time.monotonic()
            committed = consumers.steady(publisher, rows, rate)
            achieved = len(rows) / (time.monotonic() - began)
            reader.wait_quiet(quiet_s=3.0, timeout_s=60)
            latencies = consumers.alert_latencies_s(reader.seen, committed)
        finally:
            if reader is not None:
                reader.close()
            self.stack.stop_process(name)
            load.drop_topics(settings)
            _drop_group_topics(settings, group)
        return {
            "offered_per_s": rate,
            "achieved_per_s": round(achieved, 1),
            "seconds": seconds,
            "alerts": len(latencies),
            **percentiles_ms(latencies),
        }

    # -- burst --------------------------------------------------------------------------------------
    def burst(self) -> dict[str, Any]:
        """One burst, three ways: a fixed single worker, a fixed maximum, the supervisor between."""
        o = self.options
        messages = load.requests(o.burst_events, prefix=f"burst-{time.time_ns() % 10**10}-")
        one = burst.fixed(self.stack, self.settings, 1, messages)
        log.info("bench_run", scenario="burst-1w", seconds=one["seconds"])
        most = burst.fixed(self.stack, self.settings, o.burst_max_workers, messages)
        log.info("bench_run", scenario=f"burst-{o.burst_max_workers}w", seconds=most["seconds"])
        scaled = burst.scaled(self.stack, self.settings, burst.Policy(max_workers=o.burst_max_workers), messages)
        log.info("bench_run", scenario="burst-scaled", seconds=scaled["seconds"], events=scaled["scale_events"])
        return {
            "events": o.burst_events,
            "fixed_one": one,
            "fixed_max": most,
            "scaled": scaled,
            "ratios": {  # drain time against one fixed worker's, in this run
                "fixed_max/fixed_one": round(most["seconds"] / one["seconds"], 3),
                "scaled/fixed_one": round(scaled["seconds"] / one["seconds"], 3),
            },
        }

    # -- soak ---------------------------------------------------------------------------------------
    # -- replay -----------------------------------------------------------------------------------
    def replay(self) -> dict[str, Any]:
        """`pipeline replay` from a Parquet file: its publishing rate, the backfill rate (published →
        scored by a backfill worker), and the live HTTP p99 during a replay against without one."""
        o = self.options
        settings = load.fresh_topics(self.settings, "replay")
        path = self.stack.run_dir / "bench-replay.parquet"
        replay.write_requests(path, o.replay_events, prefix=f"{settings.worker.app_id}-")
        parts: list[Settings] = []

        def part(label: str) -> Settings:
            parts.append(replay.backfill_settings(settings, label, free_port()))
            return parts[-1]

        try:
            publishing = self._replay_publish(part("publish"), path)
            log.info("bench_run", scenario="replay-publish", events_per_s=publishing["per_s"])
            scored = self._replay_scored(part("scored"), path, min(o.replay_scored_events, o.replay_events))
            log.info("bench_run", scenario="replay-scored", events_per_s=scored["events_per_s"])
            live = self._replay_live(part("live"), path, min(o.replay_live_events, o.replay_events))
            log.info("bench_run", scenario="replay-live-http", p99_ratio=live["p99_ratio"])
        finally:
            load.drop_topics(settings)
            for each in parts:
                replay.drop_topics(each)
            path.unlink(missing_ok=True)
        return {"events": o.replay_events, "publish": publishing, "scored": scored, "live_http": live}

    def _replay_command(
        self, settings: Settings, name: str, replay_id: str, path: Path, *options: str
    ) -> subprocess.Popen[bytes]:
        rejects = self.stack.run_dir / f"{name}.rejects.jsonl"
        return self.stack.spawn(
            name, settings, "replay", "--replay-id", replay_id, "--file", str(path), "--rejects", str(rejects), *options
        )

    def _replay_publish(self, settings: Settings, path: Path) -> dict[str, Any]:
        """The whole file, no backfill worker running: the replay's own publishing rate, after an
        unrecorded run (a fresh broker's JIT compiler takes a million records to warm up)."""
        warm = self._replay_command(settings, "bench-replay-warmup", f"{settings.worker.app_id}-warmup", path)
        replay.wait_exit(warm, timeout_s=900)
        name, replay_id = "bench-replay-publish", f"{settings.worker.app_id}-publish"
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command's CPU, once it is waited for
        process = self._replay_command(settings, name, replay_id, path)
        meter = CpuMeter(self.service_pids()).start()
        wall = replay.wait_exit(process, timeout_s=900)
        cpu = meter.stop()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu[name] = after.ru_utime - children.ru_utime + after.ru_stime - children.ru_stime
        figures = replay.published(settings, replay_id)
        return figures | {
            "command_s": round(wall, 3),  # with the command's start-up and the checkpoint read
            "cpu_s_per_million": per_million(cpu, int(figures["published"])),
        }

    def _replay_scored(self, settings: Settings, path: Path, count: int) -> dict[str, Any]:
        """The first `count` requests of the file replayed with one backfill worker: from the
        command's start to the last result committed on the backfill results topic."""
        name = "bench-replay-backfill-worker"
        self.stack.start_worker(settings, name, backfill=True)
        counter = load.OutputCounter(settings, settings.topics.backfill_results)
        try:
            counter.expect(count)
            began = time.time()
            process = self._replay_command(
                settings, "bench-replay-scored", f"{settings.worker.app_id}-scored", path, "--limit", str(count)
            )
            replay.wait_exit(process, timeout_s=900)
            published_at = time.time()
            if not counter.wait(120 + count / 500):
                raise TimeoutError(f"{counter.count} of {count} replayed requests scored")
            seconds = counter.reached_at - began
            timeline = list(counter.timeline)
        finally:
            counter.close()
            self.stack.stop_process(name)
        return {
            "events": count,
            "seconds": round(seconds, 3),
            "events_per_s": round(count / max(1e-6, seconds), 1),
            "steady_events_per_s": steady_rate(timeline, count),
            "published_after_s": round(published_at - began, 3),
        }

    def _replay_live(self, settings: Settings, path: Path, count: int) -> dict[str, Any]:
        """A live worker and bridge with a backfill worker beside them: the open-loop HTTP latency at
        `replay_http_rate` with no replay, then while a replay of `count` requests is published and
        scored, in interleaved rounds (one unrecorded)."""
        o = self.options
        live = settings.updated(gateway={"port": free_port()}, worker={"metrics_port": free_port()})
        names = ("bench-replay-live-worker", "bench-replay-live-gateway", "bench-replay-live-backfill")
        processes: dict[str, subprocess.Popen[bytes]] = {}
        counter = load.OutputCounter(live, live.topics.backfill_results)
        bodies = http.Bodies(f"{live.worker.app_id}-http-", int(o.replay_http_rate * o.http_seconds * 2 * 4) + 100)
        quiet_runs: list[dict[str, Any]] = []
        busy_runs: list[dict[str, Any]] = []
        try:
            processes[names[0]] = self.stack.start_worker(live, names[0])
            processes[names[1]] = self.stack.start_gateway(live, names[1])
            processes[names[2]] = self.stack.start_worker(live, names[2], backfill=True)
            for rep in range(-1, o.repetitions):
                quiet = _measured(http.open_loop(live, bodies, o.replay_http_rate, o.http_seconds)).figures()
                before = counter.count
                counter.expect(before + count)
                name = f"bench-replay-live-{rep + 1}"
                command = self._replay_command(
                    live, name, f"{name}-{uuid.uuid4().hex[:6]}", path, "--limit", str(count)
                )
                deadline = time.monotonic() + 60
                while counter.count == before and time.monotonic() < deadline:  # measured once scoring has begun
                    time.sleep(0.05)
                busy = _measured(http.open_loop(live, bodies, o.replay_http_rate, o.http_seconds)).figures()
                replay.wait_exit(command, timeout_s=600)
                if not counter.wait(120 + count / 500):  # the next quiet run starts with no backfill work
                    raise TimeoutError(f"{counter.count} replayed requests scored")
                if rep >= 0:
                    quiet_runs.append(quiet)
                    busy_runs.append(busy)
                log.info("bench_run", scenario="replay-live-http", repetition=rep, p99_quiet=quiet["p99"],
                         p99_replaying=busy["p99"])  # fmt: skip
        finally:
            counter.close()
            self._stop(processes)
        without, during = median_figures(quiet_runs), median_figures(busy_runs)
        return {
            "rate": o.replay_http_rate,
            "replay_events": count,
            "without_replay": without,
            "during_replay": during,
            "p99_ratio": ratio(during["p99"], without["p99"]),
            "p50_ratio": ratio(during["p50"], without["p50"]),
        }

    def soak(self) -> dict[str, Any]:
        o = self.options
        settings = load.fresh_topics(self.settings, "soak")
        settings = settings.updated(worker={"metrics_port": free_port(), "dedup_window_s": o.soak_dedup_window_s})
        process = self.stack.start_worker(settings, "bench-soak-worker")
        sampler = RssSampler({"worker": process.pid}, interval_s=min(5.0, o.soak_s / 30))
        stop = threading.Event()
        producer = threading.Thread(target=_steady_load, args=(settings, o.soak_rate, stop), daemon=True)
        producer.start()
        try:
            time.sleep(o.soak_s)
        finally:
            stop.set()
            producer.join(30)
            sampler.stop()
            self._stop({"bench-soak-worker": process})
            load.drop_topics(settings)
        samples = sampler.samples["worker"]
        window = max(1, len(samples) // 10)
        # Skip the first tenth (warm-up, the dedup window filling), compare the next tenth with the last.
        baseline, final = median(samples[window : 2 * window]), median(samples[-window:])
        growth = ratio(final - baseline, baseline)
        return {
            "seconds": o.soak_s,
            "rate_per_s": o.soak_rate,
            "dedup_window_s": o.soak_dedup_window_s,
            "rss_mib_samples": [round(s, 1) for s in samples],
            "rss_mib_baseline": round(baseline, 1),
            "rss_mib_final": round(final, 1),
            "growth": growth,
            "flat_within_10pct": abs(growth) <= 0.10,
        }

    def _stop(self, processes: dict[str, subprocess.Popen[bytes]]) -> None:
        for name in processes:
            self.stack.stop_process(name)

    # -- the whole report -----------------------------------------------------------------------
    def services_rss(self) -> dict[str, float]:
        peaks = {}
        for name, pid in self.service_pids().items():
            if (peak := status_mib(pid, "VmHWM")) is not None:
                peaks[name] = round(peak, 1)
        return peaks


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    memory = next(
        (
            int(line.split()[1]) // 1024
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        0,
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_mib": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu": "none" if not Path("/dev/nvidia0").exists() else "nvidia",
        "note": "Kafka, Triton, the workers, the peers and the load generator all share this machine",
    }


def run(base: Settings, options: Options, scenarios: set[str], stack: LocalStack | None = None) -> dict[str, Any]:
    stack = stack or LocalStack.from_settings(base)
    settings = stack.settings(base)
    stack.prepare(settings)
    started_at = time.time()
    with stack.services(settings):
        bench = Bench(stack, settings, options)
        report: dict[str, Any] = {"machine": machine(), "options": asdict(options)}
        if "throughput" in scenarios:
            bench.throughput()
            report["throughput_runs"] = bench.runs
        http_figures = bench.http() if "http" in scenarios else None
        if http_figures:
            report["http"] = http_figures
        state_figures = bench.state() if "state" in scenarios else None
        if state_figures:
            report["state"] = state_figures
        consumer_figures = bench.consumers() if "consumers" in scenarios else None
        if consumer_figures:
            report["consumers"] = consumer_figures
        replay_figures = bench.replay() if "replay" in scenarios else None
        if replay_figures:
            report["replay"] = replay_figures
        if "burst" in scenarios:
            report["burst"] = bench.burst()
        if options.soak_s > 0:
            report["soak"] = bench.soak()
        report["services_peak_rss_mib"] = bench.services_rss()
    report["summary"] = summarise(
        bench.runs, http_figures, state_figures, consumer_figures, replay_figures, report.get("burst")
    )
    report["seconds"] = round(time.time() - started_at, 1)
    return report


def _quiet_collector() -> None:
    """Before a measured run: collect, and keep what is alive out of later collections. The load
    generator's own full collections walk everything it holds, and an HTTP request's latency counts
    from its scheduled start, so each pause would be charged to the bridge
    (docs/performance.md#bench-load-generator-gc)."""
    heap.freeze_startup()


def _metered(load: Coroutine[Any, Any, http.LoadResult], pids: dict[str, int]) -> dict[str, Any]:
    """One load level's figures, with the CPU every process on its path spent per request answered."""
    meter = CpuMeter(pids).start()
    figures = _measured(load).figures()
    spent = meter.stop()
    answered = figures["statuses"].get("200", 0)
    figures["cpu_ms_per_request"] = round(sum(spent.values()) * 1000 / answered, 3) if answered else float("nan")
    figures["cpu_ms_per_request_by_process"] = {
        n: round(s * 1000 / answered, 3) if answered else float("nan") for n, s in spent.items()
    }
    return figures


def _measured(load: Coroutine[Any, Any, http.LoadResult]) -> http.LoadResult:
    """One HTTP load run, with the load generator's collector quiet first."""
    _quiet_collector()
    return asyncio.run(load)


RESTORES = "pipeline_state_restores_total"
CONSUMED, ALERTS = "pipeline_consumer_results_total", "pipeline_alerts_total"


def _scrape(port: int) -> str:
    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def _drop_group_topics(settings: Settings, group: str) -> None:
    """A bench consumer's own topics (its tables' changelogs, Faust's leader topic), named for its group."""
    admin = topics.admin_client(settings)
    names = [name for name in admin.list_topics(timeout=10).topics if name.startswith(f"{group}-")]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            future.result()


def _steady_load(settings: Settings, rate: float, stop: threading.Event) -> None:
    """Valid, distinct requests at `rate` per second, in 100 ms slices, until `stop`."""
    producer = topics.requests_producer(settings, {"linger.ms": 5})
    prefix = f"soak-{uuid.uuid4().hex[:6]}-"
    pool = traffic.valid_requests(10_000, prefix="pool-")
    sent = 0
    began = time.monotonic()
    while not stop.is_set():
        due = int((time.monotonic() - began) * rate)
        for i in range(sent, due):
            message = traffic.message_for(pool[i % len(pool)] | {"event_id": f"{prefix}{i:09d}"})
            producer.produce(settings.topics.requests, message.value, key=message.key)
        sent = max(sent, due)
        producer.poll(0)
        stop.wait(0.1)
    producer.flush(30)
