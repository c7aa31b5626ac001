from datetime import timedelta

from entities import account
from feast import FeatureView, Field
from feast.types import Float32, Int64
from sources import account_stats_source

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
