from __future__ import annotations

from pipeline.replay.diff import Scored, compare


def scored(score: float, label: str, version: str = "1") -> Scored:
    return Scored(score, label, "fraud_scorer", version)


def test_the_diff_counts_matches_misses_shifts_and_flips():
    originals = {
        "a": scored(0.10, "legit"),
        "b": scored(0.40, "legit"),
        "c": scored(0.90, "fraud"),
        "d": scored(0.20, "legit"),  # not replayed (yet)
    }
    replayed = {
        "a": scored(0.15, "legit", "2"),
        "b": scored(0.60, "fraud", "2"),
        "c": scored(0.30, "legit", "2"),
        "e": scored(0.70, "fraud", "2"),  # never scored live (an outage window)
    }
    figures = compare(originals, replayed, published={"a", "b", "c", "d", "e"})

    assert figures["matched"] == 3
    assert figures["missing_in_replay"] == 1 and figures["missing_in_original"] == 1
    # Shifts +0.05, +0.20, -0.60: mean -0.35 / 3, mean absolute 0.85 / 3, largest -0.60 on c.
    assert figures["mean_shift"] == round((0.05 + 0.20 - 0.60) / 3, 6)
    assert figures["mean_abs_shift"] == round(0.85 / 3, 6)
    assert figures["largest_shift"] == {"event_id": "c", "shift": -0.6}
    assert figures["label_flips"] == {"fraud→legit": 1, "legit→fraud": 1}
    assert figures["model_versions"] == {"1→2": 3}


def test_an_empty_replay_has_no_shift():
    figures = compare({"a": scored(0.1, "legit")}, {}, published=set())
    assert figures["matched"] == 0 and figures["mean_shift"] is None and figures["largest_shift"] is None
