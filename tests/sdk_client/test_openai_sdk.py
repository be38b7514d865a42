"""The real openai SDK (on httpx2), instrumented by llmtap, straight against the simulated backend."""

from __future__ import annotations

import asyncio
import gc

import httpx
import openai
import pytest
from opentelemetry.trace import SpanKind

import llmtap
from llmtap_proxy.sim import SimServer
from tests.conftest import Captured, make_captured
from tests.sdk_client.sdk_helpers import PROMPT, FlakyUpstream, agenai_spans, genai_spans, points

HTTPX_BODY = {"model": "sim-small", "messages": PROMPT, "stream": True, "max_tokens": 3}


def chat_stream(client: openai.OpenAI, **extra):
    return client.chat.completions.create(
        model="sim-small", messages=PROMPT, stream=True, max_tokens=10, stream_options={"include_usage": True},
        **extra,
    )


def test_instrument_sync_stream(instrumented: Captured, sim: SimServer) -> None:
    client = openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-secret", max_retries=0)
    tracer = instrumented.telemetry.tracer_provider.get_tracer("app")
    text = ""
    with tracer.start_as_current_span("app") as app:
        for chunk in chat_stream(client, temperature=0.5):
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
    assert len(text.split()) == 10

    [span] = genai_spans(instrumented)
    a = span.attributes
    assert span.name == "chat sim-small" and span.kind is SpanKind.CLIENT
    assert span.parent is not None and span.parent.span_id == app.get_span_context().span_id
    assert span.context.trace_id == app.get_span_context().trace_id
    assert a["llmtap.observer"] == "sdk"
    assert a["gen_ai.provider.name"] == "openai" and a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "sim-small" and a["gen_ai.request.temperature"] == 0.5
    assert a["gen_ai.request.stream"] is True and a["http.response.status_code"] == 200
    assert a["gen_ai.response.finish_reasons"] == ("length",)
    assert a["gen_ai.usage.output_tokens"] == 10 and a["llmtap.usage.source"] == "provider"
    assert a["llmtap.content_chunks"] == 10
    assert 0.02 <= a["llmtap.ttft"] < 0.5  # the simulator's TTFT is 20 ms
    assert 0 < a["gen_ai.response.time_to_first_chunk"] <= a["llmtap.ttft"]
    assert a["llmtap.tpot"] > 0 and a["llmtap.usage.normalized_output_tokens"] > 0
    assert "error.type" not in a and "http.request.resend_count" not in a
    assert [e.name for e in span.events] == ["llmtap.first_token"]
    assert sum(p.count for p in points(instrumented, "gen_ai.client.operation.time_per_output_chunk")) == 9
    [ttft] = points(instrumented, "gen_ai.server.time_to_first_token")
    assert ttft.count == 1 and ttft.sum == pytest.approx(a["llmtap.ttft"])


async def test_explicit_async_client_non_streaming(sdk: Captured, sim: SimServer) -> None:
    client = openai.AsyncOpenAI(
        base_url=sim.url + "/v1", api_key="x", max_retries=0,
        http_client=llmtap.async_httpx_client(telemetry=sdk.telemetry),
    )
    completion = await client.chat.completions.create(model="sim-small", messages=PROMPT, max_tokens=5)
    [span] = await agenai_spans(sdk)
    a = span.attributes
    assert span.parent is None  # no application span: a root span
    assert a["llmtap.observer"] == "sdk" and a["gen_ai.request.stream"] is False
    assert a["gen_ai.response.id"] == completion.id
    assert a["gen_ai.usage.output_tokens"] == completion.usage.completion_tokens == 5
    assert "llmtap.ttft" not in a  # streaming figures only for streams
    [duration] = points(sdk, "gen_ai.client.operation.duration")
    assert duration.count == 1 and duration.sum > 0


async def test_async_stream_instrumented(instrumented: Captured, sim: SimServer) -> None:
    client = openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0)
    chunks = 0
    async for _ in await client.chat.completions.create(
        model="sim-small", messages=PROMPT, stream=True, max_tokens=6
    ):
        chunks += 1
    [span] = await agenai_spans(instrumented)
    a = span.attributes
    assert a["llmtap.content_chunks"] == 6 and a["llmtap.usage.source"] == "tokenizer"
    assert "error.type" not in a and a["llmtap.ttft"] >= 0.02


