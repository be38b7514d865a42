"""Real Prometheus (Debian's `prometheus`, 2.42) scrapes `llmtap serve --metrics-port` while traffic flows.

What this proves, against the simulator's ground truth:
- the exporter's text is scraped by a real Prometheus (`up == 1`), under the names dashboards use;
- the request count is exact, and there are never more ITL samples than gaps between content chunks (fewer
  when two events reach the proxy in one read, which then counts them as one chunk);
- `histogram_quantile(0.99, ...)` over the TTFT histogram, both over the raw cumulative buckets and in
  the `rate(...[1m])` form dashboards use, lands in the buckets that the true p99 implies. The proxy's
  TTFT of a call lies between the simulator's (it spans less) and the client's (it spans more), so the
  true p99 does too, and Prometheus interpolates inside its bucket: the answer lies between the lower edge
  of the bucket holding the simulator's p99 and the upper edge of the one holding the client's.

Without `prometheus` on PATH this skips, except under CI=true, where it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.processes import free_port, process, wait_http_ok

MODEL = "prom-e2e"
REQUESTS = 40
CONCURRENCY = 4
TTFT_MS = 50
TTFT = "gen_ai_server_time_to_first_token_seconds"
ITL = "gen_ai_client_operation_time_per_output_chunk_seconds"
DURATION = "gen_ai_client_operation_duration_seconds"



def prometheus_binary() -> str:
    """The real `prometheus`; a missing one fails the test under CI and skips it elsewhere."""
    path = shutil.which("prometheus") or ("/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None)
    if path:
        return path
    message = "prometheus is not installed (apt-get install prometheus)"
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(message + "; CI must run this test")
    pytest.skip(message)


@contextlib.asynccontextmanager
async def llmtap_sim(logs: Path) -> AsyncIterator[str]:
    """The simulator in its own process, so that its timing does not share a GIL with the test's client."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "llmtap_proxy.cli", "sim", "--port", str(port)]
    async with process(args, url + "/healthz", "llmtap sim", logs / "sim.log"):
        yield url


