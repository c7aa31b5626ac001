from datetime import UTC, datetime
from types import SimpleNamespace

from pipeline.features.materialisations import fed_by_push, latest

T0, T1, T2 = (datetime(2026, 12, d, tzinfo=UTC) for d in (1, 2, 3))


def test_each_views_latest_materialised_end_and_none_for_a_view_never_materialised():
    views = [
        SimpleNamespace(name="a", materialization_intervals=[(T0, T2), (T0, T1)]),
        SimpleNamespace(name="b", materialization_intervals=[]),
    ]
    assert latest(views) == {"a": T2, "b": None}


def test_a_view_with_a_stream_source_is_fed_by_push():
    assert fed_by_push(SimpleNamespace(stream_source=object()))
    assert not fed_by_push(SimpleNamespace(stream_source=None))
