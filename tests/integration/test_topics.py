from __future__ import annotations

import pytest

from pipeline import topics

pytestmark = pytest.mark.integration


def test_topics_apply_creates_the_contract_topics_once(pipeline_settings):
    settings = pipeline_settings()  # the factory has applied them once already
    again = topics.apply(settings)
    assert again.created == [] and again.grown == []
    assert sorted(again.unchanged) == sorted(s.name for s in topics.load_specs(settings))
    assert topics.partition_count(settings, settings.topics.requests) == 12
