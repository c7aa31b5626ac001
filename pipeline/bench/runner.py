"""`pipeline bench`: every scenario group in one invocation on the local stack, one after the other;
each group runs its own scenarios (in interleaved rounds, `rounds.py`) and gives its figures, which
the report gathers with the machine, the options and the summary (medians, ratios and targets)."""

from __future__ import annotations

import time
from dataclasses import asdict

from pipeline.bench import burst, consumers, http, replay, soak, state_group, throughput
from pipeline.bench.context import Context, Report
from pipeline.bench.machine import machine
from pipeline.bench.options import Options
from pipeline.bench.summary import summarise
from pipeline.local.stack import LocalStack
from pipeline.settings import Settings

# In the order they run and are reported; each runs when --only names it (the soak: when --soak is set).
GROUPS = (throughput.GROUP, http.GROUP, state_group.GROUP, consumers.GROUP, replay.GROUP, burst.GROUP, soak.GROUP)


def run(base: Settings, options: Options, scenarios: set[str], stack: LocalStack | None = None) -> Report:
    stack = stack or LocalStack.from_settings(base)
    settings = stack.settings(base)
    stack.prepare(settings)
    started_at = time.time()
    chosen = (scenarios - {soak.GROUP.name}) | ({soak.GROUP.name} if options.soak_s > 0 else set())
    with stack.services(settings):
        context = Context(stack, settings, options)
        report: Report = {"machine": machine(), "options": asdict(options)}
        for group in GROUPS:
            if group.name in chosen:
                report[group.key] = group.run(context)
        report["services_peak_rss_mib"] = context.services_rss()
    report["summary"] = summarise(
        report.get("throughput_runs", {}),
        *(report.get(key) for key in ("http", "state", "consumers", "replay", "burst")),
    )
    report["seconds"] = round(time.time() - started_at, 1)
    return report
