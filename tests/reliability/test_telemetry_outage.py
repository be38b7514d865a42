"""`llmtap serve` as a real process while its OTLP collector is down, slow or failing, and SIGTERM under load.

The collector is a test-local OTLP/HTTP receiver that decodes every request with opentelemetry-proto (or,
for "down", a loopback port with nothing listening). The proxy's own counters are read from its
Prometheus endpoint (--metrics-port), and its log from its stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from llmtap_proxy.sim import SimServer
from tests.processes import free_port

CHAT = "/v1/chat/completions"
BODY = {"model": "sim-small", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
FAST = {"x-sim-ttft-ms": "5", "x-sim-itl-ms": "2", "x-sim-tokens": "10"}


@dataclass
class Collector:
    url: str
    spans: int = 0
    requests: int = 0
    genai_spans: list[dict] = field(default_factory=list)


@contextlib.asynccontextmanager
async def collector(mode: str) -> AsyncIterator[Collector]:
    """mode: "ok", "slow" (answers after 2 s), "5xx" (503 to everything), "down" (nothing listens)."""
    if mode == "down":
        yield Collector(f"http://127.0.0.1:{free_port()}")
        return
    received = Collector("")

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        received.requests += 1
        if mode == "5xx":
            return web.Response(status=503, text="unavailable")
        if mode == "slow":
            await asyncio.sleep(2)
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        for resource_spans in message.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.spans += 1
                    attributes = {kv.key: kv.value for kv in span.attributes}
                    if "gen_ai.operation.name" in attributes:
                        received.genai_spans.append(attributes)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def metrics(request: web.Request) -> web.Response:
        await request.read()
        if mode == "5xx":
            return web.Response(status=503, text="unavailable")
        if mode == "slow":
            await asyncio.sleep(2)
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    app.router.add_post("/v1/metrics", metrics)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    received.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield received
    finally:
        await runner.cleanup()


@dataclass
class ProxyProcess:
    process: subprocess.Popen
    url: str
    metrics_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


@contextlib.asynccontextmanager
async def serve_process(upstream: str, otlp: str, **env: str) -> AsyncIterator[ProxyProcess]:
    port, metrics_port = free_port(), free_port()
    environment = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        **env,
    }
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "proxy.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "llmtap_proxy.cli", "serve", "--upstream", upstream, "--port", str(port),
                 "--metrics-port", str(metrics_port)],
                env=environment, stdout=log, stderr=subprocess.STDOUT,
            )
        running = ProxyProcess(process, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics",
                               log_path)
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(300):
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(running.url + "/readyz") as response:
                            if response.status == 200:
                                break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("llmtap serve did not become ready:\n" + running.log())
            yield running
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(10)


def content_chunks(stream: bytes) -> int:
    count = 0
    for line in stream.split(b"\n"):
        if line.startswith(b"data: {"):
            choices = orjson.loads(line[6:]).get("choices") or [{}]
            count += bool(choices[0].get("delta", {}).get("content"))
    return count


async def stream_many(url: str, count: int, concurrency: int, headers: dict[str, str]) -> list[bytes]:
    limit = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession) -> bytes:
        async with limit, session.post(url + CHAT, json=BODY, headers=headers) as response:
            assert response.status == 200
            return await response.read()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        return await asyncio.gather(*(one(session) for _ in range(count)))


async def scrape(metrics_url: str) -> dict[str, float]:
    """Prometheus text -> {metric name with labels: value}, summed over label sets by base name too."""
    async with aiohttp.ClientSession() as session, session.get(metrics_url) as response:
        text = await response.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        name = series.split("{", 1)[0]
        values[series] = float(value)
        values[name] = values.get(name, 0.0) + float(value)
    return values


def failures(values: dict[str, float], signal_name: str) -> float:
    return sum(v for k, v in values.items()
               if k.startswith("llmtap_telemetry_export_failures") and f'llmtap_signal="{signal_name}"' in k)


def export_problem_lines(log: str) -> dict[str, list[str]]:
    """WARNING/ERROR lines from the OTel exporters and batch processors, by signal."""
    found: dict[str, list[str]] = {"traces": [], "metrics": []}
    for line in log.splitlines():
        if not re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line) or "opentelemetry" not in line:
            continue
        found["metrics" if "metric" in line.lower() else "traces"].append(line)
    return found


async def stop(proxy: ProxyProcess, wait_s: float) -> tuple[int | None, float]:
    started = time.perf_counter()
    proxy.process.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.to_thread(proxy.process.wait, wait_s)
    except subprocess.TimeoutExpired:
        code = None
    return code, time.perf_counter() - started


@pytest.mark.parametrize("mode", ["down", "slow", "5xx"])
async def test_collector_outage_never_touches_traffic_and_is_counted(sim: SimServer, mode: str) -> None:
    # a short export timeout lets the failures surface within the test; the slow collector (2 s) stays
    # inside the default 10 s, so its exports are late but succeed
    env = {} if mode == "slow" else {"OTEL_EXPORTER_OTLP_TIMEOUT": "1"}
    warmup, load = 50, 400
    async with collector(mode) as otlp, serve_process(sim.url, otlp.url, **env) as proxy:
        streams = await stream_many(proxy.url, warmup, 50, FAST)
        rss_before = proxy.rss_kb()
        started = time.perf_counter()
        streams += await stream_many(proxy.url, load, 50, FAST)
        elapsed = time.perf_counter() - started
        rss_after = proxy.rss_kb()
        # every stream complete and correct, whatever the collector does
        assert all(s.endswith(b"data: [DONE]\n\n") and content_chunks(s) == 10 for s in streams)
        values = await scrape(proxy.metrics_url)
        for _ in range(50):  # the first failed export is counted once its retries give up (about 1 s)
            if mode == "slow" or failures(values, "traces") > 0:
                break
            await asyncio.sleep(0.2)
            values = await scrape(proxy.metrics_url)
        assert values.get("llmtap_requests_active", 0) == 0
        if mode == "slow":
            assert failures(values, "traces") == 0
        else:
            assert failures(values, "traces") > 0, "dropped spans must be counted"
        code, _ = await stop(proxy, 60)
        log = proxy.log()
    assert code == 0, log
    assert (rss_after - rss_before) / 1024 < 30, f"RSS grew {rss_before} -> {rss_after} kB"
    assert elapsed < 15, elapsed
    problems = export_problem_lines(log)
    if mode == "slow":
        assert otlp.spans == warmup + load, "a slow collector must still get every span"
        assert problems == {"traces": [], "metrics": []}, problems
    else:
        # reported, but not per request, batch or retry (dozens of exports failed here); that it is
        # exactly once per exporter is the next test
        assert problems["traces"], "the dead collector must be reported"
        assert len(problems["traces"]) <= 3 and len(problems["metrics"]) <= 3, "\n".join(
            problems["traces"] + problems["metrics"]
        )


@pytest.mark.parametrize("mode", ["down", "5xx"])
async def test_collector_failure_is_logged_once_per_exporter(sim: SimServer, mode: str) -> None:
    async with collector(mode) as otlp, serve_process(sim.url, otlp.url, OTEL_EXPORTER_OTLP_TIMEOUT="1") as proxy:
        for _ in range(4):  # several batches, each failing after its retries
            await stream_many(proxy.url, 10, 10, FAST)
            await asyncio.sleep(0.4)
        for _ in range(50):
            if failures(await scrape(proxy.metrics_url), "traces") >= 2:
                break
            await asyncio.sleep(0.2)
        code, _ = await stop(proxy, 60)
        log = proxy.log()
    assert code == 0, log
    problems = export_problem_lines(log)
    assert len(problems["traces"]) == 1 and len(problems["metrics"]) <= 1, "\n".join(
        problems["traces"] + problems["metrics"]
    )


async def test_sigterm_with_the_collector_down_exits_within_one_export_timeout(sim: SimServer) -> None:
    """Shutdown flushes telemetry, but a dead collector must not hold it much longer than one OTLP export
    timeout (10 s by default): orchestrators SIGKILL after their grace period (30 s in Kubernetes)."""
    async with collector("down") as otlp, serve_process(sim.url, otlp.url, LLMTAP_DRAIN_TIMEOUT="5") as proxy:
        streams = await stream_many(proxy.url, 20, 20, FAST)
        assert all(s.endswith(b"data: [DONE]\n\n") for s in streams)
        code, elapsed = await stop(proxy, 16)
    assert code == 0 and elapsed < 15, f"exit code {code} after {elapsed:.1f} s (nothing was in flight)"


async def test_sigterm_during_100_open_streams_finishes_them_all_and_flushes_every_span(sim: SimServer) -> None:
    headers = {"x-sim-ttft-ms": "20", "x-sim-itl-ms": "50", "x-sim-tokens": "30"}  # about 1.5 s per stream
    n = 100
    async with collector("ok") as otlp, serve_process(sim.url, otlp.url) as proxy:
        started = [asyncio.Event() for _ in range(n)]

        async def one(session: aiohttp.ClientSession, i: int) -> bytes:
            async with session.post(proxy.url + CHAT, json=BODY, headers=headers) as response:
                assert response.status == 200
                first = await response.content.readany()
                started[i].set()
                return first + await response.content.read()

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            tasks = [asyncio.ensure_future(one(session, i)) for i in range(n)]
            await asyncio.wait_for(asyncio.gather(*(event.wait() for event in started)), 10)
            signalled = time.perf_counter()
            proxy.process.send_signal(signal.SIGTERM)
            streams = await asyncio.gather(*tasks)
        code = await asyncio.to_thread(proxy.process.wait, 30)
        exited = time.perf_counter() - signalled
        log = proxy.log()
    assert code == 0, log
    assert exited < 10, exited
    assert [content_chunks(s) for s in streams] == [30] * n
    assert all(s.endswith(b"data: [DONE]\n\n") for s in streams)
    assert len(otlp.genai_spans) == n, f"{len(otlp.genai_spans)} spans for {n} streams"
    assert all("error.type" not in attributes for attributes in otlp.genai_spans)
