"""The HTTP group: `POST /v1/predict` on one worker and one bridge with topics of their own, closed
and open loops in interleaved rounds, beside a worker and bridge answering at commit and the
request-response peer at the same rates; then the bridge's capacity, an overload past it, and a
direct Triton call (docs/performance.md#http)."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from pipeline.bench import load, rounds, routed_model
from pipeline.bench.context import Context, Group, Report
from pipeline.bench.http_load import Bodies, closed_loop, direct_triton, measured, metered, open_loop
from pipeline.bench.memory import RssSampler
from pipeline.bench.options import Options
from pipeline.bench.scenarios import ROUTED
from pipeline.bench.stats import median_figures
from pipeline.local.stack import free_port
from pipeline.models.spec import load_spec_file
from pipeline.settings import Settings

BRIDGE, COMMITTED, PEER = "bench-http", "bench-http-committed", "bench-http-request-response"  # process names
Figures = dict[str, Any]


@dataclass
class Stand:
    """What the group loads: a worker and its bridge, the request-response peer, a second worker
    and bridge answering at commit (when its rate is not 0), and a worker and bridge per share of
    ROUTED whose model has a candidate (when the routed rate is not 0); every process started, by name."""

    bridge: Settings
    peer: Settings
    committed: Settings | None = None
    routed: dict[str, Settings] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def paths(self, context: Context) -> tuple[dict[str, int], dict[str, int]]:
        """The processes on each one's path, for its CPU per request: the bridge's, the peer's."""
        services = context.service_pids()
        return self.path(context, BRIDGE), {PEER: self.processes[PEER].pid, "tritonserver": services["tritonserver"]}

    def path(self, context: Context, prefix: str) -> dict[str, int]:
        """A worker and bridge pair's path: the two and the services."""
        return {n: self.processes[n].pid for n in (f"{prefix}-worker", f"{prefix}-gateway")} | context.service_pids()


def run(context: Context) -> Figures:
    o = context.options
    bodies = Bodies(f"bench-http-{uuid.uuid4().hex[:6]}-", _bodies(o))
    with _stood_up(context) as stand:
        sampler = RssSampler({name: p.pid for name, p in stand.processes.items()}, interval_s=0.5)
        try:
            recorded = rounds.interleaved(o.repetitions, _levels(context, stand, bodies), o.warm_up_round)
            figures = _medians(o, recorded) | _limits(context, stand, bodies, sampler)
        finally:
            peaks = sampler.stop()
    return figures | {"peak_rss_mib": peaks}


def _bodies(o: Options) -> int:
    """Every body unique (a repeat is answered from dedup, which is cheaper); the overload run, mostly
    refused with 429, is the only one that may wrap around."""
    rates = sum(o.http_rates) + o.committed_answer_rate
    return min(int(((o.repetitions + 1 + o.overload_factor) * rates) * o.http_seconds + 100_000), 300_000)


@contextmanager
def _stood_up(context: Context) -> Iterator[Stand]:
    """The stand started (ports of its own: the bench can run beside `pipeline stack up`); stopped,
    and its topics dropped, whatever happens."""
    bridge = load.fresh_topics(context.settings, "http")
    bridge = bridge.updated(gateway={"port": free_port()}, worker={"metrics_port": free_port()})
    stand = Stand(bridge, peer=bridge.updated(gateway={"port": free_port()}))
    routed = context.options.routed_http_rate > 0
    with routed_model.bench_model(context.settings) if routed else nullcontext("") as model:
        try:
            _start(context, stand, model)
            yield stand
        finally:
            context.stop(stand.processes)
            for settings in (stand.bridge, stand.committed, *stand.routed.values()):
                if settings is not None:
                    load.drop_topics(settings)


