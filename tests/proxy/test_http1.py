"""The proxy's own HTTP/1.1 upstream client, against a scripted raw-socket server on 127.0.0.1.

The forwarding, failure-matrix and hostile-input suites drive it through the proxy; these cover the
HTTP corners they do not reach: interim responses, HEAD, bodies that end with the connection,
keep-alive reuse, stale-connection retry signalling, back-pressure and header validation.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from llmtap_proxy.http1 import Http1Pool, UpstreamDisconnected, UpstreamResponse


class RawServer:
    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0


@asynccontextmanager
async def raw_server(handler: Callable[[RawServer, asyncio.StreamReader, asyncio.StreamWriter], object]
                     ) -> AsyncIterator[RawServer]:
    state = RawServer()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        try:
            await handler(state, reader, writer)  # type: ignore[misc]
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()


async def read_request(state: RawServer, reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    state.requests.append(head + body)
    return head


def replying(raw: bytes) -> Callable[[RawServer, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A handler that reads one request, writes `raw` and keeps the connection until the client closes it."""

    async def handler(state: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(state, reader)
        writer.write(raw)
        await writer.drain()
        await reader.read()

    return handler


async def read_all(response: UpstreamResponse) -> bytes:
    parts = []
    while chunk := await response.read():
        parts.append(chunk)
    response.release()
    return b"".join(parts)


async def test_one_write_request_keep_alive_reuse_and_chunked_body() -> None:
    async def handler(state: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(state, reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            await writer.drain()

    async with raw_server(handler) as server:
        pool = Http1Pool()
        for _ in range(3):
            response = await pool.request("http", "127.0.0.1", server.port, "POST", "/v1/x?a=1",
                                          {"authorization": "Bearer k"}, b'{"a":1}')
            assert response.status == 200 and response.headers["content-type"] == "text/event-stream"
            assert await read_all(response) == b"hello world"
        pool.close()
    assert server.connections == 1, "keep-alive connection was not reused"
    first = server.requests[0]
    assert first.startswith(b"POST /v1/x?a=1 HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nauthorization: Bearer k\r\n" in first and b"\r\nContent-Length: 7\r\n" in first
    assert first.endswith(b'\r\n\r\n{"a":1}')


async def test_interim_100_continue_is_skipped_and_expect_is_not_sent() -> None:
    reply = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"
    async with raw_server(replying(reply)) as server:
        pool = Http1Pool()
        response = await pool.request("http", "127.0.0.1", server.port, "POST", "/", {"expect": "100-continue"}, b"x")
        assert response.status == 201 and await read_all(response) == b"ok"
        pool.close()
    assert b"expect" not in server.requests[0].lower()


async def test_head_response_has_no_body_whatever_its_length_says() -> None:
    async with raw_server(replying(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")) as server:
        pool = Http1Pool()
        response = await pool.request("http", "127.0.0.1", server.port, "HEAD", "/", {}, b"", read_timeout=2)
        assert response.status == 200 and await asyncio.wait_for(read_all(response), 2) == b""
        pool.close()


async def test_body_without_length_ends_with_the_connection() -> None:
    async def handler(state: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(state, reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\npart one, ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"part two")
        await writer.drain()

    async with raw_server(handler) as server:
        pool = Http1Pool()
        response = await pool.request("http", "127.0.0.1", server.port, "GET", "/", {}, b"", read_timeout=2)
        assert await read_all(response) == b"part one, part two"
        pool.close()


async def test_truncated_chunked_body_raises_and_a_stale_reused_connection_is_retryable() -> None:
    async def handler(state: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_request(state, reader)
        if b"/cut" in head:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel")
            await writer.drain()
            return  # closes mid-chunk
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        # keep-alive promised, then the server closes the idle connection (llama.cpp does this)

    async with raw_server(handler) as server:
        pool = Http1Pool()
        response = await pool.request("http", "127.0.0.1", server.port, "GET", "/cut", {}, b"", read_timeout=2)
        with pytest.raises(UpstreamDisconnected) as cut:
            await read_all(response)
        assert not cut.value.retryable
        response = await pool.request("http", "127.0.0.1", server.port, "GET", "/", {}, b"")
        assert await read_all(response) == b"ok"
        await asyncio.sleep(0.05)  # the server's close has arrived: the pooled connection is known dead
        response = await pool.request("http", "127.0.0.1", server.port, "GET", "/", {}, b"")
        assert await read_all(response) == b"ok"
        pool.close()
    assert server.connections == 3


async def test_read_timeout_and_refused_connection() -> None:
    async def handler(state: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(state, reader)
        await asyncio.sleep(5)

    async with raw_server(handler) as server:
        pool = Http1Pool()
        with pytest.raises(TimeoutError):
            await pool.request("http", "127.0.0.1", server.port, "GET", "/", {}, b"", read_timeout=0.2)
        port = server.port
    with pytest.raises(OSError):
        await pool.request("http", "127.0.0.1", port, "GET", "/", {}, b"", connect_timeout=2)
    pool.close()


@pytest.mark.parametrize("headers", [{"x-a": "v\r\nInjected: yes"}, {"x-a": "v\x01"}, {"bad name": "v"}, {"": "v"}])
async def test_header_text_that_cannot_be_sent_is_refused_before_connecting(headers: dict[str, str]) -> None:
    pool = Http1Pool()
    with pytest.raises(ValueError):
        await pool.request("http", "127.0.0.1", 9, "GET", "/", headers, b"")  # port 9: never reached


async def test_a_slow_reader_pauses_the_upstream_socket_and_gets_every_byte() -> None:
    block = b"x" * 65536
    total = 64 * len(block)  # 4 MiB, past the 1 MiB high-water mark

    async def handler(state: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(state, reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total)
        for _ in range(64):
            writer.write(block)
            await writer.drain()

    async with raw_server(handler) as server:
        pool = Http1Pool()
        response = await pool.request("http", "127.0.0.1", server.port, "GET", "/", {}, b"", read_timeout=5)
        await asyncio.sleep(0.3)  # let the upstream fill our buffer while nobody reads
        conn = response._conn
        assert conn is not None and conn.paused and conn.buffered <= 2 * 1024 * 1024
        assert len(await read_all(response)) == total
        pool.close()
