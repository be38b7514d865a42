"""The telemetry contract through the real proxy: content capture, secrets, cold starts, faults, trace context."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import orjson
import pytest
from aiohttp import web

from llmtap.telemetry import Telemetry
from llmtap_proxy.sim import SimServer
from tests.conftest import Captured, make_captured, proxy_settings, run_proxy

SECRET = "sk-proj-SECRET-never-export-123"
CHAT = "/v1/chat/completions"


def chat_body(model: str = "sim-small", content: str = "What is the capital of France?") -> dict:
    return {
        "model": model, "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}],
    }


async def post_stream(url: str, body: dict, headers: dict | None = None) -> bytes:
    async with aiohttp.ClientSession() as session:
        async with session.post(url + CHAT, json=body, headers=headers or {}) as response:
            assert response.status == 200
            return await response.read()


def everything_exported(captured: Captured) -> str:
    spans = [
        orjson.dumps({"name": s.name, "attributes": dict(s.attributes), "events": [e.name for e in s.events]},
                     default=str).decode()
        for s in captured.spans()
    ]
    points = [
        orjson.dumps(dict(p.attributes), default=str).decode()
        for name, found in captured.metrics().items() for p in found
    ]
    return "\n".join(spans + points)


async def test_content_is_not_captured_by_default(sim: SimServer, captured: Captured) -> None:
    async with run_proxy(proxy_settings(sim.url), captured.telemetry) as proxy:
        await post_stream(proxy.url, chat_body())
    exported = everything_exported(captured)
    assert "capital of France" not in exported and "Be brief" not in exported
    [span] = await captured.wait_for_genai_spans(1)
    assert "gen_ai.input.messages" not in span.attributes and "gen_ai.output.messages" not in span.attributes


async def test_content_capture_opt_in_uses_semconv_message_shape(sim: SimServer, monkeypatch) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    captured = make_captured()
    async with run_proxy(proxy_settings(sim.url), captured.telemetry) as proxy:
        raw = await post_stream(proxy.url, chat_body())
    text = "".join(
        chunk["choices"][0]["delta"].get("content") or ""
        for line in raw.split(b"\n") if line.startswith(b"data: {")
        for chunk in [orjson.loads(line[6:])] if chunk["choices"]
    )
    [span] = await captured.wait_for_genai_spans(1)
    inputs = orjson.loads(span.attributes["gen_ai.input.messages"])
    assert inputs == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [{"type": "text", "content": "What is the capital of France?"}]},
    ]
    outputs = orjson.loads(span.attributes["gen_ai.output.messages"])
    assert outputs == [{"role": "assistant", "parts": [{"type": "text", "content": text}], "finish_reason": "stop"}]


async def test_secrets_never_reach_telemetry_or_logs(sim: SimServer, caplog, monkeypatch) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    caplog.set_level(logging.DEBUG)
    captured = make_captured()
    headers = {"Authorization": f"Bearer {SECRET}", "x-api-key": SECRET, "api-key": SECRET,
               "anthropic-version": "2023-06-01"}
    async with run_proxy(proxy_settings(sim.url), captured.telemetry) as proxy:
        await post_stream(proxy.url, chat_body(), headers)
        async with aiohttp.ClientSession() as session:
            body = {"model": "sim-claude", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
            async with session.post(proxy.url + "/v1/messages", json=body, headers=headers) as response:
                assert response.status == 200
            async with session.post(proxy.url + CHAT, json=chat_body(), headers={**headers, "x-sim-status": "401"}):
                pass
    assert len(await captured.wait_for_genai_spans(3)) == 3
    exported = everything_exported(captured)
    assert SECRET not in exported and "Bearer" not in exported
    assert SECRET not in caplog.text


async def test_cold_start_is_the_first_call_per_upstream_and_model(sim: SimServer) -> None:
    captured = make_captured()
    async with run_proxy(proxy_settings(sim.url), captured.telemetry) as proxy:
        for model in ("sim-a", "sim-a", "sim-b", "sim-a"):
            await post_stream(proxy.url, chat_body(model))
    spans = await captured.wait_for_genai_spans(4)
    flags = [(s.attributes["gen_ai.request.model"], s.attributes["llmtap.cold_start"]) for s in spans]
    assert flags == [("sim-a", True), ("sim-a", False), ("sim-b", True), ("sim-a", False)]
    cold = {p.attributes["gen_ai.request.model"]: p.value for p in captured.metrics()["llmtap.cold_starts"]}
    assert cold == {"sim-a": 1, "sim-b": 1}
    ttft_points = {(p.attributes["gen_ai.request.model"], p.attributes["llmtap.cold_start"]): p.count
                   for p in captured.metrics()["gen_ai.server.time_to_first_token"]}
    assert ttft_points == {("sim-a", True): 1, ("sim-a", False): 2, ("sim-b", True): 1}


async def test_cold_start_after_idle_threshold(sim: SimServer) -> None:
    captured = make_captured(cold_start_idle_s=0.0)
    async with run_proxy(proxy_settings(sim.url), captured.telemetry) as proxy:
        await post_stream(proxy.url, chat_body())
        await post_stream(proxy.url, chat_body())
    assert [s.attributes["llmtap.cold_start"] for s in await captured.wait_for_genai_spans(2)] == [True, True]


class BrokenTelemetry(Telemetry):
    def _record_metrics(self, *args, **kwargs) -> None:
        raise RuntimeError("exporter exploded")


async def test_a_telemetry_fault_never_changes_what_the_client_receives(sim: SimServer) -> None:
    reference = make_captured()
    async with run_proxy(proxy_settings(sim.url), reference.telemetry) as proxy:
        good = await post_stream(proxy.url, {**chat_body(), "seed": 3})
    broken = make_captured()
    broken.telemetry.__class__ = BrokenTelemetry
    async with run_proxy(proxy_settings(sim.url), broken.telemetry) as proxy:
        for _ in range(3):
            received = await post_stream(proxy.url, {**chat_body(), "seed": 3})
        await asyncio.sleep(0.2)  # the third call's telemetry runs after its last byte
    strip = lambda raw: [  # noqa: E731 - per-request ids differ, the rest must not
        {k: v for k, v in orjson.loads(line[6:]).items() if k not in ("id", "created")}
        for line in raw.split(b"\n") if line.startswith(b"data: {")
    ]
    assert strip(received) == strip(good)
    faults = {p.attributes.get("llmtap.fault"): p.value for p in broken.metrics()["llmtap.internal.errors"]}
    assert faults == {None: 0, "emit": 3}  # the zero series exists from the start


async def test_trace_context_joins_the_callers_trace_and_travels_upstream(captured: Captured) -> None:
    seen: list[str] = []

    async def upstream_handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("traceparent", ""))
        return web.json_response({"id": "x", "model": "m", "choices": [], "usage": None})

    app = web.Application()
    app.router.add_post(CHAT, upstream_handler)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    parent_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{parent_trace}-00f067aa0ba902b7-01"
    try:
        settings = proxy_settings(f"http://127.0.0.1:{runner.addresses[0][1]}")
        async with run_proxy(settings, captured.telemetry) as proxy:
            async with aiohttp.ClientSession() as session:
                async with session.post(proxy.url + CHAT, json=chat_body(), headers={"traceparent": traceparent}) as r:
                    assert r.status == 200
    finally:
        await runner.cleanup()
    [span] = await captured.wait_for_genai_spans(1)
    assert format(span.context.trace_id, "032x") == parent_trace
    assert format(span.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert seen == [f"00-{parent_trace}-{format(span.context.span_id, '016x')}-01"]


@pytest.mark.parametrize("path", ["/v1/models", "/v1/files"])
async def test_unknown_paths_are_forwarded_without_a_genai_span(sim: SimServer, captured, path: str) -> None:
    async with run_proxy(proxy_settings(sim.url), captured.telemetry) as proxy:
        async with aiohttp.ClientSession() as session, session.get(proxy.url + path) as response:
            assert response.status in (200, 404)
    assert captured.genai_spans() == []