def _start(context: Context, stand: Stand, model: str) -> None:
    _start_pair(context, stand, BRIDGE, stand.bridge)
    if context.options.committed_answer_rate:
        stand.committed = load.fresh_topics(context.settings, "http-committed").updated(
            gateway={"port": free_port()}, worker={"metrics_port": free_port(), "reply_when": "committed"}
        )
        _start_pair(context, stand, COMMITTED, stand.committed)
    if context.options.routed_http_rate:
        for kind, shares in ROUTED.items():
            fresh = load.fresh_topics(context.settings, f"http-{kind}")
            stand.routed[kind] = fresh.updated(gateway={"port": free_port()}, worker={"metrics_port": free_port()})
            stand.routed[kind] = routed_model.routed(stand.routed[kind], model, *shares)
            _start_pair(context, stand, f"{BRIDGE}-{kind}", stand.routed[kind])
    # The request-response peer, served at the same route, loaded at the same rates in the same rounds.
    stand.processes[PEER] = context.stack.spawn(PEER, stand.peer, "bench-peer", "request-response")
    context.stack.wait_for_http(PEER, stand.processes[PEER], stand.peer.gateway.port)


def _start_pair(context: Context, stand: Stand, prefix: str, settings: Settings) -> None:
    for role, start in (("worker", context.stack.start_worker), ("gateway", context.stack.start_gateway)):
        stand.processes[f"{prefix}-{role}"] = start(settings, f"{prefix}-{role}")


def _levels(context: Context, stand: Stand, bodies: Bodies) -> dict[str, rounds.Level]:
    """A round: the closed loop, each rate on the bridge then on the peer, the rate answered at commit,
    the closed loop and the routed rate on each bridge whose model has a candidate."""
    o = context.options
    bridge_path, peer_path = stand.paths(context)

    def closed(settings: Settings) -> rounds.Level:
        return lambda _: measured(closed_loop(settings, bodies, o.closed_concurrency, o.http_seconds))

    def opened(settings: Settings, rate: float, path: dict[str, int]) -> rounds.Level:
        return lambda _: metered(open_loop(settings, bodies, rate, o.http_seconds), path)

    levels: dict[str, rounds.Level] = {"http-closed": closed(stand.bridge)}
    for rate in o.http_rates:
        levels[f"http-open@{rate:g}"] = opened(stand.bridge, rate, bridge_path)
        levels[f"http-request-response@{rate:g}"] = opened(stand.peer, rate, peer_path)
    if (committed := stand.committed) is not None:
        levels["http-answered-once-committed"] = lambda _: measured(
            open_loop(committed, bodies, o.committed_answer_rate, o.http_seconds)
        )
    for kind, routed in stand.routed.items():
        levels[f"http-closed-{kind}"] = closed(routed)
        path = stand.path(context, f"{BRIDGE}-{kind}")
        levels[f"http-open-{kind}@{o.routed_http_rate:g}"] = opened(routed, o.routed_http_rate, path)
    return levels


def _medians(o: Options, recorded: dict[str, list[Figures]]) -> Figures:
    committed = recorded.get("http-answered-once-committed")
    return {
        "closed_loop": median_figures(recorded["http-closed"]),
        "open_loop": [median_figures(recorded[f"http-open@{r:g}"]) for r in o.http_rates],
        # The request-response peer at the same rates, in the same rounds.
        "request_response_open_loop": [median_figures(recorded[f"http-request-response@{r:g}"]) for r in o.http_rates],
        # The same open loop, callers answered only once their result is committed (reference).
        "open_loop_answered_once_committed": median_figures(committed) if committed else None,
        # A 10% canary and a 100% shadow (bench/routed_model.py): the closed loop and the routed rate.
        "routed": {
            kind: {
                "closed_loop": median_figures(recorded[f"http-closed-{kind}"]),
                "open_loop": median_figures(recorded[f"http-open-{kind}@{o.routed_http_rate:g}"]),
            }
            for kind in ROUTED
            if f"http-closed-{kind}" in recorded
        },
    }


