"""Request traffic for demos, tests and benchmarks: valid requests, repeats, and each kind of bad input.

Pure: builds messages, sends nothing.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import orjson

from pipeline.synthetic import cards, telemetry

# Each kind of bad input, and the dead-letter code it must get.
MALFORMED_KINDS = (
    ("not_json", "invalid_json"),
    ("missing_event_id", "invalid_request"),
    ("non_numeric_feature", "invalid_request"),
    ("unknown_model", "unknown_model"),
    ("unknown_account", "missing_features"),
)


@dataclass(frozen=True)
class Message:
    key: bytes | None
    value: bytes
    event_id: str | None
    kind: str  # "valid", "duplicate", or one of MALFORMED_KINDS
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass
class Traffic:
    messages: list[Message] = field(default_factory=list)
    requests: dict[str, dict[str, object]] = field(default_factory=dict)  # distinct valid, by event_id
    expected_dead_letters: Counter[str] = field(default_factory=Counter)

    @property
    def duplicates(self) -> int:
        return sum(1 for m in self.messages if m.kind == "duplicate")


def valid_requests(count: int, prefix: str, accounts: int = 10_000, seed: int = 3) -> list[dict[str, object]]:
    table = cards.accounts(accounts)
    data = cards.transactions(count, table, seed=seed)
    rows = data.features.to_dict(orient="records")
    return [
        {
            "event_id": f"{prefix}{i:07d}",
            "entity": {"account_id": int(account)},
            "features": {k: float(v) for k, v in row.items()},
        }
        for i, (account, row) in enumerate(zip(data.account_id, rows, strict=True))
    ]


def telemetry_requests(
    count: int, prefix: str, devices: int = 1_000, seed: int = 29, anomaly_rate: float = 0.05
) -> list[dict[str, object]]:
    """`count` readings for the anomaly detector, `devices` machines reporting in turn (about
    `anomaly_rate` of them anomalous: `pipeline.synthetic.telemetry`)."""
    data = telemetry.readings(count, devices, seed=seed, anomaly_rate=anomaly_rate)
    rows = data.features.to_dict(orient="records")
    return [
        {
            "event_id": f"{prefix}{i:07d}",
            "model": "anomaly_detector",
            "entity": {"device_id": int(device)},
            "features": {k: float(v) for k, v in row.items()},
        }
        for i, (device, row) in enumerate(zip(data.device_id, rows, strict=True))
    ]


def object_field(request: dict[str, object], name: str) -> dict[str, object]:
    """A copy of one of a request's JSON-object fields (`entity`, `features`)."""
    value = request[name]
    if not isinstance(value, dict):
        raise TypeError(f"request {request.get('event_id')}: {name} is a {type(value).__name__}, not an object")
    return dict(value)


def message_for(request: dict[str, object], kind: str = "valid") -> Message:
    """Keyed as the contract keys requests: by the entity's value (`contract.request_key`)."""
    entity = request["entity"]
    assert isinstance(entity, dict)
    return Message(str(next(iter(entity.values()))).encode(), orjson.dumps(request), str(request["event_id"]), kind)


def malformed(kind: str, base: dict[str, object], event_id: str) -> Message:
    """Poison of `kind`, made from a valid request of either model."""
    request = dict(base) | {"event_id": event_id}
    if kind == "not_json":
        return Message(b"1", b"{not json " + event_id.encode(), None, kind)
    if kind == "missing_event_id":
        request.pop("event_id")
        return Message(b"1", orjson.dumps(request), None, kind)
    if kind == "non_numeric_feature":
        features = object_field(request, "features")
        name = "amount" if "amount" in features else next(iter(features))
        request["features"] = features | {name: "twelve"}
    elif kind == "unknown_model":
        request["model"] = "no_such_model"
    elif kind == "unknown_account":  # an entity the feature store has no row for
        key = next(iter(object_field(request, "entity")))
        request["entity"] = {key: 10_000_000 + int(event_id.rsplit("-", 1)[-1])}
    return Message(b"1", orjson.dumps(request), event_id, kind)


def mixed(
    total: int,
    prefix: str,
    duplicate_rate: float = 0.05,
    malformed_rate: float = 0.01,
    seed: int = 5,
    telemetry_share: float = 0.0,
) -> Traffic:
    """`total` messages: distinct valid requests, repeats of earlier ones (near and far), bad input
    spread through. `telemetry_share` of the distinct requests are readings for the anomaly detector
    (event ids `<prefix>t-...`), shuffled among the card transactions; poison is made from both."""
    rng = np.random.default_rng(seed)
    n_dup, n_bad = int(total * duplicate_rate), int(total * malformed_rate)
    distinct = total - n_dup - n_bad
    n_telemetry = int(distinct * telemetry_share)
    originals = valid_requests(distinct - n_telemetry, prefix)
    if n_telemetry:
        readings = telemetry_requests(n_telemetry, f"{prefix}t-", seed=seed)
        originals = [
            originals[i] if i < len(originals) else readings[i - len(originals)] for i in rng.permutation(distinct)
        ]
    traffic = Traffic(requests={str(r["event_id"]): r for r in originals})
    # Each repeat follows its original, anywhere from right after it to the end of the stream.
    repeats_after: dict[int, list[Message]] = defaultdict(list)
    for _ in range(n_dup):
        source = int(rng.integers(0, len(originals)))
        repeats_after[int(rng.integers(source, len(originals)))].append(message_for(originals[source], "duplicate"))
    sequence: list[Message] = []
    for i, request in enumerate(originals):
        sequence.append(message_for(request))
        sequence.extend(repeats_after.get(i, ()))
    for i in range(n_bad):
        kind, code = MALFORMED_KINDS[i % len(MALFORMED_KINDS)]
        at = int(rng.integers(0, len(sequence) + 1))
        sequence.insert(at, malformed(kind, originals[i % len(originals)], f"{prefix}bad-{i}"))
        traffic.expected_dead_letters[code] += 1
    traffic.messages = sequence
    return traffic
