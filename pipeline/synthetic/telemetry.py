"""Synthetic machine telemetry with injected anomalies of known kinds, for training, demos and tests.

Each device has its own operating point; its readings follow its load, which follows the time of day,
with sensor noise on top:

- rpm rises with load; temperature with load and the ambient daily cycle; vibration with rpm; pressure
  with load.
- Anomalies, each labelled: a `spike` (one sensor far off for one reading), a slow `drift` (one
  sensor's offset growing over hours, labelled once it is past a few noise widths), a `stuck` sensor
  (one sensor repeating a value while the load moves on, labelled where the value it should read has
  moved well away) and a `multi_sensor` fault (temperature and vibration up and rpm down together,
  each by a margin no single-sensor limit would flag).

A device's baselines (each sensor's mean and spread over a day of normal operation) are a pure function
of the device id and the seed, so the Feast data, the training set and the demo stream agree without
sharing files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

SENSORS = ("temperature", "vibration", "pressure", "rpm")
READING_FEATURES = (*SENSORS, "load", "hour_of_day")
BASELINE_FEATURES = tuple(f"{sensor}_{stat}" for sensor in SENSORS for stat in ("mean", "std"))
KINDS = ("spike", "drift", "stuck", "multi_sensor")
INTERVAL_S = 300  # one reading per device every five minutes
BASELINE_READINGS = 288  # a day of readings
NOISE = {
    "temperature": 0.6,
    "vibration": 0.08,
    "pressure": 0.05,
    "rpm": 30.0,
}  # each sensor's noise, one standard deviation


@dataclass(frozen=True)
class Telemetry:
    device_id: np.ndarray
    timestamp_s: np.ndarray  # epoch seconds of each reading
    features: pd.DataFrame  # READING_FEATURES, contract names
    label: np.ndarray  # 1 = anomalous
    kind: np.ndarray  # "" or one of KINDS


MAX_DEVICES = 100_000


def _operating_points(n: int, seed: int) -> pd.DataFrame:
    """Devices 1..n: each one's the same whatever n is (drawn for MAX_DEVICES, the first n kept)."""
    if not 0 < n <= MAX_DEVICES:
        raise ValueError(f"1 to {MAX_DEVICES:,} devices, not {n}")
    rng = np.random.default_rng(seed)
    columns = {
        "rpm_base": (900.0, 3000.0),
        "temperature_base": (35.0, 70.0),
        "vibration_base": (0.8, 4.0),
        "pressure_base": (2.0, 8.0),
        "phase_h": (-2.0, 2.0),  # shifts, per device, when its daily load peaks
    }
    frame = pd.DataFrame({"device_id": np.arange(1, n + 1, dtype=np.int64)})
    for name, (low, high) in columns.items():
        frame[name] = rng.uniform(low, high, MAX_DEVICES)[:n]
    return frame


