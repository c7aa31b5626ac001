"""API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`. Several keys may be valid at once
(rotation: add the new key, move clients, remove the old one). Keys are never logged."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence


class ApiKeys:
    def __init__(self, keys: Sequence[str]) -> None:
        self._keys = [key.encode() for key in keys if key]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, headers: Mapping[str, str]) -> str | None:
        """A stable, non-secret id of the presented key when it is valid ("open" without keys); else None."""
        if not self.enabled:
            return "open"
        presented = _presented(headers)
        if presented is None:
            return None
        # Compare against every key in constant time, so timing tells nothing about which matched.
        matched = [hmac.compare_digest(presented.encode(), key) for key in self._keys]
        if not any(matched):
            return None
        return "key-" + hashlib.sha256(presented.encode()).hexdigest()[:12]


def _presented(headers: Mapping[str, str]) -> str | None:
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    api_key = headers.get("x-api-key", "").strip()
    return api_key or None
