"""Ollama's native API through the real proxy, with the official `ollama` Python client.

Fixture sources: Ollama's API reference, https://github.com/ollama/ollama/blob/main/docs/api.md
- `GENERATE_DONE`: "Generate a completion", Request (No streaming), Response;
- `TOOL_CALL_DONE`: "Chat request (with tools)", Response;
- the streamed chat lines: "Chat request (streaming)", Response.
The simulator (llmtap_proxy/sim.py, `_Ollama`) serves these shapes as NDJSON (application/x-ndjson).
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmtap.providers.base import TEXT, TOOL_CALL, ContentDelta, Finish, ServerTimings, UsageReport
from llmtap.providers.ollama import OllamaAPI, ollama_server_timings
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

ollama = pytest.importorskip("ollama")

MODEL = "llama3.2"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count some words for me please"}]

GENERATE_DONE = {
    "model": "llama3.2", "created_at": "2023-08-04T19:22:45.499127Z",
    "response": "The sky is blue because it is the color of the sky.", "done": True, "context": [1, 2, 3],
    "total_duration": 5043500667, "load_duration": 5025959, "prompt_eval_count": 26,
    "prompt_eval_duration": 325953000, "eval_count": 290, "eval_duration": 4709213000,
}
TOOL_CALL_DONE = {
    "model": "llama3.2", "created_at": "2024-07-22T20:33:28.123648Z",
    "message": {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_current_weather", "arguments": {"format": "celsius", "location": "Paris, FR"}}}]},
    "done_reason": "stop", "done": True, "total_duration": 885095291, "load_duration": 3753500,
    "prompt_eval_count": 122, "prompt_eval_duration": 328493000, "eval_count": 33, "eval_duration": 552222000,
}
STREAM_LINES = [
    {"model": "llama3.2", "created_at": "2023-08-04T08:52:19.385406455-07:00",
     "message": {"role": "assistant", "content": "The", "images": None}, "done": False},
    {"model": "llama3.2", "created_at": "2023-08-04T19:22:45.499127Z", "message": {"role": "assistant", "content": ""},
     "done": True, "total_duration": 4883583458, "load_duration": 1334875, "prompt_eval_count": 26,
     "prompt_eval_duration": 342546000, "eval_count": 282, "eval_duration": 4535599000},
]


@pytest.fixture(scope="module", autouse=True)
async def warm_sdk(sim: SimServer) -> None:
    direct = ollama.AsyncClient(host=sim.url, headers={"x-sim-tokens": "2", "x-sim-ttft-ms": "0"})
    async for _ in await direct.chat(model=MODEL, messages=MESSAGES, stream=True):
        pass
    await direct.generate(model=MODEL, prompt="hi")


async def test_chat_stream_with_the_official_client(proxy: RunningProxy, captured: Captured, sim: SimServer) -> None:
    client = ollama.AsyncClient(host=proxy.url, headers={"x-sim-tokens": "6"})
    options = {"num_predict": 20, "temperature": 0.2, "top_k": 9, "seed": 5, "stop": ["zzz"]}
    parts = [p async for p in await client.chat(model=MODEL, messages=MESSAGES, stream=True, options=options)]
    text = "".join(p.message.content for p in parts)
    done = parts[-1]
    assert done.done and len(text.split()) == 6 == done.eval_count
    record = latest_truth(sim, "/api/chat")
    span = await only_span(captured)
    a = span.attributes
    assert span.name == f"chat {MODEL}"
    assert a["gen_ai.provider.name"] == "ollama" and a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == a["gen_ai.response.model"] == MODEL
    assert a["gen_ai.request.max_tokens"] == 20 and a["gen_ai.request.temperature"] == 0.2
    assert a["gen_ai.request.top_k"] == 9 and a["gen_ai.request.seed"] == 5
    assert a["gen_ai.request.stop_sequences"] == ("zzz",) and a["gen_ai.request.stream"] is True
    assert a["gen_ai.usage.input_tokens"] == done.prompt_eval_count == record["input_tokens"]
    assert a["gen_ai.usage.output_tokens"] == 6 and a["gen_ai.response.finish_reasons"] == ("stop",)
    check_stream_timing(captured, a, record)


async def test_ndjson_stream_is_byte_exact(proxy: RunningProxy, captured: Captured, sim: SimServer) -> None:
    body = {"model": MODEL, "prompt": "Why is the sky blue?", "options": {"num_predict": 4}}  # streams by default
    status, headers, raw, record = await check_byte_exact(proxy.url, sim, "/api/generate", body)
    lines = [orjson.loads(line) for line in raw.splitlines()]
    assert status == 200 and headers["Content-Type"] == "application/x-ndjson"
    assert len(lines) == 5 and lines[-1]["done"] is True and lines[-1]["done_reason"] == "length"
    a = (await only_span(captured)).attributes
    assert a["gen_ai.operation.name"] == "text_completion" and a["gen_ai.request.stream"] is True
    assert a["gen_ai.usage.output_tokens"] == 4 and a["gen_ai.response.finish_reasons"] == ("length",)
    check_stream_timing(captured, a, record)


async def test_generate_not_streamed(proxy: RunningProxy, captured: Captured, sim: SimServer) -> None:
    response = await ollama.AsyncClient(host=proxy.url).generate(model=MODEL, prompt="hi", options={"num_predict": 3})
    assert len(response.response.split()) == 3 and response.done_reason == "length"
    a = (await only_span(captured)).attributes
    check_not_streamed(captured, a)
    assert a["gen_ai.usage.output_tokens"] == response.eval_count == 3
    assert a["gen_ai.usage.input_tokens"] == response.prompt_eval_count
    captured.spans_exporter.clear()
    await check_byte_exact(proxy.url, sim, "/api/chat", {"model": MODEL, "messages": MESSAGES, "stream": False})


async def test_load_duration_is_the_server_reported_cold_start(proxy: RunningProxy, captured: Captured,
                                                               sim: SimServer) -> None:
    """Ollama reports the time it spent loading the model; the parser turns it into a ServerTimings item."""
    body = {"model": MODEL, "messages": MESSAGES, "options": {"num_predict": 3}}
    _, _, raw, record = await check_byte_exact(proxy.url, sim, "/api/chat", body, {"x-sim-load-ms": "40"})
    a = (await only_span(captured)).attributes
    assert a["llmtap.ttft"] >= record["ttft_s"] >= 0.040  # the load delays the first token
    [timings] = [i for i in parse_all(OllamaAPI(), "ndjson", raw, [50]) if type(i) is ServerTimings]
    assert timings.load_duration_s == pytest.approx(0.040)
    assert timings.total_duration_s >= timings.load_duration_s + timings.prompt_eval_duration_s
    # and the span carries what the server said it spent
    assert a["llmtap.server.load_duration"] == pytest.approx(timings.load_duration_s)
    assert a["llmtap.server.prompt_eval_duration"] == pytest.approx(timings.prompt_eval_duration_s)
    assert a["llmtap.server.eval_duration"] == pytest.approx(timings.eval_duration_s)


def test_official_fixtures() -> None:
    api = OllamaAPI()
    facts = api.request_facts("text_completion", b'{"model":"llama3.2","prompt":"Why is the sky blue?","stream":false}')
    items = api.response_items(facts, orjson.dumps(GENERATE_DONE))
    assert kinds(items, ContentDelta) == [ContentDelta(GENERATE_DONE["response"], TEXT)]
    assert kinds(items, UsageReport) == [UsageReport(input_tokens=26, output_tokens=290)]
    assert ollama_server_timings(GENERATE_DONE) == ServerTimings(
        load_duration_s=pytest.approx(0.005025959), prompt_eval_duration_s=pytest.approx(0.325953),
        eval_duration_s=pytest.approx(4.709213), total_duration_s=pytest.approx(5.043500667))
    items = api.response_items(facts, orjson.dumps(TOOL_CALL_DONE))
    assert kinds(items, ContentDelta) == [ContentDelta("get_current_weather", TOOL_CALL),
                                          ContentDelta('{"format":"celsius","location":"Paris, FR"}', TOOL_CALL)]
    assert kinds(items, Finish) == [Finish("stop")]
    raw = b"\n".join(orjson.dumps(line) for line in STREAM_LINES) + b"\n"
    streamed = parse_all(api, "ndjson", raw, [10, 90, 200])
    assert kinds(streamed, ContentDelta) == [ContentDelta("The", TEXT)]
    assert kinds(streamed, UsageReport) == [UsageReport(input_tokens=26, output_tokens=282)]


async def test_errors(proxy: RunningProxy, captured: Captured, sim: SimServer) -> None:
    client = ollama.AsyncClient(host=proxy.url, headers={"x-sim-status": "404"})
    with pytest.raises(ollama.ResponseError) as raised:
        await client.chat(model="missing", messages=MESSAGES)
    assert raised.value.status_code == 404
    a = (await only_span(captured)).attributes
    assert a["error.type"] == "404" and a["gen_ai.request.model"] == "missing"

    captured.spans_exporter.clear()
    client = ollama.AsyncClient(host=proxy.url, headers={"x-sim-error-event": "2"})
    with pytest.raises(ollama.ResponseError):
        async for _ in await client.chat(model=MODEL, messages=MESSAGES, stream=True):
            pass
    a = (await only_span(captured)).attributes
    assert a["error.type"] == "error" and a["llmtap.content_chunks"] == 2


OLLAMA_KEYS = ["model", "message", "role", "content", "thinking", "tool_calls", "function", "name", "arguments",
               "response", "done", "done_reason", "prompt_eval_count", "eval_count", "load_duration",
               "total_duration", "eval_duration", "prompt_eval_duration", "error", "embeddings"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(json_values(OLLAMA_KEYS), max_size=6), st.integers(0, 3), st.lists(st.integers(0, 3000), max_size=6),
       st.binary(max_size=48), st.sampled_from(["/api/chat", "/api/generate", "/api/embed"]))
def test_fuzz_never_raises_out_of_the_observer(values, corruption, cuts, noise, path) -> None:
    raw = b"\n".join(orjson.dumps(v) for v in values) + b"\n" + noise
    raw = corrupt(raw, corruption) if corruption else raw
    request = orjson.dumps(values[0]) if values else noise
    observe_bytes("POST", path, {}, request, "application/x-ndjson", split(raw, cuts))
    observe_bytes("POST", path, {}, request, "application/json; charset=utf-8", [raw])