def _normal(points: pd.DataFrame, hours: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Readings of normal operation for each row of `points` at each hour of day (one row each)."""
    n = len(points)
    load = 0.55 + 0.3 * np.sin(2 * np.pi * (hours - 8.0 - points["phase_h"].to_numpy()) / 24.0)
    load = np.clip(load + rng.normal(0.0, 0.08, n), 0.05, 1.0)
    ambient = 4.0 * np.sin(2 * np.pi * (hours - 15.0) / 24.0)
    rpm = points["rpm_base"].to_numpy() * (0.5 + load)
    return {
        "temperature": points["temperature_base"].to_numpy()
        + 18.0 * load
        + ambient
        + rng.normal(0, NOISE["temperature"], n),
        "vibration": points["vibration_base"].to_numpy() * (0.4 + 0.6 * rpm / points["rpm_base"].to_numpy())
        + rng.normal(0, NOISE["vibration"], n),
        "pressure": points["pressure_base"].to_numpy() * (0.7 + 0.5 * load) + rng.normal(0, NOISE["pressure"], n),
        "rpm": rpm + rng.normal(0, NOISE["rpm"], n),
        "load": load,
    }


def devices(n: int, seed: int = 17) -> pd.DataFrame:
    """Per-device baselines as the feature store serves them (ids 1..n): each sensor's mean and
    spread over a day of normal readings."""
    points = _operating_points(n, seed)
    hours = np.arange(BASELINE_READINGS) * INTERVAL_S / 3600.0 % 24
    stats: dict[str, list[float]] = {name: [] for name in BASELINE_FEATURES}
    for i in range(n):  # each device's day from a generator of its own: the same whatever n is
        day = points.iloc[[i] * BASELINE_READINGS].reset_index(drop=True)
        readings = _normal(day, hours, np.random.default_rng([seed + 1, i]))
        for sensor in SENSORS:
            stats[f"{sensor}_mean"].append(float(readings[sensor].mean()))
            stats[f"{sensor}_std"].append(float(readings[sensor].std()))
    frame = pd.DataFrame({"device_id": points["device_id"]})
    for name, values in stats.items():
        frame[name] = np.asarray(values, dtype=np.float32)
    return frame


def readings(
    n: int, device_count: int, seed: int = 23, anomaly_rate: float = 0.05, start_s: float = 1.7e9, device_seed: int = 17
) -> Telemetry:
    """`n` readings of `device_count` devices in time order (each device every INTERVAL_S), about
    `anomaly_rate` of them anomalous, the kinds in equal shares."""
    rng = np.random.default_rng(seed)
    points = _operating_points(device_count, device_seed)
    rows = np.arange(n) % device_count
    step = np.arange(n) // device_count
    timestamp = start_s + step * INTERVAL_S + rows * (INTERVAL_S / device_count)
    hours = (timestamp / 3600.0) % 24
    at = points.iloc[rows].reset_index(drop=True)
    values = _normal(at, hours, rng)
    kind = np.full(n, "", dtype=object)
    per_kind = anomaly_rate / len(KINDS)
    # Episodes span readings of one device: consecutive steps of that device's row.
    _spikes(values, kind, rng, per_kind)
    _drifts(values, kind, rng, per_kind, rows, step, device_count)
    _stuck(values, kind, rng, per_kind, rows, device_count)
    _multi_sensor(values, kind, rng, per_kind, rows, device_count)
    for sensor in ("vibration", "pressure", "rpm"):  # a sensor reads no less than zero, whatever befalls it
        np.clip(values[sensor], 0.0, None, out=values[sensor])
    features = pd.DataFrame({name: values[name] for name in (*SENSORS, "load")})
    features["hour_of_day"] = np.floor(hours)
    for name in features:
        features[name] = features[name].round(3)
    return Telemetry(at["device_id"].to_numpy(), timestamp, features, (kind != "").astype(np.int64), kind)


def _free(kind: np.ndarray, where: np.ndarray) -> np.ndarray:
    return where[kind[where] == ""]


def _spikes(values: dict[str, np.ndarray], kind: np.ndarray, rng: np.random.Generator, share: float) -> None:
    at = _free(kind, np.flatnonzero(rng.random(len(kind)) < share))
    for i in at:
        sensor = SENSORS[rng.integers(len(SENSORS))]
        values[sensor][i] += rng.choice((-1, 1)) * rng.uniform(12.0, 25.0) * NOISE[sensor]
        kind[i] = "spike"


def _episodes(
    rng: np.random.Generator, share: float, length: int, rows: np.ndarray, device_count: int, n: int
) -> list[np.ndarray]:
    """Indices of episodes of `length` consecutive readings of one device, about `share` of `n` in all."""
    episodes = []
    for _ in range(max(1, round(share * n / length))):
        first = int(rng.integers(0, max(1, n - length * device_count)))
        episode = first + np.arange(length) * device_count  # the same device, step after step
        episodes.append(episode[episode < n])
    return episodes


def _drifts(
    values: dict[str, np.ndarray],
    kind: np.ndarray,
    rng: np.random.Generator,
    share: float,
    rows: np.ndarray,
    step: np.ndarray,
    device_count: int,
) -> None:
    # Growing by 0.5 noise widths a reading, labelled from 6 widths on: the first dozen readings of a
    # drift are not (yet) anomalous, as they would not be to anyone watching.
    length = 36
    for episode in _episodes(rng, share * 1.5, length, rows, device_count, len(kind)):
        episode = _free(kind, episode)
        sensor = ("temperature", "pressure")[rng.integers(2)]
        offset = np.arange(1, len(episode) + 1) * 0.5 * NOISE[sensor]
        values[sensor][episode] += offset
        kind[episode[offset >= 6 * NOISE[sensor]]] = "drift"


def _stuck(
    values: dict[str, np.ndarray],
    kind: np.ndarray,
    rng: np.random.Generator,
    share: float,
    rows: np.ndarray,
    device_count: int,
) -> None:
    # The sensor repeats its first value; readings are labelled where the value it should read has
    # moved away by more than ten noise widths (a stuck sensor is invisible while nothing changes).
    length = 24
    for episode in _episodes(rng, share * 2, length, rows, device_count, len(kind)):
        episode = _free(kind, episode)
        if len(episode) < 2:
            continue
        sensor = ("rpm", "temperature", "pressure")[rng.integers(3)]
        true = values[sensor][episode].copy()
        values[sensor][episode] = true[0]
        off = np.abs(true - true[0]) > 10 * NOISE[sensor]
        kind[episode[off]] = "stuck"


def _multi_sensor(
    values: dict[str, np.ndarray],
    kind: np.ndarray,
    rng: np.random.Generator,
    share: float,
    rows: np.ndarray,
    device_count: int,
) -> None:
    # A bearing fault: hotter, shakier and slower together, each by 5-8 noise widths.
    length = 6
    for episode in _episodes(rng, share, length, rows, device_count, len(kind)):
        episode = _free(kind, episode)
        size = rng.uniform(5.0, 8.0, len(episode))
        values["temperature"][episode] += size * NOISE["temperature"]
        values["vibration"][episode] += size * NOISE["vibration"]
        values["rpm"][episode] -= size * NOISE["rpm"]
        kind[episode] = "multi_sensor"
