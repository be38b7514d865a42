"""`llmtap serve --workers 2` as real processes: load shared, one span per call from each worker's own
service.instance.id, every span flushed on SIGTERM, a killed worker replaced, Ctrl-C, Prometheus refused."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from llmtap_proxy.sim import SimServer
from tests.processes import free_port, local_http_server, log_tail, refuses_connections, wait_http_ok

BODY = {"model": "sim-small", "stream": True, "messages": [{"role": "user", "content": "hello"}]}


@dataclass
class SpanSink:
    """An OTLP/HTTP receiver that keeps (service.instance.id, span id) for every GenAI span."""

    url: str = ""
    spans: list[tuple[str, bytes]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def span_sink() -> AsyncIterator[SpanSink]:
    sink = SpanSink()

    async def traces(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        for resource_spans in message.resource_spans:
            resource = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    if any(kv.key == "gen_ai.operation.name" for kv in span.attributes):
                        sink.spans.append((resource["service.instance.id"], span.span_id))
        return web.Response(body=b"", content_type="application/x-protobuf")

    async with local_http_server({"/v1/traces": traces}) as url:
        sink.url = url
        yield sink


@contextlib.asynccontextmanager
async def workers(upstream: str, log: Path, *extra: str, **env: str) -> AsyncIterator[tuple[subprocess.Popen, str]]:
    """`llmtap serve --workers 2`, in a session of its own (so that a Ctrl-C can be sent to its group)."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    # a short drain deadline: a worker that does not stop is killed after 5 + 15 s, and the test sees exit 1 and
    # the log rather than a timeout
    environment.update({"OTEL_METRICS_EXPORTER": "none", "OTEL_BSP_SCHEDULE_DELAY": "100",
                        "LLMTAP_DRAIN_TIMEOUT": "5", **env})
    with log.open("wb") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "llmtap_proxy.cli", "serve", "--upstream", upstream, "--port", str(port),
             "--workers", "2", *extra],
            env=environment, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_http_ok(url + "/readyz", "llmtap serve --workers 2", 30, child, log)
        await wait_for_log(log, r"INFO llmtap\.proxy\[w1\]: telemetry", child)  # both workers are up
        yield child, url
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(10)


async def wait_for_log(log: Path, pattern: str, child: subprocess.Popen, timeout: float = 20) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, log_tail(log, limit=1 << 20))
        if found:
            return found
        assert child.poll() is None, f"exited with {child.returncode}:\n{log_tail(log)}"
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {pattern!r} in the log within {timeout} s:\n{log_tail(log)}")


async def stream(session: aiohttp.ClientSession, url: str, tokens: int = 10, itl_ms: int = 10) -> bytes:
    headers = {"x-sim-tokens": str(tokens), "x-sim-itl-ms": str(itl_ms)}
    async with session.post(url + "/v1/chat/completions", json=BODY, headers=headers) as response:
        assert response.status == 200
        return await response.read()


