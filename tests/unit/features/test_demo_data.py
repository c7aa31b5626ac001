from __future__ import annotations

import pandas as pd

from pipeline.features.demo_data import fingerprint


def test_the_fingerprint_follows_the_contents():
    frame = pd.DataFrame({"device_id": [1, 2], "rpm_mean": [1500.0, 1400.0]})
    assert fingerprint(frame) == fingerprint(frame.copy())
    assert fingerprint(frame) != fingerprint(frame.assign(rpm_mean=[1500.0, 1400.5])), "a changed value"
    assert fingerprint(frame) != fingerprint(frame.rename(columns={"rpm_mean": "rpm_avg"})), "a renamed column"
    assert fingerprint(frame) != fingerprint(frame.iloc[:1]), "a row fewer"
