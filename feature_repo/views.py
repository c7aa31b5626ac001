from datetime import timedelta

from entities import account, device
from feast import FeatureView, Field
from feast.types import Float32, Int64
from sources import account_stats_source, device_baselines_source

account_stats = FeatureView(
    name="account_stats",
    entities=[account],
    ttl=timedelta(days=3650),
    schema=[
        Field(name="avg_amount_30d", dtype=Float32),
        Field(name="txn_count_24h", dtype=Int64),
        Field(name="chargeback_rate_90d", dtype=Float32),
        Field(name="account_age_days", dtype=Int64),
        Field(name="distinct_merchants_7d", dtype=Int64),
        Field(name="home_country_flag", dtype=Int64),
    ],
    online=True,
    source=account_stats_source,
)

# Each sensor's mean and spread over the device's last day of normal operation.
device_baselines = FeatureView(
    name="device_baselines",
    entities=[device],
    ttl=timedelta(days=3650),
    schema=[
        Field(name=f"{sensor}_{stat}", dtype=Float32)
        for sensor in ("temperature", "vibration", "pressure", "rpm")
        for stat in ("mean", "std")
    ],
    online=True,
    source=device_baselines_source,
)
