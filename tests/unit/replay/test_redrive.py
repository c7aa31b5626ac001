from __future__ import annotations

import base64
from datetime import UTC, datetime

from pipeline.contract import Source, dead_letter_record
from pipeline.errors import InferenceFailed, InvalidJson
from pipeline.replay.redrive import DeadLetter, Selection, select

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def letter(error, raw: bytes | None, minutes: int, key: bytes | None = b"42") -> DeadLetter:
    record = dead_letter_record(error, raw, Source("inference.requests", 0, 1), key=key)
    return DeadLetter(record, int(T0.timestamp() * 1000) + minutes * 60_000)


LETTERS = [
    letter(InferenceFailed("down"), b'{"event_id":"a"}', 0),
    letter(InvalidJson("bad"), b"\xff\xfe", 5, key=None),
    letter(InferenceFailed("down"), b'{"event_id":"b"}', 10),
    letter(InferenceFailed("down"), None, 11),
]


def test_redrive_selects_by_code_and_time_and_restores_the_original_bytes():
    picked = list(select(LETTERS, Selection(frozenset({"inference_failed"}), since=T0.replace(minute=1))))
    assert picked == [(b"42", b'{"event_id":"b"}')]


def test_binary_payloads_come_back_byte_for_byte():
    picked = list(select(LETTERS, Selection(frozenset({"invalid_json"}))))
    assert picked == [(None, b"\xff\xfe")]
    assert LETTERS[1].record["payload"] == base64.b64encode(b"\xff\xfe").decode()


def test_no_filter_takes_every_letter_that_kept_its_payload():
    assert len(list(select(LETTERS, Selection()))) == 3
    assert list(select(LETTERS, Selection(until=T0))) == []
