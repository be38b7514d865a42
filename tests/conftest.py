"""Shared fixtures: the real simulated backend, the real proxy under uvicorn, in-memory OTel SDK readers."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llmtap.telemetry import Telemetry
from llmtap.tokens import ReferenceTokenizer
from llmtap_proxy.app import ProxyApp
from llmtap_proxy.config import Settings, load_settings
from llmtap_proxy.server import uvicorn_config
from llmtap_proxy.sim import SimProfile, SimServer, start_sim

_TOKENIZER = ReferenceTokenizer()


@dataclass
class Captured:
    """Telemetry wired to in-memory exporters, for assertions."""

    telemetry: Telemetry
    spans_exporter: InMemorySpanExporter
    metric_reader: InMemoryMetricReader

    def spans(self) -> list[ReadableSpan]:
        return list(self.spans_exporter.get_finished_spans())

    def genai_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.attributes and "gen_ai.operation.name" in s.attributes]

    async def wait_for_genai_spans(self, count: int, timeout: float = 3.0) -> list[ReadableSpan]:
        """The proxy ends a span when the upstream body ends, which can be after the client has stopped reading."""
        deadline = time.perf_counter() + timeout
        while len(self.genai_spans()) < count and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        return self.genai_spans()

    def metrics(self) -> dict[str, list[Any]]:
        """Metric name -> data points."""
        data = self.metric_reader.get_metrics_data()
        found: dict[str, list[Any]] = {}
        if data is None:
            return found
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    found.setdefault(metric.name, []).extend(metric.data.data_points)
        return found


def make_captured(**telemetry_options: Any) -> Captured:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    telemetry_options.setdefault("tokenizer", _TOKENIZER)
    telemetry = Telemetry(tracer_provider, meter_provider, **telemetry_options)
    return Captured(telemetry, exporter, reader)


@pytest.fixture
def captured() -> Captured:
    return make_captured()


class ThreadLoop:
    """An event loop in its own thread, so that servers keep their timing while the test's loop is busy
    (the official SDKs block their loop for tens of milliseconds on first use)."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    async def run(self, coroutine: Any) -> Any:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    async def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        await asyncio.to_thread(self.thread.join, 10)


@pytest.fixture(scope="session")
async def sim() -> AsyncIterator[SimServer]:
    """The simulated backend, in its own thread and loop."""
    loop = ThreadLoop("sim")
    server = await loop.run(start_sim(profile=SimProfile(ttft_ms=20, itl_ms=15, output_tokens=12)))
    yield server
    await loop.run(server.close())
    await loop.stop()


@dataclass
class RunningProxy:
    app: ProxyApp
    server: uvicorn.Server
    url: str


@contextlib.asynccontextmanager
async def run_proxy(settings: Settings, telemetry: Telemetry | None) -> AsyncIterator[RunningProxy]:
    """The real proxy under uvicorn, on an ephemeral loopback port, in its own thread and event loop."""
    app = ProxyApp(settings, telemetry)
    server = uvicorn.Server(uvicorn_config(app, settings, port=0, log_level="warning"))
    thread = threading.Thread(target=asyncio.run, args=(server.serve(),), name="proxy", daemon=True)
    thread.start()
    try:
        for _ in range(1000):
            if server.started or not thread.is_alive():
                break
            await asyncio.sleep(0.005)
        assert server.started, "the proxy did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield RunningProxy(app, server, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 30)


def proxy_settings(upstream: str, **overrides: Any) -> Settings:
    settings = load_settings(upstream=upstream, port=0, env={})
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings


@pytest.fixture
async def proxy(sim: SimServer, captured: Captured) -> AsyncIterator[RunningProxy]:
    async with run_proxy(proxy_settings(sim.url), captured.telemetry) as running:
        yield running
