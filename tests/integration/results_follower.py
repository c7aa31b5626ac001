"""A reader of the results as they are written, open transactions included: a test that must stop a
worker inside an open transaction stops it as a result arrives, its commit markers a few
milliseconds behind (a transaction's results are written as it commits)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from pipeline.local.probe import consumer_config
from pipeline.settings import Settings


class ResultsFollower:
    def __init__(self, settings: Settings, partitions: Iterable[int]) -> None:
        self._consumer = Consumer(consumer_config(settings) | {"isolation.level": "read_uncommitted"})
        self._consumer.assign([TopicPartition(settings.topics.results, p, OFFSET_END) for p in partitions])

    def until_written(self, seconds: float, matching: Callable[[bytes], bool] = lambda _: True) -> bool:
        """Whether a result `matching` its value is written within `seconds`: return as soon as one is."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            message = self._consumer.poll(left)
            if message is None or message.error() is not None or (value := message.value()) is None:
                continue
            if matching(value):
                return True
        return False

    def skip(self, seconds: float) -> None:
        """Pass over what is written for `seconds` (while the worker is stopped: what it wrote before)."""
        self.until_written(seconds, lambda _: False)

    def close(self) -> None:
        self._consumer.close()
