"""The metric names a PromQL expression reads, the names the pipeline's processes and Triton export,
and the dashboards' queries: what the alerting rules' and the dashboards' tests hold each query to."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY

import pipeline.metrics  # noqa: F401 -- registers the pipeline's metrics
from pipeline.settings import PROJECT_ROOT

# Triton's own metrics the rules and dashboards read (https://docs.nvidia.com/deeplearning/
# triton-inference-server/user-guide/docs/user_guide/metrics.html).
TRITON = {
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_queue_duration_us",
    "nv_inference_request_success",
}
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def metric_names(expr: str) -> set[str]:
    """Identifiers that are neither functions (followed by a parenthesis) nor keywords, once label
    selectors, strings, ranges and grouping clauses are set aside."""
    grouping = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
    bare = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^]]*\]|' + grouping, " ", expr)
    return {
        match.group(1)
        for match in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", bare)
        if not match.group(2) and match.group(1) not in _KEYWORDS and not re.fullmatch(r"\d.*", match.group(1))
    }


def exported() -> set[str]:
    """The series names the pipeline's processes export (a labelled metric before its first sample too)."""
    names = set()
    for family in REGISTRY.collect():
        names |= {family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


DASHBOARDS = PROJECT_ROOT / "deploy" / "grafana" / "dashboards"
# Grafana's own variables in the dashboards' queries, and what they stand for in a query sent to
# Prometheus directly (a range at least four scrape intervals long).
GRAFANA_MACROS = ("$__rate_interval",)


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside rows included; rows themselves not."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def panel_queries() -> Iterator[tuple[str, str, str]]:
    """(dashboard, panel title, PromQL) for every query of every panel."""
    for name, dashboard in dashboards().items():
        for panel in panels(dashboard):
            for target in panel["targets"]:
                yield name, panel["title"], target["expr"]


def for_prometheus(expr: str, rate_interval: str) -> str:
    """The query as Grafana sends it, its macros replaced."""
    return expr.replace("$__rate_interval", rate_interval)
