from __future__ import annotations

from pipeline.worker.topic_catalog import TopicCatalog


class Broker:
    """The topics a lookup finds, and how often it was asked."""

    def __init__(self, *names: str) -> None:
        self.names, self.asked = set(names), 0

    def has(self, name: str) -> bool:
        self.asked += 1
        return name in self.names


def test_a_topic_found_is_not_asked_about_again_until_a_transaction_aborts():
    broker, now = Broker("mine"), [0.0]
    catalog = TopicCatalog(broker.has, recheck_s=5.0, clock=lambda: now[0])
    assert catalog.exists("mine") and catalog.exists("mine")
    assert broker.asked == 1
    broker.names.clear()  # deleted
    assert catalog.exists("mine"), "trusted until told otherwise"
    catalog.forget()
    assert not catalog.exists("mine")
    assert broker.asked == 2


def test_a_missing_topic_is_asked_about_again_only_after_the_recheck_interval():
    broker, now = Broker(), [0.0]
    catalog = TopicCatalog(broker.has, recheck_s=5.0, clock=lambda: now[0])
    assert not catalog.exists("later")
    now[0] = 4.9
    assert not catalog.exists("later")
    assert broker.asked == 1, "no lookup per request while it is missing"
    broker.names.add("later")  # created meanwhile
    now[0] = 5.0
    assert catalog.exists("later")
    assert broker.asked == 2
