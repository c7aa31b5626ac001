"""Synthetic card transactions with a known fraud rule (plus noise), for training, demos and tests.

Account features are a pure function of the account id and the seed, so the Feast data, the
training set and the demo stream agree without sharing files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

MERCHANT_CATEGORIES = np.array([5411, 5812, 5999, 4829, 7995, 5732, 5311, 4111])
RISKY_CATEGORIES = np.array([4829, 7995])  # money transfer, gambling


@dataclass(frozen=True)
class Transactions:
    account_id: np.ndarray
    features: pd.DataFrame  # request-time features, contract names
    label: np.ndarray  # 1 = fraud


def accounts(n: int, seed: int = 7) -> pd.DataFrame:
    """Per-account aggregates as the feature store serves them (ids 1..n)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "account_id": np.arange(1, n + 1, dtype=np.int64),
            "avg_amount_30d": rng.lognormal(4.0, 0.6, n).astype(np.float32),
            "txn_count_24h": rng.poisson(3, n).astype(np.int64),
            "chargeback_rate_90d": rng.beta(1.0, 60.0, n).astype(np.float32),
            "account_age_days": rng.integers(1, 3650, n).astype(np.int64),
            "distinct_merchants_7d": rng.poisson(6, n).astype(np.int64),
            "home_country_flag": (rng.random(n) < 0.1).astype(np.int64),
        }
    )


def transactions(n: int, account_table: pd.DataFrame, seed: int = 11) -> Transactions:
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(account_table), n)
    acct = account_table.iloc[rows].reset_index(drop=True)
    card_present = (rng.random(n) < 0.6).astype(np.int64)
    is_foreign = (rng.random(n) < 0.1).astype(np.int64)
    distance = np.where(card_present == 1, rng.exponential(10.0, n), rng.exponential(60.0, n))
    distance = distance + is_foreign * rng.uniform(300.0, 3000.0, n)
    features = pd.DataFrame(
        {
            "amount": np.round(acct["avg_amount_30d"].to_numpy() * rng.lognormal(0.0, 0.8, n), 2),
            "merchant_category": rng.choice(MERCHANT_CATEGORIES, n),
            "hour_of_day": rng.integers(0, 24, n),
            "is_foreign": is_foreign,
            "card_present": card_present,
            "distance_from_home_km": np.round(distance, 1),
        }
    )
    label = (rng.random(n) < fraud_probability(features, acct, rng)).astype(np.int64)
    return Transactions(acct["account_id"].to_numpy(), features, label)


def fraud_probability(features: pd.DataFrame, acct: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """The known rule: unusual amount, abroad, at night, card not present, far away, risky account."""
    ratio = np.log(features["amount"].to_numpy() / acct["avg_amount_30d"].to_numpy())
    logit = (
        -8.8
        + 2.2 * np.clip(ratio, -1.0, None)
        + 1.8 * features["is_foreign"].to_numpy()
        + 1.5 * (features["hour_of_day"].to_numpy() < 6)
        + 1.4 * (1 - features["card_present"].to_numpy())
        + 0.9 * np.log1p(features["distance_from_home_km"].to_numpy() / 100.0)
        + 60.0 * acct["chargeback_rate_90d"].to_numpy()
        + 1.8 * (acct["account_age_days"].to_numpy() < 90)
        + 1.5 * np.isin(features["merchant_category"].to_numpy(), RISKY_CATEGORIES)
        + 0.6 * acct["home_country_flag"].to_numpy()
        + 0.1 * acct["txn_count_24h"].to_numpy()
        + rng.normal(0.0, 0.4, len(features))
    )
    return 1.0 / (1.0 + np.exp(-logit))
