"""The real anthropic SDK (on httpx2), instrumented by llmtap, against the simulated backend.

The anthropic SDK opens its own GenAI span per API call when it has a tracer provider; llmtap then adds
its figures to that span (and records its metrics) instead of opening a second GenAI span.
"""

from __future__ import annotations

import anthropic
from opentelemetry.trace import SpanKind

import llmtap
from llmtap_proxy.sim import SimServer
from tests.conftest import Captured
from tests.sdk_client.sdk_helpers import PROMPT, FlakyUpstream, agenai_spans, genai_spans, points

ANTHROPIC_SCOPE = "com.anthropic.sdk.python"


def traced(captured: Captured) -> dict:
    """The anthropic SDK's own tracing, into the test's exporter."""
    return {"tracer_provider": captured.telemetry.tracer_provider}


def test_own_span_when_the_sdk_traces_nothing(instrumented: Captured, sim: SimServer) -> None:
    client = anthropic.Anthropic(base_url=sim.url, api_key="sk-ant-secret", max_retries=0, open_telemetry=False)
    tracer = instrumented.telemetry.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("app") as app, client.messages.stream(
        model="claude-sim", max_tokens=8, messages=PROMPT
    ) as stream:
        message = stream.get_final_message()
    [span] = genai_spans(instrumented)
    a = span.attributes
    assert span.instrumentation_scope.name == "llmtap" and span.name == "chat claude-sim"
    assert span.parent.span_id == app.get_span_context().span_id
    assert a["gen_ai.provider.name"] == "anthropic" and a["llmtap.observer"] == "sdk"
    assert a["gen_ai.usage.output_tokens"] == message.usage.output_tokens == 8
    assert a["gen_ai.response.id"] == message.id and a["llmtap.ttft"] >= 0.02


async def test_adopts_the_sdk_span_non_streaming(instrumented: Captured, sim: SimServer) -> None:
    client = anthropic.AsyncAnthropic(
        base_url=sim.url, api_key="x", max_retries=0, open_telemetry=traced(instrumented)
    )
    message = await client.messages.create(model="claude-sim", max_tokens=5, messages=PROMPT)
    [span] = await agenai_spans(instrumented)  # one GenAI span for the call: the SDK's
    a = span.attributes
    assert span.instrumentation_scope.name == ANTHROPIC_SCOPE and span.name == "anthropic.messages.create"
    assert span.kind is SpanKind.CLIENT
    assert a["gen_ai.response.id"] == message.id and a["gen_ai.usage.output_tokens"] == 5  # the SDK's own
    assert a["llmtap.observer"] == "sdk"  # and what llmtap adds
    assert a["gen_ai.request.stream"] is False
    assert a["llmtap.usage.normalized_output_tokens"] > 0 and "llmtap.cold_start" in a
    [duration] = points(instrumented, "gen_ai.client.operation.duration")
    assert duration.attributes["gen_ai.provider.name"] == "anthropic"


def test_adopted_span_gets_streaming_figures(instrumented: Captured, sim: SimServer) -> None:
    client = anthropic.Anthropic(base_url=sim.url, api_key="x", max_retries=0, open_telemetry=traced(instrumented))
    events = list(client.messages.create(model="claude-sim", max_tokens=10, messages=PROMPT, stream=True))
    assert events[-1].type == "message_stop"
    [span] = genai_spans(instrumented)
    a = span.attributes
    assert span.instrumentation_scope.name == ANTHROPIC_SCOPE
    assert a["llmtap.content_chunks"] == 10 and a["llmtap.ttft"] >= 0.02 and a["llmtap.tpot"] > 0
    assert "gen_ai.response.time_to_first_chunk" in a  # the SDK's own, kept
    assert span.status.status_code.name == "OK" and "error.type" not in a
    assert [e.name for e in span.events] == ["llmtap.first_token"]
    assert sum(p.count for p in points(instrumented, "gen_ai.client.operation.time_per_output_chunk")) == 9


def test_adopted_span_marked_cancelled_on_early_close(instrumented: Captured, sim: SimServer) -> None:
    client = anthropic.Anthropic(base_url=sim.url, api_key="x", max_retries=0, open_telemetry=traced(instrumented))
    with client.messages.stream(model="claude-sim", max_tokens=10, messages=PROMPT) as stream:
        for i, _ in enumerate(stream.text_stream):
            if i == 2:
                break
    [span] = genai_spans(instrumented)
    assert span.instrumentation_scope.name == ANTHROPIC_SCOPE
    assert span.attributes["error.type"] == "cancelled"
    assert span.attributes["llmtap.content_chunks"] == 3


def test_retry_with_the_sdk_span_one_span_per_logical_call(instrumented: Captured, flaky: FlakyUpstream) -> None:
    client = anthropic.Anthropic(base_url=flaky.url, api_key="x", max_retries=2, open_telemetry=traced(instrumented))
    message = client.messages.create(model="claude-sim", max_tokens=4, messages=PROMPT)
    assert message.usage.output_tokens == 4
    [span] = genai_spans(instrumented)
    a = span.attributes
    assert span.instrumentation_scope.name == ANTHROPIC_SCOPE and a["http.request.resend_count"] == 1
    assert "error.type" not in a and span.status.status_code.name == "OK"  # the failed attempt wrote nothing
    assert a["llmtap.observer"] == "sdk" and a["http.response.status_code"] == 200
    # each attempt is in the metrics, and carried the SDK span's trace context
    durations = {
        p.attributes.get("error.type"): p.count for p in points(instrumented, "gen_ai.client.operation.duration")
    }
    assert durations == {"429": 1, None: 1}
    for headers in flaky.seen:
        assert headers["traceparent"].startswith(f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-")


def test_no_adoption_when_switched_off(sdk: Captured, sim: SimServer) -> None:
    client = anthropic.Anthropic(
        base_url=sim.url, api_key="x", max_retries=0, open_telemetry=traced(sdk),
        http_client=llmtap.httpx_client(telemetry=sdk.telemetry, adopt_spans=False),
    )
    client.messages.create(model="claude-sim", max_tokens=3, messages=PROMPT)
    theirs, ours = sorted(genai_spans(sdk, count=2), key=lambda s: s.instrumentation_scope.name != ANTHROPIC_SCOPE)
    assert theirs.instrumentation_scope.name == ANTHROPIC_SCOPE and "llmtap.observer" not in theirs.attributes
    assert ours.parent.span_id == theirs.context.span_id and ours.attributes["llmtap.observer"] == "sdk"


def test_llmtap_propagates_the_sdk_span_when_the_sdk_does_not(instrumented: Captured, flaky: FlakyUpstream) -> None:
    flaky.fail = 0
    client = anthropic.Anthropic(
        base_url=flaky.url, api_key="x", max_retries=0,
        open_telemetry={"tracer_provider": instrumented.telemetry.tracer_provider, "propagation": False},
    )
    client.messages.create(model="claude-sim", max_tokens=2, messages=PROMPT)
    [span] = genai_spans(instrumented)
    assert span.instrumentation_scope.name == ANTHROPIC_SCOPE and span.attributes["llmtap.observer"] == "sdk"
    [headers] = flaky.seen
    assert headers["traceparent"].startswith(f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-")
