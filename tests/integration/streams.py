"""Load that goes on while a test changes something under it: requests published at a steady rate on
a thread, HTTP calls to the bridge beside them."""

from __future__ import annotations

import threading
import time
import uuid

import httpx

from pipeline.local import probe, traffic
from pipeline.settings import Settings


def requests_for(model: str, count: int, prefix: str, seed: int = 3) -> list[dict[str, object]]:
    return [dict(r, model=model) for r in traffic.valid_requests(count, prefix=prefix, seed=seed)]


class Stream:
    """Requests published on a thread at `rate` a second until stopped, and (`http`) HTTP calls to the
    bridge beside them, one at a time, so that both go on while a test changes the routing or the
    brokers."""

    def __init__(self, settings: Settings, rate: int, model: str, http: bool = True) -> None:
        self._settings, self._rate, self._model = settings, rate, model
        self.published: list[dict[str, object]] = []
        self.errors: list[BaseException] = []
        self.http: list[tuple[dict[str, object], int, dict]] = []  # request, status, body
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._publish, daemon=True)]
        if http:
            self._threads.append(threading.Thread(target=self._call, daemon=True))
        for thread in self._threads:
            thread.start()

    def _publish(self) -> None:
        prefix = f"lc-{uuid.uuid4().hex[:6]}-"
        try:
            while not self._stop.is_set():  # a second's worth at a time, fresh transactions each
                n = len(self.published)
                second = requests_for(self._model, self._rate, prefix=f"{prefix}{n}-", seed=100 + n)
                probe.publish(self._settings, [traffic.message_for(r) for r in second], rate=self._rate)
                self.published += second
        except BaseException as e:  # noqa: BLE001 -- re-raised by stop()
            self.errors.append(e)

    def _call(self) -> None:
        url = f"http://127.0.0.1:{self._settings.gateway.port}/v1/predict"
        calls = requests_for(self._model, 2_000, prefix=f"http-{uuid.uuid4().hex[:6]}-")
        try:
            with httpx.Client(timeout=30) as client:
                for request in calls:
                    if self._stop.is_set():
                        return
                    response = client.post(url, json=request)
                    self.http.append((request, response.status_code, response.json()))
                    time.sleep(0.05)
        except BaseException as e:  # noqa: BLE001 -- re-raised by stop()
            self.errors.append(e)

    def stop(self) -> list[dict[str, object]]:
        """Every request published, the HTTP callers' included."""
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        if self.errors:
            raise self.errors[0]
        return self.published + [request for request, _, _ in self.http]
