"""Cohere v2 chat (/v2/chat) through the real proxy, with the official `cohere` SDK (ClientV2).

Fixture sources: the API reference, https://docs.cohere.com/v2/reference/chat-stream and
https://docs.cohere.com/v2/reference/chat, and the official SDK's types (cohere-ai/cohere-python,
`src/cohere/v2/types/v2chat_stream_response.py`: message-start, content-start, content-delta, content-end,
tool-plan-delta, tool-call-start, tool-call-delta, tool-call-end, citation-start, citation-end, message-end,
debug; `src/cohere/types/chat_message_end_event_delta.py`: finish_reason, usage, error;
`src/cohere/types/usage.py`: billed_units, tokens). `TOOL_STREAM` follows those shapes. The simulator
(llmtap_proxy/sim.py, `_Cohere`) serves them as SSE with the type as the event name.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmtap.providers.base import REASONING, TEXT, TOOL_CALL, ContentDelta, Finish, ResponseInfo, UsageReport
from llmtap.providers.cohere import CohereAPI
from llmtap_proxy.sim import SimServer
from tests.conftest import Captured, RunningProxy
from tests.providers.support import (
    check_byte_exact,
    check_not_streamed,
    check_stream_timing,
    corrupt,
    json_values,
    kinds,
    latest_truth,
    observe_bytes,
    only_span,
    parse_all,
    split,
)

cohere = pytest.importorskip("cohere")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK reads pydantic's __fields__

MODEL = "command-r-plus-08-2024"
SECRET = "co-test-secret-never-exported"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count some words for me please"}]

TOOL_STREAM = [
    {"id": "29f14a5a-11de-4cae-9800-25e4747408ea", "type": "message-start",
     "delta": {"message": {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}},
    {"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "I will look up the weather."}}},
    {"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {
        "id": "get_weather_1byjy32y4hvq", "type": "function", "function": {"name": "get_weather", "arguments": ""}}}}},
    {"type": "tool-call-delta", "index": 0,
     "delta": {"message": {"tool_calls": {"function": {"arguments": "{\"location\": \"Toronto\"}"}}}}},
    {"type": "tool-call-end", "index": 0},
    {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"thinking": "Hmm."}}}},
    {"type": "message-end", "delta": {"finish_reason": "TOOL_CALL", "usage": {
        "billed_units": {"input_tokens": 37, "output_tokens": 28},
        "tokens": {"input_tokens": 913, "output_tokens": 83}}}},
]


def client(url: str) -> cohere.AsyncClientV2:
    return cohere.AsyncClientV2(api_key=SECRET, base_url=url)


@pytest.fixture(scope="module", autouse=True)
async def warm_sdk(sim: SimServer) -> None:
    options = {"additional_headers": {"x-sim-tokens": "2", "x-sim-ttft-ms": "0"}}
    async for _ in client(sim.url).chat_stream(model=MODEL, messages=MESSAGES, request_options=options):
        pass
    await client(sim.url).chat(model=MODEL, messages=MESSAGES, request_options=options)


async def test_chat_stream_with_the_official_sdk(proxy: RunningProxy, captured: Captured, sim: SimServer) -> None:
    events = [e async for e in client(proxy.url).chat_stream(
        model=MODEL, messages=MESSAGES, max_tokens=30, temperature=0.3, p=0.75, k=20, seed=9,
        stop_sequences=["zzz"], request_options={"additional_headers": {"x-sim-tokens": "6"}})]
    text = "".join(e.delta.message.content.text for e in events if e.type == "content-delta")
    end = events[-1]
    assert len(text.split()) == 6 and end.type == "message-end"
    record = latest_truth(sim, "/v2/chat")
    span = await only_span(captured)
    a = span.attributes
    assert span.name == f"chat {MODEL}"
    assert a["gen_ai.provider.name"] == "cohere" and a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == MODEL and a["gen_ai.response.id"] == events[0].id
    assert a["gen_ai.request.max_tokens"] == 30 and a["gen_ai.request.temperature"] == 0.3
    assert a["gen_ai.request.top_p"] == 0.75 and a["gen_ai.request.top_k"] == 20 and a["gen_ai.request.seed"] == 9
    assert a["gen_ai.request.stop_sequences"] == ("zzz",) and a["gen_ai.request.stream"] is True
    assert a["gen_ai.usage.output_tokens"] == end.delta.usage.tokens.output_tokens == 6
    assert a["gen_ai.usage.input_tokens"] == record["input_tokens"]
    assert a["gen_ai.response.finish_reasons"] == ("COMPLETE",)
    check_stream_timing(captured, a, record)
    assert SECRET not in str(dict(a))


async def test_sse_stream_is_byte_exact(proxy: RunningProxy, captured: Captured, sim: SimServer) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "stream": True, "max_tokens": 4}
    status, headers, raw, record = await check_byte_exact(proxy.url, sim, "/v2/chat", body)
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    assert raw.count(b"event: content-delta\n") == 4
    a = (await only_span(captured)).attributes
    assert a["gen_ai.response.finish_reasons"] == ("MAX_TOKENS",) and a["gen_ai.usage.output_tokens"] == 4
    check_stream_timing(captured, a, record)


async def test_chat_not_streamed(proxy: RunningProxy, captured: Captured, sim: SimServer) -> None:
    response = await client(proxy.url).chat(model=MODEL, messages=MESSAGES, max_tokens=3)
    assert len(response.message.content[0].text.split()) == 3
    a = (await only_span(captured)).attributes
    check_not_streamed(captured, a)
    assert a["gen_ai.usage.output_tokens"] == response.usage.tokens.output_tokens == 3
    assert a["gen_ai.response.id"] == response.id and a["gen_ai.response.finish_reasons"] == ("MAX_TOKENS",)
    captured.spans_exporter.clear()
    await check_byte_exact(proxy.url, sim, "/v2/chat", {"model": MODEL, "messages": MESSAGES})


async def test_errors(proxy: RunningProxy, captured: Captured, sim: SimServer) -> None:
    with pytest.raises(cohere.errors.TooManyRequestsError):
        await client(proxy.url).chat(model=MODEL, messages=MESSAGES,
                                     request_options={"additional_headers": {"x-sim-status": "429"}, "max_retries": 0})
    a = (await only_span(captured)).attributes
    assert a["error.type"] == "429" and a["gen_ai.provider.name"] == "cohere"

    captured.spans_exporter.clear()
    body = {"model": MODEL, "messages": MESSAGES, "stream": True}
    *_, raw, _ = await check_byte_exact(proxy.url, sim, "/v2/chat", body, {"x-sim-error-event": "2"})
    assert b'"finish_reason":"ERROR"' in raw
    a = (await only_span(captured)).attributes
    assert a["error.type"] == "error" and a["gen_ai.response.finish_reasons"] == ("ERROR",)
    assert a["llmtap.content_chunks"] == 2


def test_tool_plan_tool_calls_thinking_and_usage() -> None:
    raw = b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in TOOL_STREAM)
    items = parse_all(CohereAPI(), "sse", raw, [40, 333, 700])
    assert kinds(items, ResponseInfo) == [ResponseInfo(None, "29f14a5a-11de-4cae-9800-25e4747408ea")]
    assert kinds(items, ContentDelta) == [
        ContentDelta("I will look up the weather.", REASONING), ContentDelta("get_weather", TOOL_CALL),
        ContentDelta('{"location": "Toronto"}', TOOL_CALL), ContentDelta("Hmm.", REASONING)]
    assert kinds(items, Finish) == [Finish("TOOL_CALL")]
    assert kinds(items, UsageReport) == [UsageReport(input_tokens=913, output_tokens=83)]  # tokens, not billed
    body = {"id": "x", "finish_reason": "COMPLETE", "message": {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "Let me see."}, {"type": "text", "text": "Hi!"}]},
        "usage": {"billed_units": {"input_tokens": 5, "output_tokens": 2}}}
    items = CohereAPI().response_items(CohereAPI().request_facts("chat", b"{}"), orjson.dumps(body))
    assert kinds(items, ContentDelta) == [ContentDelta("Let me see.", REASONING), ContentDelta("Hi!", TEXT)]
    assert kinds(items, UsageReport) == [UsageReport(input_tokens=5, output_tokens=2)]


COHERE_KEYS = ["id", "type", "delta", "message", "content", "text", "thinking", "tool_plan", "tool_calls",
               "function", "name", "arguments", "finish_reason", "usage", "tokens", "billed_units", "input_tokens",
               "output_tokens", "error", "index"]
TYPES = ["message-start", "content-start", "content-delta", "tool-plan-delta", "tool-call-start", "tool-call-delta",
         "message-end", "citation-start", "debug"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(TYPES), json_values(COHERE_KEYS)), max_size=6), st.integers(0, 3),
       st.lists(st.integers(0, 3000), max_size=6), st.binary(max_size=48))
def test_fuzz_never_raises_out_of_the_observer(events, corruption, cuts, noise) -> None:
    raw = b"".join(b"event: " + name.encode() + b"\ndata: " + orjson.dumps(value) + b"\n\n" for name, value in events)
    raw = corrupt(raw + noise, corruption) if corruption else raw + noise
    request = orjson.dumps(events[0][1]) if events else noise
    observe_bytes("POST", "/v2/chat", {}, request, "text/event-stream", split(raw, cuts))
    observe_bytes("POST", "/v2/chat", {}, request, "application/json", [raw])
