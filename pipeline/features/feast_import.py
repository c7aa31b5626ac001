"""Feast, imported without its run-time type checks.

Feast decorates its classes with typeguard's `@typechecked`, which re-parses and recompiles each one
from its source when the module is imported: ~7 of the ~10 s `import feast` takes on two cores, the
larger part of a worker's start, which is how long a scale-up waits (docs/performance.md#worker-start).
The checks guard Feast's own API against wrong argument types; the pipeline builds no Feast objects
on the hot path, only reads the registry, so its workers import Feast with the decorator as a no-op.
"""

from __future__ import annotations

import importlib
import sys
import threading
from types import ModuleType
from typing import Any

_IMPORTING = threading.Lock()  # one swap at a time, and no half-imported feast handed out


def import_feast() -> ModuleType:
    with _IMPORTING:
        if (loaded := sys.modules.get("feast")) is not None:
            return loaded
        import typeguard

        checked = typeguard.typechecked
        typeguard.typechecked = _unchecked  # type: ignore[assignment]
        try:
            return importlib.import_module("feast")
        finally:
            typeguard.typechecked = checked


def _unchecked(target: Any = None, **_options: Any) -> Any:
    return target if target is not None else (lambda decorated: decorated)
