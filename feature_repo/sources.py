from feast import FileSource

# Written by `pipeline features apply` (synthetic aggregates for accounts 1..N).
account_stats_source = FileSource(
    name="account_stats_source",
    path="data/account_stats.parquet",
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
)

# Written by `pipeline features apply` (synthetic baselines for devices 1..N).
device_baselines_source = FileSource(
    name="device_baselines_source",
    path="data/device_baselines.parquet",
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
)
