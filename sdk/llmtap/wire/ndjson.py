"""Incremental newline-delimited JSON (NDJSON / JSON Lines) decoder: one event per non-blank line.

Ollama's native API streams this way (`application/x-ndjson`). Lines end in LF; a CR before the LF
is dropped. A line may be split at any byte boundary. A line longer than the limit is dropped whole
(`overflowed` is set) and decoding resumes at the next line, so memory stays bounded. Nothing here
parses JSON: data stays bytes for the provider parser.
"""

from __future__ import annotations

from llmtap.wire.sse import DEFAULT_MAX_EVENT_BYTES, SSEEvent

NDJSON_EVENT = "message"


class NDJSONDecoder:
    """Feed it chunks as they arrive; it returns the lines (as events) that each chunk completes."""

    __slots__ = ("_max_event_bytes", "_parts", "_size", "_skipping", "overflowed")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._parts: list[bytes] = []  # the pieces of an incomplete line
        self._size = 0
        self._skipping = False  # inside a line that overflowed: drop bytes up to the next LF
        self._max_event_bytes = max_event_bytes
        self.overflowed = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not chunk:
            return []
        lines = chunk.split(b"\n")
        tail = lines.pop()  # after the last LF: the start of an incomplete line (or b"")
        events: list[SSEEvent] = []
        if lines:
            first = lines[0]
            if self._skipping:
                self._skipping = False
                lines[0] = b""
            elif self._parts:
                self._parts.append(first)
                lines[0] = b"".join(self._parts)
                self._parts = []
                self._size = 0
            limit = self._max_event_bytes
            for line in lines:
                if len(line) > limit:
                    self.overflowed = True
                    continue
                event = _event(line)
                if event is not None:
                    events.append(event)
        if tail and not self._skipping:
            self._parts.append(tail)
            self._size += len(tail)
            if self._size > self._max_event_bytes:
                self.overflowed = True
                self._skipping = True
                self._parts = []
                self._size = 0
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: a last line without a trailing LF still counts."""
        parts, skipping = self._parts, self._skipping
        self._parts, self._size, self._skipping = [], 0, False
        if skipping or not parts:
            return []
        event = _event(b"".join(parts))
        return [event] if event is not None else []


def _event(line: bytes) -> SSEEvent | None:
    if line[-1:] == b"\r":
        line = line[:-1]
    if not line or line.isspace():
        return None
    return SSEEvent(line, NDJSON_EVENT)


__all__ = ["NDJSONDecoder"]
