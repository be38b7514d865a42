"""SDK and proxy together: one trace (application span -> SDK GenAI span -> proxy GenAI span).

The SDK injects the W3C trace context of its span into the request; the real proxy, under uvicorn,
makes its span a child of it. Both measure the same call, so the client's TTFT (further away) is at
least the proxy's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import openai
import pytest

from llmtap_proxy.sim import SimServer
from tests.conftest import Captured, RunningProxy, make_captured, proxy_settings, run_proxy
from tests.sdk_client.sdk_helpers import PROMPT, agenai_spans

ANTHROPIC_SCOPE = "com.anthropic.sdk.python"


@pytest.fixture(scope="module")
async def proxied(sim: SimServer) -> AsyncIterator[tuple[RunningProxy, Captured]]:
    """One real proxy for the module, with its own telemetry (observer "proxy")."""
    proxy_side = make_captured()
    async with run_proxy(proxy_settings(sim.url), proxy_side.telemetry) as proxy:
        yield proxy, proxy_side


@pytest.fixture
def proxy(proxied: tuple[RunningProxy, Captured]) -> RunningProxy:
    proxied[1].spans_exporter.clear()
    return proxied[0]


@pytest.fixture
def proxy_side(proxied: tuple[RunningProxy, Captured]) -> Captured:
    return proxied[1]


async def test_openai_span_tree_through_the_proxy(
    instrumented: Captured, proxy: RunningProxy, proxy_side: Captured
) -> None:
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-secret", max_retries=0)
    tracer = instrumented.telemetry.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("handle request") as app:
        async for _ in await client.chat.completions.create(
            model="sim-small", messages=PROMPT, stream=True, max_tokens=8, stream_options={"include_usage": True}
        ):
            pass
    [sdk_span] = await agenai_spans(instrumented)
    [proxy_span] = await proxy_side.wait_for_genai_spans(1)

    app_context = app.get_span_context()
    assert sdk_span.context.trace_id == proxy_span.context.trace_id == app_context.trace_id
    assert sdk_span.parent.span_id == app_context.span_id
    assert proxy_span.parent.span_id == sdk_span.context.span_id
    s, p = sdk_span.attributes, proxy_span.attributes
    assert s["llmtap.observer"] == "sdk" and p["llmtap.observer"] == "proxy"
    assert s["server.port"] != p["server.port"]  # the SDK talks to the proxy, the proxy to the simulator
    assert s["gen_ai.response.id"] == p["gen_ai.response.id"]
    # chunks that arrive while a reader is busy are read together: the SDK never sees more than the proxy
    assert 1 <= s["llmtap.content_chunks"] <= p["llmtap.content_chunks"] <= 8
    assert s["gen_ai.usage.output_tokens"] == p["gen_ai.usage.output_tokens"] == 8
    assert s["llmtap.ttft"] >= p["llmtap.ttft"] > 0.02
    assert s["gen_ai.response.time_to_first_chunk"] >= p["gen_ai.response.time_to_first_chunk"]
    assert sdk_span.start_time <= proxy_span.start_time and sdk_span.end_time >= proxy_span.end_time


async def test_anthropic_sdk_span_joins_the_proxy_trace(
    instrumented: Captured, proxy: RunningProxy, proxy_side: Captured
) -> None:
    client = anthropic.AsyncAnthropic(
        base_url=proxy.url, api_key="sk-ant-secret", max_retries=0,
        open_telemetry={"tracer_provider": instrumented.telemetry.tracer_provider},
    )
    tracer = instrumented.telemetry.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("handle request") as app:
        async with client.messages.stream(model="claude-sim", max_tokens=6, messages=PROMPT) as stream:
            await stream.get_final_message()
    [sdk_span] = await agenai_spans(instrumented)  # the anthropic SDK's span, with llmtap's figures
    [proxy_span] = await proxy_side.wait_for_genai_spans(1)

    assert sdk_span.instrumentation_scope.name == ANTHROPIC_SCOPE
    assert sdk_span.parent.span_id == app.get_span_context().span_id
    assert proxy_span.parent.span_id == sdk_span.context.span_id
    assert proxy_span.context.trace_id == app.get_span_context().trace_id
    s, p = sdk_span.attributes, proxy_span.attributes
    assert s["llmtap.observer"] == "sdk" and p["llmtap.observer"] == "proxy"
    assert s["llmtap.ttft"] >= p["llmtap.ttft"] > 0.02
    assert 1 <= s["llmtap.content_chunks"] <= p["llmtap.content_chunks"] <= 6
    assert s["gen_ai.usage.output_tokens"] == p["gen_ai.usage.output_tokens"] == 6
