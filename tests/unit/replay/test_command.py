from __future__ import annotations

import pytest
import typer

from pipeline.errors import ConfigurationError
from pipeline.replay.checkpoint import Checkpoint
from pipeline.replay.command import _results_topic
from pipeline.settings import Settings

SETTINGS = Settings()


@pytest.mark.parametrize(
    "name",
    [
        "inference.results",
        "inference.requests",
        "inference.dlq",
        "replay.checkpoints",
        "inference.requests.backfill",
        "..",
        "a b",
    ],
)
def test_a_replay_cannot_put_its_results_in_a_topic_of_the_pipelines_own(name: str) -> None:
    with pytest.raises(typer.BadParameter):
        _results_topic(SETTINGS, name, None)


def test_the_backfill_results_are_the_default() -> None:
    assert _results_topic(SETTINGS, None, None) == "inference.results.backfill"
    assert _results_topic(SETTINGS, "inference.results.backfill", None) == "inference.results.backfill"


def test_a_resumed_replay_keeps_the_topic_it_began_with() -> None:
    began = Checkpoint(replay_id="r1", source={"file": "x"}, ranges={}, results_topic="inference.results.backfill")
    assert _results_topic(SETTINGS, None, began) == "inference.results.backfill"
    with pytest.raises(ConfigurationError, match=r"writes its results to inference\.results\.backfill"):
        _results_topic(SETTINGS, "mine", began)
