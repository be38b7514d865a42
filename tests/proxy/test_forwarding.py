"""The proxy as a transparent, unbuffered forwarder: real upstreams on loopback, the real proxy under uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import orjson
import pytest
from aiohttp import web
from yarl import URL

from llmtap_proxy.config import load_settings
from tests.conftest import Captured, proxy_settings, run_proxy

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def upstream(routes: list[tuple[str, str, Handler]]) -> AsyncIterator[str]:
    """A real aiohttp upstream on an ephemeral port; yields its URL."""
    app = web.Application()
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_streams_chunk_for_chunk_without_buffering(captured: Captured) -> None:
    """Chunk k reaches the client before the upstream sends chunk k+1: the upstream waits for proof."""
    received = [asyncio.Event() for _ in range(5)]
    sent_before_ack: list[bool] = []

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for k in range(5):
            payload = {"choices": [{"index": 0, "delta": {"content": f" tok{k}"}}], "model": "m"}
            await response.write(b"data: " + orjson.dumps(payload) + b"\n\n")
            try:
                await asyncio.wait_for(received[k].wait(), timeout=2.0)
                sent_before_ack.append(True)
            except TimeoutError:
                sent_before_ack.append(False)  # the proxy held chunk k back
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async with upstream([("POST", "/v1/chat/completions", stream)]) as url:
        async with run_proxy(proxy_settings(url), captured.telemetry) as proxy:
            body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            chunks: list[bytes] = []
            async with aiohttp.ClientSession() as session:
                async with session.post(proxy.url + "/v1/chat/completions", json=body) as response:
                    assert response.status == 200
                    k = 0
                    async for chunk in response.content.iter_any():
                        chunks.append(chunk)
                        if k < 5 and f"tok{k}".encode() in chunk:
                            received[k].set()
                            k += 1
    assert sent_before_ack == [True] * 5
    text = b"".join(chunks)
    assert text.count(b"data: ") == 6 and text.endswith(b"data: [DONE]\n\n")
    [span] = await captured.wait_for_genai_spans(1)
    assert span.attributes["llmtap.content_chunks"] == 5


async def test_forwards_method_path_query_headers_and_body(captured: Captured) -> None:
    seen: list[dict[str, object]] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append({
            "method": request.method,
            "path_qs": request.raw_path,
            "headers": dict(request.headers),
            "body": await request.read(),
        })
        return web.Response(body=b"\x00\x01binary", headers={"X-Upstream": "yes", "Content-Type": "x/y"}, status=201)

    async with upstream([("*", "/{tail:.*}", echo)]) as url:
        async with run_proxy(proxy_settings(url), captured.telemetry) as proxy:
            async with aiohttp.ClientSession() as session:
                for method in ("PUT", "DELETE", "PATCH", "GET"):
                    async with session.request(
                        method,
                        URL(proxy.url + "/some/path%20x?q=1&q=2&other=%2F", encoded=True),
                        data=b"\xff\xfe raw body" if method != "GET" else None,
                        headers={
                            "Authorization": "Bearer sk-forward-me",
                            "X-Custom": "kept",
                            "Connection": "keep-alive, X-Hop",
                            "X-Hop": "dropped",
                            "Keep-Alive": "timeout=5",
                            "TE": "trailers",
                        },
                    ) as response:
                        assert response.status == 201
                        assert await response.read() == b"\x00\x01binary"
                        assert response.headers["X-Upstream"] == "yes"
                        assert response.headers["Content-Type"] == "x/y"
    assert [s["method"] for s in seen] == ["PUT", "DELETE", "PATCH", "GET"]
    for request in seen:
        headers = {k.lower(): v for k, v in request["headers"].items()}  # type: ignore[union-attr]
        assert request["path_qs"] == "/some/path%20x?q=1&q=2&other=%2F"
        assert headers["authorization"] == "Bearer sk-forward-me"
        assert headers["x-custom"] == "kept"
        assert "x-hop" not in headers and "keep-alive" not in headers and "te" not in headers
        assert headers["host"] == url.removeprefix("http://")
    assert seen[0]["body"] == b"\xff\xfe raw body"
    assert seen[3]["body"] == b""
    assert captured.genai_spans() == []  # not an LLM path: forwarded, no GenAI span


async def test_health_endpoints_are_answered_locally(captured: Captured) -> None:
    hits: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="upstream")

    async with upstream([("*", "/{tail:.*}", anything)]) as url:
        async with run_proxy(proxy_settings(url), captured.telemetry) as proxy:
            async with aiohttp.ClientSession() as session:
                async with session.get(proxy.url + "/healthz") as response:
                    assert response.status == 200 and (await response.json())["status"] == "ok"
                async with session.get(proxy.url + "/readyz") as response:
                    assert response.status == 200 and (await response.json())["status"] == "ready"
                async with session.get(proxy.url + "/healthzz") as response:
                    assert await response.text() == "upstream"
    assert hits == ["/healthzz"]


async def test_routes_from_config_file_strip_their_prefix(tmp_path, captured: Captured) -> None:
    paths: dict[str, list[str]] = {"a": [], "b": []}

    def recorder(name: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            paths[name].append(request.raw_path)
            return web.Response(text=f"{name}:{request.headers.get('x-route-key', '')}")

        return handler

    async with upstream([("*", "/{tail:.*}", recorder("a"))]) as url_a, upstream(
        [("*", "/{tail:.*}", recorder("b"))]
    ) as url_b:
        config = tmp_path / "llmtap.yaml"
        config.write_text(
            f"routes:\n"
            f"  - prefix: /alpha\n    upstream: {url_a}/base\n    headers: {{X-Route-Key: '${{ROUTE_KEY}}'}}\n"
            f"  - prefix: /\n    upstream: {url_b}\n"
        )
        settings = load_settings(config_file=str(config), port=0, env={"ROUTE_KEY": "from-env"})
        async with run_proxy(settings, captured.telemetry) as proxy:
            async with aiohttp.ClientSession() as session:
                async with session.get(proxy.url + "/alpha/v1/models?x=1") as response:
                    assert await response.text() == "a:from-env"
                async with session.get(proxy.url + "/alphabet") as response:
                    assert await response.text() == "b:"
    assert paths == {"a": ["/base/v1/models?x=1"], "b": ["/alphabet"]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("routes: [{prefix: /x}]", "routes[0].upstream"),
        ("routes: [{prefix: /x, upstream: 'ftp://h'}]", "routes[0].upstream"),
        ("routes: [{prefix: x, upstream: 'http://h'}]", "routes[0].prefix"),
        ("routes: [{prefix: /x, upstream: 'http://h', provider: nope}]", "routes[0].provider"),
        ("routes: [{prefix: /x, upstream: 'http://h', bogus: 1}]", "routes[0].bogus"),
        ("routes: [{prefix: /x, upstream: 'http://h', read_timeout: -1}]", "routes[0].read_timeout"),
        ("routez: []", "routez"),
        ("routes: [{prefix: /x, upstream: 'http://h', headers: {a: '${NOPE_UNSET}'}}]", "NOPE_UNSET"),
        ("{", "invalid YAML"),
    ],
)
def test_bad_config_fails_naming_the_key(tmp_path, body: str, message: str) -> None:
    from llmtap_proxy.config import ConfigError

    config = tmp_path / "bad.yaml"
    config.write_text(body)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("$", r"\$")):
        load_settings(config_file=str(config), env={})


def test_flags_beat_environment_beat_file(tmp_path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("host: 10.0.0.1\nport: 1111\nupstream: http://file:1\n")
    env = {"LLMTAP_PORT": "2222", "LLMTAP_UPSTREAM": "http://env:2", "LLMTAP_CONFIG": str(config)}
    settings = load_settings(port=3333, env=env)
    assert (settings.host, settings.port) == ("10.0.0.1", 3333)
    assert settings.routes[0].upstream.host == "env"
    assert load_settings(env=env).port == 2222
    with pytest.raises(ValueError, match="no upstream"):
        load_settings(env={})


async def test_routes_by_host_header_go_only_to_their_configured_upstream(tmp_path, captured: Captured) -> None:
    hits: dict[str, list[str]] = {"a": [], "b": []}

    def recorder(name: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            hits[name].append(request.raw_path)
            return web.Response(text=name)

        return handler

    async with upstream([("*", "/{tail:.*}", recorder("a"))]) as url_a, upstream(
        [("*", "/{tail:.*}", recorder("b"))]
    ) as url_b:
        config = tmp_path / "hosts.yaml"
        config.write_text(
            f"routes:\n"
            f"  - {{host: OpenAI.internal, upstream: '{url_a}'}}\n"
            f"  - {{host: openai.internal, prefix: /v2, upstream: '{url_b}/two'}}\n"
            f"  - {{prefix: /, upstream: '{url_b}'}}\n"
        )
        settings = load_settings(config_file=str(config), port=0, env={})
        async with run_proxy(settings, captured.telemetry) as proxy, aiohttp.ClientSession() as session:
            async def get(path: str, host: str) -> str:
                async with session.get(proxy.url + path, headers={"Host": host}) as response:
                    return await response.text()

            assert await get("/v1/models", "openai.internal:8787") == "a"
            assert await get("/v2/x", "openai.internal") == "b"  # longer prefix for the same host
            assert await get("/v1/models", "other.example") == "b"  # no host match: the default route
    assert hits == {"a": ["/v1/models"], "b": ["/two/x", "/v1/models"]}


def test_host_routes_are_validated(tmp_path) -> None:
    from llmtap_proxy.config import ConfigError

    config = tmp_path / "bad.yaml"
    config.write_text("routes: [{host: 'bad host/x', upstream: 'http://h'}]")
    with pytest.raises(ConfigError, match=r"routes\[0\]\.host"):
        load_settings(config_file=str(config), env={})
    config.write_text("routes: [{host: a.b, upstream: 'http://h'}, {host: A.B, upstream: 'http://i'}]")
    with pytest.raises(ConfigError, match=r"declared twice for host 'a\.b'"):
        load_settings(config_file=str(config), env={})
