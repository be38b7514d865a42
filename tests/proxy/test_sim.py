"""The simulated backend: wire formats, timing, knobs, ground truth, and the official SDKs against it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest
import pytest_asyncio

from llmtap_proxy.sim import VOCAB, SimProfile, SimServer, start_sim

PROFILE = SimProfile(ttft_ms=20.0, itl_ms=2.0, output_tokens=8, model="sim-test")
CHAT = {"model": "gpt-sim", "messages": [{"role": "user", "content": "say three words"}], "stream": True}


@pytest_asyncio.fixture(scope="module")
async def sim() -> AsyncIterator[SimServer]:
    server = await start_sim(port=0, profile=PROFILE)
    yield server
    await server.close()


@pytest_asyncio.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest_asyncio.fixture(scope="module")
async def oai(sim: SimServer) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0)
    yield client
    await client.close()


@pytest_asyncio.fixture(scope="module")
async def claude(sim: SimServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=sim.url, api_key="x", max_retries=0,
                                      open_telemetry={"traces": False, "propagation": False})
    yield client
    await client.close()


def parse_sse(raw: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) for each SSE event in a complete body."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        events.append((name, "\n".join(data)))
    return events


async def post(http: aiohttp.ClientSession, sim: SimServer, path: str, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> tuple[aiohttp.ClientResponse, bytes]:
    async with http.post(sim.url + path, json=body, headers=headers) as resp:
        return resp, await resp.read()


async def record(http: aiohttp.ClientSession, sim: SimServer, resp: aiohttp.ClientResponse) -> dict[str, Any]:
    async with http.get(f"{sim.url}/_sim/requests/{resp.headers['x-sim-request-id']}") as gt:
        assert gt.status == 200
        return await gt.json()


def words_ok(text: str, n: int) -> bool:
    words = text.split(" ")[1:]
    return len(words) == n and all(" " + w in VOCAB for w in words)


# --- wire format, plain HTTP ------------------------------------------------------------------------

async def test_chat_stream_wire_format_with_usage(sim: SimServer, http: aiohttp.ClientSession) -> None:
    body = {**CHAT, "stream_options": {"include_usage": True}}
    resp, raw = await post(http, sim, "/v1/chat/completions", body)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["Transfer-Encoding"] == "chunked"
    events = parse_sse(raw)
    assert events[-1] == (None, "[DONE]")
    chunks = [orjson.loads(data) for _, data in events[:-1]]
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == "gpt-sim"
        assert chunk["id"] == chunks[0]["id"] and chunk["created"] == chunks[0]["created"]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = chunks[1:-2]
    assert len(content) == 8
    assert all(c["usage"] is None and c["choices"][0]["finish_reason"] is None for c in content)
    text = "".join(c["choices"][0]["delta"]["content"] for c in content)
    assert words_ok(text, 8)
    assert chunks[-2]["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    assert chunks[-2]["usage"] is None
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}


async def test_chat_stream_max_tokens_gives_length_and_no_usage(sim: SimServer,
                                                                 http: aiohttp.ClientSession) -> None:
    _, raw = await post(http, sim, "/v1/chat/completions", {**CHAT, "max_completion_tokens": 3})
    chunks = [orjson.loads(data) for _, data in parse_sse(raw)[:-1]]
    assert all("usage" not in c for c in chunks)
    assert len(chunks) == 1 + 3 + 1
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_tokens_per_chunk_and_overrides(sim: SimServer, http: aiohttp.ClientSession) -> None:
    headers = {"x-sim-tokens": "7", "x-sim-tokens-per-chunk": "3"}
    body = {**CHAT, "sim": {"tokens": 2, "itl_ms": 1}}  # headers win over the body's "sim"
    resp, raw = await post(http, sim, "/v1/chat/completions", body, headers)
    chunks = [orjson.loads(data) for _, data in parse_sse(raw)[1:-2]]
    texts = [c["choices"][0]["delta"]["content"] for c in chunks]
    assert [len(t.split()) for t in texts] == [3, 3, 1]
    gt = await record(http, sim, resp)
    assert gt["content_chunks"] == 3 and gt["output_tokens"] == 7
    # the body knobs apply where no header overrides them
    resp, raw = await post(http, sim, "/v1/chat/completions", body)
    assert (await record(http, sim, resp))["output_tokens"] == 2


async def test_seed_makes_output_deterministic(sim: SimServer, http: aiohttp.ClientSession) -> None:
    body = {**CHAT, "stream": False, "seed": 42}
    texts = [orjson.loads((await post(http, sim, "/v1/chat/completions", body))[1])
             ["choices"][0]["message"]["content"] for _ in range(2)]
    assert texts[0] == texts[1] and words_ok(texts[0], 8)


async def test_completions_stream_wire_format(sim: SimServer, http: aiohttp.ClientSession) -> None:
    body = {"prompt": "one two", "stream": True, "stream_options": {"include_usage": True}}
    _, raw = await post(http, sim, "/v1/completions", body)
    chunks = [orjson.loads(data) for _, data in parse_sse(raw)[:-1]]
    assert all(c["object"] == "text_completion" and c["model"] == "sim-test" for c in chunks)
    assert words_ok("".join(c["choices"][0]["text"] for c in chunks[:-2]), 8)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 8, "total_tokens": 10}


async def test_responses_stream_wire_format(sim: SimServer, http: aiohttp.ClientSession) -> None:
    body = {"model": "gpt-sim", "input": "a b c d", "instructions": "be brief", "stream": True}
    _, raw = await post(http, sim, "/v1/responses", body)
    events = parse_sse(raw)
    data = [orjson.loads(d) for _, d in events]
    assert [name for name, _ in events] == [d["type"] for d in data]
    assert [d["sequence_number"] for d in data] == list(range(len(data)))
    types = [d["type"] for d in data]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[4:12] == ["response.output_text.delta"] * 8
    assert types[12:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    final = data[-1]["response"]
    assert final["status"] == "completed" and final["model"] == "gpt-sim"
    assert final["output"][0]["content"][0]["text"] == "".join(d["delta"] for d in data[4:12])
    assert final["usage"]["input_tokens"] == 6 and final["usage"]["output_tokens"] == 8
    assert final["usage"]["total_tokens"] == 14


async def test_messages_stream_wire_format(sim: SimServer, http: aiohttp.ClientSession) -> None:
    content = [{"type": "text", "text": "hello there"}]
    body = {"model": "claude-sim", "max_tokens": 5, "system": "be terse", "stream": True,
            "messages": [{"role": "user", "content": content}]}
    _, raw = await post(http, sim, "/v1/messages", body)
    events = parse_sse(raw)
    names = [name for name, _ in events]
    assert names == ["message_start", "content_block_start", "ping", *["content_block_delta"] * 5,
                     "content_block_stop", "message_delta", "message_stop"]
    start = orjson.loads(events[0][1])["message"]
    assert start["id"].startswith("msg_") and start["model"] == "claude-sim"
    assert start["usage"]["input_tokens"] == 4 and start["usage"]["output_tokens"] == 1
    delta = orjson.loads(events[-2][1])
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"] == {"output_tokens": 5}


async def test_embeddings_models_healthz(sim: SimServer, http: aiohttp.ClientSession) -> None:
    body = {"input": ["a b", "c"], "model": "emb", "encoding_format": "float", "sim": {"ttft_ms": 0}}
    body = orjson.loads((await post(http, sim, "/v1/embeddings", body))[1])
    assert [len(d["embedding"]) for d in body["data"]] == [8, 8]
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    single = {"input": "a b", "sim": {"ttft_ms": 0}}
    again = orjson.loads((await post(http, sim, "/v1/embeddings", single))[1])
    assert again["data"][0]["embedding"] == body["data"][0]["embedding"]
    async with http.get(sim.url + "/v1/models") as resp:
        assert (await resp.json())["data"][0]["id"] == "sim-test"
    async with http.get(sim.url + "/healthz") as resp:
        assert resp.status == 200


# --- timing and ground truth ------------------------------------------------------------------------

async def _timing_problems(sim: SimServer, http: aiohttp.ClientSession) -> list[str]:
    """Stream with ttft 60 ms, itl 15 ms; compare client arrivals and ground truth with the schedule."""
    headers = {"x-sim-ttft-ms": "60", "x-sim-itl-ms": "15", "x-sim-tokens": "6"}
    sent = time.perf_counter()
    arrivals: list[float] = []
    async with http.post(sim.url + "/v1/chat/completions", json=CHAT, headers=headers) as resp:
        async for chunk in resp.content.iter_any():
            if b'"content":"' in chunk and b'"content":""' not in chunk:
                arrivals.append(time.perf_counter() - sent)
    gt = await record(http, sim, resp)
    assert gt["status"] == "ok" and gt["content_chunks"] == len(arrivals) == 6
    assert gt["ttft_s"] == gt["chunk_times_s"][0]
    late = [at - (0.060 + i * 0.015) for i, at in enumerate(gt["chunk_times_s"])]
    assert min(late) >= 0, late  # never early
    problems = []
    if not 0.059 <= arrivals[0] <= 0.068:
        problems.append(f"client-side TTFT {arrivals[0]:.4f}")
    if max(late) >= 0.004:
        problems.append(f"ground truth late by {max(late):.4f}")
    if gt["first_byte_s"] >= 0.01:  # the preamble (role chunk) goes out on arrival
        problems.append(f"first byte at {gt['first_byte_s']:.4f}")
    return problems


async def test_timing_matches_schedule(sim: SimServer, http: aiohttp.ClientSession) -> None:
    for _ in range(3):  # a busy shared machine can deschedule us; one clean run of three is required
        problems = await _timing_problems(sim, http)
        if not problems:
            break
    assert not problems


async def test_jitter_is_seeded_and_never_early(sim: SimServer, http: aiohttp.ClientSession) -> None:
    headers = {"x-sim-ttft-ms": "5", "x-sim-itl-ms": "2", "x-sim-jitter-ms": "6", "x-sim-tokens": "10",
               "x-sim-tokens-per-chunk": "1"}
    body = {**CHAT, "seed": 7}
    offsets = []
    for _ in range(2):
        resp, _ = await post(http, sim, "/v1/chat/completions", body, headers)
        times = (await record(http, sim, resp))["chunk_times_s"]
        assert times == sorted(times)
        offsets.append([at - (0.005 + i * 0.002) for i, at in enumerate(times)])
    assert min(min(o) for o in offsets) >= 0  # jitter only ever delays
    assert min(max(o) for o in offsets) < 0.006 + 0.004  # within the jitter (+ scheduling slack)
    assert max(offsets[0]) > 0.001  # and it does delay (seed 7 draws several ms)


async def test_ground_truth_and_stats(sim: SimServer, http: aiohttp.ClientSession) -> None:
    resp, _ = await post(http, sim, "/v1/chat/completions", {**CHAT, "stream": False})
    gt = await record(http, sim, resp)
    assert gt["model"] == "gpt-sim" and gt["input_tokens"] == 3 and gt["output_tokens"] == 8
    assert gt["stream"] is False and gt["status"] == "ok"
    assert sim.request_record(gt["id"]) == gt
    async with http.get(sim.url + "/_sim/requests/nope") as missing:
        assert missing.status == 404
    async with http.get(sim.url + "/_sim/stats") as stats:
        body = await stats.json()
    assert body["requests"] >= 1 and body["active"] == 0


# --- failures ---------------------------------------------------------------------------------------

async def test_status_knob_openai_and_anthropic_shapes(sim: SimServer, http: aiohttp.ClientSession) -> None:
    resp, raw = await post(http, sim, "/v1/chat/completions", CHAT, {"x-sim-status": "429"})
    assert resp.status == 429 and resp.headers["retry-after"] == "0"
    error = orjson.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "rate_limit_exceeded"
    resp, raw = await post(http, sim, "/v1/messages", {"messages": [], "sim": {"status": 500}})
    assert resp.status == 500
    expected = {"type": "error", "error": {"type": "api_error", "message": "Simulated error 500."}}
    assert orjson.loads(raw) == expected
    assert (await record(http, sim, resp))["http_status"] == 500


async def test_bad_json_and_bad_knobs_are_400(sim: SimServer, http: aiohttp.ClientSession) -> None:
    async with http.post(sim.url + "/v1/chat/completions", data=b"{nope") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request_error"
    for headers in ({"x-sim-tokens": "inf"}, {"x-sim-ttft-ms": "-1"}, {"x-sim-status": "200"}):
        resp, raw = await post(http, sim, "/v1/messages", {"messages": []}, headers)
        assert resp.status == 400 and orjson.loads(raw)["error"]["type"] == "invalid_request_error"


async def test_fail_after_truncates_chunked_body(sim: SimServer, http: aiohttp.ClientSession) -> None:
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(sim.url + "/v1/chat/completions", json=CHAT,
                             headers={"x-sim-fail-after": "2"}) as resp:
            async for chunk in resp.content.iter_any():
                received += chunk
    assert received.count(b'"content":"') == 3  # role chunk + 2 content chunks
    gt = await record(http, sim, resp)
    assert gt["status"] == "aborted" and gt["content_chunks"] == 2


async def test_fail_after_non_stream_drops_connection(sim: SimServer, http: aiohttp.ClientSession) -> None:
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(http, sim, "/v1/chat/completions", {**CHAT, "stream": False}, {"x-sim-fail-after": "0"})


async def test_error_event_openai_and_anthropic(sim: SimServer, http: aiohttp.ClientSession) -> None:
    resp, raw = await post(http, sim, "/v1/chat/completions", CHAT, {"x-sim-error-event": "2"})
    events = parse_sse(raw)
    assert len(events) == 1 + 2 + 1
    assert orjson.loads(events[-1][1])["error"]["type"] == "server_error"
    assert (await record(http, sim, resp))["status"] == "error_event"
    _, raw = await post(http, sim, "/v1/messages", {"messages": [], "max_tokens": 50, "stream": True},
                        {"x-sim-error-event": "1"})
    events = parse_sse(raw)
    assert [name for name, _ in events][-2:] == ["content_block_delta", "error"]
    assert orjson.loads(events[-1][1])["error"]["type"] == "overloaded_error"


async def test_client_disconnect_is_recorded_promptly(sim: SimServer, http: aiohttp.ClientSession) -> None:
    headers = {"x-sim-ttft-ms": "10", "x-sim-itl-ms": "10", "x-sim-tokens": "1000"}
    resp = await http.post(sim.url + "/v1/chat/completions", json=CHAT, headers=headers)
    sent = time.perf_counter()
    while time.perf_counter() - sent < 0.03:  # read a few content chunks, then hang up
        await resp.content.readany()
    resp.close()
    closed_at = time.perf_counter() - sent
    await asyncio.sleep(0.05)
    gt = sim.request_record(resp.headers["x-sim-request-id"])
    assert gt is not None and gt["status"] == "cancelled"
    assert gt["cancelled_at_s"] is not None and gt["cancelled_at_s"] < closed_at + 0.02
    assert gt["content_chunks"] < 10


# --- official SDKs ----------------------------------------------------------------------------------

async def test_openai_chat_stream_without_usage(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(model="gpt-sim", messages=CHAT["messages"], stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert words_ok("".join(c.choices[0].delta.content or "" for c in chunks), 8)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


async def test_openai_chat_stream_with_usage(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(model="gpt-sim", messages=CHAT["messages"], stream=True,
                                               stream_options={"include_usage": True}, max_tokens=5)
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert words_ok(text, 5)
    assert chunks[-2].choices[0].finish_reason == "length"
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (3, 5)


async def test_openai_chat_non_stream(oai: openai.AsyncOpenAI) -> None:
    completion = await oai.chat.completions.create(model="gpt-sim", messages=CHAT["messages"])
    assert words_ok(completion.choices[0].message.content or "", 8)
    assert completion.model == "gpt-sim" and completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 11


async def test_openai_completions_and_embeddings(oai: openai.AsyncOpenAI) -> None:
    completion = await oai.completions.create(model="sim", prompt="one two three", max_tokens=4)
    assert words_ok(completion.choices[0].text, 4) and completion.choices[0].finish_reason == "length"
    stream = await oai.completions.create(model="sim", prompt="x", stream=True)
    assert words_ok("".join([c.choices[0].text async for c in stream]), 8)
    embeddings = await oai.embeddings.create(model="emb", input=["alpha beta", "gamma"])  # base64 by default
    assert [len(d.embedding) for d in embeddings.data] == [8, 8]
    assert embeddings.usage.prompt_tokens == 3


async def test_openai_responses_stream_and_create(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.responses.create(model="gpt-sim", input="tell me a story", stream=True)
    events = [event async for event in stream]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert words_ok(deltas, 8)
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.output_text == deltas
    assert final.response.usage is not None and final.response.usage.output_tokens == 8
    assert final.response.usage.input_tokens == 4
    response = await oai.responses.create(model="gpt-sim", input="hi", max_output_tokens=3)
    assert words_ok(response.output_text, 3) and response.status == "incomplete"


async def test_openai_sdk_errors(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        await oai.chat.completions.create(model="m", messages=CHAT["messages"],
                                          extra_headers={"x-sim-status": "429"})
    stream = await oai.chat.completions.create(model="m", messages=CHAT["messages"], stream=True,
                                               extra_headers={"x-sim-error-event": "3"})
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass


async def test_anthropic_messages_stream(claude: anthropic.AsyncAnthropic) -> None:
    messages = [{"role": "user", "content": "four words of prompt"}]
    async with claude.messages.stream(model="claude-sim", max_tokens=100, messages=messages) as stream:
        text = "".join([t async for t in stream.text_stream])
        message = await stream.get_final_message()
    assert words_ok(text, 8)
    assert message.content[0].type == "text" and message.content[0].text == text
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (4, 8)


async def test_anthropic_messages_create_and_errors(claude: anthropic.AsyncAnthropic) -> None:
    message = await claude.messages.create(model="claude-sim", max_tokens=3, system="short",
                                           messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].type == "text" and words_ok(message.content[0].text, 3)
    assert message.stop_reason == "max_tokens" and message.model == "claude-sim"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (2, 3)
    with pytest.raises(anthropic.RateLimitError):
        await claude.messages.create(model="m", max_tokens=3, messages=[{"role": "user", "content": "hi"}],
                                     extra_headers={"x-sim-status": "429"})
    messages = [{"role": "user", "content": "x"}]
    with pytest.raises(anthropic.APIStatusError):
        async with claude.messages.stream(model="m", max_tokens=50, messages=messages,
                                          extra_headers={"x-sim-error-event": "2"}) as stream:
            async for _ in stream.text_stream:
                pass
