"""`pipeline features apply`: write the account aggregates and the device baselines, register them with
Feast, load the online store."""

from __future__ import annotations

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


def write_account_stats(repo_path: Path, accounts: int) -> Path:
    return _write(cards.accounts(accounts), repo_path / PARQUET)


def write_device_baselines(repo_path: Path, devices: int) -> Path:
    return _write(telemetry.devices(devices), repo_path / DEVICE_PARQUET)


def _write(frame: pd.DataFrame, path: Path) -> Path:
    now = datetime.now(UTC).replace(microsecond=0)
    frame["event_timestamp"] = now - timedelta(hours=1)
    frame["created"] = now
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path


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
    """Generate, `feast apply` and materialise; returns False when the online store was already loaded
    (with the device baselines: a store loaded before they existed is loaded again)."""
    marker = repo_path / ONLINE_MARKER
    if marker.exists() and (repo_path / DEVICE_PARQUET).exists() and not force:
        return False
    write_account_stats(repo_path, accounts)
    write_device_baselines(repo_path, devices)
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
    marker.write_text(end.isoformat() + "\n")
    return True
