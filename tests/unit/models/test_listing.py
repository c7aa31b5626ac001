"""What `pipeline models list` and `models history` print (pipeline/models/listing.py)."""

from __future__ import annotations

from pathlib import Path

from pipeline.models.listing import history_rows, role, table, version_rows
from pipeline.models.routing import Change, Routing
from pipeline.models.versions import Version


def test_each_version_gets_its_role_in_the_routing():
    routing = Routing("m", "2", candidate="3", canary_share=0.1, shadow_share=1.0, earlier=("1",))
    assert [role(routing, v) for v in ("1", "2", "3", "4")] == [
        "earlier stable",
        "stable",
        "candidate (canary 10.0%, shadow 100.0%)",
        "-",
    ]
    assert role(Routing("m", "1", candidate="2"), "2") == "candidate (no events yet)"


def test_a_version_row_has_triton_state_when_trained_and_its_figures():
    on_disk = [
        Version(1, Path("m/1"), {"holdout_auc": 0.93512, "trained_at": "2026-12-06T10:00:00Z", "seconds": 3.0}),
        Version(2, Path("m/2"), {}),
    ]
    rows = version_rows("m", on_disk, {"1": "READY"}, Routing("m", "1"))
    assert rows == [
        {
            "model": "m",
            "version": "1",
            "triton": "READY",
            "role": "stable",
            "trained_at": "2026-12-06T10:00:00Z",
            "metrics": "holdout_auc 0.935",
        },
        {"model": "m", "version": "2", "triton": "not loaded", "role": "-", "trained_at": "-", "metrics": "-"},
    ]


def test_the_table_aligns_columns_under_a_header():
    text = table([{"a": "1", "bb": "long value"}, {"a": "222", "bb": "x"}])
    assert text.splitlines() == ["A    BB", "1    long value", "222  x"]
    assert table([]) == ""


def test_history_rows_say_what_each_change_did_and_which_could_not_apply():
    publish = Change("m", "publish", version="2", by="ana@ops", at="2026-12-06T10:00:00Z", why="new rows")
    share = Change("m", "share", canary_share=0.1, shadow_share=None, by="ana@ops", at="2026-12-06T10:05:00Z")
    twice = Change("m", "promote", by="bob@ops", at="2026-12-06T10:06:00Z")
    rows = history_rows([publish, share, twice], [(twice, "m has no candidate to promote")])
    assert [r["change"] for r in rows] == [
        "publish version 2",
        "share canary 10.0%",
        "promote (not applied: m has no candidate to promote)",
    ]
    assert rows[0]["why"] == "new rows" and rows[1]["why"] == "-" and rows[2]["by"] == "bob@ops"