@contextlib.asynccontextmanager
async def llmtap_serve(upstream: str, metrics_port: int, logs: Path) -> AsyncIterator[str]:
    """`llmtap serve --metrics-port` as a real process, exporting to Prometheus only."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "llmtap_proxy.cli", "serve", "--upstream", upstream, "--port", str(port),
            "--metrics-port", str(metrics_port)]
    async with process(args, url + "/readyz", "llmtap serve", logs / "serve.log", OTEL_TRACES_EXPORTER="none",
                       OTEL_METRICS_EXPORTER="none", LLMTAP_LOG_LEVEL="warning"):
        await wait_http_ok(f"http://127.0.0.1:{metrics_port}/metrics", "the metrics endpoint", 10)
        yield url


@dataclass
class Prometheus:
    url: str
    session: aiohttp.ClientSession

    async def query(self, promql: str) -> list[dict]:
        async with self.session.get(self.url + "/api/v1/query", params={"query": promql}) as response:
            body = await response.json()
        assert body.get("status") == "success", f"{promql}: {body}"
        return body["data"]["result"]

    async def scalar(self, promql: str) -> float | None:
        result = await self.query(promql)
        assert len(result) <= 1, f"{promql}: expected one series, got {result}"
        return float(result[0]["value"][1]) if result else None

    async def wait_for(self, promql: str, expected: float, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = await self.scalar(promql)
            if value == expected:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"{promql} = {value}, expected {expected} within {timeout} s")


@contextlib.asynccontextmanager
async def prometheus(tmp_path: Path, target: str) -> AsyncIterator[Prometheus]:
    """A real Prometheus on a free loopback port, scraping `target` (host:port) every second."""
    binary = prometheus_binary()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: llmtap\n    scrape_interval: 1s\n    scrape_timeout: 900ms\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    url = f"http://127.0.0.1:{free_port()}"
    args = [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={url.removeprefix('http://')}", "--log.level=warn",
            f"--web.console.templates={tmp_path}", f"--web.console.libraries={tmp_path}"]
    async with process(args, url + "/-/ready", "prometheus", tmp_path / "prometheus.log"), \
            aiohttp.ClientSession() as session:
        yield Prometheus(url, session)


@dataclass
class Observed:
    client_ttft: float  # client send -> first content chunk read by the client: >= the proxy's TTFT
    sim_ttft: float  # simulator arrival -> first content chunk sent: <= the proxy's TTFT
    content_chunks: int


async def stream_one(session: aiohttp.ClientSession, proxy: str, sim_url: str) -> Observed:
    body = {"model": MODEL, "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "tell me something"}]}
    headers = {"x-sim-ttft-ms": str(TTFT_MS), "x-sim-itl-ms": "15", "x-sim-tokens": "12"}
    first: float | None = None
    started = time.perf_counter()
    async with session.post(proxy + "/v1/chat/completions", json=body, headers=headers) as response:
        assert response.status == 200, await response.text()
        request_id = response.headers["x-sim-request-id"]
        async for line in response.content:
            if first is None and line.startswith(b"data: {"):
                choices = orjson.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    first = time.perf_counter() - started
    assert first is not None, "no content chunk"
    async with session.get(f"{sim_url}/_sim/requests/{request_id}") as response:
        truth = await response.json()
    return Observed(first, truth["ttft_s"], truth["content_chunks"])


def bucket_range(boundaries: list[float], low: float, high: float) -> tuple[float, float]:
    """From the lower edge of the bucket holding `low` to the upper edge of the bucket holding `high`."""
    def upper_index(value: float) -> int:
        return next((i for i, b in enumerate(boundaries) if value <= b), len(boundaries))

    lo_index, hi_index = upper_index(low), upper_index(high)
    lower = boundaries[lo_index - 1] if lo_index > 0 else 0.0
    upper = boundaries[hi_index] if hi_index < len(boundaries) else math.inf
    return lower, upper


async def test_real_prometheus_scrapes_the_proxy_and_ttft_p99_matches_ground_truth(tmp_path: Path) -> None:
    prometheus_binary()
    selector = f'{{gen_ai_request_model="{MODEL}"}}'
    metrics_port = free_port()
    # Prometheus first: its service discovery hands over targets only every 5 s, so it waits for the proxy.
    async with (
        prometheus(tmp_path, f"127.0.0.1:{metrics_port}") as prom,
        llmtap_sim(tmp_path) as sim_url,
        llmtap_serve(sim_url, metrics_port, tmp_path) as proxy,
        aiohttp.ClientSession() as session,
    ):
        # Two calls first (a cold one, then a warm one) so that every series exists before the measured
        # traffic: rate() then sees the whole burst as an increase.
        observed = [await stream_one(session, proxy, sim_url) for _ in range(2)]
        await prom.wait_for('up{job="llmtap"}', 1.0)
        await prom.wait_for(f"sum({TTFT}_count{selector})", 2.0)

        gate = asyncio.Semaphore(CONCURRENCY)

        async def limited() -> Observed:
            async with gate:
                return await stream_one(session, proxy, sim_url)

        observed += await asyncio.gather(*(limited() for _ in range(REQUESTS)))
        total = len(observed)
        await prom.wait_for(f"sum({TTFT}_count{selector})", float(total))
        await prom.wait_for(f"sum({DURATION}_count{selector})", float(total))
        # One ITL sample per gap between content-bearing chunks as the proxy reads them. Two SSE events that
        # arrive in one read are one chunk (by design), so gaps may merge when the machine is busy, never split.
        gaps = sum(o.content_chunks - 1 for o in observed)
        itl_samples = await prom.scalar(f"sum({ITL}_count{selector})")
        assert itl_samples is not None and 0 < itl_samples <= gaps, (itl_samples, gaps)
        # the cold start is flagged, once
        assert await prom.scalar(f'sum({TTFT}_count{{gen_ai_request_model="{MODEL}",llmtap_cold_start="true"}})') == 1

        boundaries = sorted(
            float(r["metric"]["le"]) for r in await prom.query(f"count by (le) ({TTFT}_bucket{selector})")
            if r["metric"]["le"] != "+Inf"
        )
        assert 0.04 in boundaries and 0.06 in boundaries, boundaries  # the semconv TTFT buckets
        # The p99 of 42 samples is the largest one. Over the cumulative buckets that is the largest of all
        # calls; over rate[1m] (which starts from the scrape after the first two) the largest of the burst.
        true_low = max(o.sim_ttft for o in observed)
        true_high = max(o.client_ttft for o in observed)
        assert true_low >= TTFT_MS / 1000 * 0.98, f"the simulator was early: {true_low}"
        burst_low = max(o.sim_ttft for o in observed[2:])
        expected = {"cumulative": bucket_range(boundaries, true_low, true_high),
                    "rate[1m]": bucket_range(boundaries, burst_low, true_high)}

        cumulative = await prom.scalar(f"histogram_quantile(0.99, sum by (le) ({TTFT}_bucket{selector}))")
        dashboard_form = await prom.scalar(
            f"histogram_quantile(0.99, sum by (le) (rate({TTFT}_bucket{selector}[1m])))"
        )
        sum_seconds = await prom.scalar(f"sum({TTFT}_sum{selector})")
    for name, value in (("cumulative", cumulative), ("rate[1m]", dashboard_form)):
        lower, upper = expected[name]
        assert value is not None and lower <= value <= upper, (
            f"TTFT p99 ({name}) = {value}, expected within [{lower}, {upper}] "
            f"(the proxy's largest TTFT lies between {true_low:.4f} and {true_high:.4f})"
        )
    # the sum lies between the simulator's and the client's totals (the simulator stamps a chunk just after
    # writing it, so allow it a few microseconds per call)
    slack = 0.0002 * len(observed)
    assert sum(o.sim_ttft for o in observed) - slack <= sum_seconds <= sum(o.client_ttft for o in observed)
