"""The direct answer link: workers answer a bridge over TCP, with the replies topic as the fallback.

A bridge names its answer listener in each request's `answer-to` header (`host:port/token`) and
greets each connection with the token (see `gateway.answer_server`). A worker writes answers there on
a connection it keeps open, and on the replies topic only while it cannot reach the address: two
hops fewer (docs/performance.md#direct-answers). The answer is never the record (the committed
result is), so no guarantee changes; answers on a connection that then breaks are not resent, and
their callers get the 504 naming their event_id. Correlation ids are random 128-bit values: a frame
resolves a caller only if its sender read that caller's request.

Frames, each: `>I` length of the rest, `>H` length of the correlation id, one byte kind
(0 result, 1 dead letter), the correlation id, the answer's value (the result or dead-letter JSON).
"""

from __future__ import annotations

import struct

_HEAD = struct.Struct(">IHB")
_LENGTH = struct.Struct(">I")
KINDS = ("result", "dead_letter")
_KIND_CODES = {kind: code for code, kind in enumerate(KINDS)}
# A frame longer than this is not an answer (results are ~200 bytes): the stream is not ours.
MAX_FRAME_BYTES = 16 * 1024 * 1024


class FrameError(ValueError):
    """The bytes on an answer connection are not answer frames."""


def encode(correlation_id: bytes, kind: str, value: bytes) -> bytes:
    code = _KIND_CODES[kind]
    head = _HEAD.pack(_HEAD.size - _LENGTH.size + len(correlation_id) + len(value), len(correlation_id), code)
    return head + correlation_id + value


class FrameReader:
    """Turns a byte stream, in whatever chunks it arrives, into (correlation_id, kind, value)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[str, str, bytes]]:
        self._buffer += data
        buffer, start, end = self._buffer, 0, len(self._buffer)
        frames = []
        while end - start >= _HEAD.size:
            length, correlation_length, code = _HEAD.unpack_from(buffer, start)
            fixed = _HEAD.size - _LENGTH.size + correlation_length
            if length > MAX_FRAME_BYTES or fixed > length or code >= len(KINDS):
                raise FrameError(f"not an answer frame (length {length}, kind {code})")
            stop = start + _LENGTH.size + length
            if stop > end:
                break
            body = start + _HEAD.size
            correlation = bytes(buffer[body : body + correlation_length]).decode(errors="replace")
            frames.append((correlation, KINDS[code], bytes(buffer[body + correlation_length : stop])))
            start = stop
        del buffer[:start]
        return frames
