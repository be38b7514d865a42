"""`--telemetry-file`: the proxy appends OTLP JSON lines, and `llmtap report` reads them with no collector."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from llmtap.telemetry import Telemetry, configure_from_env
from llmtap.tokens import ReferenceTokenizer
from llmtap_proxy import cli
from llmtap_proxy.bench import BenchConfig, run_bench
from llmtap_proxy.config import load_settings
from llmtap_proxy.report import load, summarize
from llmtap_proxy.sim import SimServer
from tests.conftest import proxy_settings, run_proxy
from tests.processes import free_port

SIM_TTFT, SIM_ITL = 0.020, 0.015


def test_telemetry_file_setting_from_flag_env_and_config(tmp_path: Path) -> None:
    assert load_settings(upstream="http://x", env={}).telemetry_file is None
    assert load_settings(upstream="http://x", env={"LLMTAP_TELEMETRY_FILE": "/t/env"}).telemetry_file == "/t/env"
    assert load_settings(upstream="http://x", telemetry_file="/t/flag",
                         env={"LLMTAP_TELEMETRY_FILE": "/t/env"}).telemetry_file == "/t/flag"
    config = tmp_path / "c.yaml"
    config.write_text("upstream: http://x\ntelemetry_file: /t/yaml\n")
    assert load_settings(config_file=str(config), env={}).telemetry_file == "/t/yaml"


async def test_in_process_file_exporters_write_otlp_json_that_report_reads(
    sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    path = tmp_path / "telemetry" / "proxy.jsonl"
    tracer_provider, meter_provider, targets = configure_from_env("llmtap-test", telemetry_file=str(path))
    assert (targets.traces, targets.metrics) == (f"file -> {path}", f"file -> {path}")
    telemetry = Telemetry(tracer_provider, meter_provider, tokenizer=ReferenceTokenizer())
    async with run_proxy(proxy_settings(sim.url), telemetry) as proxy:
        config = BenchConfig(url=proxy.url, models=["sim-small"], concurrency=[2], requests=6, max_tokens=64,
                             warmup=1, out=str(tmp_path / "bench.jsonl"))
        await run_bench(config)
    await asyncio.to_thread(telemetry.shutdown)

    lines = [json.loads(line) for line in path.read_text().splitlines()]
    spans = [s for line in lines if "resourceSpans" in line for rs in line["resourceSpans"]
             for ss in rs["scopeSpans"] for s in ss["spans"]]
    assert len(spans) == 7 and any("resourceMetrics" in line for line in lines)
    # OTLP/JSON: hex ids, integer enums (SPAN_KIND_CLIENT = 3), 64-bit integers as strings
    assert all(re.fullmatch(r"[0-9a-f]{32}", s["traceId"]) and re.fullmatch(r"[0-9a-f]{16}", s["spanId"])
               for s in spans)
    assert {s["kind"] for s in spans} == {3} and all(isinstance(s["startTimeUnixNano"], str) for s in spans)

    data = load([str(path), str(tmp_path / "bench.jsonl")])
    rows = {r.source: r for r in summarize(data.calls, data.itl_histograms)}
    proxy_row, bench_row = rows["spans"], rows["bench"]
    assert (proxy_row.requests, proxy_row.cold, proxy_row.errors) == (6, 1, 0)
    assert proxy_row.ttft_p50 == pytest.approx(bench_row.ttft_p50, abs=0.006)
    assert SIM_TTFT <= proxy_row.ttft_p50 < SIM_TTFT + 0.010
    assert 1 / proxy_row.tpot == pytest.approx(1 / SIM_ITL, rel=0.12)
    # ITL from the metrics histogram: 15 ms gaps fall in the (10 ms, 25 ms] bucket
    assert proxy_row.itl_source == "histogram" and 0.010 < proxy_row.itl_p50 <= 0.025
    assert proxy_row.provider_tokens_per_s == pytest.approx(bench_row.provider_tokens_per_s, rel=0.2)


async def test_llmtap_serve_telemetry_file_then_llmtap_report(sim: SimServer, tmp_path: Path, capsys) -> None:
    path = tmp_path / "serve.jsonl"
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LLMTAP_"))}
    environment.update(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_BSP_SCHEDULE_DELAY="100")
    process = subprocess.Popen(
        [sys.executable, "-m", "llmtap_proxy.cli", "serve", "--upstream", sim.url, "--port", str(port),
         "--telemetry-file", str(path), "--log-level", "warning"],
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(400):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url + "/readyz") as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("llmtap serve did not become ready")
        # bench through the proxy as a user would: the `llmtap bench` command (it runs its own event loop)
        out = tmp_path / "bench.jsonl"
        code = await asyncio.to_thread(cli.main, [
            "bench", "--url", url, "--model", "sim-small", "--concurrency", "1,3", "--requests", "6",
            "--max-tokens", "64", "--out", str(out), "--no-progress"])
        assert code == 0
        printed = capsys.readouterr().out
        assert "sim-small" in printed and f"raw results: {out} (13 requests, 0 errors)" in printed
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)

    assert cli.main(["report", str(path), "--format", "csv"]) == 0
    [row] = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert (row["model"], row["source"], row["concurrency"]) == ("sim-small", "spans", "")
    assert (row["requests_ok"], row["errors"], row["cold_starts"]) == ("12", "0", "1")
    assert SIM_TTFT <= float(row["ttft_p50_s"]) < SIM_TTFT + 0.010
    assert 1 / float(row["tpot_s"]) == pytest.approx(1 / SIM_ITL, rel=0.12)
    assert row["itl_source"] == "histogram" and 0.010 < float(row["itl_p50_s"]) <= 0.025
    assert 1.0 < float(row["observed_concurrency"]) < 3.0  # levels 1 and 3, mixed: spans carry no level
