"""The official openai and anthropic SDKs through the real proxy, against the simulated backend."""

from __future__ import annotations

import asyncio

import aiohttp
import anthropic
import openai
import pytest

from llmtap.tokens import ReferenceTokenizer
from llmtap_proxy.sim import SimServer
from tests.conftest import Captured, RunningProxy

REFERENCE = ReferenceTokenizer("cl100k_base")
PROMPT = [{"role": "user", "content": "Count some words for me please"}]


async def ground_truth(sim: SimServer, request_id: str) -> dict:
    async with aiohttp.ClientSession() as session, session.get(f"{sim.url}/_sim/requests/{request_id}") as response:
        assert response.status == 200
        return await response.json()


async def only_span(captured: Captured):
    spans = await captured.wait_for_genai_spans(1)
    await asyncio.sleep(0.05)  # and no second one
    spans = captured.genai_spans()
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def points(captured: Captured, name: str) -> list:
    return captured.metrics().get(name, [])


@pytest.fixture(scope="session", autouse=True)
async def warm_sdks(sim: SimServer) -> None:
    """The SDKs build their response models on first use, holding the GIL for tens of milliseconds;
    that would bunch chunks in the (threaded) proxy. Pay it once, directly against the simulator."""
    client = openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="x")
    async for _ in await client.chat.completions.create(
        model="warm", messages=PROMPT, stream=True, stream_options={"include_usage": True}
    ):
        pass
    await client.chat.completions.create(model="warm", messages=PROMPT)
    async for _ in await client.responses.create(model="warm", input="hi", stream=True):
        pass
    await client.embeddings.create(model="warm", input="hi")
    claude = anthropic.AsyncAnthropic(base_url=sim.url, api_key="x", open_telemetry={"traces": False})
    async with claude.messages.stream(model="warm", max_tokens=3, messages=PROMPT) as stream:
        await stream.get_final_message()
    await claude.messages.create(model="warm", max_tokens=3, messages=PROMPT)


@pytest.fixture
def oai(proxy: RunningProxy) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-test-secret-openai", max_retries=0)


@pytest.fixture
def claude(proxy: RunningProxy) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=proxy.url, api_key="sk-ant-test-secret", max_retries=0,
        open_telemetry={"traces": False, "propagation": False},
    )


@pytest.mark.parametrize("include_usage", [True, False])
async def test_openai_chat_stream(oai: openai.AsyncOpenAI, captured: Captured, sim: SimServer, include_usage: bool):
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    raw = await oai.chat.completions.with_raw_response.create(
        model="sim-small", messages=PROMPT, stream=True, max_tokens=10, temperature=0.5, top_p=0.9, seed=7,
        **options,
    )
    stream = raw.parse()
    text = ""
    usage = None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        usage = chunk.usage or usage
    truth = await ground_truth(sim, raw.headers["x-sim-request-id"])
    assert len(text.split()) == truth["output_tokens"] == 10

    span = await only_span(captured)
    a = span.attributes
    assert span.name == "chat sim-small"
    assert span.kind.name == "CLIENT"
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "sim-small" and a["gen_ai.response.model"] == "sim-small"
    assert a["gen_ai.request.max_tokens"] == 10 and a["gen_ai.request.temperature"] == 0.5
    assert a["gen_ai.request.top_p"] == 0.9 and a["gen_ai.request.seed"] == 7
    assert a["gen_ai.request.stream"] is True
    assert a["gen_ai.response.finish_reasons"] == ("length",)
    assert a["gen_ai.response.id"].startswith("chatcmpl")
    assert a["llmtap.observer"] == "proxy"
    assert a["llmtap.content_chunks"] == truth["content_chunks"] == 10
    assert a["llmtap.ttft"] >= truth["ttft_s"] and a["llmtap.ttft"] < truth["ttft_s"] + 0.05
    assert 0 < a["gen_ai.response.time_to_first_chunk"] <= a["llmtap.ttft"]
    assert a["llmtap.usage.normalized_output_tokens"] == REFERENCE.count(text)[0]
    if include_usage:
        assert usage is not None and usage.completion_tokens == 10
        assert a["gen_ai.usage.output_tokens"] == 10 and a["llmtap.usage.source"] == "provider"
        assert a["gen_ai.usage.input_tokens"] == truth["input_tokens"]
    else:
        assert "gen_ai.usage.output_tokens" not in a and a["llmtap.usage.source"] == "tokenizer"
    assert a["llmtap.tpot"] > 0
    assert len(span.events) == 1 and span.events[0].name == "llmtap.first_token"

    gaps = points(captured, "gen_ai.client.operation.time_per_output_chunk")
    assert sum(p.count for p in gaps) == 9  # n content chunks -> n - 1 gaps
    [ttft_point] = points(captured, "gen_ai.server.time_to_first_token")
    assert ttft_point.count == 1 and ttft_point.sum == pytest.approx(a["llmtap.ttft"])
    assert list(ttft_point.explicit_bounds)[:3] == [0.001, 0.005, 0.01]
    assert ttft_point.attributes["gen_ai.request.model"] == "sim-small"
    assert "gen_ai.response.id" not in ttft_point.attributes
    [tpot_point] = points(captured, "gen_ai.server.time_per_output_token")
    assert tpot_point.sum == pytest.approx(a["llmtap.tpot"])
    usage_points = {p.attributes["gen_ai.token.type"]: p.sum for p in points(captured, "gen_ai.client.token.usage")}
    assert usage_points == ({"input": truth["input_tokens"], "output": 10} if include_usage else {})
    [duration] = points(captured, "gen_ai.client.operation.duration")
    assert duration.sum >= a["llmtap.ttft"]


