from __future__ import annotations

import re
import time

import httpx
import pytest

from pipeline.local import probe, traffic
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def _dedup_entries(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    match = re.search(r"^pipeline_dedup_entries (\S+)$", text, re.MULTILINE)
    assert match, "the worker exports pipeline_dedup_entries"
    return float(match.group(1))


def test_dedup_state_does_not_grow_past_its_window(pipeline_settings, start_worker):
    port = free_port()
    settings = pipeline_settings(dedup_window_s=2.0, metrics_port=port)
    start_worker(settings)
    start = probe.end_offsets(settings, [settings.topics.results, settings.topics.dlq])
    sizes = []
    for wave in range(4):
        requests = traffic.valid_requests(300, prefix=f"wave{wave}-", seed=40 + wave)
        probe.publish(settings, [traffic.message_for(r) for r in requests])
        probe.collect(settings, start, lambda c, n=300 * (wave + 1): c.distinct_results >= n, timeout_s=120, settle_s=0)
        sizes.append(_dedup_entries(port))
        time.sleep(3.0)  # longer than the window

    assert sizes[0] == 300
    assert max(sizes) <= 600, f"entries older than the window are forgotten: {sizes}"