def test_with_raw_and_streaming_response(sdk: Captured, sim: SimServer) -> None:
    client = openai.OpenAI(
        base_url=sim.url + "/v1", api_key="x", max_retries=0, http_client=llmtap.httpx_client(telemetry=sdk.telemetry)
    )
    raw = client.chat.completions.with_raw_response.create(
        model="sim-small", messages=PROMPT, stream=True, max_tokens=4
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert sum(1 for _ in raw.parse()) > 4
    with client.chat.completions.with_streaming_response.create(
        model="sim-small", messages=PROMPT, max_tokens=3
    ) as response:
        completion = response.parse()
    with client.chat.completions.with_streaming_response.create(
        model="sim-small", messages=PROMPT, max_tokens=3, stream=True
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"

    streamed, plain, lines_span = genai_spans(sdk, count=3)
    assert streamed.attributes["llmtap.content_chunks"] == 4 and "error.type" not in streamed.attributes
    assert plain.attributes["gen_ai.response.id"] == completion.id and "error.type" not in plain.attributes
    assert lines_span.attributes["llmtap.content_chunks"] == 3 and "error.type" not in lines_span.attributes


def test_early_break_then_close(instrumented: Captured, sim: SimServer) -> None:
    client = openai.OpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0)
    stream = chat_stream(client)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    stream.close()
    [span] = genai_spans(instrumented)
    a = span.attributes
    assert a["error.type"] == "cancelled" and span.status.status_code.name == "ERROR"
    assert a["llmtap.content_chunks"] == 3  # the role chunk, then three with content: what the app received
    [duration] = points(instrumented, "gen_ai.client.operation.duration")
    assert duration.attributes["error.type"] == "cancelled"


def test_early_break_garbage_collected(instrumented: Captured, sim: SimServer) -> None:
    client = openai.OpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0)

    def read_two() -> None:
        stream = chat_stream(client)
        next(stream)
        next(stream)  # and drop it, unclosed

    read_two()
    gc.collect()
    [span] = genai_spans(instrumented)
    assert span.attributes["error.type"] == "cancelled"
    gc.collect()
    assert len(genai_spans(instrumented)) == 1


async def test_async_early_break_and_task_cancellation(instrumented: Captured, sim: SimServer) -> None:
    client = openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0)
    async with await client.chat.completions.create(
        model="sim-small", messages=PROMPT, stream=True, max_tokens=10
    ) as stream:
        async for _ in stream:
            break

    started = asyncio.Event()

    async def consume() -> None:
        async for _ in await client.chat.completions.create(
            model="sim-small", messages=PROMPT, stream=True, max_tokens=10, extra_headers={"x-sim-itl-ms": "200"}
        ):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    spans = await agenai_spans(instrumented, count=2)
    assert [s.attributes["error.type"] for s in spans] == ["cancelled", "cancelled"]


def test_timeouts(sdk: Captured, sim: SimServer) -> None:
    client = openai.OpenAI(
        base_url=sim.url + "/v1", api_key="x", max_retries=0, timeout=0.15,
        http_client=llmtap.httpx_client(telemetry=sdk.telemetry),
    )
    with pytest.raises(openai.APITimeoutError):  # before the response headers
        client.chat.completions.create(
            model="sim-small", messages=PROMPT, max_tokens=3, extra_headers={"x-sim-ttft-ms": "1000"}
        )
    with pytest.raises(openai.APITimeoutError):  # in the middle of the stream
        for _ in chat_stream(client, extra_headers={"x-sim-itl-ms": "1000"}):
            pass
    before_headers, mid_stream = genai_spans(sdk, count=2)
    assert before_headers.attributes["error.type"] == "timeout"
    assert "http.response.status_code" not in before_headers.attributes
    assert mid_stream.attributes["error.type"] == "timeout"
    assert mid_stream.attributes["http.response.status_code"] == 200
    assert mid_stream.attributes["llmtap.content_chunks"] == 1


