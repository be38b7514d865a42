"""Azure OpenAI deployment paths through the real proxy, with the official openai SDK's AsyncAzureOpenAI.

Fixture sources: the Azure OpenAI REST reference (https://learn.microsoft.com/azure/ai-services/openai/reference,
"Chat completions": POST {endpoint}/openai/deployments/{deployment-id}/chat/completions?api-version=..., the
`api-key` header, and the streamed `prompt_filter_results` chunk with empty choices), and the openai SDK's
`AzureOpenAI` client (openai/openai-python `src/openai/lib/azure.py`), which builds those requests here.
The simulator (llmtap_proxy/sim.py, `_AzureChat`) serves them.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmtap_proxy.sim import SimServer
from tests.conftest import Captured, RunningProxy
from tests.providers.support import (
    check_byte_exact,
    check_not_streamed,
    check_stream_timing,
    corrupt,
    json_values,
    observe_bytes,
    only_span,
    split,
    truth,
)

openai = pytest.importorskip("openai")

DEPLOYMENT = "gpt-4o-prod"
API_VERSION = "2024-10-21"
SECRET = "azure-api-key-SECRET-never-exported"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count some words for me please"}]
PATH = f"/openai/deployments/{DEPLOYMENT}/chat/completions?api-version={API_VERSION}"


def azure(url: str) -> openai.AsyncAzureOpenAI:
    return openai.AsyncAzureOpenAI(azure_endpoint=url, api_key=SECRET, api_version=API_VERSION, max_retries=0)


def exported(captured: Captured) -> str:
    spans = [orjson.dumps(dict(s.attributes), default=str).decode() for s in captured.spans()]
    metrics = [orjson.dumps(dict(p.attributes), default=str).decode()
               for found in captured.metrics().values() for p in found]
    return "\n".join(spans + metrics)


@pytest.fixture(scope="module", autouse=True)
async def warm_sdk(sim: SimServer) -> None:
    """The SDK builds its response models on first use; pay that once, directly against the simulator."""
    headers = {"x-sim-tokens": "2", "x-sim-ttft-ms": "0"}
    async for _ in await azure(sim.url).chat.completions.create(
            model=DEPLOYMENT, messages=MESSAGES, stream=True, stream_options={"include_usage": True},
            extra_headers=headers):
        pass
    await azure(sim.url).chat.completions.create(model=DEPLOYMENT, messages=MESSAGES, extra_headers=headers)


async def test_stream_with_the_official_azure_client(proxy: RunningProxy, captured: Captured, sim: SimServer) -> None:
    raw = await azure(proxy.url).chat.completions.with_raw_response.create(
        model=DEPLOYMENT, messages=MESSAGES, stream=True, stream_options={"include_usage": True}, max_tokens=7,
        temperature=0.5)
    assert str(raw.http_request.url).endswith(PATH) and raw.http_request.headers["api-key"] == SECRET
    chunks = [c async for c in raw.parse()]
    assert chunks[0].choices == [] and chunks[0].prompt_filter_results  # Azure's prompt-filter chunk first
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 7 and chunks[-1].usage.completion_tokens == 7
    record = truth(sim, raw.headers["x-sim-request-id"])
    span = await only_span(captured)
    a = span.attributes
    assert span.name == f"chat {DEPLOYMENT}"
    assert a["gen_ai.provider.name"] == "azure.ai.openai" and a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == a["gen_ai.response.model"] == DEPLOYMENT
    assert a["gen_ai.request.max_tokens"] == 7 and a["gen_ai.request.temperature"] == 0.5
    assert a["gen_ai.usage.output_tokens"] == 7 and a["gen_ai.usage.input_tokens"] == record["input_tokens"]
    assert a["gen_ai.response.finish_reasons"] == ("length",)
    assert a["gen_ai.response.id"] == chunks[1].id
    check_stream_timing(captured, a, record)
    assert SECRET not in exported(captured)


async def test_deployment_names_the_model_and_bytes_pass_through(proxy: RunningProxy, captured: Captured,
                                                                 sim: SimServer) -> None:
    body = {"messages": MESSAGES, "max_tokens": 3}  # no "model": the deployment is the model
    status, _, raw, _ = await check_byte_exact(proxy.url, sim, PATH, body, {"api-key": SECRET})
    assert status == 200 and orjson.loads(raw)["prompt_filter_results"]
    a = (await only_span(captured)).attributes
    check_not_streamed(captured, a)
    assert a["gen_ai.request.model"] == DEPLOYMENT and a["gen_ai.usage.output_tokens"] == 3
    assert SECRET not in exported(captured)


async def test_errors(proxy: RunningProxy, captured: Captured, sim: SimServer) -> None:
    with pytest.raises(openai.AuthenticationError):
        await azure(proxy.url).chat.completions.create(model=DEPLOYMENT, messages=MESSAGES,
                                                       extra_headers={"x-sim-status": "401"})
    a = (await only_span(captured)).attributes
    assert a["error.type"] == "401" and a["gen_ai.provider.name"] == "azure.ai.openai"
    captured.spans_exporter.clear()
    stream = await azure(proxy.url).chat.completions.create(model=DEPLOYMENT, messages=MESSAGES, stream=True,
                                                            extra_headers={"x-sim-error-event": "2"})
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    a = (await only_span(captured)).attributes
    assert a["error.type"] == "server_error" and a["llmtap.content_chunks"] == 2
    assert SECRET not in exported(captured)


AZURE_KEYS = ["choices", "delta", "content", "finish_reason", "usage", "prompt_tokens", "completion_tokens", "model",
              "id", "prompt_filter_results", "content_filter_results", "error", "tool_calls", "function"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(json_values(AZURE_KEYS), max_size=5), st.integers(0, 3), st.lists(st.integers(0, 3000), max_size=6),
       st.binary(max_size=48))
def test_fuzz_never_raises_out_of_the_observer(values, corruption, cuts, noise) -> None:
    raw = b"".join(b"data: " + orjson.dumps(v) + b"\n\n" for v in values) + b"data: [DONE]\n\n" + noise
    raw = corrupt(raw, corruption) if corruption else raw
    request = orjson.dumps(values[0]) if values else noise
    path = PATH.partition("?")[0]
    observe_bytes("POST", path, {"api-key": SECRET}, request, "text/event-stream", split(raw, cuts))
    observe_bytes("POST", path, {"api-key": SECRET}, request, "application/json", [raw])
