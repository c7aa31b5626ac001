"""The bench's outputs: a table on the terminal, the JSON file, a PNG chart."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson

from pipeline.bench.stats import median
from pipeline.bench.summary import runs_workers


def table(report: dict[str, Any]) -> str:
    lines = [
        f"machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
        f"{report['machine']['memory_mib']:,} MiB, GPU {report['machine']['gpu']}",
        "",
    ]
    summary = report["summary"]
    runs = report.get("throughput_runs", {})
    if runs:
        lines.append(
            f"{'throughput scenario':<24}{'median ev/s':>12}{'runs (ev/s)':>30}{'steady ev/s':>13}"
            f"{'CPU s/M ev':>12}{'load gen':>10}{'peak RSS MiB':>14}"
        )
        steady = summary.get("steady_events_per_s_median", {})
        cpu = summary.get("cpu_s_per_million_median", {})
        for name, figures in runs.items():
            each = ", ".join(f"{r['events_per_s']:,.0f}" for r in figures)
            rss = max((v for r in figures for v in r["peak_rss_mib"].values()), default=float("nan"))
            generator = median(
                [
                    v
                    for r in figures
                    if math.isfinite(v := r.get("cpu_s_per_million", {}).get("load_generator", math.nan))
                ]
            )
            lines.append(
                f"{name:<24}{summary['events_per_s_median'][name]:>12,.0f}{each:>30}"
                f"{steady.get(name, math.nan):>13,.0f}{cpu.get(name, math.nan):>12,.1f}{generator:>10,.1f}"
                f"{rss:>14,.0f}"
            )
        lines += [
            "  -1w/-2w: pipeline workers (model-mix: half the events for each model); -1p/-2p: peer processes.",
            "  CPU s/M ev: CPU seconds per million events",
            "  of every process on the path (consumers, broker, Triton where used); load gen apart.",
            "",
        ]
        for name, value in summary["ratios"].items():
            lines.append(f"ratio {name:<44}{value:>8.2f}")
        stages = _pipeline_stages(runs)
        if stages:
            lines.append("")
            lines.append("pipeline stages (1 worker, last run): mean ms per batch; per event for event:*")
            lines += [f"  {name:<26}{figures['mean_ms']:>10.2f}" for name, figures in stages.items()]
    if "http" in report:
        h = report["http"]
        lines += [
            "",
            f"HTTP POST /v1/predict, medians of {len(h['closed_loop'].get('repetitions', [None]))} repetitions:",
            f"{'':<30}{'ok/s':>8}{'p50':>8}{'p90':>8}{'p99':>8}{'p99.9':>8}{'errors':>8}{'CPU ms/req':>12}",
        ]
        rows = [(f"closed, {h['closed_loop']['offered']:g} users", h["closed_loop"])]
        rows += [(f"open, {f['offered']:g} req/s", f) for f in h["open_loop"]]
        rows += [(f"request-response, {f['offered']:g} req/s", f) for f in h.get("request_response_open_loop") or []]
        if committed := h.get("open_loop_answered_once_committed"):
            rows.append((f"  same, {committed['offered']:g}, at commit", committed))
        rows.append((f"capacity, {h['capacity']['offered']:g} users", h["capacity"]))
        rows.append((f"overload, {h['overload']['offered']:g} req/s", h["overload"]))
        for label, f in rows:
            cpu_ms = f.get("cpu_ms_per_request")
            lines.append(
                f"{label:<30}{f['achieved_per_s']:>8,.0f}{f['p50']:>8.1f}{f['p90']:>8.1f}{f['p99']:>8.1f}"
                f"{f['p99.9']:>8.1f}{f['errors']:>8}{'' if cpu_ms is None else f'{cpu_ms:>12.2f}'}"
            )
        d = h["direct_triton_one_row"]
        lines.append(
            f"{'direct Triton, 1 row':<30}{'':>8}{d['p50']:>8.1f}{d['p90']:>8.1f}{d['p99']:>8.1f}{d['p99.9']:>8.1f}"
        )
        lines.append(f"overload statuses: {h['overload']['statuses']}")
        lines.append("  CPU ms/req: bridge, worker, broker and Triton; request-response: the service and Triton")
        for name, value in summary.get("http", {}).items():
            lines.append(f"ratio {name:<44}{value:>8.2f}")
    if "state" in report:
        lines += ["", *_state_lines(report["state"])]
    if "consumers" in report:
        lines += ["", *_consumer_lines(report["consumers"], summary.get("consumers", {}))]
    if "replay" in report:
        lines += ["", *_replay_lines(report["replay"])]
    if "burst" in report:
        lines += ["", *_burst_lines(report["burst"])]
    if "soak" in report:
        s = report["soak"]
        lines += [
            "",
            f"soak {s['seconds']:g} s at {s['rate_per_s']:g} ev/s: worker RSS {s['rss_mib_baseline']} → "
            f"{s['rss_mib_final']} MiB ({s['growth']:+.1%}), flat within 10%: {s['flat_within_10pct']}",
        ]
    lines.append("")
    for name, t in summary["targets"].items():
        lines.append(
            f"target {name:<36} {'met ' if t['met'] else 'MISSED'}  measured {t['measured']:g}, target {t['target']:g}"
        )
    return "\n".join(lines)


def _state_lines(state: dict[str, Any]) -> list[str]:
    s, w, v, m = state["summary"], state["write"], state["serve"], state["dedup_cost"]
    return [
        f"dedup state on disk, {s['entries']:,} entries ({w['mean_result_bytes']}-byte results), each its own process:",
        f"  RSS writer {w['rss_mib']:.0f} MiB (peak {w['peak_rss_mib']:.0f}), serving {v['rss_mib']:.0f} MiB "
        f"(peak {v['peak_rss_mib']:.0f}; {v['rss_mib_before_open']:.0f} before opening the store)",
        f"  disk {s['disk_mib']:,.0f} MiB, {s['disk_mib_per_million']:,.1f} MiB per million entries",
        f"  writes {w['writes_per_s']:,} entries/s, compactions settled {w['settle_s']:.1f} s later; "
        f"CPU {w['cpu_us_per_entry']:.1f} µs per entry, all threads ({w['making_us_per_entry']:.1f} making it)",
        f"  warm restart: open + first lookup {s['warm_restart_s']:.3f} s; then {v['lookups']:,} lookups "
        f"({v['hits']:,} hits) at {s['lookup_us_per_event']:.2f} µs each",
        f"  worker restarted on it: ready {s['worker_ready_s']:.2f} s after its start ("
        f"{s['worker_ready_s_empty']:.2f} s on an empty state), first result {s['worker_first_result_s']:.3f} s "
        f"after the first request, peak RSS {s['rss_mib_worker']:.0f} MiB ({s['rss_mib_worker_empty']:.0f} empty) "
        f"through {state['restart']['full']['events']:,} requests",
        f"  cold rebuild of one partition: {state['rebuild']['entries']:,} results at "
        f"{s['rebuild_entries_per_s']:,.0f} entries/s",
        f"  dedup per event, {m['entries']:,} held, batches of 1,024, {m['hit_share']:.0%} hits (read + write):",
        f"    dict  {m['dict_us_per_event']:>7.2f} µs ({m['dict_read_us_per_event']:.2f} + "
        f"{m['dict_write_us_per_event']:.2f})",
        f"    store {m['store_us_per_event']:>7.2f} µs ({m['store_read_us_per_event']:.2f} + "
        f"{m['store_write_us_per_event']:.2f}), {s['dedup_store_over_dict']:.1f} times the dict's",
    ]


def _consumer_lines(consumers: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    c, a = consumers["fraud_capacity"], consumers["fraud_alert_latency"]
    lines = [
        "fraud consumer, one process:",
        f"  capacity {c['results_per_s']:,.0f} results/s through a backlog of {c['results']:,} "
        f"({c['alerts']:,} alerts; CPU {c['cpu_s_per_million']:,.1f} s per million; "
        f"peak RSS {c['peak_rss_mib']:.0f} MiB)",
        f"  alert latency at {a['achieved_per_s']:,.0f} results/s, result committed → alert read "
        f"({a['alerts']:,} alerts): p50 {a['p50']:.1f} ms, p90 {a['p90']:.1f}, p99 {a['p99']:.1f}",
    ]
    if (needed := summary.get("fraud_consumers_for_two_workers")) is not None:
        lines.append(
            f"  {summary['fraud_consumer/pipeline-2w steady']:.2f} of two workers' steady output: "
            f"{needed} consumer process{'es' if needed > 1 else ''} keep up with them"
        )
    return lines


def _replay_lines(replay: dict[str, Any]) -> list[str]:
    p, scored, live = replay["publish"], replay["scored"], replay["live_http"]
    quiet, busy = live["without_replay"], live["during_replay"]
    return [
        f"replay of a Parquet file of {replay['events']:,} requests:",
        f"  published {p['published']:,.0f} in {p['seconds']:.2f} s: {p['per_s']:,.0f} events/s "
        f"(the command, start-up included: {p['command_s']:.1f} s)",
        f"  published → scored by one backfill worker: {scored['events']:,} in {scored['seconds']:.1f} s, "
        f"{scored['events_per_s']:,.0f} events/s (steady {scored['steady_events_per_s']:,.0f})",
        f"  live HTTP at {live['rate']:g} req/s, p50 / p99 ms: {quiet['p50']:.1f} / {quiet['p99']:.1f} without a "
        f"replay, {busy['p50']:.1f} / {busy['p99']:.1f} during one of {live['replay_events']:,} "
        f"(p99 ratio {live['p99_ratio']:.2f})",
    ]


def _burst_lines(burst: dict[str, Any]) -> list[str]:
    one, most, scaled = burst["fixed_one"], burst["fixed_max"], burst["scaled"]
    events, policy = scaled["scale_events"], scaled["policy"]
    return [
        f"a burst of {burst['events']:,} requests into an idle pipeline, first request to last result:",
        f"  one worker {one['seconds']:.1f} s, {most['workers']} workers {most['seconds']:.1f} s "
        f"(ratio {burst['ratios']['fixed_max/fixed_one']:.2f})",
        f"  pipeline scale from one (drain target {policy['drain_s']:g} s, at most {policy['max_workers']}): "
        f"{scaled['seconds']:.1f} s (ratio {burst['ratios']['scaled/fixed_one']:.2f}), up to "
        f"{scaled['most_workers']} workers, {events['up']} scale-up(s) and {events['down']} scale-down(s), "
        f"back at one {scaled['back_to_one_after_s']:.0f} s after the last result",
    ]


def _pipeline_stages(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    figures = runs.get("pipeline-1w") or next((v for k, v in runs.items() if k.startswith("pipeline")), [])
    return figures[-1]["stages"] if figures else {}


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(_finite(report), option=orjson.OPT_INDENT_2))


def chart(report: dict[str, Any], path: Path) -> None:
    """Throughput bars (median, with each run's points) and HTTP latency percentiles against load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    runs = report.get("throughput_runs", {})
    names = list(runs)
    medians = [report["summary"]["events_per_s_median"][n] for n in names]
    left.bar(names, medians, color=["#2a7" if runs_workers(n) else "#888" for n in names])
    for i, name in enumerate(names):
        left.scatter([i] * len(runs[name]), [r["events_per_s"] for r in runs[name]], color="black", s=10, zorder=3)
    left.set_ylabel("events/s (median of runs)")
    left.set_title("Throughput, same machine, same run")
    plt.setp(left.get_xticklabels(), rotation=30, ha="right")
    if "http" in report:
        points = sorted(report["http"]["open_loop"] + [report["http"]["overload"]], key=lambda f: f["offered"])
        rates = [f["offered"] for f in points]
        for q in ("p50", "p90", "p99", "p99.9"):
            right.plot(rates, [f[q] for f in points], marker="o", label=q)
        if peer := report["http"].get("request_response_open_loop"):
            for q, color in (("p50", "C0"), ("p99", "C2")):
                label = f"{q}, request-response peer"
                right.plot([f["offered"] for f in peer], [f[q] for f in peer], linestyle="--", color=color, label=label)
        if committed := report["http"].get("open_loop_answered_once_committed"):
            for q, color in (("p50", "C0"), ("p99", "C2")):
                label = f"{q}, answered at commit"
                right.scatter([committed["offered"]], [committed[q]], marker="x", s=60, color=color, label=label)
        right.axhline(
            report["http"]["direct_triton_one_row"]["p50"], color="grey", linestyle=":", label="direct Triton p50"
        )
        right.set_xlabel("offered load (req/s, open loop)")
        right.set_ylabel("latency of accepted requests (ms)")
        right.set_yscale("log")
        right.set_title("POST /v1/predict latency vs load")
        right.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _finite(value: Any) -> Any:
    """JSON has no NaN: a figure that could not be measured is null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
