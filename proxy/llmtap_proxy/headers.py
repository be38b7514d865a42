"""Header handling for a transparent proxy (RFC 9110 section 7.6.1: hop-by-hop fields)."""

from __future__ import annotations

from collections.abc import Iterable

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
AUTH_HEADER = b"x-llmtap-key"  # the proxy's own inbound key: checked here, never forwarded
# Set by the HTTP client/server for the new hop rather than copied.
_REQUEST_DROP = HOP_BY_HOP | {b"host", b"content-length", AUTH_HEADER}
_RESPONSE_DROP = HOP_BY_HOP


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


def upstream_request_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Client headers to send upstream: everything but hop-by-hop fields, Authorization included.

    Names are lower-cased (HTTP field names are case-insensitive). Repeated fields are joined with
    ", " as RFC 9110 allows, except that repeated Cookie values are joined with "; ".
    """
    drop = _REQUEST_DROP | _connection_tokens(raw)
    out: dict[str, str] = {}
    for name, value in raw:
        key = name.lower()
        if key in drop:
            continue
        text_key = key.decode("latin-1")
        try:  # the HTTP client re-encodes values as UTF-8: decode them the same way when they are
            text_value = value.decode("utf-8")
        except UnicodeDecodeError:
            text_value = value.decode("latin-1")
        if text_key in out:
            out[text_key] += ("; " if key == b"cookie" else ", ") + text_value
        else:
            out[text_key] = text_value
    return out


def client_response_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Upstream response headers to return to the client, minus hop-by-hop fields.

    Content-Length, Date and Server pass through as the upstream sent them. A body cut short
    upstream is cut short to the client too (the connection is aborted), never completed.
    """
    raw = list(raw)
    drop = _RESPONSE_DROP | _connection_tokens(raw)
    return [(name, value) for name, value in raw if name.lower() not in drop]