def _limits(context: Context, stand: Stand, bodies: Bodies, sampler: RssSampler) -> Figures:
    """The bridge's capacity (a closed loop wide enough to saturate it), an open loop at a multiple of
    it against a bridge that sheds load, and one-row calls straight to Triton."""
    o = context.options
    saturated = measured(closed_loop(stand.bridge, bodies, o.capacity_concurrency, o.http_seconds))
    capacity = max(1.0, saturated["achieved_per_s"])
    shedding = stand.bridge.updated(gateway={"port": free_port(), "max_in_flight": o.overload_max_in_flight})
    name = "bench-http-gateway-overload"
    stand.processes[name] = context.stack.start_gateway(shedding, name)
    sampler.track(name, stand.processes[name].pid)
    overload = measured(open_loop(shedding, bodies, round(capacity * o.overload_factor), o.http_seconds))
    bridge = stand.bridge
    spec = load_spec_file(bridge.triton.model_repository / bridge.default_model / "config.pbtxt")
    return {
        "capacity": saturated,
        "overload": overload
        | {"factor_of_capacity": o.overload_factor, "gateway_max_in_flight": o.overload_max_in_flight},
        "direct_triton_one_row": asyncio.run(direct_triton(bridge, spec, o.triton_calls)),
    }


# -- its block of the table -----------------------------------------------------------------------
def lines(report: Report) -> list[str]:
    h = report["http"]
    d = h["direct_triton_one_row"]
    return [
        f"HTTP POST /v1/predict, medians of {len(h['closed_loop'].get('repetitions', [None]))} repetitions:",
        f"{'':<30}{'ok/s':>8}{'p50':>8}{'p90':>8}{'p99':>8}{'p99.9':>8}{'errors':>8}{'CPU ms/req':>12}"
        f"{'wait ms/req':>13}",
        *(_row(label, figures) for label, figures in _rows(h)),
        f"{'direct Triton, 1 row':<30}{'':>8}{d['p50']:>8.1f}{d['p90']:>8.1f}{d['p99']:>8.1f}{d['p99.9']:>8.1f}",
        f"overload statuses: {h['overload']['statuses']}",
        "  CPU ms/req: bridge, worker, broker and Triton; request-response: the service and Triton",
        "  wait ms/req: the time those processes' threads were runnable but waited for a core",
        *(f"ratio {name:<44}{value:>8.2f}" for name, value in report["summary"].get("http", {}).items()),
    ]


def _rows(h: Figures) -> list[tuple[str, Figures]]:
    rows = [(f"closed, {h['closed_loop']['offered']:g} users", h["closed_loop"])]
    rows += [(f"open, {f['offered']:g} req/s", f) for f in h["open_loop"]]
    rows += [(f"request-response, {f['offered']:g} req/s", f) for f in h.get("request_response_open_loop") or []]
    if committed := h.get("open_loop_answered_once_committed"):
        rows.append((f"  same, {committed['offered']:g}, at commit", committed))
    for kind, routed in (h.get("routed") or {}).items():
        rows.append((f"{kind}: closed, {routed['closed_loop']['offered']:g} users", routed["closed_loop"]))
        rows.append((f"{kind}: open, {routed['open_loop']['offered']:g} req/s", routed["open_loop"]))
    rows.append((f"capacity, {h['capacity']['offered']:g} users", h["capacity"]))
    rows.append((f"overload, {h['overload']['offered']:g} req/s", h["overload"]))
    return rows


def _row(label: str, f: Figures) -> str:
    cpu_ms, wait_ms = f.get("cpu_ms_per_request"), f.get("run_queue_wait_ms_per_request")
    return (
        f"{label:<30}{f['achieved_per_s']:>8,.0f}{f['p50']:>8.1f}{f['p90']:>8.1f}{f['p99']:>8.1f}"
        f"{f['p99.9']:>8.1f}{f['errors']:>8}{'' if cpu_ms is None else f'{cpu_ms:>12.2f}'}"
        f"{'' if wait_ms is None else f'{wait_ms:>13.2f}'}"
    )


GROUP = Group("http", "http", run, lines)
