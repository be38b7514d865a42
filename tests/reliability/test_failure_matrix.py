"""The failure matrix, one row per test, through the real proxy against a real local upstream.

Every row asserts three things: what the client receives, that exactly one GenAI span is emitted with
the right error.type (or none, for a clean pass-through), and that the proxy is healthy afterwards
(GET /healthz, then a normal streamed call through a healthy route, and the in-flight gauge back at 0).

Rows covered elsewhere (not repeated here): refused connection, timeout before headers, body over the
limit, upstream error status, client disconnect before headers and mid-stream, upstream closing
between chunks (tests/proxy/test_errors.py); SIGTERM drain (tests/e2e/test_otlp_and_shutdown.py).

Each broken upstream sits behind its own route (/bad) next to a healthy one (/ -> the simulator), so
that "healthy afterwards" can be proven through the same proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan

from llmtap_proxy.config import Route, Upstream
from llmtap_proxy.sim import SimServer
from tests.conftest import Captured, RunningProxy, make_captured, proxy_settings, run_proxy
from tests.processes import local_http_server

CHAT = "/v1/chat/completions"
BODY = {"model": "sim-small", "stream": True, "messages": [{"role": "user", "content": "hello there"}]}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def chat_chunk(content: str | None = None, *, role: bool = False, finish: str | None = None) -> bytes:
    delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
    if content is not None:
        delta["content"] = content
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    payload = {"id": "chatcmpl-r", "object": "chat.completion.chunk", "created": 1, "model": "up-model",
               "choices": [choice]}
    return b"data: " + orjson.dumps(payload) + b"\n\n"


# --- upstreams ------------------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def aiohttp_upstream(handler: Handler) -> AsyncIterator[str]:
    """A real aiohttp server answering every path with `handler`; a disconnect cancels the handler."""
    async with local_http_server(
        {"/{tail:.*}": handler}, method="*", handler_cancellation=True, access_log=None
    ) as url:
        yield url


@contextlib.asynccontextmanager
async def raw_upstream(response: bytes) -> AsyncIterator[str]:
    """A socket-level upstream: reads the request head and body, writes `response` verbatim, closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            writer.write(response)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


# --- the proxy with a broken route next to a healthy one -------------------------------------------------

@contextlib.asynccontextmanager
async def proxy_with_bad_route(
    sim: SimServer, bad_upstream: str, captured: Captured, **route_options: float
) -> AsyncIterator[RunningProxy]:
    settings = proxy_settings(sim.url)
    bad = Route(prefix="/bad", upstream=Upstream.parse(bad_upstream, "test"), **route_options)
    settings.routes = sorted([*settings.routes, bad], key=lambda route: len(route.prefix), reverse=True)
    async with run_proxy(settings, captured.telemetry) as proxy:
        yield proxy


async def only_span(captured: Captured, error_type: str | None) -> ReadableSpan:
    """Exactly one GenAI span, with this error.type (None: no error at all)."""
    await captured.wait_for_genai_spans(1)
    await asyncio.sleep(0.1)  # a second span, if the proxy wrongly emitted one, would show up by now
    spans = captured.genai_spans()
    assert len(spans) == 1, [(s.name, dict(s.attributes or {})) for s in spans]
    attributes = spans[0].attributes or {}
    assert attributes.get("error.type") == error_type, dict(attributes)
    assert spans[0].status.status_code.name == ("ERROR" if error_type else "UNSET")
    return spans[0]


def output_text(span: ReadableSpan) -> str:
    """The captured completion text (content capture on): proof of what the parser understood."""
    [message] = orjson.loads(span.attributes["gen_ai.output.messages"])
    return "".join(part.get("content", "") for part in message["parts"] if part["type"] == "text")


def internal_errors(captured: Captured) -> float:
    return sum(point.value for point in captured.metrics().get("llmtap.internal.errors", []))


def active_calls(captured: Captured) -> float:
    return sum(point.value for point in captured.metrics().get("llmtap.requests.active", []))


