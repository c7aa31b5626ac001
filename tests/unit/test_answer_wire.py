"""Answer frames between a worker and a bridge: whatever chunks the bytes arrive in, the same answers."""

from __future__ import annotations

import pytest

from pipeline import answer_wire
from pipeline.answer_wire import FrameError, FrameReader

ANSWERS = [
    ("c0ffee", "result", b'{"event_id":"a","score":0.25}'),
    ("", "dead_letter", b'{"error":{"code":"invalid_request"}}'),
    ("\u00e9t\u00e9", "result", b""),
]
STREAM = b"".join(answer_wire.encode(c.encode(), kind, value) for c, kind, value in ANSWERS)


def test_frames_read_back_as_written_in_one_chunk():
    assert FrameReader().feed(STREAM) == ANSWERS


@pytest.mark.parametrize("size", [1, 2, 7, 10, 33])
def test_frames_split_anywhere_read_back_whole_and_in_order(size):
    reader = FrameReader()
    frames = [frame for start in range(0, len(STREAM), size) for frame in reader.feed(STREAM[start : start + size])]
    assert frames == ANSWERS


def test_a_partial_frame_waits_for_the_rest():
    reader = FrameReader()
    first = answer_wire.encode(b"c1", "result", b"{}")
    assert reader.feed(first[:-1]) == []
    assert reader.feed(first[-1:]) == [("c1", "result", b"{}")]


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\n\r\n",  # something else connected: a huge length
        b"\x00\x00\x00\x03\x00\x09\x00",  # a correlation id longer than the frame
        b"\x00\x00\x00\x03\x00\x00\x07",  # an unknown kind
    ],
)
def test_bytes_that_are_not_answer_frames_are_refused(garbage):
    with pytest.raises(FrameError, match="not an answer frame"):
        FrameReader().feed(garbage)
