"""Soak: many streamed calls through the real proxy, with errors and cancellations, checking that nothing leaks.

    python benchmarks/soak.py                         # 20,000 requests at concurrency 128
    python benchmarks/soak.py --requests 2000         # the reduced size that CI runs (tests/reliability/test_soak.py)
    python benchmarks/soak.py --json /tmp/soak.json   # also write the summary as JSON

What runs:
  * the simulated backend   `llmtap sim --port P --ttft-ms 5 --itl-ms 2 --tokens 20` (a subprocess)
  * the proxy               `llmtap serve --upstream http://127.0.0.1:P --port Q --metrics-port M` (a subprocess),
                            telemetry ON: OTLP/HTTP to the receiver below, OTEL_BSP_SCHEDULE_DELAY=200,
                            OTEL_METRIC_EXPORT_INTERVAL=2000, every other OTel setting at its default
  * an OTLP/HTTP receiver   in this process: decodes every trace export with opentelemetry-proto, counts spans
  * the load generator      this process: `--concurrency` workers on one aiohttp session

The mix (deterministic for a given --seed): normal streams read to the end; error calls (x-sim-status 500,
the upstream answers 500 and the client must get that 500); cancelled calls (a longer stream that the
client closes after its first content chunk). The proxy's RSS is sampled every --rss-interval seconds and
exactly when 25% of the requests have completed.

Checks (exit status 1 if any fails):
  * RSS growth from the 25% mark to the end is under --max-rss-growth (10%);
  * no request failed that the upstream served: every normal stream arrived complete and every error call
    got the upstream's status, and the simulator counted exactly one request per call, none still active;
  * the span count equals the request count exactly (and per outcome: no error, "500", "cancelled");
  * the proxy's llmtap_requests_active gauge (scraped from --metrics-port) is back to 0;
  * the proxy logged no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

ROOT = Path(__file__).resolve().parent.parent
CHAT = "/v1/chat/completions"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _llmtap() -> list[str]:
    exe = shutil.which("llmtap")
    return [exe] if exe else [sys.executable, "-m", "llmtap_proxy.cli"]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


# --- the OTLP receiver ---------------------------------------------------------------------------------

@dataclass
class Receiver:
    spans: int = 0
    genai_spans: int = 0
    error_types: Counter[str] = field(default_factory=Counter)
    exports: int = 0
    url: str = ""

    async def traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        self.exports += 1
        for resource_spans in message.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans += 1
                    error_type = None
                    genai = False
                    for kv in span.attributes:
                        if kv.key == "gen_ai.operation.name":
                            genai = True
                        elif kv.key == "error.type":
                            error_type = kv.value.string_value
                    if genai:
                        self.genai_spans += 1
                        self.error_types[error_type or "none"] += 1
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def other(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"", content_type="application/x-protobuf")


# --- processes -------------------------------------------------------------------------------------------

@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


def start(name: str, argv: list[str], env: dict[str, str], logdir: Path) -> Proc:
    log = logdir / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                 cwd=ROOT)
    return Proc(name, popen, log)


async def wait_ready(session: aiohttp.ClientSession, url: str, proc: Proc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.text()[-3000:]}")
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with session.get(url) as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{proc.name} not ready after {timeout} s:\n{proc.text()[-3000:]}")


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """Prometheus text -> {base metric name: value summed over its label sets}."""
    async with session.get(url) as response:
        text = await response.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            name = series.split("{", 1)[0]
            values[name] = values.get(name, 0.0) + float(value)
    return values


# --- the load ------------------------------------------------------------------------------------------

@dataclass
class Outcomes:
    normal: int = 0
    error: int = 0
    cancelled: int = 0
    failures: list[str] = field(default_factory=list)  # calls the upstream served that the client did not get

    @property
    def done(self) -> int:
        return self.normal + self.error + self.cancelled


def plan(requests: int, error_share: float, cancel_share: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    kinds = []
    for _ in range(requests):
        roll = rng.random()
        kinds.append("error" if roll < error_share else "cancel" if roll < error_share + cancel_share else "normal")
    return kinds


def content_chunks(stream: bytes) -> int:
    count = 0
    for line in stream.split(b"\n"):
        if line.startswith(b"data: {"):
            choices = orjson.loads(line[6:]).get("choices") or [{}]
            count += bool(choices[0].get("delta", {}).get("content"))
    return count


async def one_call(session: aiohttp.ClientSession, url: str, kind: str, args: argparse.Namespace,
                   outcomes: Outcomes) -> None:
    body = {"model": "sim-small", "stream": True, "messages": [{"role": "user", "content": "soak test prompt"}]}
    if kind == "error":
        async with session.post(url + CHAT, json=body, headers={"x-sim-status": "500"}) as response:
            payload = await response.read()
            if response.status != 500 or b"server_error" not in payload:
                outcomes.failures.append(f"error call got {response.status}: {payload[:200]!r}")
            outcomes.error += 1
        return
    if kind == "cancel":  # a 1 s stream, closed by the client after its first content chunk
        headers = {"x-sim-tokens": "200", "x-sim-itl-ms": "5"}
        async with session.post(url + CHAT, json=body, headers=headers) as response:
            if response.status != 200:
                outcomes.failures.append(f"cancelled call got {response.status}")
            seen = b""
            while b'"content":"' not in seen.replace(b'"content":""', b""):
                chunk = await response.content.readany()
                if not chunk:
                    outcomes.failures.append("cancelled call ended before its first content chunk")
                    break
                seen += chunk
            response.close()  # drop the connection mid-stream
        outcomes.cancelled += 1
        return
    async with session.post(url + CHAT, json=body) as response:
        payload = await response.read()
    if response.status != 200 or not payload.endswith(b"data: [DONE]\n\n") or content_chunks(payload) != args.tokens:
        outcomes.failures.append(f"normal call got {response.status}, {len(payload)} bytes: {payload[-120:]!r}")
    outcomes.normal += 1


async def run(args: argparse.Namespace) -> dict[str, Any]:
    receiver = Receiver()
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_post("/v1/traces", receiver.traces)
    app.router.add_post("/v1/metrics", receiver.other)
    app.router.add_post("/v1/logs", receiver.other)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}"

    sim_port, proxy_port, metrics_port = _free_port(), _free_port(), _free_port()
    logdir = Path(tempfile.mkdtemp(prefix="llmtap-soak-"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sim = start("sim", [*_llmtap(), "sim", "--port", str(sim_port), "--ttft-ms", str(args.ttft_ms),
                        "--itl-ms", str(args.itl_ms), "--tokens", str(args.tokens)], env, logdir)
    proxy_env = {
        **env,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_METRIC_EXPORT_INTERVAL": "2000",
        "LLMTAP_LOG_LEVEL": "warning",
    }
    proxy = start("proxy", [*_llmtap(), "serve", "--upstream", f"http://127.0.0.1:{sim_port}", "--port",
                            str(proxy_port), "--metrics-port", str(metrics_port)], proxy_env, logdir)
    proxy_url = f"http://127.0.0.1:{proxy_port}"
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    sim_url = f"http://127.0.0.1:{sim_port}"
    kinds = plan(args.requests, args.error_share, args.cancel_share, args.seed)
    outcomes = Outcomes()
    samples: list[tuple[float, int, int]] = []  # (seconds since start, requests done, RSS kB)
    mark: dict[str, int] = {}
    exit_code: int | None = None
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as control:
            await wait_ready(control, sim_url + "/healthz", sim)
            await wait_ready(control, proxy_url + "/readyz", proxy)
            async with control.get(sim_url + "/_sim/stats") as response:
                sim_before = (await response.json())["requests"]
            rss_start = rss_kb(proxy.popen.pid)
            started = time.perf_counter()
            quarter = max(1, args.requests // 4)

            async def sampler() -> None:
                while True:
                    samples.append((time.perf_counter() - started, outcomes.done, rss_kb(proxy.popen.pid)))
                    await asyncio.sleep(args.rss_interval)

            next_index = 0

            async def worker(session: aiohttp.ClientSession) -> None:
                nonlocal next_index
                while next_index < len(kinds):
                    kind = kinds[next_index]
                    next_index += 1
                    try:
                        await one_call(session, proxy_url, kind, args, outcomes)
                    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                        outcomes.failures.append(f"{kind} call raised {type(exc).__name__}: {exc}")
                        if kind == "normal":
                            outcomes.normal += 1
                        elif kind == "error":
                            outcomes.error += 1
                        else:
                            outcomes.cancelled += 1
                    if "rss_quarter_kb" not in mark and outcomes.done >= quarter:
                        mark["rss_quarter_kb"] = rss_kb(proxy.popen.pid)
                        samples.append((time.perf_counter() - started, outcomes.done, mark["rss_quarter_kb"]))

            sampling = asyncio.ensure_future(sampler())
            timeout = aiohttp.ClientTimeout(total=120)
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
                await asyncio.gather(*(worker(session) for _ in range(args.concurrency)))
            load_s = time.perf_counter() - started
            # every span exported (BatchSpanProcessor: schedule delay 200 ms), the gauge settled
            deadline = time.monotonic() + 60
            while receiver.genai_spans < args.requests and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(max(1.0, args.rss_interval))  # a late extra span would show up here
            sampling.cancel()
            rss_end = rss_kb(proxy.popen.pid)
            samples.append((time.perf_counter() - started, outcomes.done, rss_end))
            values = await scrape(control, metrics_url)
            async with control.get(sim_url + "/_sim/stats") as response:
                sim_stats = await response.json()
    finally:
        # in a thread: the receiver on this loop must stay up to take the proxy's final flush
        exit_code = await asyncio.to_thread(proxy.stop)
        await asyncio.to_thread(sim.stop)
        await runner.cleanup()

    log = proxy.text()
    rss_quarter = mark.get("rss_quarter_kb", rss_start)
    growth = (rss_end - rss_quarter) / rss_quarter
    expected = {"none": outcomes.normal, "500": outcomes.error, "cancelled": outcomes.cancelled}
    served = sim_stats["requests"] - sim_before
    checks = {
        f"RSS growth from the 25% mark to the end < {args.max_rss_growth:.0%}": growth < args.max_rss_growth,
        "no request failed that the upstream served": not outcomes.failures,
        "the upstream served exactly one request per call, none left active":
            served == args.requests and sim_stats["active"] == 0,
        "span count == request count": receiver.genai_spans == args.requests,
        "spans per outcome (none / 500 / cancelled) match the calls": dict(receiver.error_types) == {
            k: v for k, v in expected.items() if v},
        "llmtap_requests_active back to 0": values.get("llmtap_requests_active", -1) == 0,
        "no traceback in the proxy log": "Traceback" not in log,
        "the proxy exited 0 on SIGTERM": exit_code == 0,
    }
    return {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "mix": {"normal": outcomes.normal, "error": outcomes.error, "cancelled": outcomes.cancelled},
        "duration_s": round(load_s, 2),
        "requests_per_s": round(args.requests / load_s, 1),
        "rss_kb": {"start": rss_start, "quarter": rss_quarter, "end": rss_end,
                   "max": max(s[2] for s in samples)},
        "rss_growth_from_quarter": round(growth, 4),
        "spans": receiver.genai_spans,
        "spans_by_error_type": dict(receiver.error_types),
        "otlp_exports": receiver.exports,
        "upstream_served": served,
        "client_failures": len(outcomes.failures),
        "failure_examples": outcomes.failures[:5],
        "requests_active_end": values.get("llmtap_requests_active"),
        "internal_errors": values.get("llmtap_internal_errors_total", 0.0),
        "export_failures": sum(v for k, v in values.items() if k.startswith("llmtap_telemetry_export_failures")),
        "proxy_exit_code": exit_code,
        "rss_samples": [{"t_s": round(t, 2), "done": d, "rss_kb": r} for t, d, r in samples],
        "checks": checks,
        "passed": all(checks.values()),
        "logs": str(logdir),
    }


def print_summary(summary: dict[str, Any]) -> None:
    rss = summary["rss_kb"]
    mix = summary["mix"]
    print(f"soak: {summary['requests']} requests at concurrency {summary['concurrency']} "
          f"({mix['normal']} normal, {mix['error']} error 500, {mix['cancelled']} cancelled)")
    print(f"  duration        {summary['duration_s']} s ({summary['requests_per_s']} req/s)")
    print(f"  proxy RSS       start {rss['start'] / 1024:.1f} MiB, at 25% {rss['quarter'] / 1024:.1f} MiB, "
          f"end {rss['end'] / 1024:.1f} MiB, max {rss['max'] / 1024:.1f} MiB "
          f"(growth from 25%: {summary['rss_growth_from_quarter']:+.1%})")
    print(f"  spans           {summary['spans']} ({summary['spans_by_error_type']}) in {summary['otlp_exports']} "
          f"OTLP exports")
    print(f"  upstream served {summary['upstream_served']}; client failures {summary['client_failures']}; "
          f"requests_active at end {summary['requests_active_end']}; internal errors {summary['internal_errors']}; "
          f"export failures {summary['export_failures']}")
    for example in summary["failure_examples"]:
        print(f"    failure: {example}")
    for name, ok in summary["checks"].items():
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")
    print(f"  logs in {summary['logs']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=20, help="content chunks per normal stream")
    parser.add_argument("--ttft-ms", type=float, default=5.0)
    parser.add_argument("--itl-ms", type=float, default=2.0)
    parser.add_argument("--error-share", type=float, default=0.05)
    parser.add_argument("--cancel-share", type=float, default=0.05)
    parser.add_argument("--rss-interval", type=float, default=2.0, help="seconds between RSS samples")
    parser.add_argument("--max-rss-growth", type=float, default=0.10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", help="also write the summary here")
    args = parser.parse_args(argv)
    try:
        import uvloop

        summary = uvloop.run(run(args))
    except ImportError:
        summary = asyncio.run(run(args))
    print_summary(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
