"""`llmtap serve` as a real process: OTLP/HTTP export decoded by a real receiver, SIGTERM drain, no secrets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import orjson
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from llmtap_proxy.sim import SimServer
from tests.processes import free_port, local_http_server, refuses_connections

SECRET = "sk-live-DO-NOT-LEAK-4242"


@dataclass
class OtlpReceiver:
    url: str = ""
    raw: list[bytes] = field(default_factory=list)
    spans: list = field(default_factory=list)
    metric_names: set[str] = field(default_factory=set)
    resources: list[dict] = field(default_factory=list)

    def span_attributes(self) -> list[dict]:
        return [{kv.key: _value(kv.value) for kv in span.attributes} for span in self.spans]


def _value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(v) for v in any_value.array_value.values)
    return getattr(any_value, kind) if kind else None


@contextlib.asynccontextmanager
async def otlp_receiver() -> AsyncIterator[OtlpReceiver]:
    """An OTLP/HTTP (protobuf) receiver that decodes every request with opentelemetry-proto."""
    received = OtlpReceiver()

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        received.raw.append(body)
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        for resource_spans in message.resource_spans:
            received.resources.append({kv.key: _value(kv.value) for kv in resource_spans.resource.attributes})
            for scope_spans in resource_spans.scope_spans:
                received.spans.extend(scope_spans.spans)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def metrics(request: web.Request) -> web.Response:
        body = await request.read()
        received.raw.append(body)
        message = ExportMetricsServiceRequest()
        message.ParseFromString(body)
        for resource_metrics in message.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                received.metric_names.update(m.name for m in scope_metrics.metrics)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async with local_http_server({"/v1/traces": traces, "/v1/metrics": metrics}) as url:
        received.url = url
        yield received


@contextlib.asynccontextmanager
async def serve_process(upstream: str, otlp: str, **env: str) -> AsyncIterator[tuple[subprocess.Popen, str]]:
    port = free_port()
    environment = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "LLMTAP_LOG_LEVEL": "debug",
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "llmtap_proxy.cli", "serve", "--upstream", upstream, "--port", str(port)],
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url + "/readyz") as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("llmtap serve did not become ready")
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


async def test_sigterm_drains_streams_and_flushes_spans_over_otlp(sim: SimServer) -> None:
    body = {
        "model": "sim-small", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "a long answer please"}],
    }
    headers = {"Authorization": f"Bearer {SECRET}", "x-api-key": SECRET, "x-sim-itl-ms": "40", "x-sim-tokens": "25"}
    async with otlp_receiver() as receiver, serve_process(sim.url, receiver.url) as (process, url):
        async with aiohttp.ClientSession() as session:
            async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as response:
                first = await response.content.readany()
                assert first
                process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                # it has stopped accepting new connections ...
                assert await refuses_connections(session, url), "the proxy still accepted connections after SIGTERM"
                # ... but the stream in flight finishes, complete
                rest = first + await response.content.read()
        assert rest.rstrip().endswith(b"data: [DONE]")
        content = [orjson.loads(line[6:]) for line in rest.split(b"\n") if line.startswith(b"data: {")]
        assert sum(1 for c in content if c["choices"] and c["choices"][0]["delta"].get("content")) == 25
        exit_code = await asyncio.to_thread(process.wait, 20)
        logs = process.stdout.read().decode()
    assert exit_code == 0, logs
    [attributes] = receiver.span_attributes()
    assert attributes["gen_ai.request.model"] == "sim-small"
    assert attributes["gen_ai.usage.output_tokens"] == 25
    assert attributes["llmtap.content_chunks"] == 25
    assert "error.type" not in attributes
    assert receiver.resources[0]["service.name"] == "llmtap-proxy"
    assert receiver.resources[0]["service.instance.id"]
    assert {"gen_ai.client.operation.duration", "gen_ai.server.time_to_first_token",
            "gen_ai.client.operation.time_per_output_chunk", "llmtap.requests.active"} <= receiver.metric_names
    # no secret anywhere: not in the exported bytes, not in the logs
    assert all(SECRET.encode() not in raw for raw in receiver.raw)
    assert SECRET not in logs
    assert "Bearer" not in logs


async def test_drain_deadline_cancels_streams_and_still_exports_their_spans(sim: SimServer) -> None:
    body = {"model": "sim-small", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    headers = {"x-sim-itl-ms": "100", "x-sim-tokens": "100"}  # a 10 s stream
    async with otlp_receiver() as receiver, serve_process(
        sim.url, receiver.url, LLMTAP_DRAIN_TIMEOUT="0.5"
    ) as (process, url):
        async with aiohttp.ClientSession() as session:
            async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as response:
                assert await response.content.readany()
                started = time.perf_counter()
                process.send_signal(signal.SIGTERM)
                exit_code = await asyncio.to_thread(process.wait, 20)
                elapsed = time.perf_counter() - started
    assert exit_code == 0
    assert elapsed < 5
    [attributes] = receiver.span_attributes()
    assert attributes["error.type"] == "cancelled"
