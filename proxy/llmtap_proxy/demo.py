"""`llmtap demo`: the simulated backend and the proxy in one process, a burst of streams, a table.

The figures printed are the proxy's own measurements (the same ones it exports), not the client's.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import aiohttp
import uvicorn

from llmtap.exchange import Figures
from llmtap.observer import CallObserver
from llmtap.telemetry import Telemetry, configure_from_env
from llmtap.tokens import ReferenceTokenizer
from llmtap_proxy.app import ProxyApp
from llmtap_proxy.config import load_settings
from llmtap_proxy.server import uvicorn_config
from llmtap_proxy.sim import SimProfile, start_sim

# (model, per-request simulator profile): a fast small model and a slower, chunkier large one
DEMO_MODELS = {
    "sim-small": {"x-sim-ttft-ms": "40", "x-sim-itl-ms": "15", "x-sim-tokens": "48"},
    "sim-large": {"x-sim-ttft-ms": "120", "x-sim-itl-ms": "35", "x-sim-tokens": "64",
                  "x-sim-tokens-per-chunk": "2", "x-sim-jitter-ms": "5"},
}


@dataclass
class ModelStats:
    requests: int = 0
    errors: int = 0
    cold_starts: int = 0
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    tpot: list[float] = field(default_factory=list)
    throughput: list[float] = field(default_factory=list)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def format_table(stats: dict[str, ModelStats]) -> str:
    header = ("model", "requests", "errors", "cold", "TTFT p50", "TTFT p99", "ITL p50", "ITL p99",
              "TPOT", "out tok/s")
    rows = [header]
    for model, s in sorted(stats.items()):
        rows.append((
            model, str(s.requests), str(s.errors), str(s.cold_starts),
            _ms(_percentile(s.ttft, 50)), _ms(_percentile(s.ttft, 99)),
            _ms(_percentile(s.itl, 50)), _ms(_percentile(s.itl, 99)),
            _ms(statistics.median(s.tpot) if s.tpot else None),
            f"{statistics.median(s.throughput):.1f}" if s.throughput else "-",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(widths[i]) if i else cell.ljust(widths[i]) for i, cell in enumerate(row))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n(times in ms; TPOT median; out tok/s = median output tokens/s per call)"


def _telemetry(out: IO[str] | None) -> tuple[Telemetry, str]:
    """OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set, else console exporters into a file."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        os.environ.setdefault("OTEL_TRACES_EXPORTER", "console")
        os.environ.setdefault("OTEL_METRICS_EXPORTER", "console")
    tracer_provider, meter_provider, targets = configure_from_env("llmtap-demo", console_out=out)
    telemetry = Telemetry(tracer_provider, meter_provider, tokenizer=ReferenceTokenizer(), finish_in_background=True)
    where = f"traces: {targets.traces}; metrics: {targets.metrics}"
    return telemetry, where


async def _one_request(session: aiohttp.ClientSession, url: str, model: str, index: int) -> None:
    headers = dict(DEMO_MODELS[model])
    body = {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": f"Demo request {index}: tell me about telemetry."}],
    }
    async with session.post(url, json=body, headers=headers) as response:
        async for _ in response.content.iter_any():
            pass


async def run_demo(requests_per_model: int = 16, out: IO[str] | None = None) -> tuple[str, str]:
    """Run the burst; returns (table, where telemetry went)."""
    telemetry, where = _telemetry(out)
    stats: dict[str, ModelStats] = {}

    def collect(call: CallObserver, figures: Figures) -> None:
        facts = call.exchange.facts
        model = (facts.model if facts else None) or "?"
        s = stats.setdefault(model, ModelStats())
        s.requests += 1
        s.errors += call.exchange.error_type is not None
        s.cold_starts += telemetry.cold_start_of(call)
        if figures.ttft is not None:
            s.ttft.append(figures.ttft)
        s.itl.extend(figures.itl)
        if figures.tpot is not None:
            s.tpot.append(figures.tpot)
        if figures.output_throughput is not None:
            s.throughput.append(figures.output_throughput)

    telemetry.listeners.append(collect)
    sim = await start_sim(profile=SimProfile())
    settings = load_settings(upstream=sim.url, port=0, env={})
    proxy = ProxyApp(settings, telemetry)
    server = uvicorn.Server(uvicorn_config(proxy, settings, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(
                _one_request(session, url, model, i)
                for i in range(requests_per_model)
                for model in DEMO_MODELS
            ))
    finally:
        server.should_exit = True
        await serving
        await sim.close()
        await asyncio.to_thread(telemetry.shutdown)
    return format_table(stats), where


def main(requests_per_model: int = 16) -> int:
    started = time.perf_counter()
    print(f"llmtap demo: simulated backend + proxy, {requests_per_model} concurrent streams per model")
    path: Path | None = None
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        table, where = asyncio.run(run_demo(requests_per_model))
    else:
        path = Path(tempfile.gettempdir()) / "llmtap-demo-telemetry.json"
        with path.open("w", encoding="utf-8") as out:
            table, where = asyncio.run(run_demo(requests_per_model, out))
    print()
    print(table)
    print()
    print(f"Telemetry: {where}" + (f" (written to {path})" if path else ""))
    print(f"Done in {time.perf_counter() - started:.1f} s.")
    return 0
