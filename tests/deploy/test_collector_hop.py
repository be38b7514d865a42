"""The real proxy -> a real OTLP collector on the collector configs' ports -> a decoding OTLP receiver.

`llmtap serve` runs as a process with NO OTEL_EXPORTER_OTLP_ENDPOINT, so it exports wherever its defaults point.
rotel (pip `rotel`, a real OTLP collector written in Rust) listens on the ports that collector-config/*.yaml
receive on, and forwards everything over OTLP/HTTP to a test-local receiver that decodes it with
opentelemetry-proto. A span arriving there proves that the proxy's default protocol and port (http/protobuf to
4318, or grpc to 4317 when asked) are what a collector configured like ours receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from llmtap_proxy.sim import SimServer
from tests.processes import local_http_server

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_CONFIG = ROOT / "collector-config" / "gateway.yaml"


def unavailable(reason: str) -> None:
    """A missing tool fails the run in CI (CI=true) and skips elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must run this test: install it in .ci/run)")
    pytest.skip(reason)


def rotel_binary() -> Path:
    spec = importlib.util.find_spec("rotel")
    if spec is None or spec.origin is None:
        unavailable("rotel is not installed: pip install rotel")
    binary = Path(spec.origin).parent / "rotel-agent"
    if not os.access(binary, os.X_OK):
        unavailable(f"rotel's collector binary is missing or not executable: {binary}")
    return binary


def configured_ports() -> dict[str, int]:
    """The OTLP receiver ports of the collector configs, by protocol."""
    protocols = yaml.safe_load(GATEWAY_CONFIG.read_text(encoding="utf-8"))["receivers"]["otlp"]["protocols"]
    return {name: int(spec["endpoint"].rpartition(":")[2]) for name, spec in protocols.items()}


def _attribute(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


@dataclass
class Received:
    url: str = ""
    spans: list[tuple[dict[str, Any], Any]] = field(default_factory=list)  # (resource attributes, span)
    metrics: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # (resource attributes, metric name)

    def spans_of_run(self, run: str) -> list[tuple[dict[str, Any], Any]]:
        return [(resource, span) for resource, span in self.spans if resource.get("llmtap.test.run") == run]


@contextlib.asynccontextmanager
async def otlp_http_receiver() -> AsyncIterator[Received]:
    received = Received()

    async def traces(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())  # aiohttp undoes rotel's gzip
        for resource_spans in message.resource_spans:
            resource = {kv.key: _attribute(kv.value) for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                received.spans.extend((resource, span) for span in scope_spans.spans)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def metrics(request: web.Request) -> web.Response:
        message = ExportMetricsServiceRequest()
        message.ParseFromString(await request.read())
        for resource_metrics in message.resource_metrics:
            resource = {kv.key: _attribute(kv.value) for kv in resource_metrics.resource.attributes}
            for scope_metrics in resource_metrics.scope_metrics:
                received.metrics.extend((resource, metric.name) for metric in scope_metrics.metrics)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async with local_http_server({"/v1/traces": traces, "/v1/metrics": metrics}) as url:
        received.url = url
        yield received


def _spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A process whose stdout and stderr go to a file (a pipe nobody reads could fill up and stall it)."""
    with log.open("wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def _read(log: Path) -> str:
    return _read(log)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, _read(log)
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


@contextlib.asynccontextmanager
async def rotel_collector(forward_to: str, tmp_path: Path) -> AsyncIterator[dict[str, int]]:
    """rotel receiving OTLP on the configs' grpc and http ports, forwarding over OTLP/HTTP."""
    binary = rotel_binary()
    ports = configured_ports()
    output = tmp_path / "rotel.out"
    busy = [port for port in ports.values() if not _port_free(port)]
    if busy:
        unavailable(f"ports {busy} are taken on 127.0.0.1 (a local collector?); this test needs them free")
    process = _spawn(
        [
            str(binary), "start",
            "--otlp-grpc-endpoint", f"127.0.0.1:{ports['grpc']}",
            "--otlp-http-endpoint", f"127.0.0.1:{ports['http']}",
            "--exporter", "otlp",
            "--otlp-exporter-endpoint", forward_to,
            "--otlp-exporter-protocol", "http",
            "--batch-timeout", "50ms",
            "--pid-file", str(tmp_path / "rotel.pid"),
            "--log-file", str(tmp_path / "rotel.log"),
        ],
        output,
    )
    try:
        for port in ports.values():
            await _wait_listening(port, process, output)
        yield ports
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def serve_one_call(upstream: str, env: dict[str, str], log: Path) -> AsyncIterator[subprocess.Popen[bytes]]:
    """`llmtap serve` with the given environment, after one streamed chat call through it; SIGTERM on exit."""
    port = _free_port()
    process = _spawn(
        [sys.executable, "-m", "llmtap_proxy.cli", "serve", "--upstream", upstream, "--port", str(port)], log, env
    )
    url = f"http://127.0.0.1:{port}"
    body = {
        "model": "sim-small", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hello through the collector"}],
    }
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(400):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url + "/readyz") as response:
                        if response.status == 200:
                            break
                assert process.poll() is None, _read(log)
                await asyncio.sleep(0.025)
            else:
                raise AssertionError("llmtap serve did not become ready")
            async with session.post(url + "/v1/chat/completions", json=body) as response:
                assert response.status == 200
                assert (await response.read()).rstrip().endswith(b"data: [DONE]")
        yield process
        process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(process.wait, 20)
        assert exit_code == 0, _read(log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
async def test_proxy_defaults_reach_a_collector_on_the_configured_port(
    sim: SimServer, tmp_path: Path, protocol: str
) -> None:
    run = uuid.uuid4().hex  # tells our spans from anything else that might send to these well-known ports
    env = {name: value for name, value in os.environ.items() if not name.startswith(("OTEL_", "LLMTAP_"))}
    env.update({
        "OTEL_RESOURCE_ATTRIBUTES": f"llmtap.test.run={run}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
        "LLMTAP_LOG_LEVEL": "info",
    })
    if protocol == "grpc":
        env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "grpc"
    async with otlp_http_receiver() as received, rotel_collector(received.url, tmp_path) as ports:
        async with serve_one_call(sim.url, env, tmp_path / "proxy.log"):
            # spans go out every 100 ms and metrics every 300 ms, so both arrive before shutdown
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not (
                received.spans_of_run(run) and any(r.get("llmtap.test.run") == run for r, _ in received.metrics)
            ):
                await asyncio.sleep(0.05)
            port = ports["grpc" if protocol == "grpc" else "http"]
            assert received.spans_of_run(run), (
                f"no span from the proxy ({protocol}) reached the collector on {port}; proxy log:\n"
                + _read(tmp_path / "proxy.log")
            )
    [(resource, span)] = [(r, s) for r, s in received.spans_of_run(run) if s.name == "chat sim-small"]
    attributes = {kv.key: _attribute(kv.value) for kv in span.attributes}
    assert resource["service.name"] == "llmtap-proxy"
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "sim-small"
    assert attributes["gen_ai.usage.output_tokens"] > 0
    assert isinstance(attributes["llmtap.ttft"], float) and attributes["llmtap.ttft"] > 0
    assert attributes["llmtap.cold_start"] is True  # the first call to this upstream/model
    metric_names = {name for r, name in received.metrics if r.get("llmtap.test.run") == run}
    assert {"gen_ai.client.operation.duration", "gen_ai.server.time_to_first_token"} <= metric_names
