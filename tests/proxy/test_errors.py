"""Errors: each case gets the right status and body, and exactly one span with error.type."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp import web

from llmtap_proxy.sim import SimServer
from tests.conftest import Captured, RunningProxy, proxy_settings, run_proxy
from tests.processes import free_port

CHAT = "/v1/chat/completions"
BODY = {"model": "sim-small", "stream": True, "messages": [{"role": "user", "content": "hello there"}]}


@contextlib.asynccontextmanager
async def slow_upstream(events: dict[str, float], *, header_delay: float, itl: float = 0.02) -> AsyncIterator[str]:
    """An upstream that records (perf_counter) when it notices the proxy went away."""

    async def handler(request: web.Request) -> web.StreamResponse:
        events["arrived"] = time.perf_counter()
        try:
            await asyncio.sleep(header_delay)
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for i in range(500):
                chunk = {"choices": [{"index": 0, "delta": {"content": f" w{i}"}}]}
                await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
                await asyncio.sleep(itl)
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            events["cancelled"] = time.perf_counter()
            raise

    app = web.Application()
    app.router.add_post(CHAT, handler)
    runner = web.AppRunner(app, handle_signals=False, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def wait_for_spans(captured: Captured, count: int) -> None:
    await captured.wait_for_genai_spans(count)


def one_span_with_error(captured: Captured, error_type: str) -> None:
    spans = captured.genai_spans()
    assert len(spans) == 1, [s.name for s in spans]
    assert spans[0].attributes["error.type"] == error_type
    assert spans[0].status.status_code.name == "ERROR"
    duration_points = captured.metrics()["gen_ai.client.operation.duration"]
    assert [p.attributes["error.type"] for p in duration_points] == [error_type]


async def assert_healthy(proxy: RunningProxy) -> None:
    async with aiohttp.ClientSession() as session, session.get(proxy.url + "/healthz") as response:
        assert response.status == 200


async def test_unreachable_upstream_is_502_in_openai_error_shape(captured: Captured) -> None:
    async with run_proxy(proxy_settings(f"http://127.0.0.1:{free_port()}"), captured.telemetry) as proxy:
        async with aiohttp.ClientSession() as session, session.post(proxy.url + CHAT, json=BODY) as response:
            assert response.status == 502
            error = (await response.json())["error"]
        await assert_healthy(proxy)
    assert error["type"] == "upstream_unreachable" and "unreachable" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    one_span_with_error(captured, "upstream_unreachable")


async def test_upstream_timeout_before_headers_is_504(captured: Captured) -> None:
    events: dict[str, float] = {}
    async with slow_upstream(events, header_delay=5) as url:
        settings = proxy_settings(url)
        settings.routes[0].read_timeout = 0.3
        async with run_proxy(settings, captured.telemetry) as proxy:
            started = time.perf_counter()
            async with aiohttp.ClientSession() as session, session.post(proxy.url + CHAT, json=BODY) as response:
                assert response.status == 504
                error = (await response.json())["error"]
            assert time.perf_counter() - started < 2.0
            await assert_healthy(proxy)
    assert error["type"] == "upstream_timeout" and "timed out" in error["message"]
    one_span_with_error(captured, "timeout")


@pytest.mark.parametrize("chunked", [False, True])
async def test_body_over_the_limit_is_413(captured: Captured, sim: SimServer, chunked: bool) -> None:
    settings = proxy_settings(sim.url, max_body_bytes=1000)
    payload = orjson.dumps({**BODY, "messages": [{"role": "user", "content": "x" * 2000}]})

    async def body_stream() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 300):
            yield payload[i : i + 300]

    async with run_proxy(settings, captured.telemetry) as proxy:
        async with aiohttp.ClientSession() as session, session.post(
            proxy.url + CHAT, data=body_stream() if chunked else payload,
            headers={"Content-Type": "application/json"},
        ) as response:
            assert response.status == 413
            error = (await response.json())["error"]
        await assert_healthy(proxy)
    assert error["type"] == "request_too_large" and "1000 bytes" in error["message"]
    one_span_with_error(captured, "request_too_large")


async def test_upstream_error_status_passes_through_unchanged(captured: Captured, sim: SimServer) -> None:
    headers = {"x-sim-status": "429"}
    async with aiohttp.ClientSession() as session:
        async with session.post(sim.url + CHAT, json=BODY, headers=headers) as direct:
            direct_body = await direct.read()
            direct_headers = direct.headers
        async with run_proxy(proxy_settings(sim.url), captured.telemetry) as proxy:
            async with session.post(proxy.url + CHAT, json=BODY, headers=headers) as proxied:
                assert proxied.status == 429
                proxied_body = await proxied.read()
                assert proxied.headers.get("retry-after") == direct_headers.get("retry-after")
                assert proxied.headers["content-type"] == direct_headers["content-type"]
    # identical apart from the per-request id inside the error message, if any
    assert orjson.loads(proxied_body)["error"]["type"] == orjson.loads(direct_body)["error"]["type"]
    assert len(proxied_body) == len(direct_body)
    one_span_with_error(captured, "429")


async def test_client_disconnect_mid_stream_cancels_upstream(captured: Captured) -> None:
    events: dict[str, float] = {}
    async with slow_upstream(events, header_delay=0) as url:
        async with run_proxy(proxy_settings(url), captured.telemetry) as proxy:
            session = aiohttp.ClientSession()
            response = await session.post(proxy.url + CHAT, json=BODY)
            await response.content.readany()
            await response.content.readany()
            closed_at = time.perf_counter()
            response.close()
            await session.close()
            await wait_for_spans(captured, 1)
            for _ in range(100):
                if "cancelled" in events:
                    break
                await asyncio.sleep(0.01)
            await assert_healthy(proxy)
    assert "cancelled" in events, "the upstream request was never cancelled"
    assert events["cancelled"] - closed_at < 0.1
    one_span_with_error(captured, "cancelled")


async def test_client_disconnect_before_headers_cancels_upstream(captured: Captured) -> None:
    events: dict[str, float] = {}
    async with slow_upstream(events, header_delay=10) as url:
        async with run_proxy(proxy_settings(url), captured.telemetry) as proxy:
            async with aiohttp.ClientSession() as session:
                with pytest.raises(TimeoutError):
                    await session.post(proxy.url + CHAT, json=BODY, timeout=aiohttp.ClientTimeout(total=0.3))
            closed_at = time.perf_counter()
            await wait_for_spans(captured, 1)
            for _ in range(100):
                if "cancelled" in events:
                    break
                await asyncio.sleep(0.01)
            await assert_healthy(proxy)
    assert "cancelled" in events, "the upstream request was never cancelled"
    assert events["cancelled"] - closed_at < 0.1
    one_span_with_error(captured, "cancelled")


async def test_upstream_closing_mid_stream_truncates_the_client_stream(captured: Captured, sim: SimServer) -> None:
    async with run_proxy(proxy_settings(sim.url), captured.telemetry) as proxy:
        received = b""
        async with aiohttp.ClientSession() as session:
            async with session.post(proxy.url + CHAT, json=BODY, headers={"x-sim-fail-after": "3"}) as response:
                assert response.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):
                    async for chunk in response.content.iter_any():
                        received += chunk
        await wait_for_spans(captured, 1)
        await assert_healthy(proxy)
    assert b"[DONE]" not in received  # the client sees the truncation, not a falsely complete stream
    one_span_with_error(captured, "upstream_closed")
    assert captured.genai_spans()[0].attributes["llmtap.content_chunks"] == 3
