"""The bench's outputs: a table on the terminal (each group's block, in the order they ran, and the
targets), the JSON file, a PNG chart."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from pipeline.bench.context import Report
from pipeline.bench.runner import GROUPS
from pipeline.bench.scenarios import runs_workers

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def table(report: Report) -> str:
    m = report["machine"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_mib']:,} MiB, GPU {m['gpu']}", ""]
    for group in GROUPS:
        if group.key in report:
            # The first block, throughput's, right below the machine; every other one after a blank line.
            lines += group.lines(report) if group.name == "throughput" else ["", *group.lines(report)]
    lines.append("")
    for name, t in report["summary"]["targets"].items():
        lines.append(
            f"target {name:<36} {'met ' if t['met'] else 'MISSED'}  measured {t['measured']:g}, target {t['target']:g}"
        )
    return "\n".join(lines)


def write(report: Report, out: Path) -> None:
    """bench.json and bench.png into `out`."""
    write_json(report, out / "bench.json")
    chart(report, out / "bench.png")


def write_json(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(_finite(report), option=orjson.OPT_INDENT_2))


def chart(report: Report, path: Path) -> None:
    """Throughput bars (median, with each run's points); HTTP latency percentiles against the open-loop
    rates users run at, on an axis of their own; the overload run apart, its rate far past theirs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    http = report.get("http")
    if http:
        fig, (left, right, apart) = plt.subplots(1, 3, figsize=(17, 5), width_ratios=[5, 5, 2])
        _http_latency(right, http)
        _http_overload(apart, http, right)
    else:
        fig, left = plt.subplots(1, 1, figsize=(7, 5))
    _throughput_bars(left, report)
    plt.setp(left.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _throughput_bars(axes: Axes, report: Report) -> None:
    runs = report.get("throughput_runs", {})
    names = list(runs)
    medians = [report["summary"]["events_per_s_median"][n] for n in names]
    axes.bar(names, medians, color=["#2a7" if runs_workers(n) else "#888" for n in names])
    for i, name in enumerate(names):
        axes.scatter([i] * len(runs[name]), [r["events_per_s"] for r in runs[name]], color="black", s=10, zorder=3)
    axes.set_ylabel("events/s (median of runs)")
    axes.set_title("Throughput, same machine, same run")


PERCENTILES = ("p50", "p90", "p99", "p99.9")


def _http_latency(axes: Axes, http: dict[str, Any]) -> None:
    """The open-loop rates (100-1,000 req/s by default) on a linear axis that ends past the highest."""
    points = sorted(http["open_loop"], key=lambda f: f["offered"])
    rates = [f["offered"] for f in points]
    for q in PERCENTILES:
        axes.plot(rates, [f[q] for f in points], marker="o", label=f"{q}, bridge")
    if peer := http.get("request_response_open_loop"):
        for q, color in (("p50", "C0"), ("p99", "C2")):
            label = f"{q}, request-response peer"
            axes.plot([f["offered"] for f in peer], [f[q] for f in peer], linestyle="--", color=color, label=label)
    if committed := http.get("open_loop_answered_once_committed"):
        for q, color in (("p50", "C0"), ("p99", "C2")):
            label = f"{q}, answered at commit"
            axes.scatter([committed["offered"]], [committed[q]], marker="x", s=60, color=color, label=label)
    axes.axhline(http["direct_triton_one_row"]["p50"], color="grey", linestyle=":", label="direct Triton p50")
    axes.set_xlim(0, max(rates) * 1.1)
    axes.set_xticks(rates)
    axes.set_xlabel("offered load (req/s, open loop)")
    axes.set_ylabel("latency of accepted requests (ms)")
    axes.set_yscale("log")
    axes.set_title("POST /v1/predict latency by load")
    axes.legend(fontsize="small")


def _http_overload(axes: Axes, http: dict[str, Any], beside: Axes) -> None:
    """The overload run's percentiles (accepted requests) at its rate, on the latency axis beside."""
    overload = http["overload"]
    values = [overload[q] for q in PERCENTILES]
    for i, value in enumerate(values):
        axes.scatter([i], [value], color=f"C{i}", s=40)
    low, high = beside.get_ylim()
    limits = (min(low, min(values) / 1.5), max(high, max(values) * 1.5))
    for each in (axes, beside):
        each.set_yscale("log")
        each.set_ylim(*limits)
    axes.set_xticks(range(len(PERCENTILES)), PERCENTILES)
    axes.set_xlim(-0.5, len(PERCENTILES) - 0.5)
    axes.tick_params(labelleft=False)
    axes.grid(axis="y", which="major", alpha=0.3)
    beside.grid(axis="y", which="major", alpha=0.3)
    axes.set_xlabel(f"{overload['offered']:,.0f} req/s offered, {overload['achieved_per_s']:,.0f}/s accepted")
    axes.set_title(f"Overload: {overload.get('factor_of_capacity', math.nan):g}x capacity")


def _finite(value: Any) -> Any:
    """JSON has no NaN: a figure that could not be measured is null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
