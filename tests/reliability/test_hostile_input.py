"""Hostile clients: header injection, SSRF attempts and inbound auth, sent as raw bytes on a socket.

The upstreams here are socket-level recorders, so the assertions see exactly the bytes that reached
them, including anything an HTTP library would have refused to parse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import uvicorn

from llmtap.telemetry import Telemetry
from llmtap_proxy.app import ProxyApp
from llmtap_proxy.config import Route, Settings, Upstream
from llmtap_proxy.server import uvicorn_config
from tests.conftest import Captured, make_captured, proxy_settings
from tests.processes import free_port

CHAT = "/v1/chat/completions"
CHAT_BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
REPLY = orjson.dumps({"id": "c1", "object": "chat.completion", "model": "m", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]})


@dataclass
class Recorder:
    """A socket-level upstream: records each raw request head and body, answers 200 with a chat reply."""

    name: str
    url: str = ""
    port: int = 0
    connections: int = 0
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)

    def header_lines(self) -> list[bytes]:
        return [line for head, _ in self.requests for line in head.split(b"\r\n")[1:]]


@contextlib.asynccontextmanager
async def recorder(name: str) -> AsyncIterator[Recorder]:
    rec = Recorder(name)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rec.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                rec.requests.append((head, body))
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-upstream: " + name.encode()
                    + b"\r\ncontent-length: " + str(len(REPLY)).encode() + b"\r\n\r\n" + REPLY
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    rec.port = server.sockets[0].getsockname()[1]
    rec.url = f"http://127.0.0.1:{rec.port}"
    try:
        yield rec
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class Proxy:
    app: ProxyApp
    port: int


@contextlib.asynccontextmanager
async def run_proxy_with(settings: Settings, telemetry: Telemetry, **uvicorn_options: Any) -> AsyncIterator[Proxy]:
    """The real proxy under uvicorn in its own thread, with uvicorn options (e.g. the HTTP parser) chosen."""
    app = ProxyApp(settings, telemetry)
    server = uvicorn.Server(uvicorn_config(app, settings, port=0, log_level="warning", **uvicorn_options))
    thread = threading.Thread(target=asyncio.run, args=(server.serve(),), name="proxy", daemon=True)
    thread.start()
    try:
        for _ in range(1000):
            if server.started or not thread.is_alive():
                break
            await asyncio.sleep(0.005)
        assert server.started, "the proxy did not start"
        yield Proxy(app, server.servers[0].sockets[0].getsockname()[1])
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 30)


async def exchange(port: int, raw: bytes) -> bytes:
    """Send raw bytes, return everything the proxy answers (the requests say Connection: close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:80]
    return int(response[9:12])


