"""Incremental decoder for the AWS event-stream framing (`application/vnd.amazon.eventstream`).

Bedrock's ConverseStream and InvokeModelWithResponseStream answer in this binary framing. One message:

    total_length u32 | headers_length u32 | prelude_crc u32 | headers | payload | message_crc u32

all big-endian; prelude_crc is the CRC-32 of the first 8 bytes, message_crc the CRC-32 of everything
before it. A header is name_len u8, name, type u8, value (type 7 = UTF-8 string with a u16 length).
botocore's `botocore.eventstream.EventStreamBuffer` is the reference; this decoder checks the same
CRCs and limits, is linear in the bytes fed (botocore's buffer re-concatenates), and never raises.

Events: an event message gives `SSEEvent(payload, event=<:event-type>)`; an exception message gives
`event=<:exception-type>` (e.g. "throttlingException"), and a protocol error message gives
`event=<:error-code>` with the `:error-message` text as data. On a prelude CRC mismatch the stream
can't be re-synchronised, so decoding stops (`corrupted`); a message whose own CRC fails, or that is
over the limits, is skipped (`overflowed`) and decoding goes on at the next message.
"""

from __future__ import annotations

import struct
import zlib

from llmtap.wire.sse import SSEEvent

PRELUDE_LENGTH = 12
MIN_MESSAGE_LENGTH = PRELUDE_LENGTH + 4
MAX_HEADERS_LENGTH = 128 * 1024  # botocore's limits
MAX_PAYLOAD_LENGTH = 24 * 1024 * 1024

_PRELUDE = struct.Struct("!III")
_U16 = struct.Struct("!H")
# header value type -> fixed size in bytes (6 and 7 carry a u16 length instead)
_FIXED_SIZES = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}
_TYPE_BYTES, _TYPE_STRING = 6, 7


class AWSEventStreamDecoder:
    """Feed it chunks as they arrive; it returns the messages each chunk completes, as events."""

    __slots__ = ("_buf", "_max_payload", "_skip", "corrupted", "overflowed")

    def __init__(self, max_payload_bytes: int = MAX_PAYLOAD_LENGTH) -> None:
        self._buf = bytearray()
        self._skip = 0  # bytes of an oversized message still to drop
        self._max_payload = max_payload_bytes
        self.overflowed = False
        self.corrupted = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not chunk or self.corrupted:
            return []
        if self._skip:
            if len(chunk) <= self._skip:
                self._skip -= len(chunk)
                return []
            chunk = chunk[self._skip:]
            self._skip = 0
        buf = self._buf
        buf += chunk
        events: list[SSEEvent] = []
        pos = 0
        size = len(buf)
        while size - pos >= PRELUDE_LENGTH:
            total, headers_len, prelude_crc = _PRELUDE.unpack_from(buf, pos)
            if zlib.crc32(buf[pos:pos + 8]) != prelude_crc:
                self.corrupted = True  # lengths can't be trusted: no way to find the next message
                buf.clear()
                return events
            payload_len = total - headers_len - MIN_MESSAGE_LENGTH
            if payload_len < 0 or headers_len > MAX_HEADERS_LENGTH or payload_len > self._max_payload:
                self.overflowed = True
                if total < MIN_MESSAGE_LENGTH:  # the CRC matched but the lengths are nonsense
                    self.corrupted = True
                    buf.clear()
                    return events
                if size - pos >= total:
                    pos += total
                    continue
                self._skip = total - (size - pos)
                pos = size
                break
            if size - pos < total:
                break
            end = pos + total
            message_crc = int.from_bytes(buf[end - 4:end], "big")
            if zlib.crc32(buf[pos + 8:end - 4], prelude_crc) != message_crc:
                self.overflowed = True
            else:
                event = _message(buf, pos + PRELUDE_LENGTH, headers_len, end - 4)
                if event is not None:
                    events.append(event)
                else:
                    self.overflowed = True
            pos = end
        if pos:
            del buf[:pos]
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: an incomplete message is dropped."""
        self._buf.clear()
        self._skip = 0
        return []


def parse_headers(data: bytes) -> dict[str, object] | None:
    """The headers of one message, or None when they are malformed. Strings are decoded; other
    types are kept as raw bytes, except booleans."""
    headers: dict[str, object] = {}
    pos, size = 0, len(data)
    while pos < size:
        name_len = data[pos]
        pos += 1
        if pos + name_len + 1 > size:
            return None
        name = data[pos:pos + name_len].decode("utf-8", "replace")
        pos += name_len
        value_type = data[pos]
        pos += 1
        value: object
        if value_type in (_TYPE_BYTES, _TYPE_STRING):
            if pos + 2 > size:
                return None
            (length,) = _U16.unpack_from(data, pos)
            pos += 2
            if pos + length > size:
                return None
            raw = data[pos:pos + length]
            value = raw.decode("utf-8", "replace") if value_type == _TYPE_STRING else raw
            pos += length
        else:
            width = _FIXED_SIZES.get(value_type)
            if width is None or pos + width > size:
                return None
            value = value_type == 0 if width == 0 else data[pos:pos + width]
            pos += width
        headers[name] = value
    return headers


def _message(buf: bytearray, headers_start: int, headers_len: int, payload_end: int) -> SSEEvent | None:
    headers_end = headers_start + headers_len
    headers = parse_headers(bytes(buf[headers_start:headers_end]))
    if headers is None:
        return None
    payload = bytes(buf[headers_end:payload_end])
    message_type = headers.get(":message-type", "event")
    if message_type == "exception":
        name = headers.get(":exception-type")
    elif message_type == "error":
        name = headers.get(":error-code")
        text = headers.get(":error-message")
        if not payload and isinstance(text, str):
            payload = text.encode("utf-8")
    else:
        name = headers.get(":event-type")
    return SSEEvent(payload, name if isinstance(name, str) and name else str(message_type))


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message with string headers (for simulators and tests)."""
    encoded = bytearray()
    for name, value in headers.items():
        raw_name, raw_value = name.encode("utf-8"), value.encode("utf-8")
        encoded += bytes((len(raw_name),)) + raw_name + bytes((_TYPE_STRING,)) + _U16.pack(len(raw_value)) + raw_value
    total = PRELUDE_LENGTH + len(encoded) + len(payload) + 4
    prelude = struct.pack("!II", total, len(encoded))
    prelude += struct.pack("!I", zlib.crc32(prelude))
    message = prelude + bytes(encoded) + payload
    return message + struct.pack("!I", zlib.crc32(message))


__all__ = ["AWSEventStreamDecoder", "encode_message", "parse_headers"]