async def test_openai_chat_non_streaming(oai: openai.AsyncOpenAI, captured: Captured) -> None:
    completion = await oai.chat.completions.create(model="sim-small", messages=PROMPT, max_tokens=5)
    assert len(completion.choices[0].message.content.split()) == 5
    a = (await only_span(captured)).attributes
    assert a["gen_ai.request.stream"] is False
    assert a["gen_ai.usage.output_tokens"] == completion.usage.completion_tokens == 5
    assert a["gen_ai.usage.input_tokens"] == completion.usage.prompt_tokens
    assert a["gen_ai.response.id"] == completion.id
    assert "llmtap.ttft" not in a  # streaming figures only for streams
    assert points(captured, "gen_ai.server.time_to_first_token") == []
    assert len(points(captured, "gen_ai.client.operation.duration")) == 1


async def test_openai_embeddings(oai: openai.AsyncOpenAI, captured: Captured) -> None:
    result = await oai.embeddings.create(model="sim-embed", input=["one two three", "four five"])
    assert len(result.data) == 2
    span = await only_span(captured)
    assert span.name == "embeddings sim-embed"
    assert span.attributes["gen_ai.operation.name"] == "embeddings"
    assert span.attributes["gen_ai.usage.input_tokens"] == result.usage.prompt_tokens == 5


async def test_openai_responses_stream(oai: openai.AsyncOpenAI, captured: Captured) -> None:
    text = ""
    final = None
    stream = await oai.responses.create(model="sim-small", input="Say some words", stream=True, max_output_tokens=8)
    async for event in stream:
        if event.type == "response.output_text.delta":
            text += event.delta
        elif event.type in ("response.completed", "response.incomplete"):
            final = event.response  # incomplete: max_output_tokens reached
    assert final is not None and len(text.split()) == 8
    a = (await only_span(captured)).attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.max_tokens"] == 8
    assert a["gen_ai.usage.output_tokens"] == final.usage.output_tokens == 8
    assert a["gen_ai.usage.input_tokens"] == final.usage.input_tokens
    assert a["gen_ai.response.id"] == final.id
    assert a["llmtap.content_chunks"] == 8 and a["llmtap.ttft"] > 0


async def test_anthropic_messages_stream(claude: anthropic.AsyncAnthropic, captured: Captured, sim: SimServer):
    async with claude.messages.stream(
        model="sim-claude", max_tokens=9, messages=PROMPT, extra_body={"temperature": 0.2, "top_k": 5}
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        message = await stream.get_final_message()
    assert len(text.split()) == 9 and message.usage.output_tokens == 9
    span = await only_span(captured)
    a = span.attributes
    assert span.name == "chat sim-claude"
    assert a["gen_ai.provider.name"] == "anthropic"
    assert a["gen_ai.request.top_k"] == 5 and a["gen_ai.request.max_tokens"] == 9
    assert a["gen_ai.usage.output_tokens"] == 9
    assert a["gen_ai.usage.input_tokens"] == message.usage.input_tokens
    assert a["gen_ai.response.finish_reasons"] == ("max_tokens",)
    assert a["gen_ai.response.id"] == message.id
    assert a["llmtap.content_chunks"] == 9
    gaps = points(captured, "gen_ai.client.operation.time_per_output_chunk")
    assert sum(p.count for p in gaps) == 8


async def test_anthropic_messages_create(claude: anthropic.AsyncAnthropic, captured: Captured) -> None:
    message = await claude.messages.create(model="sim-claude", max_tokens=4, messages=PROMPT)
    assert len(message.content[0].text.split()) == 4
    a = (await only_span(captured)).attributes
    assert a["gen_ai.request.stream"] is False
    assert a["gen_ai.usage.output_tokens"] == 4 and a["gen_ai.usage.input_tokens"] == message.usage.input_tokens