def test_retry_after_429_gives_one_span_per_attempt(instrumented: Captured, flaky: FlakyUpstream) -> None:
    client = openai.OpenAI(base_url=flaky.url + "/v1", api_key="x", max_retries=2)
    tracer = instrumented.telemetry.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("app") as app:
        text = "".join(
            c.choices[0].delta.content or "" for c in chat_stream(client) if c.choices
        )
    assert len(text.split()) == 10
    failed, retried = genai_spans(instrumented, count=2)
    assert failed.attributes["error.type"] == "429" and failed.attributes["http.response.status_code"] == 429
    assert "http.request.resend_count" not in failed.attributes
    assert "error.type" not in retried.attributes and retried.attributes["http.request.resend_count"] == 1
    assert retried.attributes["llmtap.content_chunks"] == 10
    for span, headers in zip((failed, retried), flaky.seen, strict=True):
        assert span.parent.span_id == app.get_span_context().span_id
        assert headers["traceparent"].startswith(f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-")
    durations = {
        p.attributes.get("error.type"): p.count for p in points(instrumented, "gen_ai.client.operation.duration")
    }
    assert durations == {"429": 1, None: 1}


def test_uninstrument_restores_clients(sdk: Captured, sim: SimServer) -> None:
    llmtap.instrument(telemetry=sdk.telemetry)
    try:
        before = openai.OpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0)
        assert "llmtap" in repr(before._client._transport)
    finally:
        llmtap.uninstrument()
    after = openai.OpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0)
    for client in (before, after):
        assert type(client._client._transport).__name__ == "HTTPTransport"
        client.chat.completions.create(model="sim-small", messages=PROMPT, max_tokens=2)
    assert genai_spans(sdk, timeout=0.05) == []


def test_explicit_client_survives_uninstrument(sim: SimServer) -> None:
    explicit = llmtap.httpx_client()
    llmtap.instrument()
    try:
        client = openai.OpenAI(base_url=sim.url + "/v1", api_key="x", http_client=explicit)
    finally:
        llmtap.uninstrument()
    assert "llmtap" in repr(client._client._transport)  # what the application asked for explicitly stays


def test_content_capture_and_no_secrets(sim: SimServer) -> None:
    captured = make_captured(observer_name="sdk", capture_content=True)
    client = openai.OpenAI(
        base_url=sim.url + "/v1", api_key="sk-secret-key", max_retries=0,
        http_client=llmtap.httpx_client(telemetry=captured.telemetry, finish_in_background=False),
    )
    reply = client.chat.completions.create(model="sim-small", messages=PROMPT, max_tokens=3)
    [span] = captured.genai_spans()
    assert PROMPT[0]["content"] in span.attributes["gen_ai.input.messages"]
    assert reply.choices[0].message.content in span.attributes["gen_ai.output.messages"]
    assert not [v for v in span.attributes.values() if "sk-secret" in str(v)]


def test_explicit_client_instrumented_in_place(sdk: Captured, sim: SimServer) -> None:
    client = openai.OpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0)
    llmtap.instrument(client, telemetry=sdk.telemetry)
    llmtap.instrument(client, telemetry=sdk.telemetry)  # twice: still one layer
    assert "llmtap" not in repr(client._client._transport.transport)
    client.chat.completions.create(model="sim-small", messages=PROMPT, max_tokens=2)
    assert len(genai_spans(sdk)) == 1
    llmtap.uninstrument(client)
    assert type(client._client._transport).__name__ == "HTTPTransport"


def test_plain_httpx_transport_and_other_requests(sdk: Captured, sim: SimServer) -> None:
    """httpx (not httpx2) works too, and requests that are not LLM calls pass through unobserved."""
    transport = llmtap.wrap_transport(httpx.HTTPTransport(), telemetry=sdk.telemetry)
    with httpx.Client(transport=transport) as client:
        assert client.get(sim.url + "/_sim/stats").status_code == 200
        with client.stream("POST", sim.url + "/v1/chat/completions", json=HTTPX_BODY) as response:
            assert sum(1 for _ in response.iter_lines()) > 3
    [span] = genai_spans(sdk)
    assert span.attributes["llmtap.content_chunks"] == 3 and span.attributes["llmtap.observer"] == "sdk"


async def test_plain_httpx_async_transport(sdk: Captured, sim: SimServer) -> None:
    transport = llmtap.wrap_transport(httpx.AsyncHTTPTransport(), telemetry=sdk.telemetry, finish_in_background=False)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.post(sim.url + "/v1/chat/completions", json={**HTTPX_BODY, "stream": False})
        assert response.status_code == 200
    [span] = sdk.genai_spans()  # ended in line: no waiting
    assert span.attributes["gen_ai.request.stream"] is False and span.attributes["gen_ai.usage.output_tokens"] == 3
