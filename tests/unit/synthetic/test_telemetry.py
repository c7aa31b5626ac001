from __future__ import annotations

import numpy as np

from pipeline.synthetic import telemetry


def test_device_baselines_are_a_function_of_the_seed():
    assert telemetry.devices(50).equals(telemetry.devices(50))
    table = telemetry.devices(3)
    assert list(table["device_id"]) == [1, 2, 3]
    assert list(table.columns[1:]) == list(telemetry.BASELINE_FEATURES)
    assert (table[[f"{s}_std" for s in telemetry.SENSORS]] > 0).all().all()


def test_readings_carry_every_anomaly_kind_with_labels_at_about_the_rate():
    data = telemetry.readings(60_000, 200, anomaly_rate=0.05)
    assert list(data.features.columns) == list(telemetry.READING_FEATURES)
    assert 0.03 < data.label.mean() < 0.07
    kinds = set(data.kind[data.label == 1])
    assert kinds == set(telemetry.KINDS)
    assert (data.label == (data.kind != "")).all()
    assert np.all(np.diff(data.timestamp_s) >= 0), "in time order"
    assert data.features["hour_of_day"].between(0, 23).all() and data.features["load"].between(0, 1).all()


def test_normal_readings_stay_near_their_device_baseline_and_spikes_do_not():
    data = telemetry.readings(40_000, 100, anomaly_rate=0.05)
    table = telemetry.devices(100).set_index("device_id").loc[data.device_id].reset_index()
    z = {s: np.abs(data.features[s].to_numpy() - table[f"{s}_mean"]) / table[f"{s}_std"] for s in telemetry.SENSORS}
    worst = np.max(np.column_stack(list(z.values())), axis=1)
    assert np.percentile(worst[data.label == 0], 99) < 3.5
    spikes = data.kind == "spike"
    assert np.median(worst[spikes]) > np.median(worst[data.label == 0])


def test_a_stuck_sensor_repeats_one_value_while_the_device_runs_on():
    data = telemetry.readings(40_000, 100, anomaly_rate=0.05)
    stuck = np.flatnonzero(data.kind == "stuck")
    device = data.device_id[stuck[0]]
    episode = [i for i in stuck if data.device_id[i] == device][:3]
    values = data.features.iloc[episode]
    assert any(values[s].nunique() == 1 for s in ("rpm", "temperature", "pressure"))


def test_a_device_is_the_same_whatever_the_fleet_around_it():
    # The feature store holds the baselines of 1,000 devices; training and the demo draw fewer.
    assert telemetry.devices(1000).head(20).equals(telemetry.devices(20))
