from __future__ import annotations

from pipeline.scaling.triton_queue import counters, queue_s


def metrics(fraud: tuple[int, int], anomaly: tuple[int, int]) -> str:
    """Triton's /metrics text: (requests served, microseconds queued) per model."""
    return f"""# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{{model="fraud_scorer",version="1"}} {fraud[0]}
nv_inference_request_success{{model="anomaly_detector",version="1"}} {anomaly[0]}
# HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{{model="fraud_scorer",version="1"}} {fraud[1]}
nv_inference_queue_duration_us{{model="anomaly_detector",version="1"}} {anomaly[1]}
# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)
# TYPE nv_gpu_utilization gauge
"""


def test_the_queue_time_is_the_model_that_waited_most_per_request_between_readings():
    before = counters(metrics((1_000, 50_000), (400, 4_000)))
    after = counters(metrics((1_100, 2_050_000), (500, 5_000)))
    assert before.models["fraud_scorer"] == (1_000, 50_000)
    assert queue_s(before, after) == 0.02, "fraud: 2 s queued over 100 requests"


def test_no_request_served_or_a_restarted_server_is_not_known():
    same = counters(metrics((1_000, 50_000), (400, 4_000)))
    assert queue_s(same, same) is None
    restarted = counters(metrics((10, 100), (0, 0)))
    assert queue_s(same, restarted) is None
