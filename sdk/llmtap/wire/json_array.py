"""Incremental decoder for a streamed JSON array: one event per top-level element, as it completes.

Gemini's `streamGenerateContent` without `?alt=sse` answers `application/json` with one array whose
elements arrive over time (`[{...}\\n,\\r\\n{...}\\n]`). The decoder tracks only what framing needs:
nesting depth, whether it is inside a string, and a backslash escape, all across chunk boundaries.
It searches for structural bytes with a compiled regex (C speed) and looks at each byte once, so it
is linear in the input. Fast path: an object element that is whole in one chunk (the usual case) is
recognised by letting orjson check the span up to the chunk's last "}"; it costs one validating
parse instead of a Python step per bracket and quote. Elements that are objects or arrays are
emitted; scalar elements are skipped. A top-level object (no array at all, e.g. an error body) is
emitted as one event.

An element longer than the limit is dropped (`overflowed`) while the scan goes on to its end, so
memory stays bounded. Malformed input never raises: a stray closing bracket is ignored.
"""

from __future__ import annotations

import re

import orjson

from llmtap.wire.sse import DEFAULT_MAX_EVENT_BYTES, SSEEvent

JSON_ARRAY_EVENT = "message"

_STRUCTURAL = re.compile(rb'["\[\]{}]')  # outside strings
_IN_STRING = re.compile(rb'["\\]')  # inside strings

_QUOTE, _BACKSLASH, _OPEN_OBJECT = 0x22, 0x5C, 0x7B
_OPENERS = frozenset(b"[{")


def _is_json(candidate: bytes) -> bool:
    """Whether `candidate` is exactly one JSON value: then it is one whole element, and scanning it byte by
    byte would find the same end. (orjson checks it at C speed; the scan is the fallback.)"""
    try:
        orjson.loads(candidate)
    except orjson.JSONDecodeError:
        return False
    return True


class JSONArrayDecoder:
    """Feed it chunks as they arrive; it returns the array elements each chunk completes."""

    __slots__ = (
        "_depth",
        "_dropping",
        "_element_depth",
        "_escape",
        "_in_array",
        "_in_string",
        "_max_event_bytes",
        "_parts",
        "_size",
        "overflowed",
    )

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._depth = 0  # open brackets, the top-level array's included
        self._in_array = False  # the top-level "[" has been seen
        self._in_string = False
        self._escape = False  # the last chunk ended in a backslash inside a string
        self._element_depth = -1  # depth at which the current element opened; -1: none in progress
        self._parts: list[bytes] = []  # the bytes of the element in progress, from earlier chunks
        self._size = 0
        self._dropping = False  # the element in progress overflowed: scan to its end, keep nothing
        self._max_event_bytes = max_event_bytes
        self.overflowed = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not chunk:
            return []
        events: list[SSEEvent] = []
        pos = 0
        start = 0  # where the element in progress starts in this chunk
        size = len(chunk)
        if self._escape:
            self._escape = False
            pos = 1  # the escaped byte
        while pos < size:
            if self._in_string:
                match = _IN_STRING.search(chunk, pos)
                if match is None:
                    break
                at = match.start()
                if chunk[at] == _BACKSLASH:
                    if at + 1 >= size:
                        self._escape = True
                        pos = size
                        break
                    pos = at + 2
                    continue
                self._in_string = False
                pos = at + 1
                continue
            match = _STRUCTURAL.search(chunk, pos)
            if match is None:
                break
            at = match.start()
            pos = at + 1
            byte = chunk[at]
            if byte == _QUOTE:
                self._in_string = True
            elif byte in _OPENERS:
                if self._depth == 0 and byte == 0x5B and not self._in_array:  # the top-level "["
                    self._in_array = True
                elif self._element_depth < 0 and self._depth == (1 if self._in_array else 0):
                    if byte == _OPEN_OBJECT and not self._dropping:  # fast path: the whole element is here
                        end = chunk.rfind(b"}", at) + 1
                        if end and end - at <= self._max_event_bytes and _is_json(chunk[at:end]):
                            events.append(SSEEvent(chunk[at:end], JSON_ARRAY_EVENT))
                            pos = end
                            continue
                    self._element_depth = self._depth
                    start = at
                self._depth += 1
            else:  # "]" or "}"
                if self._depth == 0:
                    continue  # stray closer: ignore
                self._depth -= 1
                if self._depth == self._element_depth:
                    self._element_depth = -1
                    event = self._complete(chunk[start:pos])
                    if event is not None:
                        events.append(event)
                elif self._depth == 0:
                    self._in_array = False  # the array closed; a later "[" would open a new one
        if self._element_depth >= 0 and not self._dropping:
            piece = chunk[start:]
            self._size += len(piece)
            if self._size > self._max_event_bytes:
                self._drop()
            else:
                self._parts.append(piece)
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: an incomplete element is dropped."""
        self._parts, self._size, self._dropping, self._element_depth = [], 0, False, -1
        return []

    def _complete(self, tail: bytes) -> SSEEvent | None:
        if self._dropping:
            self._dropping = False
            return None
        if self._parts:
            self._parts.append(tail)
            data = b"".join(self._parts)
            self._parts, self._size = [], 0
        else:
            data = tail
        if len(data) > self._max_event_bytes:
            self.overflowed = True
            return None
        return SSEEvent(data, JSON_ARRAY_EVENT)

    def _drop(self) -> None:
        self.overflowed = True
        self._dropping = True
        self._parts, self._size = [], 0


__all__ = ["JSONArrayDecoder"]
