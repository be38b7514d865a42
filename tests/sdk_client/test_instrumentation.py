"""instrument() as a whole: import cost, lazy patching, missing SDKs, configure(), other instrumentation."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types

import openai
import pytest
from opentelemetry.trace import SpanKind

import llmtap
from llmtap.coexist import detect_instrumentations
from llmtap_proxy.sim import SimServer
from tests.conftest import Captured
from tests.sdk_client.sdk_helpers import PROMPT, genai_spans

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_python(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT, **env},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_import_is_thin_and_patching_waits_for_the_sdk() -> None:
    out = run_python(
        """
        import sys, time
        start = time.perf_counter()
        import llmtap
        print("import_ms", (time.perf_counter() - start) * 1000)
        heavy = ("llmtap_proxy", "starlette", "uvicorn", "aiohttp", "opentelemetry", "httpx2", "openai")
        assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]
        llmtap.instrument()
        # instrumenting imports neither SDK; each is patched when the application imports it
        assert "openai" not in sys.modules and "anthropic" not in sys.modules
        assert not [m for m in ("llmtap_proxy", "starlette", "uvicorn", "aiohttp") if m in sys.modules]
        import openai
        client = openai.OpenAI(api_key="x")
        assert "llmtap" in repr(client._client._transport), client._client._transport
        llmtap.uninstrument()
        assert "llmtap" not in repr(openai.OpenAI(api_key="x")._client._transport)
        print("ok")
        """
    )
    assert out.splitlines()[-1] == "ok"
    assert float(out.split()[1]) < 50  # milliseconds; in practice about 1


def test_missing_sdks_are_a_no_op() -> None:
    out = run_python(
        """
        import logging, sys
        logging.basicConfig(level=logging.DEBUG, stream=sys.stdout)
        sys.modules["openai"] = None  # as if not installed
        sys.modules["anthropic"] = None
        import llmtap
        llmtap.instrument()
        llmtap.uninstrument()
        print("ok")
        """
    )
    assert "openai is not installed" in out and "anthropic is not installed" in out
    assert out.splitlines()[-1] == "ok"


def test_configure_keeps_the_applications_provider() -> None:
    out = run_python(
        """
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider
        import llmtap
        mine = TracerProvider()
        trace.set_tracer_provider(mine)  # the application's tracing, and no metrics set-up
        telemetry = llmtap.configure()
        assert trace.get_tracer_provider() is mine
        assert isinstance(metrics.get_meter_provider(), MeterProvider)  # built from OTEL_* for it
        assert telemetry.observer_name == "sdk" and telemetry is llmtap.get_telemetry()
        print("ok")
        """,
        OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none",
    )
    assert out.splitlines()[-1] == "ok"


def test_adopts_any_genai_client_span(sdk: Captured, sim: SimServer) -> None:
    """What opentelemetry-instrumentation-openai-v2 does: a current CLIENT span with gen_ai.* around the call."""
    client = openai.OpenAI(
        base_url=sim.url + "/v1", api_key="x", max_retries=0, http_client=llmtap.httpx_client(telemetry=sdk.telemetry)
    )
    other = sdk.telemetry.tracer_provider.get_tracer("opentelemetry.instrumentation.openai_v2")
    with other.start_as_current_span(
        "chat sim-small", kind=SpanKind.CLIENT,
        attributes={"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "x"},
    ):
        for _ in client.chat.completions.create(model="sim-small", messages=PROMPT, stream=True, max_tokens=3):
            pass
    agent_attributes = {"gen_ai.operation.name": "invoke_agent"}
    with other.start_as_current_span("invoke_agent", kind=SpanKind.CLIENT, attributes=agent_attributes):
        client.chat.completions.create(model="sim-small", messages=PROMPT, max_tokens=2)
    by_scope = {}
    for span in genai_spans(sdk, count=3):
        by_scope.setdefault(span.instrumentation_scope.name, []).append(span)
    [ours] = by_scope["llmtap"]
    theirs = by_scope["opentelemetry.instrumentation.openai_v2"]
    adopted, agent = sorted(theirs, key=lambda span: span.name != "chat sim-small")
    assert adopted.instrumentation_scope.name == "opentelemetry.instrumentation.openai_v2"
    assert adopted.attributes["gen_ai.request.model"] == "x"  # the owner's attribute is never overwritten
    assert adopted.attributes["llmtap.content_chunks"] == 3 and adopted.attributes["llmtap.ttft"] > 0
    assert ours.instrumentation_scope.name == "llmtap"  # an agent span is not an inference call: not adopted
    assert ours.parent.span_id == agent.context.span_id


def test_detects_other_instrumentation(monkeypatch: pytest.MonkeyPatch) -> None:
    class OpenAIInstrumentor:
        is_instrumented_by_opentelemetry = True

    module = types.ModuleType("opentelemetry.instrumentation.openai_v2")
    module.OpenAIInstrumentor = OpenAIInstrumentor  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "opentelemetry.instrumentation.openai_v2", module)
    found = {d.name: d for d in detect_instrumentations()}
    assert found["opentelemetry-instrumentation-openai-v2"].active
    assert "anthropic SDK tracing" in found