async def assert_healthy(proxy: RunningProxy, captured: Captured) -> None:
    """Health probe answers, a normal streamed call through the healthy route succeeds, nothing leaks."""
    before = len(captured.genai_spans())
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/healthz") as response:
            assert response.status == 200
        async with session.post(proxy.url + CHAT, json=BODY) as response:
            assert response.status == 200
            body = await response.read()
    assert body.endswith(b"data: [DONE]\n\n")
    spans = await captured.wait_for_genai_spans(before + 1)
    assert len(spans) == before + 1
    assert "error.type" not in (spans[-1].attributes or {})
    # The span can arrive (from the finisher thread) a moment before the proxy's handler has returned and
    # stopped counting the request: give it up to 2 s to get there.
    deadline = time.monotonic() + 2
    while proxy.app.forwarder.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert proxy.app.forwarder.in_flight == 0
    assert active_calls(captured) == 0


async def read_all(response: aiohttp.ClientResponse) -> tuple[bytes, BaseException | None]:
    received = b""
    try:
        async for chunk in response.content.iter_any():
            received += chunk
    except aiohttp.ClientPayloadError as exc:
        return received, exc
    return received, None


# --- connection-level failures ---------------------------------------------------------------------------

async def test_dns_failure_is_502_upstream_unreachable(sim: SimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name that does not resolve. No DNS query may leave this machine, so every name except loopback
    literals fails in a stand-in for socket.getaddrinfo (what the asyncio loop's create_connection calls)."""
    real_getaddrinfo = socket.getaddrinfo
    looked_up: list[str] = []

    def offline_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in ("127.0.0.1", "::1", "localhost"):
            looked_up.append(name)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", offline_getaddrinfo)
    captured = make_captured(capture_content=True)
    async with proxy_with_bad_route(sim, "http://does-not-exist.invalid:80", captured) as proxy:
        async with aiohttp.ClientSession() as session, session.post(proxy.url + "/bad" + CHAT, json=BODY) as response:
            assert response.status == 502
            assert response.headers["content-type"] == "application/json"
            error = (await response.json())["error"]
        span = await only_span(captured, "upstream_unreachable")
        await assert_healthy(proxy, captured)
    assert "does-not-exist.invalid" in looked_up  # the failure came from name resolution
    assert error["type"] == "upstream_unreachable" and "does-not-exist.invalid" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert span.attributes["server.address"] == "does-not-exist.invalid"


@contextlib.contextmanager
def listener_with_full_backlog() -> Any:
    """A loopback port that never completes a TCP handshake: its accept queue is full (listen(0) plus
    connections that are never accepted), so Linux drops further SYNs and connect() hangs. Loopback only;
    nothing is sent to a non-routable address."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
            time.sleep(0.02)
        probe = socket.socket()
        probe.settimeout(0.3)
        try:
            with pytest.raises(TimeoutError):
                probe.connect(("127.0.0.1", port))
        finally:
            probe.close()
        yield f"http://127.0.0.1:{port}"
    finally:
        for filler in fillers:
            filler.close()
        server.close()


async def test_slow_connect_hits_the_routes_connect_timeout(sim: SimServer) -> None:
    captured = make_captured(capture_content=True)
    with listener_with_full_backlog() as url:
        async with proxy_with_bad_route(sim, url, captured, connect_timeout=0.3) as proxy:
            started = time.perf_counter()
            async with aiohttp.ClientSession() as session:
                async with session.post(proxy.url + "/bad" + CHAT, json=BODY) as response:
                    assert response.status == 504
                    error = (await response.json())["error"]
            elapsed = time.perf_counter() - started
            await only_span(captured, "timeout")
            await assert_healthy(proxy, captured)
    assert error["type"] == "upstream_timeout" and "timed out" in error["message"]
    assert 0.25 < elapsed < 2.0, elapsed


async def test_headers_then_stall_aborts_the_client_stream_at_the_read_timeout(sim: SimServer) -> None:
    events: dict[str, float] = {}
    sent = [chat_chunk(role=True), chat_chunk(" one"), chat_chunk(" two")]

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in sent:
            await response.write(chunk)
            await asyncio.sleep(0.01)
        events["stalled"] = time.perf_counter()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            events["cancelled"] = time.perf_counter()
            raise
        return response

    captured = make_captured(capture_content=True)
    async with aiohttp_upstream(stall) as url, proxy_with_bad_route(sim, url, captured, read_timeout=0.3) as proxy:
        async with aiohttp.ClientSession() as session:
            async with session.post(proxy.url + "/bad" + CHAT, json=BODY) as response:
                assert response.status == 200
                received, error = await read_all(response)
        aborted = time.perf_counter()
        span = await only_span(captured, "timeout")
        for _ in range(100):
            if "cancelled" in events:
                break
            await asyncio.sleep(0.01)
        await assert_healthy(proxy, captured)
    assert isinstance(error, aiohttp.ClientPayloadError), "the client must see a truncated stream, not an end"
    assert received == b"".join(sent)
    assert 0.25 < aborted - events["stalled"] < 2.0
    assert "cancelled" in events, "the stalled upstream request was left open"
    assert output_text(span) == " one two"


# --- what the upstream sends -----------------------------------------------------------------------------

async def serve_pieces(pieces: list[bytes], captured: Captured, sim: SimServer) -> tuple[bytes, ReadableSpan]:
    """An upstream that writes these pieces (one write each, a pause between), read through the proxy."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in pieces:
            await response.write(piece)
            await asyncio.sleep(0.005)
        await response.write_eof()
        return response

    async with aiohttp_upstream(handler) as url, proxy_with_bad_route(sim, url, captured) as proxy:
        async with aiohttp.ClientSession() as session, session.post(proxy.url + "/bad" + CHAT, json=BODY) as response:
            assert response.status == 200
            received = await response.read()
        span = await only_span(captured, None)
        await assert_healthy(proxy, captured)
    return received, span


async def test_malformed_sse_frames_pass_through_unchanged(sim: SimServer) -> None:
    pieces = [
        chat_chunk(role=True),
        chat_chunk(" Hello"),
        b"this line has no colon at all\n\n",
        b"event\x00name: \xff\xfe not utf-8\n\n",
        b":comment only\r\n\r\n",
        b"retry: not-a-number\nid: \x00\n\n",
        b"data\n\n",  # a field name without a value
        b"\n\n\n\r\n",  # empty events
        b'data: {"choices":[{"index":0,"delta":{"content":" split',  # one event split across writes ...
        b' across writes"}}]}\r\n\r\n',  # ... and CRLF-framed
        chat_chunk(" world"),
        chat_chunk(finish="stop"),
        b"data: [DONE]\n\n",
    ]
    captured = make_captured(capture_content=True)
    received, span = await serve_pieces(pieces, captured, sim)
    assert received == b"".join(pieces)
    # the parser kept going past the garbage: all the content was seen
    assert output_text(span) == " Hello split across writes world"
    assert span.attributes["gen_ai.request.model"] == "sim-small"
    assert internal_errors(captured) == 0


async def test_invalid_json_in_data_fields_passes_through_unchanged(sim: SimServer) -> None:
    pieces = [
        chat_chunk(role=True),
        chat_chunk(" Hello"),
        b'data: {"choices": [{"delta": {"content": "never closed"\n\n',
        b"data: not json at all\n\n",
        b"data: {\xff\xfe}\n\n",
        b"data: [1, 2, 3]\n\n",
        b"data: null\n\n",
        b'data: "a string"\n\n',
        b'data: {"choices": "not a list"}\n\n',
        b'data: {"choices": [1, {"delta": 5}, {"delta": {"content": 7}}]}\n\n',
        b'data: {"usage": "nope", "model": 12}\n\n',
        chat_chunk(" world"),
        chat_chunk(finish="stop"),
        b"data: [DONE]\n\n",
    ]
    captured = make_captured(capture_content=True)
    received, span = await serve_pieces(pieces, captured, sim)
    assert received == b"".join(pieces)
    assert output_text(span) == " Hello world"
    assert span.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert internal_errors(captured) == 0


@pytest.mark.parametrize(
    ("path", "body", "error_type"),
    [
        (CHAT, BODY, "server_error"),  # OpenAI: data: {"error": {"type": "server_error", ...}}
        ("/v1/messages", {**BODY, "max_tokens": 100}, "overloaded_error"),  # Anthropic: event: error
        ("/v1/responses", {"model": "sim-small", "stream": True, "input": "hi"}, "server_error"),  # Responses
    ],
    ids=["openai-chat", "anthropic-messages", "openai-responses"],
)
async def test_in_stream_error_event_sets_the_providers_error_type(
    sim: SimServer, path: str, body: dict[str, Any], error_type: str
) -> None:
    captured = make_captured(capture_content=True)
    async with run_proxy(proxy_settings(sim.url), captured.telemetry) as proxy:
        async with aiohttp.ClientSession() as session:
            async with session.post(proxy.url + path, json=body, headers={"x-sim-error-event": "2"}) as response:
                assert response.status == 200
                received, broken = await read_all(response)
                request_id = response.headers["x-sim-request-id"]
        span = await only_span(captured, error_type)
        # the client got exactly what the upstream wrote, error event included, as a complete stream
        record = sim.request_record(request_id)
        assert record is not None and record["status"] == "error_event"
        assert broken is None
        if "response_sha256" in record:
            assert hashlib.sha256(received).hexdigest() == record["response_sha256"]
        assert b"error" in received.rsplit(b"\n\n", 2)[-2]
        assert len(output_text(span).split()) == 2  # the two content chunks before the error
        await assert_healthy(proxy, captured)


def _chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


@pytest.mark.parametrize("framing", ["chunked-cut-inside-a-chunk", "content-length-short"])
async def test_truncated_response_body_truncates_the_client_stream(sim: SimServer, framing: str) -> None:
    first = chat_chunk(role=True) + chat_chunk(" one")
    if framing == "chunked-cut-inside-a-chunk":
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        response = head + _chunked(first) + b"200\r\n" + chat_chunk(" two")[:20]  # promises 512 bytes, sends 20
    else:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 5000\r\n\r\n"
        response = head + first
    captured = make_captured(capture_content=True)
    async with raw_upstream(response) as url, proxy_with_bad_route(sim, url, captured) as proxy:
        async with aiohttp.ClientSession() as session, session.post(proxy.url + "/bad" + CHAT, json=BODY) as reply:
            assert reply.status == 200
            received, error = await read_all(reply)
        span = await only_span(captured, "upstream_closed")
        await assert_healthy(proxy, captured)
    assert isinstance(error, aiohttp.ClientPayloadError), "a cut body must reach the client as cut, not complete"
    assert received.startswith(first) and b"[DONE]" not in received
    assert output_text(span) == " one"


# --- what the client sends ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("content_type", "payload"),
    [
        ("application/json", b'{"model": "sim-small", "stream": true, "messages": ['),
        ("application/json", b'["model", "sim-small"]'),
        ("application/json", bytes(range(256)) * 4),
        ("application/x-www-form-urlencoded", b"model=sim-small&stream=true&messages=hi"),
        ("text/plain; charset=utf-16", '{"model": "sim-small"}'.encode("utf-16")),
    ],
    ids=["invalid-json", "json-not-an-object", "binary", "form-encoded", "utf-16-text"],
)
async def test_unparseable_request_body_is_forwarded_untouched(
    sim: SimServer, content_type: str, payload: bytes
) -> None:
    seen: list[tuple[bytes, str | None]] = []
    stream = [chat_chunk(role=True), chat_chunk(" ok"), chat_chunk(finish="stop"), b"data: [DONE]\n\n"]

    async def record(request: web.Request) -> web.StreamResponse:
        seen.append((await request.read(), request.headers.get("Content-Type")))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in stream:
            await response.write(chunk)
        await response.write_eof()
        return response

    captured = make_captured(capture_content=True)
    async with aiohttp_upstream(record) as url, proxy_with_bad_route(sim, url, captured) as proxy:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                proxy.url + "/bad" + CHAT, data=payload, headers={"Content-Type": content_type}
            ) as response:
                assert response.status == 200
                received = await response.read()
        span = await only_span(captured, None)
        await assert_healthy(proxy, captured)
    assert seen == [(payload, content_type)]  # byte for byte, content type unchanged
    assert received == b"".join(stream)
    attributes = span.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert "gen_ai.request.model" not in attributes  # only the GenAI detail of the request is lost
    assert attributes["gen_ai.response.model"] == "up-model"  # the response side is still read
    assert output_text(span) == " ok"
