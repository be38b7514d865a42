"""A lean HTTP/1.1 client for the upstream leg: pooled keep-alive connections, one write per request,
httptools (llhttp) parsing, and a body read that hands over each received block as it is.

It does what a byte-for-byte proxy needs and nothing more: no redirects, cookies, decompression,
proxies or default headers. aiohttp did the same job at about twice the CPU per request and per chunk
(see docs/benchmarks.md), which on one core decides how many streams the proxy can start at once.
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
from typing import Any

import httptools

_HIGH_WATER = 1024 * 1024  # buffered body bytes at which the upstream socket stops being read
_LOW_WATER = 256 * 1024
_MAX_IDLE_PER_ORIGIN = 256


class UpstreamError(Exception):
    """The upstream broke the exchange (closed early, or sent something that is not HTTP)."""


class UpstreamDisconnected(UpstreamError):
    """The connection closed before a complete response. `retryable`: a reused keep-alive connection
    that the upstream closed before sending a single byte (the request can go again on a new one)."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class UpstreamProtocolError(UpstreamError):
    pass


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # RFC 9110 field values: no controls but HTAB
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _forbidden(text: str) -> bool:
    return _CONTROL.search(text) is not None


class _Connection(asyncio.Protocol):
    """One upstream connection: parses responses and buffers body blocks until they are read."""

    def __init__(self, origin: tuple[str, str, int]) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False
        self.timer: asyncio.TimerHandle | None = None
        self.deadline = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.received = False
        self.informational = False
        self.until_eof = False  # neither Content-Length nor chunked: the body ends when the connection does
        self.head = False
        self.error: BaseException | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamProtocolError("upstream switched protocols, which the proxy does not relay"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"malformed upstream response: {exc}"))

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_timer()
        if self.until_eof and self.headers_done and exc is None:
            self.complete = True  # llhttp ends such a body only when told about the end of the stream
        if not self.complete and self.error is None:
            retryable = self.reused and not self.received
            self.error = UpstreamDisconnected("upstream closed the connection before the response ended", retryable)
        self._wake()

    # --- httptools callbacks ---
    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # 100 Continue and other interim responses: wait for the real one
            self.informational = True
            self.raw_headers = []
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True
        if status not in (204, 304) and not self.head:
            names = {name.lower() for name, _ in self.raw_headers}
            if b"content-length" not in names and b"transfer-encoding" not in names:
                self.until_eof = True
                self.keep_alive = False
        if self.head:  # a HEAD response has no body, whatever Content-Length says; llhttp cannot know
            self.complete = True
            self.keep_alive = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        self.complete = True
        self._wake()

    # --- helpers ---
    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self.close()
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._stop_timer()
        if self.transport is not None:
            self.transport.close()

    async def wait(self, timeout: float | None) -> None:
        """Until something new arrives (or the connection ends). TimeoutError after `timeout` seconds.

        One timer per connection, re-armed only when it fires, instead of a timer per wait: a stream
        waits once per chunk, and the deadline nearly always moves on before it is reached."""
        loop = asyncio.get_running_loop()
        waiter = self.waiter = loop.create_future()
        if timeout:
            self.deadline = loop.time() + timeout
            if self.timer is None:
                self.timer = loop.call_at(self.deadline, self._on_deadline)
        try:
            await waiter
        finally:
            self.waiter = None

    def _on_deadline(self) -> None:
        self.timer = None
        waiter = self.waiter
        if waiter is None or waiter.done():
            return  # nobody is waiting: the next wait arms it again
        loop = asyncio.get_running_loop()
        if loop.time() >= self.deadline:
            waiter.set_exception(TimeoutError())
        else:
            self.timer = loop.call_at(self.deadline, self._on_deadline)

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def take(self) -> bytes:
        """Everything received and not yet read, as one block."""
        chunks = self.chunks
        if len(chunks) == 1:
            chunk = chunks.popleft()
        else:
            chunk = b"".join(chunks)
            chunks.clear()
        self.buffered -= len(chunk)
        if self.paused and self.buffered < _LOW_WATER and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunk


