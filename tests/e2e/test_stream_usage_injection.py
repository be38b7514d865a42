"""Opt-in usage injection, both directions, with the official openai SDK through the real proxy."""

from __future__ import annotations

import aiohttp
import openai
import pytest

from llmtap_proxy.sim import SimServer
from tests.conftest import make_captured, proxy_settings, run_proxy

PROMPT = [{"role": "user", "content": "Tell me something"}]


async def chat(proxy_url: str, **options) -> tuple[str, list, object]:
    client = openai.AsyncOpenAI(base_url=proxy_url + "/v1", api_key="x", max_retries=0)
    text, chunks = "", []
    stream = await client.chat.completions.create(model="sim-small", messages=PROMPT, stream=True, max_tokens=7,
                                                  seed=11, **options)
    async for chunk in stream:
        chunks.append(chunk)
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    return text, chunks, client


@pytest.mark.parametrize("client_asks", [False, True])
async def test_injected_usage_reaches_telemetry_and_only_clients_that_asked(sim: SimServer, client_asks: bool):
    captured = make_captured()
    settings = proxy_settings(sim.url, inject_stream_usage=True)
    options = {"stream_options": {"include_usage": True}} if client_asks else {}
    async with run_proxy(settings, captured.telemetry) as proxy:
        text, chunks, _ = await chat(proxy.url, **options)
        [span] = await captured.wait_for_genai_spans(1)
    usage_chunks = [c for c in chunks if c.usage is not None]
    if client_asks:
        assert len(usage_chunks) == 1 and usage_chunks[0].usage.completion_tokens == 7
    else:
        assert usage_chunks == [] and all(c.choices for c in chunks)  # no usage-only chunk leaked
    assert len(text.split()) == 7
    assert span.attributes["gen_ai.usage.output_tokens"] == 7
    assert span.attributes["llmtap.usage.source"] == "provider"


async def test_without_the_option_streams_are_untouched_and_usage_comes_from_the_tokenizer(sim: SimServer):
    captured = make_captured()
    async with run_proxy(proxy_settings(sim.url), captured.telemetry) as proxy:
        body = {"model": "sim-small", "messages": PROMPT, "stream": True, "max_tokens": 7, "seed": 11}
        async with aiohttp.ClientSession() as session:
            async with session.post(proxy.url + "/v1/chat/completions", json=body) as response:
                proxied = await response.read()
        [span] = await captured.wait_for_genai_spans(1)
    assert b'"usage"' not in proxied
    assert "gen_ai.usage.output_tokens" not in span.attributes
    assert span.attributes["llmtap.usage.source"] == "tokenizer"


async def test_injection_leaves_other_apis_and_non_streams_alone(sim: SimServer):
    captured = make_captured()
    async with run_proxy(proxy_settings(sim.url, inject_stream_usage=True), captured.telemetry) as proxy:
        client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
        completion = await client.chat.completions.create(model="sim-small", messages=PROMPT, max_tokens=3)
        assert completion.usage.completion_tokens == 3
        spans = await captured.wait_for_genai_spans(1)
    assert spans[0].attributes["gen_ai.usage.output_tokens"] == 3
