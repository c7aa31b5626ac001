"""The dashboards and the alerting rules on a real Prometheus (Debian's, started by
deploy/prometheus/prometheus.sh) scraping a running stack under the job names the rules and the
dashboards read: a worker, the bridge, the four consumers, the policy service and Triton, through a
stream with a canary and a shadow, dead letters, HTTP calls and a fraud burst. Every panel's query,
sent as Grafana sends it, returns data over the test's time range; every rule evaluates."""

from __future__ import annotations

import math
import time
import uuid

import httpx
import pytest

from pipeline.local import probe, traffic
from pipeline.settings import PROJECT_ROOT
from tests.conftest import free_port, metric
from tests.integration.models import ok, served_copy
from tests.integration.streams import Stream
from tests.unit.deploy.promql import for_prometheus, panel_queries

pytestmark = pytest.mark.integration

RULES = PROJECT_ROOT / "deploy" / "prometheus" / "rules.yml"
SCRAPE_S = 1
RATE_INTERVAL = "15s"  # Grafana's $__rate_interval at this scrape interval is 4 s; wider for a noisy machine
CONSUMERS = ("fraud", "anomaly", "drift", "guard")


def _range(url: str, expr: str, start: float) -> list[dict]:
    """The query over [start, now] at the scrape interval, as a Grafana time series panel asks it."""
    response = httpx.get(
        f"{url}/api/v1/query_range",
        params={"query": expr, "start": start, "end": time.time(), "step": SCRAPE_S},
        timeout=30,
    )
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def _wait_for_series(url: str, query: str, since: float, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not _has_data(_range(url, query, since)):
        assert time.monotonic() < deadline, f"Prometheus holds no {query} within {timeout_s:g} s"
        time.sleep(1)


def _has_data(series: list[dict]) -> bool:
    return any(not math.isnan(float(value)) for s in series for _, value in s["values"])


def test_every_dashboard_panel_returns_data_from_a_running_stack(stack, pipeline_settings, processes):
    started_at = time.time()
    ports = {name: free_port() for name in ("worker", "scale", "prometheus", *CONSUMERS)}
    settings = pipeline_settings(metrics_port=ports["worker"]).updated(
        models={"unload_grace_s": 2.0},
        consumers={"guard": {"window_s": 1.0, "min_events": 20}},
        scaling={"serve_port": ports["scale"], "interval_s": 1.0},
    )
    with served_copy(settings) as model:
        processes.worker(settings)
        processes.gateway(settings)
        uid = uuid.uuid4().hex[:6]
        for consumer in CONSUMERS:
            own = settings.updated(consumers={"metrics_port": ports[consumer]})
            group = f"{consumer}-{uid}"
            processes.started.append(stack.start_consumer(own, consumer, group, "--group-id", group))
        service = stack.spawn(f"serve-{uid}", settings, "scale", "--serve")
        processes.started.append(service)

        ports |= {"gateway": settings.gateway.port, "triton": stack.ports.triton_http + 2}

        def targets(*names: str) -> list[dict]:
            return [{"targets": [f"127.0.0.1:{ports[name]}" for name in names]}]

        url = stack.start_prometheus(
            ports["prometheus"],
            {
                "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
                "rule_files": [RULES.name],
                "scrape_configs": [
                    {"job_name": "pipeline-worker", "static_configs": targets("worker")},
                    {"job_name": "pipeline-gateway", "static_configs": targets("gateway")},
                    {"job_name": "pipeline-consumers", "static_configs": targets(*CONSUMERS)},
                    {"job_name": "pipeline-scale", "static_configs": targets("scale")},
                    {"job_name": "triton", "static_configs": targets("triton")},
                ],
            },
            [RULES],
        )
        try:
            # The own model's version 2 as a canary and a shadow; a steady stream of it, HTTP calls beside.
            ok(settings, "publish", model, "2", "--canary", "0.3", "--shadow", "0.3", "--why", "dashboards")
            stream = Stream(settings, rate=200, model=model)
            try:
                start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
                # The fraud scorer's events, a dozen of one account (the velocity rule), telemetry for the
                # anomaly detector, requests that are dead-lettered, and HTTP calls that get a 422.
                fraud = traffic.valid_requests(1_200, prefix=f"obs-{uid}-")
                for request in fraud[:12]:
                    request["entity"] = {"account_id": 7}
                readings = traffic.telemetry_requests(400, prefix=f"obs-t-{uid}-")
                bad = [traffic.malformed("non_numeric_feature", fraud[0], f"obs-bad-{uid}-{i}") for i in range(5)]
                probe.publish(settings, [traffic.message_for(r) for r in fraud + readings] + bad)
                for _ in range(3):
                    response = httpx.post(f"http://127.0.0.1:{settings.gateway.port}/v1/predict", json={"x": 1})
                    assert response.status_code == 422
                probe.collect(
                    settings, start, lambda c: len(c.dead_letters) >= len(bad) and c.distinct_results >= 1_600,
                    timeout_s=180,
                )  # fmt: skip
                # A rate needs the alert counts to rise between two scrapes: a second velocity alert once
                # Prometheus holds the first (alerts raised all before the series' first scrape rise nowhere).
                _wait_for_series(url, "sum(pipeline_alert_latency_seconds_count)", started_at)
                again = traffic.valid_requests(12, prefix=f"obs-again-{uid}-")
                for request in again:
                    request["entity"] = {"account_id": 8}
                probe.publish(settings, [traffic.message_for(r) for r in again])

                queries = {(name, title, for_prometheus(expr, RATE_INTERVAL)) for name, title, expr in panel_queries()}
                empty = set(queries)
                deadline = time.monotonic() + 120
                while empty and time.monotonic() < deadline:
                    empty = {q for q in empty if not _has_data(_range(url, q[2], started_at))}
                    if empty:
                        time.sleep(2)
            finally:
                stream.stop()
            assert not empty, "panels without data:\n" + "\n".join(f"{n}: {t}: {e}" for n, t, e in sorted(empty))

            # What Prometheus holds is what the processes count: the worker's dead letters, by code.
            dead = metric(ports["worker"], "pipeline_dead_letters_total", code="invalid_request")
            assert dead >= len(bad)
            queried = _range(url, 'sum(pipeline_dead_letters_total{code="invalid_request"})', time.time() - 5)
            assert float(queried[0]["values"][-1][1]) == dead
            # Every alerting rule evaluates on these series without an error.
            groups = httpx.get(f"{url}/api/v1/rules", timeout=30).json()["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            assert len(rules) >= 9 and all(rule["health"] == "ok" for rule in rules), [
                (rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"
            ]
        finally:
            stack.stop_prometheus(ports["prometheus"])
            processes.stop_all()
