"""The simulator's new wire formats, read directly (no proxy) with reference parsers where one exists."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from llmtap_proxy.sim import SimServer
from tests.providers.support import post_raw, truth

FAST = {"x-sim-ttft-ms": "0", "x-sim-itl-ms": "0", "x-sim-tokens": "3"}


async def test_bedrock_event_stream_is_valid_for_botocore(sim: SimServer) -> None:
    eventstream = pytest.importorskip("botocore.eventstream")
    body = {"messages": [{"role": "user", "content": [{"text": "one two"}]}]}
    status, headers, raw = await post_raw(sim.url + "/model/amazon.nova-lite-v1%3A0/converse-stream", body, FAST)
    assert status == 200 and headers["Content-Type"] == "application/vnd.amazon.eventstream"
    buffer = eventstream.EventStreamBuffer()  # checks both CRCs of every message
    buffer.add_data(raw)
    messages = list(buffer)
    names = [m.headers[":event-type"] for m in messages]
    assert names == ["messageStart", *["contentBlockDelta"] * 3, "contentBlockStop", "messageStop", "metadata"]
    usage = orjson.loads(messages[-1].payload)["usage"]
    record = truth(sim, headers["x-sim-request-id"])
    assert usage == {"inputTokens": 2, "outputTokens": 3, "totalTokens": 5}
    assert record["model"] == "amazon.nova-lite-v1:0" and record["stream"] is True


async def test_gemini_framings(sim: SimServer) -> None:
    body = {"contents": [{"parts": [{"text": "a b c"}]}], "generationConfig": {"seed": 4}}
    path = "/v1beta/models/gemini-2.0-flash:streamGenerateContent"
    _, headers, array = await post_raw(sim.url + path, body, FAST)
    assert headers["Content-Type"] == "application/json; charset=UTF-8"
    elements = orjson.loads(array)
    assert [e["usageMetadata"]["promptTokenCount"] for e in elements] == [3] * 4
    _, headers, sse = await post_raw(sim.url + path + "?alt=sse", body, FAST)
    assert headers["Content-Type"] == "text/event-stream"
    events = [orjson.loads(block[6:]) for block in sse.split(b"\r\n\r\n") if block]
    text = lambda items: "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in items)  # noqa: E731
    assert text(events) == text(elements)  # same seed, same words, either framing
    _, _, single = await post_raw(sim.url + path.replace("stream", "").replace(":G", ":g"), body, FAST)
    assert orjson.loads(single)["candidates"][0]["content"]["parts"][0]["text"] == text(events)


async def test_ollama_done_line_and_load_knob(sim: SimServer) -> None:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "options": {"seed": 1}}
    _, headers, raw = await post_raw(sim.url + "/api/chat", body, {**FAST, "x-sim-load-ms": "25"})
    lines = [orjson.loads(line) for line in raw.splitlines()]
    assert headers["Content-Type"] == "application/x-ndjson"
    assert [line["done"] for line in lines] == [False] * 3 + [True]
    done = lines[-1]
    assert done["load_duration"] == 25_000_000 and done["eval_count"] == 3 and done["done_reason"] == "stop"
    assert done["total_duration"] >= done["load_duration"] + done["prompt_eval_duration"]
    assert truth(sim, headers["x-sim-request-id"])["ttft_s"] >= 0.025


async def test_tgi_and_cohere_sse(sim: SimServer) -> None:
    _, _, raw = await post_raw(sim.url + "/generate_stream", {"inputs": "x", "parameters": {"max_new_tokens": 2}}, FAST)
    assert raw.startswith(b"data:{") and raw.count(b"\n\n") == 2
    body = {"model": "command-r", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    _, _, raw = await post_raw(sim.url + "/v2/chat", body, FAST)
    for block in filter(None, raw.split(b"\n\n")):
        name, data = block.split(b"\n")
        assert name[len(b"event: "):].decode() == orjson.loads(data[len(b"data: "):])["type"]


async def test_ground_truth_digests(sim: SimServer) -> None:
    request = orjson.dumps({"inputs": "digest me"})
    _, headers, raw = await post_raw(sim.url + "/generate", request, {**FAST, "Authorization": "Bearer hf_x"})
    record = truth(sim, headers["x-sim-request-id"])
    assert record["request_sha256"] == hashlib.sha256(request).hexdigest()
    assert record["authorization_sha256"] == hashlib.sha256(b"Bearer hf_x").hexdigest()
    assert record["response_sha256"] == hashlib.sha256(raw).hexdigest() and record["response_bytes"] == len(raw)
    assert "hf_x" not in orjson.dumps(record).decode()
