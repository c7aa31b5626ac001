"""The options of a tiny `pipeline bench`: every figure produced in seconds, none of them compared."""

from pipeline.bench import runner

TINY = runner.Options(
    events=400,
    naive_events=20,
    warmup=40,
    repetitions=1,
    warm_up_round=False,  # its figures are not compared
    warm_every_account=False,  # likewise: 40 warm-up requests, not 10,000
    http_rates=(20.0, 40.0),
    http_seconds=1.0,
    closed_concurrency=2,
    capacity_concurrency=4,
    triton_calls=20,
    committed_answer_rate=30.0,
    routed_http_rate=40.0,
    soak_s=6.0,
    soak_rate=50.0,
    state_entries=20_000,
    state_lookups=2_048,
    state_rebuild_entries=3_000,
    state_micro_entries=5_000,
    state_micro_batches=2,
    state_micro_rounds=2,
    state_restart_events=500,
    consumer_results=6_000,
    consumer_rate=300.0,
    consumer_seconds=3.0,
    replay_events=3_000,
    replay_scored_events=1_000,
    replay_live_events=500,
    replay_http_rate=20.0,
    burst_events=3_000,
    burst_max_workers=2,
)
