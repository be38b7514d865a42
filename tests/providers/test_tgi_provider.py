"""Hugging Face Text Generation Inference (native /generate and /generate_stream) through the real proxy.

Fixture sources:
- huggingface/text-generation-inference `docs/openapi.json` (GenerateRequest, GenerateResponse, Details,
  StreamResponse, StreamDetails, ErrorResponse {error, error_type}, FinishReason length | eos_token |
  stop_sequence) and `docs/source/conceptual/streaming.md` (the token stream `STREAM` below: its tokens and
  its final StreamDetails(finish_reason=length, generated_tokens=12, seed=None)).
- The official client's types, `text_generation/types.py` in the `text-generation` package (Token.special:
  "Can be used to ignore tokens when concatenating").
The simulator (llmtap_proxy/sim.py, `_TGI`) serves these shapes. Requests go with plain aiohttp.
"""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmtap.providers.base import TEXT, ContentDelta, Finish, StreamError, UsageReport
from llmtap.providers.tgi import TGIAPI
from llmtap_proxy.sim import SimServer
from tests.conftest import Captured, RunningProxy
from tests.providers.support import (
    check_byte_exact,
    check_not_streamed,
    check_stream_timing,
    corrupt,
    json_values,
    kinds,
    observe_bytes,
    only_span,
    parse_all,
    split,
)

PROMPT = "What is Deep Learning?"


def token(token_id: int, text: str, logprob: float, special: bool = False) -> dict:
    return {"id": token_id, "text": text, "logprob": logprob, "special": special}


STREAM = [
    {"token": token(193, "\n", -0.007358551), "generated_text": None, "details": None},
    {"token": token(2044, "To", -1.1357422), "generated_text": None, "details": None},
    {"token": token(717, " make", -0.009841919), "generated_text": None, "details": None},
    {"token": token(25, ".", -1.3408203), "generated_text": "\nTo make cheese, you need to start with milk.",
     "details": {"finish_reason": "length", "generated_tokens": 12, "seed": None}},
]


async def test_generate_stream_cut_by_max_new_tokens(proxy: RunningProxy, captured: Captured, sim: SimServer) -> None:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 5, "temperature": 0.7, "top_p": 0.9, "top_k": 10,
                                             "seed": 3, "stop": ["photographer"], "do_sample": True}}
    status, headers, raw, record = await check_byte_exact(proxy.url, sim, "/generate_stream", body)
    events = [orjson.loads(line[5:]) for line in raw.split(b"\n\n") if line.startswith(b"data:")]
    assert status == 200 and headers["Content-Type"] == "text/event-stream" and len(events) == 5
    assert events[-1]["details"] == {"finish_reason": "length", "generated_tokens": 5, "seed": 3,
                                     "input_length": record["input_tokens"]}
    span = await only_span(captured)
    a = span.attributes
    assert span.name == "text_completion"  # TGI requests name no model
    assert a["gen_ai.provider.name"] == "huggingface.tgi" and a["gen_ai.operation.name"] == "text_completion"
    assert "gen_ai.request.model" not in a and a["gen_ai.request.stream"] is True
    assert a["gen_ai.request.max_tokens"] == 5 and a["gen_ai.request.temperature"] == 0.7
    assert a["gen_ai.request.top_p"] == 0.9 and a["gen_ai.request.top_k"] == 10 and a["gen_ai.request.seed"] == 3
    assert a["gen_ai.request.stop_sequences"] == ("photographer",)
    assert a["gen_ai.usage.output_tokens"] == 5 and a["gen_ai.usage.input_tokens"] == record["input_tokens"]
    assert a["gen_ai.response.finish_reasons"] == ("length",)
    check_stream_timing(captured, a, record)


async def test_generate_stream_ends_with_a_special_eos_token(proxy: RunningProxy, captured: Captured,
                                                             sim: SimServer) -> None:
    *_, raw, record = await check_byte_exact(proxy.url, sim, "/generate_stream", {"inputs": PROMPT},
                                             {"x-sim-tokens": "4"})
    last = orjson.loads(raw.rstrip().split(b"\n\n")[-1][5:])
    assert last["token"]["special"] is True and last["details"]["finish_reason"] == "eos_token"
    a = (await only_span(captured)).attributes
    assert a["llmtap.content_chunks"] == record["content_chunks"] == 4  # the EOS token is not content
    assert a["gen_ai.usage.output_tokens"] == 5  # but it was generated, and TGI counts it
    assert a["gen_ai.response.finish_reasons"] == ("eos_token",)
    check_stream_timing(captured, a, record)


