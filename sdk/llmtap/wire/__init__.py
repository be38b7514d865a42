"""Framing only: bytes in, events out. Knows nothing of providers or OpenTelemetry."""

from llmtap.wire.sse import SSEDecoder, SSEEvent

__all__ = ["SSEDecoder", "SSEEvent"]
