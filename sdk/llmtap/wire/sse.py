"""Incremental Server-Sent Events decoder (WHATWG HTML, "event stream interpretation").

Handles LF, CRLF and CR line endings, multi-line `data:`, `event:`, `id:` and `retry:` fields,
comments, a leading BOM, and events split at any byte boundary. Data stays bytes: parsers hand it
straight to orjson, so no decode happens on the streaming path.
"""

from __future__ import annotations

from dataclasses import dataclass

_BOM = b"\xef\xbb\xbf"
DEFAULT_MAX_EVENT_BYTES = 16 * 1024 * 1024


@dataclass(slots=True, frozen=True)
class SSEEvent:
    data: bytes
    event: str = "message"
    id: str | None = None


class SSEDecoder:
    """Feed it chunks as they arrive; it returns the events each chunk completes."""

    __slots__ = (
        "_data",
        "_event",
        "_id",
        "_max_event_bytes",
        "_pending",
        "_skip_lf",
        "_started",
        "overflowed",
        "retry",
    )

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._pending = b""  # an incomplete line
        self._data: list[bytes] = []
        self._event = ""
        self._id: str | None = None
        self._skip_lf = False  # the last chunk ended in CR: a leading LF belongs to it
        self._started = False
        self._max_event_bytes = max_event_bytes
        self.retry: int | None = None
        self.overflowed = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf = self._pending + chunk if self._pending else chunk
        if not self._started:
            if len(buf) < 3 and _BOM.startswith(buf):
                self._pending = buf
                return []
            self._started = True
            if buf.startswith(_BOM):
                buf = buf[3:]
        if b"\r" in buf:
            self._skip_lf = buf.endswith(b"\r")
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._pending = lines.pop()
        if len(self._pending) > self._max_event_bytes:
            self._overflow()
        events: list[SSEEvent] = []
        for line in lines:
            if line:
                self._field(line)
            else:
                event = self._dispatch()
                if event is not None:
                    events.append(event)
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream. Per the spec, an event not closed by a blank line is discarded."""
        self._pending = b""
        self._data.clear()
        self._event = ""
        return []

    def _field(self, line: bytes) -> None:
        if line[0] == 0x3A:  # ":" comment
            return
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
            if len(self._data) > 1 and sum(map(len, self._data)) > self._max_event_bytes:
                self._overflow()
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\x00" not in value:
                self._id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            self.retry = int(value)

    def _dispatch(self) -> SSEEvent | None:
        data = self._data
        event_type = self._event or "message"
        self._event = ""
        if not data:
            return None
        payload = data[0] if len(data) == 1 else b"\n".join(data)
        self._data = []
        return SSEEvent(payload, event_type, self._id)

    def _overflow(self) -> None:
        self.overflowed = True
        self._pending = b""
        self._data = []
        self._event = ""

