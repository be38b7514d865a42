"""Gemini API and Vertex AI through the real proxy, with the official google-genai SDK where it installs.

Fixture sources:
- Response shapes: the Gemini API reference, "GenerateContentResponse"
  (https://ai.google.dev/api/generate-content#v1beta.GenerateContentResponse), and for the default
  streamed array framing the REST reference of `models.streamGenerateContent`. The simulator
  (llmtap_proxy/sim.py, `_Gemini`) serves these shapes.
- `THINKING_RESPONSE`: `UNARY_HOP1_PAYLOAD` in the official SDK's tests, googleapis/python-genai
  `google/genai/tests/models/test_gc_continuation_token.py` (thought part, cached and thought tokens).
- `STREAM_WITH_ERROR`: `EVENT_STREAM_DATA_WITH_ERROR` in googleapis/python-genai
  `google/genai/tests/client/test_async_stream.py` (an error object after a candidate, mid-stream).
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmtap.providers.base import REASONING, TEXT, ContentDelta, Finish, StreamError, UsageReport
from llmtap.providers.gemini import GeminiAPI
from llmtap_proxy.sim import SimServer
from tests.conftest import Captured, RunningProxy, make_captured, proxy_settings, run_proxy
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
    truth,
)

genai = pytest.importorskip("google.genai")
from google.genai import errors, types  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # google-genai subclasses aiohttp's session

MODEL = "gemini-2.0-flash"
SECRET = "AIza-test-secret-never-exported"
STREAM_PATH = f"/v1beta/models/{MODEL}:streamGenerateContent"
BODY = {"contents": [{"role": "user", "parts": [{"text": "Count some words for me please"}]}],
        "generationConfig": {"maxOutputTokens": 50}}

THINKING_RESPONSE = {
    "candidates": [{
        "index": 0,
        "content": {"role": "model", "parts": [{"text": "Thinking step 1...", "thought": True}, {"text": "Hello "}]},
        "finishReason": "CONTINUATION",
    }],
    "usageMetadata": {"promptTokenCount": 120, "candidatesTokenCount": 50, "thoughtsTokenCount": 30,
                      "totalTokenCount": 200, "cachedContentTokenCount": 40, "toolUsePromptTokenCount": 10},
}
STREAM_WITH_ERROR = [
    {"candidates": [{"content": {"parts": [{"text": "test"}], "role": "model"}}]},
    {"error": {"code": 500, "message": "Error", "status": "INTERNAL"}},
]


def client(url: str, **headers: str) -> genai.Client:
    return genai.Client(api_key=SECRET, http_options=types.HttpOptions(base_url=url, headers=headers))


@pytest.fixture(scope="module", autouse=True)
async def warm_sdk(sim: SimServer) -> None:
    """The SDK builds its pydantic models on first use; pay that once, directly against the simulator."""
    headers = {"x-sim-tokens": "2", "x-sim-ttft-ms": "0"}
    direct = client(sim.url, **headers)
    async for _ in await direct.aio.models.generate_content_stream(model=MODEL, contents="hi"):
        pass
    await direct.aio.models.generate_content(model=MODEL, contents="hi")
    async for _ in await vertex_client(sim.url, **headers).aio.models.generate_content_stream(model=MODEL,
                                                                                              contents="hi"):
        pass


def vertex_client(url: str, **headers: str) -> genai.Client:
    credentials = pytest.importorskip("google.oauth2.credentials").Credentials("fake-oauth-token")
    return genai.Client(vertexai=True, project="my-project", location="us-central1", credentials=credentials,
                        http_options=types.HttpOptions(base_url=url, headers=headers))


async def test_sdk_stream_alt_sse(proxy: RunningProxy, captured: Captured, sim: SimServer) -> None:
    config = types.GenerateContentConfig(max_output_tokens=20, temperature=0.3, top_p=0.9, top_k=5, seed=11,
                                         stop_sequences=["zzz"], system_instruction="Be brief.")
    text, last = "", None
    stream = await client(proxy.url, **{"x-sim-tokens": "6"}).aio.models.generate_content_stream(
        model=MODEL, contents="Count some words for me please", config=config)
    async for chunk in stream:
        text += chunk.text or ""
        last = chunk
    assert last is not None and len(text.split()) == 6
    record = truth(sim, last.sdk_http_response.headers["x-sim-request-id"])
    span = await only_span(captured)
    a = span.attributes
    assert span.name == f"generate_content {MODEL}"
    assert a["gen_ai.provider.name"] == "gcp.gemini" and a["gen_ai.operation.name"] == "generate_content"
    assert a["gen_ai.request.model"] == MODEL and a["gen_ai.response.model"] == last.model_version == MODEL
    assert a["gen_ai.response.id"] == last.response_id
    assert a["gen_ai.request.max_tokens"] == 20 and a["gen_ai.request.temperature"] == 0.3
    assert a["gen_ai.request.top_p"] == 0.9 and a["gen_ai.request.top_k"] == 5 and a["gen_ai.request.seed"] == 11
    assert a["gen_ai.request.stop_sequences"] == ("zzz",) and a["gen_ai.request.stream"] is True
    assert a["gen_ai.usage.input_tokens"] == last.usage_metadata.prompt_token_count == record["input_tokens"]
    assert a["gen_ai.usage.output_tokens"] == last.usage_metadata.candidates_token_count == 6
    assert a["gen_ai.response.finish_reasons"] == ("STOP",) and a["llmtap.usage.source"] == "provider"
    check_stream_timing(captured, a, record)
    assert SECRET not in str(dict(a))


async def test_streamed_json_array_is_byte_exact_and_timed(proxy: RunningProxy, captured: Captured,
                                                           sim: SimServer) -> None:
    """Without ?alt=sse the stream is one JSON array; each element is still a timed chunk."""
    status, headers, raw, record = await check_byte_exact(proxy.url, sim, STREAM_PATH, BODY, {"x-sim-tokens": "5"})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    elements = orjson.loads(raw)
    assert raw.startswith(b"[{") and len(elements) == 6 and elements[-1]["candidates"][0]["finishReason"] == "STOP"
    a = (await only_span(captured)).attributes
    assert a["gen_ai.request.stream"] is True and a["gen_ai.request.max_tokens"] == 50
    assert a["gen_ai.usage.output_tokens"] == 5 and a["gen_ai.usage.input_tokens"] == record["input_tokens"]
    check_stream_timing(captured, a, record)


async def test_sdk_generate_content_not_streamed(proxy: RunningProxy, captured: Captured, sim: SimServer) -> None:
    config = types.GenerateContentConfig(max_output_tokens=3)
    response = await client(proxy.url).aio.models.generate_content(model=MODEL, contents="hello", config=config)
    assert len(response.text.split()) == 3
    a = (await only_span(captured)).attributes
    check_not_streamed(captured, a)
    assert a["gen_ai.usage.output_tokens"] == response.usage_metadata.candidates_token_count == 3
    assert a["gen_ai.response.finish_reasons"] == ("MAX_TOKENS",) and a["gen_ai.response.id"] == response.response_id
    captured.spans_exporter.clear()
    _, _, raw, _ = await check_byte_exact(proxy.url, sim, f"/v1beta/models/{MODEL}:generateContent", BODY)
    assert orjson.loads(raw)["modelVersion"] == MODEL


async def test_vertex_ai_sdk_stream(proxy: RunningProxy, captured: Captured, sim: SimServer) -> None:
    vertex = vertex_client(proxy.url, **{"x-sim-tokens": "4"})
    chunks = [c async for c in await vertex.aio.models.generate_content_stream(model=MODEL, contents="hi")]
    record = truth(sim, chunks[-1].sdk_http_response.headers["x-sim-request-id"])
    assert record["endpoint"].startswith("/v1beta1/projects/my-project/locations/us-central1/publishers/google/")
    span = await only_span(captured)
    a = span.attributes
    assert a["gen_ai.provider.name"] == "gcp.vertex_ai" and a["gen_ai.request.model"] == MODEL
    assert a["gen_ai.usage.output_tokens"] == 4 and "fake-oauth-token" not in str(dict(a))
    check_stream_timing(captured, a, record)


async def test_errors(proxy: RunningProxy, captured: Captured, sim: SimServer) -> None:
    with pytest.raises(errors.ClientError) as raised:
        await client(proxy.url, **{"x-sim-status": "429"}).aio.models.generate_content(model=MODEL, contents="x")
    assert raised.value.code == 429 and raised.value.status == "RESOURCE_EXHAUSTED"
    a = (await only_span(captured)).attributes
    assert a["error.type"] == "429" and a["gen_ai.provider.name"] == "gcp.gemini"
    assert a["http.response.status_code"] == 429

    captured.spans_exporter.clear()
    _, _, raw, record = await check_byte_exact(proxy.url, sim, STREAM_PATH, BODY, {"x-sim-error-event": "2"})
    assert orjson.loads(raw)[-1]["error"]["status"] == "INTERNAL" and record["status"] == "error_event"
    a = (await only_span(captured)).attributes
    assert a["error.type"] == "INTERNAL" and a["llmtap.content_chunks"] == 2


async def test_route_with_provider_override_reads_a_streamed_array_whole(sim: SimServer) -> None:
    """A route that names its provider skips detection; the array is then read at the end: usage and finish
    reasons are still right (TTFT needs the streaming twin, see llmtap.providers.gemini)."""
    captured = make_captured()
    settings_ = proxy_settings(sim.url)
    settings_.routes[0].provider = "gcp.gemini"
    async with run_proxy(settings_, captured.telemetry) as proxy:
        *_, record = await check_byte_exact(proxy.url, sim, STREAM_PATH, BODY, {"x-sim-tokens": "3"})
    a = (await only_span(captured)).attributes
    assert a["gen_ai.provider.name"] == "gcp.gemini" and a["gen_ai.request.model"] == MODEL
    assert a["gen_ai.usage.output_tokens"] == 3 and a["gen_ai.usage.input_tokens"] == record["input_tokens"]
    assert a["gen_ai.response.finish_reasons"] == ("STOP",)
    assert a["llmtap.usage.normalized_output_tokens"] >= 3


def test_parser_reads_the_sdk_fixtures() -> None:
    api = GeminiAPI()
    items = api.response_items(api.request_facts("generate_content", b"{}"), orjson.dumps(THINKING_RESPONSE))
    assert kinds(items, ContentDelta) == [ContentDelta("Thinking step 1...", REASONING), ContentDelta("Hello ", TEXT)]
    assert kinds(items, Finish) == [Finish("CONTINUATION")]
    assert kinds(items, UsageReport) == [UsageReport(input_tokens=120, output_tokens=80, cache_read_input_tokens=40,
                                                     reasoning_output_tokens=30)]
    raw = b"[" + b",\r\n".join(orjson.dumps(e) for e in STREAM_WITH_ERROR) + b"]"
    streamed = parse_all(GeminiAPI(streamed_json=True), "json-array", raw, [7, 40, 90])
    assert kinds(streamed, ContentDelta) == [ContentDelta("test", TEXT)]
    assert kinds(streamed, StreamError) == [StreamError("INTERNAL", "Error")]
    whole = api.response_items(api.request_facts("generate_content", b"{}"), raw)  # the override route's path
    assert kinds(whole, ContentDelta) == [ContentDelta("test", TEXT)] and kinds(whole, StreamError)


GEMINI_KEYS = ["candidates", "content", "parts", "text", "thought", "functionCall", "name", "args", "finishReason",
               "usageMetadata", "promptTokenCount", "candidatesTokenCount", "thoughtsTokenCount", "modelVersion",
               "responseId", "error", "code", "status", "message", "promptFeedback", "blockReason", "executableCode"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(json_values(GEMINI_KEYS), max_size=5), st.booleans(), st.integers(0, 3),
       st.lists(st.integers(0, 4000), max_size=6), st.binary(max_size=64))
def test_fuzz_never_raises_out_of_the_observer(values, sse, corruption, cuts, noise) -> None:
    if sse:
        raw = b"".join(b"data: " + orjson.dumps(v) + b"\r\n\r\n" for v in values) + noise
        content_type = "text/event-stream"
    else:
        raw = b"[" + b",\r\n".join(orjson.dumps(v) for v in values) + b"]" + noise
        content_type = "application/json; charset=UTF-8"
    if corruption:
        raw = corrupt(raw, corruption)
    request = orjson.dumps(values[0]) if values else noise
    observe_bytes("POST", STREAM_PATH, {}, request, content_type, split(raw, cuts))
    observe_bytes("POST", f"/v1beta/models/{MODEL}:generateContent", {}, request, "application/json", [raw])