def request(method: bytes, target: bytes | str, headers: list[bytes], body: bytes = b"") -> bytes:
    if isinstance(target, str):
        target = target.encode()
    lines = [method + b" " + target + b" HTTP/1.1", *headers]
    if body:
        lines.append(b"Content-Type: application/json")
    lines += [b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def active_calls(captured: Captured) -> float:
    return sum(point.value for point in captured.metrics().get("llmtap.requests.active", []))


async def assert_healthy(proxy: Proxy, captured: Captured, upstream: Recorder) -> None:
    assert status_of(await exchange(proxy.port, request(b"GET", b"/healthz", [b"Host: x"]))) == 200
    before = len(upstream.requests)
    reply = await exchange(proxy.port, request(b"POST", CHAT, [b"Host: x"], CHAT_BODY))
    assert status_of(reply) == 200 and reply.endswith(REPLY)
    assert len(upstream.requests) == before + 1
    await asyncio.sleep(0.05)
    assert proxy.app.forwarder.in_flight == 0
    assert active_calls(captured) == 0, "a call was never finished (its span was lost)"


# --- header injection ---------------------------------------------------------------------------------

# A header whose value tries to smuggle a second field "Inj-<case>: yes" (or breaks the grammar otherwise).
# Most must be refused. A lone LF and obs-fold are the two forms RFC 9112 lets a recipient accept
# (section 2.2: LF as a line terminator; section 5.2: replace obs-fold with SP), so for those forwarding
# is also fine, as long as what goes upstream is well-formed.
MUST_REFUSE = {
    "bare-CR": b"X-Note: a\rInj-bare-CR: yes",
    "CR-CR-LF": b"X-Note: a\r\r\nInj-CR-CR-LF: yes",
    "NUL": b"X-Note: a\x00Inj-NUL: yes",
    "SOH": b"X-Note: a\x01Inj-SOH: yes",
    "VT": b"X-Note: a\x0bInj-VT: yes",
    "FF": b"X-Note: a\x0cInj-FF: yes",
    "ESC": b"X-Note: a\x1bInj-ESC: yes",
    "DEL": b"X-Note: a\x7fInj-DEL: yes",
    "name-with-space": b"X Note: a",
    "name-with-NUL": b"X-No\x00te: a",
    "empty-name": b": a",
}
MAY_FORWARD = {
    "bare-LF": b"X-Note: a\nInj-bare-LF: yes",
    "obs-fold": b"X-Note: a\r\n Inj-obs-fold: yes",
    "obs-fold-tab": b"X-Note: a\r\n\tInj-obs-fold-tab: yes",
}




@pytest.mark.parametrize("http", ["httptools", "h11"])
async def test_crlf_and_control_characters_never_split_headers_upstream(http: str) -> None:
    """Malicious header bytes are refused with a 4xx and never reach the upstream as a separate field;
    what is forwarded is well-formed; and no call is left half-open (every call the proxy opened ends
    in exactly one span, and the in-flight gauge returns to 0)."""
    captured = make_captured()
    outcomes: dict[str, tuple[int, int]] = {}
    new_spans: list[Any] = []
    async with recorder("configured") as upstream:
        async with run_proxy_with(proxy_settings(upstream.url), captured.telemetry, http=http) as proxy:
            for name, header in {**MUST_REFUSE, **MAY_FORWARD}.items():
                spans_before = len(captured.genai_spans())
                reply = await exchange(proxy.port, request(b"POST", CHAT, [b"Host: x", header], CHAT_BODY))
                await asyncio.sleep(0.02)
                spans = captured.genai_spans()[spans_before:]
                outcomes[name] = (status_of(reply), len(spans))
                if name in MUST_REFUSE:
                    new_spans.extend(spans)
            # percent-encoded CR LF in the path and query stay encoded: data, not header syntax
            for target in (CHAT + "%0d%0aInj-path:%20yes", CHAT + "?a=%0d%0aInj-query:%20yes"):
                await exchange(proxy.port, request(b"POST", target, [b"Host: x"], CHAT_BODY))
            not_refused = {name: outcomes[name] for name in MUST_REFUSE if not 400 <= outcomes[name][0] < 500}
            assert not not_refused, f"not refused with a 4xx, as (status, spans): {not_refused}"
            for name in MAY_FORWARD:
                assert outcomes[name][0] in (200, 400), (name, outcomes[name])
            await assert_healthy(proxy, captured, upstream)
    lines = upstream.header_lines()
    markers = tuple(f"inj-{name}".lower().encode() for name in MUST_REFUSE)
    smuggled = [line for line in lines if line.lower().startswith(markers)]
    assert not smuggled, smuggled
    assert not [line for line in lines if line.lower().startswith((b"inj-path", b"inj-query"))]
    assert all(not any((c < 0x20 and c != 0x09) or c == 0x7F for c in line) for line in lines), lines
    assert all(spans <= 1 for _, spans in outcomes.values()), outcomes
    for span in new_spans:
        assert span.attributes.get("error.type"), "a refused call's span must say why"


async def test_header_values_with_non_ascii_bytes_reach_the_upstream_unchanged() -> None:
    """Bytes 0x80-0xFF are legal in HTTP/1.1 field values (obs-text); clients put UTF-8 there (names,
    titles in custom headers). They must be forwarded byte for byte, not decoded as Latin-1 and re-encoded
    as UTF-8 (which turns "\u00e9" into "\u00c3\u00a9" upstream)."""
    captured = make_captured()
    values = {b"x-user-name": "Jos\u00e9 M\u00fcller".encode(), b"x-title": "\u65e5\u672c\u8a9e \u2713".encode()}
    async with recorder("configured") as upstream:
        async with run_proxy_with(proxy_settings(upstream.url), captured.telemetry) as proxy:
            headers = [b"Host: x", *(name + b": " + value for name, value in values.items())]
            assert status_of(await exchange(proxy.port, request(b"POST", CHAT, headers, CHAT_BODY))) == 200
    [(head, _)] = upstream.requests
    for name, value in values.items():
        assert name + b": " + value + b"\r\n" in head, (name, value, head)


# --- SSRF ------------------------------------------------------------------------------------------------

def ssrf_attempts(victim: str) -> dict[str, bytes]:
    v = victim.encode()  # "127.0.0.1:PORT"
    host = [b"Host: x"]
    return {
        "absolute-form": request(b"POST", b"http://" + v + CHAT.encode(), [b"Host: " + v], CHAT_BODY),
        "absolute-form-https": request(b"GET", b"https://" + v + b"/v1/models", [b"Host: " + v]),
        "absolute-form-userinfo": request(b"GET", b"http://x@" + v + b"/v1/models", [b"Host: " + v]),
        "host-override": request(b"POST", CHAT.encode(), [b"Host: " + v], CHAT_BODY),
        "forwarding-headers": request(b"POST", CHAT.encode(), [
            b"Host: " + v, b"X-Forwarded-Host: " + v, b"X-Forwarded-Proto: http", b"X-Forwarded-Port: "
            + v.split(b":")[1], b"Forwarded: host=" + v + b";proto=http", b"X-Host: " + v,
            b"X-Original-URL: http://" + v + b"/x", b"X-Rewrite-URL: http://" + v + b"/x",
            b"X-HTTP-Host-Override: " + v,
        ], CHAT_BODY),
        "dot-dot": request(b"GET", b"/../../" + v + b"/x", host),
        "dot-dot-after-prefix": request(b"GET", b"/openai/../../../" + v + b"/x", host),
        "encoded-dot-dot": request(b"GET", b"/%2e%2e/%2e%2e/" + v + b"/x", host),
        "encoded-dot-dot-upper": request(b"GET", b"/openai/%2E%2E%2F%2E%2E%2F" + v + b"/x", host),
        "encoded-slash": request(b"GET", b"/..%2f..%2f" + v + b"/x", host),
        "double-slash": request(b"GET", b"//" + v + b"/x", host),
        "double-slash-after-prefix": request(b"GET", b"/openai//" + v + b"/x", host),
        "at-sign": request(b"GET", b"/@" + v + b"/x", host),
        "encoded-at-sign": request(b"GET", b"/%40" + v + b"/x", host),
        "prefix-without-slash": request(b"GET", b"/openai@" + v + b"/x", host),
        "backslash": request(b"GET", b"/\\\\" + v + b"/x", host),
        "connect": request(b"CONNECT", v, [b"Host: " + v]),
        "asterisk": request(b"OPTIONS", b"*", [b"Host: " + v]),
        "body-fields": request(b"POST", CHAT.encode(), host, orjson.dumps({
            "model": "m", "base_url": "http://" + victim, "api_base": "http://" + victim,
            "url": "http://" + victim + "/x", "messages": [{"role": "user", "content": "hi"}]})),
    }


async def test_no_request_field_header_or_path_reaches_another_host() -> None:
    captured = make_captured()
    async with recorder("configured") as upstream, recorder("victim") as victim:
        settings = proxy_settings(upstream.url)
        prefixed = Route(prefix="/openai", upstream=Upstream.parse(upstream.url + "/v1", "test"))
        settings.routes = sorted([*settings.routes, prefixed], key=lambda route: len(route.prefix), reverse=True)
        statuses: dict[str, tuple[int, bytes]] = {}
        async with run_proxy_with(settings, captured.telemetry) as proxy:
            for name, raw in ssrf_attempts(f"127.0.0.1:{victim.port}").items():
                reply = await exchange(proxy.port, raw)
                served_by = reply.split(b"x-upstream: ", 1)[1].split(b"\r\n", 1)[0] if b"x-upstream: " in reply else b""
                statuses[name] = (status_of(reply), served_by)
            await assert_healthy(proxy, captured, upstream)
    assert victim.connections == 0, "the proxy connected to a host that is not a configured upstream"
    for name, (status, served_by) in statuses.items():
        assert served_by == b"configured" or 400 <= status < 500, (name, status, served_by)
    hosts = {line for line in upstream.header_lines() if line.lower().startswith(b"host:")}
    assert hosts == {b"Host: 127.0.0.1:" + str(upstream.port).encode()}, hosts


# --- inbound auth ----------------------------------------------------------------------------------------

async def test_inbound_auth_refuses_before_anything_goes_upstream(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    key, other = "llmtap-key-6f1d2c-correct", "llmtap-key-b7a9e0-second"
    captured = make_captured()
    attempts = {
        "no-key": [b"Host: x"],
        "wrong-key": [b"Host: x", b"X-LLMTap-Key: nope"],
        "empty-key": [b"Host: x", b"x-llmtap-key: "],
        "wrong-case": [b"Host: x", b"x-llmtap-key: " + key.upper().encode()],
        "prefix-of-key": [b"Host: x", b"x-llmtap-key: " + key[:-1].encode()],
        "key-plus-suffix": [b"Host: x", b"x-llmtap-key: " + key.encode() + b"x"],
        "key-in-authorization": [b"Host: x", b"Authorization: Bearer " + key.encode()],
        "key-in-other-header": [b"Host: x", b"x-api-key: " + key.encode()],
    }
    async with recorder("configured") as upstream:
        settings = proxy_settings(upstream.url, auth_keys=(key, other))
        async with run_proxy_with(settings, captured.telemetry) as proxy:
            refused: dict[str, Any] = {}
            for name, headers in attempts.items():
                reply = await exchange(proxy.port, request(b"POST", CHAT, headers, CHAT_BODY))
                refused[name] = (status_of(reply), orjson.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["type"])
            via_query = await exchange(
                proxy.port, request(b"POST", CHAT.encode() + b"?x-llmtap-key=" + key.encode(), [b"Host: x"], CHAT_BODY)
            )
            refused["key-in-query"] = (status_of(via_query), "")
            assert upstream.connections == 0 and upstream.requests == []
            assert captured.genai_spans() == []  # refused requests are not LLM calls: no span, no active call
            for accepted in (key, other):
                headers = [b"Host: x", b"x-llmtap-key: " + accepted.encode(), b"Authorization: Bearer sk-upstream"]
                assert status_of(await exchange(proxy.port, request(b"POST", CHAT, headers, CHAT_BODY))) == 200
            assert status_of(await exchange(proxy.port, request(b"GET", b"/healthz", [b"Host: x"]))) == 200
            await captured.wait_for_genai_spans(2)
            await asyncio.sleep(0.05)
            assert active_calls(captured) == 0
    assert {name: status for name, (status, _) in refused.items()} == dict.fromkeys(refused, 401)
    assert {kind for name, (_, kind) in refused.items() if name != "key-in-query"} == {"unauthorized"}
    assert len(upstream.requests) == 2
    for line in upstream.header_lines():
        assert not line.lower().startswith(b"x-llmtap-key"), "the proxy key must not be forwarded upstream"
    assert b"Authorization: Bearer sk-upstream" in upstream.requests[0][0] or any(
        line.lower() == b"authorization: bearer sk-upstream" for line in upstream.header_lines()
    )
    spans = captured.genai_spans()
    assert len(spans) == 2
    for text in (key, other):
        assert text not in caplog.text
        assert all(text not in str(dict(span.attributes or {})) for span in spans)


# --- secrets in cookies and query strings ------------------------------------------------------------------

def everything_exported(captured: Captured) -> str:
    """Every span (name, attributes, events, status) and every metric point's attributes, as text."""
    parts = []
    for span in captured.spans():
        parts.append(repr((span.name, dict(span.attributes or {}), span.status.description)))
        parts.extend(repr((event.name, dict(event.attributes or {}))) for event in span.events)
    data = captured.metric_reader.get_metrics_data()
    for resource_metrics in data.resource_metrics if data else []:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                parts.extend(repr((metric.name, dict(p.attributes or {}))) for p in metric.data.data_points)
    return "\n".join(parts)


async def test_secrets_in_cookies_and_query_keys_never_reach_telemetry_logs_or_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "AIzaSy-PLANTED-9c1f3e-DO-NOT-LEAK"
    captured = make_captured(capture_content=True)
    paths = [
        CHAT + "?key=" + secret,
        "/v1beta/models/gemini-pro:streamGenerateContent?alt=sse&key=" + secret,
        "/v1beta/models/gemini-pro:generateContent?key=" + secret + "&x=1",
    ]
    headers = [b"Host: x", b"Cookie: session=" + secret.encode() + b"; theme=dark", b"x-goog-api-key: "
               + secret.encode(), b"api-key: " + secret.encode()]
    replies: list[bytes] = []
    async with recorder("configured") as upstream:
        settings = proxy_settings(upstream.url)
        dead = Route(prefix="/dead", upstream=Upstream.parse(f"http://127.0.0.1:{free_port()}", "test"))
        settings.routes = sorted([*settings.routes, dead], key=lambda route: len(route.prefix), reverse=True)
        async with run_proxy_with(settings, captured.telemetry) as proxy:
            for path in paths:
                replies.append(await exchange(proxy.port, request(b"POST", path, headers, CHAT_BODY)))
            # the proxy's own error messages, for an unreachable upstream
            replies.append(await exchange(proxy.port, request(b"POST", "/dead" + paths[0], headers, CHAT_BODY)))
            replies.append(await exchange(proxy.port, request(b"POST", "/dead" + paths[1], headers, CHAT_BODY)))
            await captured.wait_for_genai_spans(5)
    assert [status_of(reply) for reply in replies] == [200, 200, 200, 502, 502]
    assert len(captured.genai_spans()) == 5
    assert all(secret.encode() in head for head, _ in upstream.requests)  # forwarded upstream, as it must be
    assert secret not in everything_exported(captured)
    assert secret not in caplog.text
    assert all(secret.encode() not in reply for reply in replies)