class UpstreamResponse:
    """Status and headers of an upstream response; the body is read block by block with `read()`."""

    __slots__ = ("_conn", "_pool", "_read_timeout", "headers", "raw_headers", "status")

    def __init__(self, pool: Http1Pool, conn: _Connection, read_timeout: float | None) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self._read_timeout = read_timeout
        self.status = conn.status
        self.raw_headers = conn.raw_headers
        # lower-cased names; a repeated field keeps its first value (only Content-Type and
        # Content-Encoding are looked up here; the client gets raw_headers)
        headers: dict[str, str] = {}
        for name, value in conn.raw_headers:
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        self.headers = headers

    async def read(self) -> bytes:
        """The next block of body bytes as received (chunked framing removed); b"" at the end."""
        conn = self._conn
        if conn is None:
            return b""
        while True:
            if conn.chunks:
                return conn.take()
            if conn.complete:
                return b""
            if conn.error is not None:
                raise conn.error
            try:
                await conn.wait(self._read_timeout)
            except BaseException:
                self._discard()
                raise

    def release(self) -> None:
        """Done with this response: a completely read keep-alive connection goes back to the pool."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        if conn.complete and conn.keep_alive and not conn.closed and not conn.chunks and conn.error is None:
            self._pool._put_back(conn)
        else:
            conn.close()

    def _discard(self) -> None:
        conn = self._conn
        self._conn = None
        if conn is not None:
            conn.close()


class Http1Pool:
    """Keep-alive connections per origin (scheme, host, port), most recently used first."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self.closed = False

    async def request(
        self,
        scheme: str,
        host: str,
        port: int,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes,
        *,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        on_send: Any = None,
    ) -> UpstreamResponse:
        """Send one request and wait for its response headers. `on_send()` is called just before the
        request is written. Raises ValueError for header text that cannot be sent, TimeoutError,
        OSError (connect), UpstreamError."""
        head = _request_head(method, target, host, port, scheme, headers, body)
        origin = (scheme, host, port)
        conn = self._idle_connection(origin)
        if conn is None:
            conn = await self._connect(origin, connect_timeout)
        conn.head = method == "HEAD"
        if on_send is not None:
            on_send()
        assert conn.transport is not None
        conn.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            conn.transport.write(body)
        try:
            while not conn.headers_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait(read_timeout)
        except BaseException:
            conn.close()
            raise
        return UpstreamResponse(self, conn, read_timeout)

    def _idle_connection(self, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                conn._reset()
                conn.reused = True
                return conn
        return None

    async def _connect(self, origin: tuple[str, str, int], timeout: float | None) -> _Connection:
        scheme, host, port = origin
        context = self._ssl_context() if scheme == "https" else None
        loop = asyncio.get_running_loop()
        connect = loop.create_connection(
            lambda: _Connection(origin), host, port, ssl=context, server_hostname=host if context else None
        )
        _transport, conn = await asyncio.wait_for(connect, timeout) if timeout else await connect
        return conn

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _put_back(self, conn: _Connection) -> None:
        if self.closed:
            conn.close()
            return
        idle = self._idle.setdefault(conn.origin, [])
        if len(idle) >= _MAX_IDLE_PER_ORIGIN:
            conn.close()
            return
        conn._stop_timer()
        conn.parser = httptools.HttpResponseParser(conn)
        idle.append(conn)

    def close(self) -> None:
        self.closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def _request_head(
    method: str, target: str, host: str, port: int, scheme: str, headers: dict[str, str], body: bytes
) -> bytes:
    if _TOKEN.fullmatch(method) is None or _forbidden(target) or " " in target:
        raise ValueError("request line contains forbidden characters")
    default_port = 443 if scheme == "https" else 80
    authority = f"[{host}]" if ":" in host else host
    host_field = f"Host: {authority}" if port == default_port else f"Host: {authority}:{port}"
    lines = [f"{method} {target} HTTP/1.1", host_field]
    for name, value in headers.items():
        if _TOKEN.fullmatch(name) is None or _forbidden(value):
            raise ValueError("header contains forbidden characters")
        if name == "expect":
            continue  # the whole body is here already: no 100-continue round trip
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8")