def content_chunks(body: bytes) -> int:
    events = [orjson.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: {")]
    return sum(1 for e in events if e["choices"] and e["choices"][0]["delta"].get("content"))


async def test_two_workers_share_calls_one_span_each_all_flushed_on_sigterm(sim: SimServer, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    telemetry_file = tmp_path / "telemetry.jsonl"  # every worker appends to the same file
    async with span_sink() as sink:
        async with workers(
            sim.url, log, "--telemetry-file", str(telemetry_file), OTEL_EXPORTER_OTLP_ENDPOINT=sink.url,
            OTEL_RESOURCE_ATTRIBUTES="service.instance.id=pod-a,deployment.environment.name=test",
        ) as (child, url):
            sent = 0
            # A connection goes to whichever worker accepts it first; concurrent connections reach both.
            connector = aiohttp.TCPConnector(force_close=True, limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                for _wave in range(10):
                    bodies = await asyncio.gather(*(stream(session, url) for _ in range(32)))
                    sent += len(bodies)
                    assert all(content_chunks(body) == 10 for body in bodies)
                    await asyncio.sleep(0.3)
                    if len({instance for instance, _ in sink.spans}) == 2:
                        break
                # SIGTERM with a wave in flight (each stream 0.6 s): every worker drains, flushes and exits ...
                in_flight = [asyncio.ensure_future(stream(session, url, tokens=30, itl_ms=20)) for _ in range(16)]
                await asyncio.sleep(0.2)
                child.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                # ... no new connection is accepted (as with one process), but the streams in flight finish
                assert await refuses_connections(session, url), "the workers still accepted connections after SIGTERM"
                bodies = await asyncio.gather(*in_flight)
                sent += len(bodies)
                assert all(content_chunks(body) == 30 for body in bodies)
            exit_code = await asyncio.to_thread(child.wait, 40)
        assert exit_code == 0, log_tail(log)
    logs = log.read_text()
    assert "2 workers serving" in logs
    per_worker = Counter(instance for instance, _ in sink.spans)
    # exactly one span per call (none lost, none twice), and both workers served calls
    assert len(sink.spans) == sent, (len(sink.spans), sent, per_worker)
    assert len({span_id for _, span_id in sink.spans}) == sent
    assert set(per_worker) == {"pod-a-w0", "pod-a-w1"}, per_worker
    assert "all workers stopped" in logs
    # the shared file holds whole lines only, and the same spans
    file_spans: Counter[str] = Counter()
    for line in telemetry_file.read_bytes().splitlines():
        for resource_spans in orjson.loads(line).get("resourceSpans", []):
            instance = next(a["value"]["stringValue"] for a in resource_spans["resource"]["attributes"]
                            if a["key"] == "service.instance.id")
            for scope_spans in resource_spans["scopeSpans"]:
                file_spans[instance] += sum(1 for span in scope_spans["spans"] if span["kind"] == 3)  # CLIENT
    assert file_spans == per_worker


async def test_workers_stop_when_the_supervisor_is_killed(sim: SimServer, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    async with workers(sim.url, log, OTEL_TRACES_EXPORTER="none") as (child, _url):
        pids = [int(pid) for pid in re.findall(r"worker \d started \(pid (\d+)\)", log_tail(log, limit=1 << 20))]
        assert len(pids) == 2
        child.kill()  # SIGKILL: the supervisor cannot pass anything on; the kernel tells the workers
        child.wait(10)
        deadline = time.monotonic() + 15
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if _running(pid)]
            await asyncio.sleep(0.1)
        assert not pids, f"workers outlived their supervisor:\n{log_tail(log)}"


def _running(pid: int) -> bool:
    """Exists and is not a zombie (an orphan's exit status waits for whoever adopted it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_a_killed_worker_is_replaced_and_ctrl_c_stops_all(sim: SimServer, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    async with workers(sim.url, log, OTEL_TRACES_EXPORTER="none") as (child, url):
        first = int((await wait_for_log(log, r"worker 0 started \(pid (\d+)\)", child)).group(1))
        os.kill(first, signal.SIGKILL)
        await wait_for_log(log, r"worker 0 \(pid \d+\) exited with status SIGKILL", child)
        replacement = await wait_for_log(log, rf"worker 0 started \(pid (?!{first}\))(\d+)\)", child)
        await wait_for_log(log, r"INFO llmtap\.proxy\[w0\]: telemetry(.|\n)*INFO llmtap\.proxy\[w0\]: telemetry",
                           child)
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            bodies = await asyncio.gather(*(stream(session, url) for _ in range(16)))
        assert all(content_chunks(body) == 10 for body in bodies)
        # Ctrl-C in a terminal: SIGINT to the whole process group, supervisor and workers alike
        os.killpg(child.pid, signal.SIGINT)
        exit_code = await asyncio.to_thread(child.wait, 40)
        assert exit_code == 0, log_tail(log)
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(replacement.group(1)), 0)
            raise AssertionError("the replacement worker outlived the supervisor")
    assert "all workers stopped" in log.read_text()


def test_workers_refuse_a_shared_prometheus_port() -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LLMTAP_"))}
    for extra, env in (
        (["--metrics-port", "9464"], {}),
        ([], {"OTEL_METRICS_EXPORTER": "otlp,prometheus"}),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "llmtap_proxy.cli", "serve", "--upstream", "http://127.0.0.1:9",
             "--workers", "2", *extra],
            capture_output=True, text=True, timeout=20, env={**environment, **env},
        )
        assert result.returncode == 2, result.stderr
        assert "configuration error: workers: 2 workers cannot share one Prometheus endpoint" in result.stderr
        assert "OpenTelemetry Collector" in result.stderr
