"""Framing only: bytes in, events out. Knows nothing of providers or OpenTelemetry.

Every decoder has `feed(chunk) -> list[SSEEvent]` and `close() -> list[SSEEvent]`; SSEEvent is the
common event type (`data` bytes, an `event` name), whatever the framing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from llmtap.wire.aws_eventstream import AWSEventStreamDecoder
from llmtap.wire.json_array import JSONArrayDecoder
from llmtap.wire.ndjson import NDJSONDecoder
from llmtap.wire.sse import SSEDecoder, SSEEvent


class StreamDecoder(Protocol):
    def feed(self, chunk: bytes) -> list[SSEEvent]: ...

    def close(self) -> list[SSEEvent]: ...


# Stream format name (what `ProviderAPI.stream_format` returns) -> decoder factory.
DECODERS: dict[str, Callable[[], StreamDecoder]] = {
    "sse": SSEDecoder,
    "ndjson": NDJSONDecoder,  # Ollama
    "json-array": JSONArrayDecoder,  # Gemini streamGenerateContent without ?alt=sse
    "aws-eventstream": AWSEventStreamDecoder,  # Bedrock ConverseStream, InvokeModelWithResponseStream
}


def decoder_for(stream_format: str) -> StreamDecoder | None:
    factory = DECODERS.get(stream_format)
    return factory() if factory is not None else None


__all__ = [
    "DECODERS",
    "AWSEventStreamDecoder",
    "JSONArrayDecoder",
    "NDJSONDecoder",
    "SSEDecoder",
    "SSEEvent",
    "StreamDecoder",
    "decoder_for",
]