async def test_generate_not_streamed(proxy: RunningProxy, captured: Captured, sim: SimServer) -> None:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 3, "details": True}}
    *_, raw, _ = await check_byte_exact(proxy.url, sim, "/generate", body)
    reply = orjson.loads(raw)
    a = (await only_span(captured)).attributes
    check_not_streamed(captured, a)
    assert a["gen_ai.usage.output_tokens"] == reply["details"]["generated_tokens"] == 3
    assert a["gen_ai.response.finish_reasons"] == ("length",)
    captured.spans_exporter.clear()
    await check_byte_exact(proxy.url, sim, "/generate", {"inputs": PROMPT, "parameters": {"max_new_tokens": 2}})
    a = (await only_span(captured)).attributes  # no details asked for: the reference tokenizer counts
    assert "gen_ai.usage.output_tokens" not in a and a["llmtap.usage.source"] == "tokenizer"


async def test_errors(proxy: RunningProxy, captured: Captured, sim: SimServer) -> None:
    status, _, raw, _ = await check_byte_exact(proxy.url, sim, "/generate", {"inputs": PROMPT}, {"x-sim-status": "422"})
    assert status == 422 and orjson.loads(raw)["error_type"] == "validation"
    a = (await only_span(captured)).attributes
    assert a["error.type"] == "422" and a["gen_ai.provider.name"] == "huggingface.tgi"

    captured.spans_exporter.clear()
    await check_byte_exact(proxy.url, sim, "/generate_stream", {"inputs": PROMPT}, {"x-sim-error-event": "3"})
    a = (await only_span(captured)).attributes
    assert a["error.type"] == "generation" and a["llmtap.content_chunks"] == 3


def test_documented_stream_and_special_tokens() -> None:
    raw = b"".join(b"data:" + orjson.dumps({"index": i + 1, **e}) + b"\n\n" for i, e in enumerate(STREAM))
    items = parse_all(TGIAPI(), "sse", raw, [17, 64, 301])
    assert "".join(d.text for d in kinds(items, ContentDelta)) == "\nTo make."
    assert kinds(items, Finish) == [Finish("length")]
    assert kinds(items, UsageReport) == [UsageReport(output_tokens=12)]
    eos = b'data:{"index":5,"token":{"id":2,"text":"</s>","logprob":0.0,"special":true},"details":null}\n\n'
    assert kinds(parse_all(TGIAPI(), "sse", eos, []), ContentDelta) == []
    error = b'data:{"error":"Request failed during generation: Server error: OOM","error_type":"generation"}\n\n'
    assert parse_all(TGIAPI(), "sse", error, []) == [StreamError("generation",
                                                                 "Request failed during generation: Server error: OOM")]
    compat = TGIAPI().response_items(TGIAPI().request_facts("text_completion", b"{}"),
                                     b'[{"generated_text":"test","details":{"finish_reason":"eos_token",'
                                     b'"generated_tokens":1,"prefill":[{"id":0,"text":"a"}],"tokens":[]}}]')
    assert kinds(compat, ContentDelta) == [ContentDelta("test", TEXT)]
    assert kinds(compat, UsageReport) == [UsageReport(input_tokens=1, output_tokens=1)]


TGI_KEYS = ["index", "token", "id", "text", "logprob", "special", "generated_text", "details", "finish_reason",
            "generated_tokens", "seed", "input_length", "prefill", "error", "error_type", "top_tokens"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(json_values(TGI_KEYS), max_size=6), st.integers(0, 3), st.lists(st.integers(0, 3000), max_size=6),
       st.binary(max_size=48))
def test_fuzz_never_raises_out_of_the_observer(values, corruption, cuts, noise) -> None:
    raw = b"".join(b"data:" + orjson.dumps(v) + b"\n\n" for v in values) + noise
    raw = corrupt(raw, corruption) if corruption else raw
    request = orjson.dumps(values[0]) if values else noise
    observe_bytes("POST", "/generate_stream", {}, request, "text/event-stream", split(raw, cuts))
    observe_bytes("POST", "/generate", {}, request, "application/json", [raw])
