"""Framing only: bytes in, events out. Knows nothing of providers or OpenTelemetry.

Every decoder has `feed(chunk) -> list[SSEEvent]` and `close() -> list[SSEEvent]`; SSEEvent is the
common event type (`data` bytes, an `event` name), whatever the framing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from llmtap.wire.sse import SSEDecoder, SSEEvent


class StreamDecoder(Protocol):
    def feed(self, chunk: bytes) -> list[SSEEvent]: ...

    def close(self) -> list[SSEEvent]: ...


DECODERS: dict[str, Callable[[], StreamDecoder]] = {"sse": SSEDecoder}


def decoder_for(stream_format: str) -> StreamDecoder | None:
    factory = DECODERS.get(stream_format)
    return factory() if factory is not None else None


__all__ = ["DECODERS", "SSEDecoder", "SSEEvent", "StreamDecoder", "decoder_for"]
