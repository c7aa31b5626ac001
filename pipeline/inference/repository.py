"""Triton's model repository API, for explicit model control: which versions of a model are loaded,
and loading exactly a set of them (`models.load_request`) while the others keep serving.

A load names every version to serve; Triton loads the new ones beside those serving and unloads the
ones no longer named. A version that fails to load leaves the others as they were. Unloading returns
before in-flight requests drain, so `wait_gone` polls the index until the version has left it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx

from pipeline.errors import ConfigurationError
from pipeline.models import load_request
from pipeline.settings import TritonSettings


class LoadFailed(ConfigurationError):
    """Triton could not load a version; the message is Triton's reason, in one line."""


@dataclass(frozen=True)
class VersionState:
    version: str
    state: str  # READY, LOADING, UNLOADING, UNAVAILABLE
    reason: str = ""


def one_line(text: str, limit: int = 300) -> str:
    """Triton's error text (often a Python traceback) as one line: its first line, shortened."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first if len(first) <= limit else first[: limit - 1] + "…"


class TritonRepository:
    def __init__(self, settings: TritonSettings, timeout_s: float = 120.0) -> None:
        self._base = f"http://{settings.http_url}"
        self._repository = settings.model_repository
        self._client = httpx.Client(timeout=timeout_s)

    def index(self) -> dict[str, list[VersionState]]:
        """Each model of the repository and the state of each of its versions Triton knows."""
        response = self._call("POST", "/v2/repository/index", "the repository index")
        found: dict[str, list[VersionState]] = {}
        for entry in response.json():
            versions = found.setdefault(entry["name"], [])
            if "version" in entry:
                versions.append(VersionState(entry["version"], entry.get("state", ""), entry.get("reason", "")))
        return found

    def load(self, model: str, versions: Iterable[int]) -> None:
        """Serve exactly `versions` of `model`; `LoadFailed` with Triton's reason if one fails to load
        (the versions already serving go on serving)."""
        config_file = self._repository / model / "config.pbtxt"
        if not config_file.is_file():
            raise ConfigurationError(f"{model}: no such model in {self._repository}")
        body = load_request.load_body(config_file, versions)
        try:
            response = self._client.post(f"{self._base}/v2/repository/models/{model}/load", content=body)
        except httpx.HTTPError as e:
            raise ConfigurationError(f"Triton at {self._base} did not answer the load of {model}: {e}") from e
        if response.status_code != 200:
            raise LoadFailed(f"Triton could not load {model}: {one_line(_error(response))}")

    def unload(self, model: str) -> None:
        """Every version of `model` unloaded (returns before in-flight requests drain: `wait_gone`)."""
        try:
            response = self._client.post(f"{self._base}/v2/repository/models/{model}/unload")
        except httpx.HTTPError as e:
            raise ConfigurationError(f"Triton at {self._base} did not answer the unload of {model}: {e}") from e
        if response.status_code != 200:
            raise ConfigurationError(f"Triton could not unload {model}: {one_line(_error(response))}")

    def ready(self, model: str, version: str) -> bool:
        try:
            return self._client.get(f"{self._base}/v2/models/{model}/versions/{version}/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def wait_gone(self, model: str, versions: Iterable[str], timeout_s: float) -> None:
        """Until none of `versions` is loaded or unloading (their in-flight requests drained)."""
        leaving = set(versions)
        deadline = time.monotonic() + timeout_s
        while True:
            states = {v.version: v.state for v in self.index().get(model, [])}
            if not any(states.get(v) in ("READY", "LOADING", "UNLOADING") for v in leaving):
                return
            if time.monotonic() > deadline:
                raise ConfigurationError(f"{model}: versions {sorted(leaving)} still loaded after {timeout_s:g} s")
            time.sleep(0.2)

    def _call(self, method: str, path: str, what: str) -> httpx.Response:
        try:
            response = self._client.request(method, f"{self._base}{path}")
        except httpx.HTTPError as e:
            raise ConfigurationError(f"Triton at {self._base} did not answer for {what}: {e}") from e
        if response.status_code != 200:
            raise ConfigurationError(f"Triton refused {what}: {one_line(_error(response))}")
        return response

    def close(self) -> None:
        self._client.close()


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text


def model_names(repository: Path) -> list[str]:
    """The models of a repository on disk: the directories holding a config.pbtxt."""
    return sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))
