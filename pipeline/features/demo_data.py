"""`pipeline features apply`: write the account aggregates and the device baselines, register them with
Feast, load the online store.

The store is loaded again whenever the generated data differ from what was loaded (a fingerprint of
both tables is kept beside them), so a changed generator or entity count never leaves a model trained
on one set of baselines reading another.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from pipeline.errors import ConfigurationError
from pipeline.synthetic import cards, telemetry

PARQUET = Path("data") / "account_stats.parquet"
DEVICE_PARQUET = Path("data") / "device_baselines.parquet"
ONLINE_MARKER = Path("data") / ".materialized"


def _write(frame: pd.DataFrame, path: Path) -> Path:
    now = datetime.now(UTC).replace(microsecond=0)
    frame["event_timestamp"] = now - timedelta(hours=1)
    frame["created"] = now
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path


def fingerprint(*frames: pd.DataFrame) -> str:
    """A digest of the tables' contents (columns and values, in order)."""
    digest = hashlib.sha256()
    for frame in frames:
        digest.update(",".join(map(str, frame.columns)).encode())
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def use_redis(source_repo: Path, target: Path, connection: str) -> Path:
    """A copy of the repo whose online store is Redis (the production option); returns its path."""
    target.mkdir(parents=True, exist_ok=True)
    for item in [*source_repo.glob("*.py"), source_repo / ".feastignore"]:
        (target / item.name).write_bytes(item.read_bytes())
    config = (source_repo / "feature_store.yaml").read_text()
    online = "online_store:\n  type: sqlite\n  path: data/online_store.db\n"
    if online not in config:
        raise ConfigurationError("feature_store.yaml: online_store is not the default SQLite block")
    redis = f'online_store:\n  type: redis\n  connection_string: "{connection}"\n'
    (target / "feature_store.yaml").write_text(config.replace(online, redis))
    return target


def apply(repo_path: Path, accounts: int, devices: int = 1_000, force: bool = False) -> bool:
    """Generate, `feast apply` and materialise; returns False when the online store already holds
    exactly these data."""
    account_stats, baselines = cards.accounts(accounts), telemetry.devices(devices)
    loaded = fingerprint(account_stats, baselines)
    marker = repo_path / ONLINE_MARKER
    if not force and marker.exists() and marker.read_text().split()[-1:] == [loaded]:
        return False
    _write(account_stats, repo_path / PARQUET)
    _write(baselines, repo_path / DEVICE_PARQUET)
    # `feast apply` imports the repo's definition files; run it as Feast's own CLI does.
    subprocess.run(
        [sys.executable, "-m", "feast.cli.cli", "--chdir", str(repo_path), "apply"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(repo_path))
    end = datetime.now(UTC) + timedelta(minutes=1)
    store.materialize(start_date=end - timedelta(days=3650), end_date=end)
    marker.write_text(f"{end.isoformat()} {loaded}\n")
    return True
