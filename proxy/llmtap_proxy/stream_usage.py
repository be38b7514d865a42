"""Opt-in: make OpenAI-style streams report usage even when the client did not ask for it.

The request gets `stream_options.include_usage = true`; the usage-only event that this adds to the
stream (`"choices": []` with a `usage` object) is removed from what the client receives, so the
client sees the stream it asked for, while the proxy reads the provider's own token counts. The
upstream also adds `"usage": null` to the other chunks; clients ignore it, and it is documented.
"""

from __future__ import annotations

from typing import Any

import orjson

_STREAMING_PATH_SUFFIXES = ("/chat/completions", "/completions")
_EVENT_ENDS = (b"\n\n", b"\r\n\r\n")


def with_stream_usage(path: str, body: bytes) -> bytes | None:
    """The body with include_usage set, or None when nothing needs to change."""
    if not path.endswith(_STREAMING_PATH_SUFFIXES):
        return None
    try:
        request: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(request, dict) or request.get("stream") is not True:
        return None
    options = request.get("stream_options")
    if options is None:
        options = request["stream_options"] = {}
    elif not isinstance(options, dict):
        return None
    if options.get("include_usage") is not None:
        return None  # the client decided: leave it alone
    options["include_usage"] = True
    return orjson.dumps(request)


def _is_usage_only(event: bytes) -> bool:
    if b'"usage"' not in event:
        return False
    for line in event.splitlines():
        if line.startswith(b"data:"):
            try:
                chunk = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                return False
            return (
                isinstance(chunk, dict) and chunk.get("choices") == [] and isinstance(chunk.get("usage"), dict)
            )
    return False


class UsageEventRemover:
    """Removes the one usage-only event from an SSE byte stream; every other byte passes unchanged.

    Until that event has gone by, bytes are released at event boundaries (a partial event waits for
    its end); after it, chunks pass straight through.
    """

    __slots__ = ("_done", "_pending")

    def __init__(self) -> None:
        self._pending = b""
        self._done = False

    def feed(self, chunk: bytes) -> bytes:
        if self._done:
            return chunk
        data = self._pending + chunk if self._pending else chunk
        kept: list[bytes] = []
        start = 0
        while not self._done:
            end = -1
            for marker in _EVENT_ENDS:
                found = data.find(marker, start)
                if found >= 0 and (end < 0 or found + len(marker) < end):
                    end = found + len(marker)
            if end < 0:
                break
            event = data[start:end]
            if _is_usage_only(event):
                self._done = True
            else:
                kept.append(event)
            start = end
        rest = data[start:]
        if self._done:
            kept.append(rest)
            self._pending = b""
        else:
            self._pending = rest
        return b"".join(kept)

    def flush(self) -> bytes:
        pending, self._pending = self._pending, b""
        return pending
