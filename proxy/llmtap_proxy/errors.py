"""The proxy's own errors, returned as JSON in the OpenAI error shape."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from llmtap import semconv


class UpstreamStreamAborted(Exception):
    """The upstream stream broke after the response started: the client connection is aborted so
    that the client sees a truncated body, never a falsely complete one."""


def error_body(message: str, error_type: str, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": error_type, "param": None, "code": code}})


async def send_error(
    send: Callable[[dict[str, Any]], Awaitable[None]], status: int, message: str, error_type: str,
    code: str | None = None,
) -> None:
    body = error_body(message, error_type, code)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-llmtap-error", error_type.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


# (status, error.type on the span, OpenAI-shaped "type")
UNREACHABLE = (502, semconv.ERROR_UPSTREAM_UNREACHABLE, "upstream_unreachable")
TIMEOUT = (504, semconv.ERROR_TIMEOUT, "upstream_timeout")
TOO_LARGE = (413, semconv.ERROR_REQUEST_TOO_LARGE, "request_too_large")
