"""Derived figures and labelled normalised counts, from parsed streams through the real Telemetry."""

from __future__ import annotations

import orjson
import pytest

from llmtap.providers import get_provider
from tests.conftest import make_captured

MS = 1_000_000


def sse(*chunks: dict) -> list[bytes]:
    return [b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks] + [b"data: [DONE]\n\n"]


def run_call(chunks: list[bytes], request: dict, *, times_ms: list[int]) -> tuple:
    captured = make_captured()
    api = get_provider("openai")
    call = captured.telemetry.observe(api, "chat", server_address="vllm", server_port=8000)
    call.set_request_body(orjson.dumps(request))
    call.mark_sent(0)
    call.on_response(200, {"content-type": "text/event-stream"}, 1 * MS)
    for chunk, t in zip(chunks, times_ms, strict=True):
        call.on_chunk(chunk, t * MS)
    call.finish(t_ns=times_ms[-1] * MS)
    [span] = captured.genai_spans()
    return span.attributes, captured


def delta(**fields) -> dict:
    return {"id": "c1", "model": "m", "choices": [{"index": 0, "delta": fields, "finish_reason": None}]}


def test_reasoning_and_tool_arguments_count_as_labelled_output() -> None:
    chunks = sse(
        delta(role="assistant", content=""),
        delta(reasoning_content="Let me think about the weather."),
        delta(content="Checking."),
        delta(tool_calls=[{"index": 0, "id": "t1", "type": "function",
                           "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]),
        {"id": "c1", "model": "m", "choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 30}},
    )
    request = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "Weather in Paris?"}]}
    a, _ = run_call(chunks, request, times_ms=[2, 100, 120, 140, 150, 151])
    from llmtap.tokens import ReferenceTokenizer

    count = lambda text: ReferenceTokenizer().count(text)[0]  # noqa: E731
    reasoning = count("Let me think about the weather.")
    tool = count('get_weather{"city": "Paris"}')
    assert a["llmtap.usage.normalized_reasoning_tokens"] == reasoning
    assert a["llmtap.usage.normalized_tool_call_tokens"] == tool
    assert a["llmtap.usage.normalized_output_tokens"] == reasoning + tool + count("Checking.")
    assert a["llmtap.usage.normalized_input_tokens"] == count("Weather in Paris?")
    assert a["llmtap.usage.source"] == "provider"
    assert a["llmtap.content_chunks"] == 3  # reasoning, text and tool-call chunks all carry output


def test_prefill_and_decode_rates() -> None:
    chunks = sse(
        delta(role="assistant"),
        *[delta(content=f" w{i}") for i in range(5)],
        {"id": "c1", "model": "m", "choices": [], "usage": {"prompt_tokens": 400, "completion_tokens": 5}},
    )
    request = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    # first token at 200 ms, then one every 25 ms, end at 300 ms
    a, captured = run_call(chunks, request, times_ms=[3, 200, 225, 250, 275, 300, 300, 300])
    assert a["llmtap.ttft"] == pytest.approx(0.200)
    assert a["llmtap.prefill_rate"] == pytest.approx(400 / 0.200)
    assert a["llmtap.tpot"] == pytest.approx(0.100 / 4)
    assert a["llmtap.decode_rate"] == pytest.approx(4 / 0.100)
    assert a["llmtap.output_throughput"] == pytest.approx(5 / 0.300)
    assert a["llmtap.normalized_output_throughput"] == pytest.approx(a["llmtap.usage.normalized_output_tokens"] / 0.3)
    metrics = captured.metrics()
    assert metrics["llmtap.prefill_rate"][0].sum == pytest.approx(2000)
    assert metrics["llmtap.decode_rate"][0].sum == pytest.approx(40)
    normalized = {p.attributes["gen_ai.token.type"]: p.sum for p in metrics["llmtap.usage.normalized_tokens"]}
    assert normalized == {"input": 1, "output": a["llmtap.usage.normalized_output_tokens"]}
