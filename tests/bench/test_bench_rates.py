"""`llmtap bench` against the simulated backend (direct and through the proxy), and `report` recovering
the rates the simulator was configured with."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llmtap_proxy.bench import BenchConfig, Prompt, _body, builtin_prompts, load_prompts, run_bench
from llmtap_proxy.plots import write_plots
from llmtap_proxy.report import analyze, load, summarize
from llmtap_proxy.sim import SimServer
from tests.bench.conftest import PerfModelServer
from tests.conftest import ThreadLoop, make_captured, proxy_settings, run_proxy

# the session `sim` fixture: TTFT 20 ms, ITL 15 ms, 12 tokens
SIM_TTFT, SIM_ITL, SIM_TOKENS = 0.020, 0.015, 12


def rows_by_level(path: Path) -> dict[int | None, object]:
    data = load([str(path)])
    return {row.concurrency: row for row in summarize(data.calls, data.itl_histograms)}


async def test_bench_direct_records_every_timeline_and_report_recovers_ttft_and_decode_rate(
    sim: SimServer, tmp_path: Path
) -> None:
    out = tmp_path / "direct.jsonl"
    config = BenchConfig(url=sim.url, models=["sim-small"], concurrency=[1, 4], requests=8, max_tokens=64,
                         warmup=1, out=str(out))
    records = await run_bench(config)
    assert len(records) == 1 + 8 + 8

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["type"] == "run" and lines[0]["concurrency"] == [1, 4] and lines[0]["tokenizer"]
    requests = lines[1:]
    assert [r["phase"] for r in requests].count("warmup") == 1
    for r in requests:
        assert r["status"] == 200 and r["error"] is None
        assert r["usage"] == {"input_tokens": r["usage"]["input_tokens"], "output_tokens": SIM_TOKENS}
        # one content chunk per token is written; reads that find two at once count once (docs/metrics.md)
        assert 2 <= len(r["content_times"]) <= SIM_TOKENS
        assert r["ttfc"] <= r["ttft"] == r["content_times"][0] <= r["content_times"][-1] <= r["end"]
        assert len(r["output_text"].split()) == SIM_TOKENS
        assert r["normalized_output_tokens"] >= SIM_TOKENS and r["normalized_input_tokens"] > 0

    rows = rows_by_level(out)
    assert set(rows) == {1, 4}
    for level, row in rows.items():
        assert (row.requests, row.errors, row.cold) == (8, 0, 1 if level == 1 else 0)
        # TTFT: the configured 20 ms plus the loopback round trip
        assert SIM_TTFT <= row.ttft_p50 < SIM_TTFT + 0.010, row
        # decode rate from TPOT: 1000 / 15 ms = 66.7 tokens/s
        assert 1 / row.tpot == pytest.approx(1 / SIM_ITL, rel=0.12), row
        assert row.itl_p50 == pytest.approx(SIM_ITL, abs=0.003), row
        assert row.itl_source == "chunks"
        duration = SIM_TTFT + (SIM_TOKENS - 1) * SIM_ITL
        assert row.latency_avg == pytest.approx(duration, rel=0.1)
        assert row.time_100_tokens == pytest.approx(row.ttft_mean + 99 * row.tpot)
        # closed loop: level x requests per call duration
        assert row.requests_per_s == pytest.approx(level / duration, rel=0.25), row
        assert row.provider_tokens_per_s == pytest.approx(row.requests_per_s * SIM_TOKENS)


async def test_bench_anthropic_messages_through_the_proxy_agrees_with_the_proxy_spans(
    sim: SimServer, tmp_path: Path
) -> None:
    captured = make_captured()
    out = tmp_path / "proxied.jsonl"
    async with run_proxy(proxy_settings(sim.url), captured.telemetry) as proxy:
        config = BenchConfig(url=proxy.url, models=["sim-small"], concurrency=[2], requests=6, max_tokens=64,
                             api="anthropic", warmup=1, out=str(out))
        records = await run_bench(config)
        spans = await captured.wait_for_genai_spans(7)
    assert len(spans) == 7 and all(r.error is None and r.usage["output_tokens"] == SIM_TOKENS for r in records)
    assert {s.attributes["gen_ai.provider.name"] for s in spans} == {"anthropic"}
    # the proxy flags the first call to the model as a cold start: it is bench's warm-up call
    cold = [s for s in spans if s.attributes.get("llmtap.cold_start")]
    assert len(cold) == 1

    row = rows_by_level(out)[2]
    assert (row.requests, row.cold) == (6, 1)
    assert SIM_TTFT <= row.ttft_p50 < SIM_TTFT + 0.012
    assert 1 / row.tpot == pytest.approx(1 / SIM_ITL, rel=0.12)
    # the proxy measures the same call from closer to the server: its TTFT is a little smaller
    span_ttfts = sorted(s.attributes["llmtap.ttft"] for s in spans if not s.attributes.get("llmtap.cold_start"))
    assert span_ttfts[len(span_ttfts) // 2] == pytest.approx(row.ttft_p50, abs=0.006)


async def test_bench_counts_errors_and_unreachable_servers(sim: SimServer, tmp_path: Path) -> None:
    config = BenchConfig(url=sim.url, models=["sim-small"], concurrency=[2], requests=4, warmup=0,
                         headers={"x-sim-status": "429"}, out=str(tmp_path / "errors.jsonl"))
    records = await run_bench(config, progress=True)  # the rich progress bar, on stderr
    assert [r.error for r in records] == ["429"] * 4 and all(r.status == 429 for r in records)
    row = rows_by_level(tmp_path / "errors.jsonl")[2]
    assert (row.requests, row.errors, row.ttft_p50, row.requests_per_s) == (0, 4, None, None)

    config = BenchConfig(url="http://127.0.0.1:9", models=["m"], concurrency=[1], requests=2, warmup=0, timeout=5,
                         out=str(tmp_path / "down.jsonl"))
    assert [r.error for r in await run_bench(config)] == ["connection_error"] * 2


async def test_bench_sends_fixed_prompts_output_length_and_ignore_eos(sim: SimServer, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "one two three"}\n"four five"\n'
                       '{"id": "m", "system": "be brief", "messages": [{"role": "user", "content": "six"}]}\n')
    loaded = load_prompts(str(prompts))
    assert [p.id for p in loaded] == ["line-1", "line-2", "m"]
    assert loaded[2].messages[0] == {"role": "system", "content": "be brief"}
    assert len(builtin_prompts()) >= 12
    lengths = sorted(len(p.text.split()) for p in builtin_prompts())
    assert lengths[-1] > 10 * lengths[0]  # a spread of prompt lengths, for the TTFT vs input tokens fit

    config = BenchConfig(url=sim.url, models=["sim-small"], concurrency=[1], requests=6, max_tokens=5,
                         prompts=loaded, seed=7, ignore_eos=True, warmup=0, out=str(tmp_path / "fixed.jsonl"))
    records = await run_bench(config)
    # max_tokens caps every answer; each prompt is used in turn (seeded order), twice
    assert all(r.usage["output_tokens"] == 5 and r.finish_reason == "length" for r in records)
    assert sorted(r.prompt_id for r in records) == ["line-1", "line-1", "line-2", "line-2", "m", "m"]
    again = await run_bench(BenchConfig(**{**config.__dict__, "out": str(tmp_path / "again.jsonl")}))
    assert [r.prompt_id for r in again] == [r.prompt_id for r in records]
    # the simulator counts prompt words: the system message is part of the prompt
    assert {r.prompt_id: r.usage["input_tokens"] for r in records} == {"line-1": 3, "line-2": 2, "m": 3}


def test_request_bodies_per_api() -> None:
    prompt = Prompt("p", [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    openai = BenchConfig(url="http://h/v1", models=["m"], max_tokens=7, seed=3, ignore_eos=True, temperature=0.0)
    assert openai.endpoint() == "http://h/v1/chat/completions"
    assert _body(openai, "m", prompt) == {
        "model": "m", "messages": prompt.messages, "max_tokens": 7, "stream": True,
        "stream_options": {"include_usage": True}, "seed": 3, "ignore_eos": True, "temperature": 0.0}
    assert "ignore_eos" not in _body(BenchConfig(url="http://h", models=["m"]), "m", prompt)
    anthropic = BenchConfig(url="http://h/", models=["m"], max_tokens=7, api="anthropic", ignore_eos=True)
    assert anthropic.endpoint() == "http://h/v1/messages"
    assert _body(anthropic, "m", prompt) == {
        "model": "m", "max_tokens": 7, "messages": [{"role": "user", "content": "hi"}], "stream": True,
        "system": "be brief"}


async def test_bench_duration_mode_stops_starting_requests_after_the_duration(sim: SimServer, tmp_path: Path) -> None:
    config = BenchConfig(url=sim.url, models=["sim-small"], concurrency=[3], duration=0.4, warmup=0,
                         headers={"x-sim-tokens": "3"}, out=str(tmp_path / "duration.jsonl"))
    assert config.level_requests(3) is None
    records = await run_bench(config)
    first = min(r.start for r in records)
    # calls take about 50 ms: 3 callers for 0.4 s make about 24, and none starts after the 0.4 s
    assert 9 <= len(records) <= 30 and all(r.start - first < 0.4 for r in records)
    assert all(r.error is None and r.usage["output_tokens"] == 3 for r in records)


async def test_report_recovers_prefill_slope_decode_rate_and_saturation_point(
    perf_model: PerfModelServer, tmp_path: Path
) -> None:
    model = perf_model.model
    words = [10, 40, 80, 160, 240, 320]
    prompts = [Prompt(f"w{n}", [{"role": "user", "content": " ".join(["word"] * n)}]) for n in words]
    out = tmp_path / "perf.jsonl"
    config = BenchConfig(url=perf_model.url, models=["sim-batch4"], concurrency=[1, 2, 4, 8], max_tokens=16,
                         prompts=prompts, requests=12, warmup=1, out=str(out))
    await run_bench(config)

    data = load([str(out)])
    rows = summarize(data.calls)
    analysis = analyze(data.calls, rows)["sim-batch4"]
    by_level = {r.concurrency: r for r in rows}

    # prefill: the TTFT slope against input tokens is the configured 0.25 ms per token (4000 tokens/s)
    fit = analysis.fit
    assert fit is not None and fit.concurrency == 1 and fit.r2 > 0.95
    assert fit.slope == pytest.approx(model.prefill_ms_per_token / 1000, rel=0.15)
    assert fit.prefill_rate == pytest.approx(1000 / model.prefill_ms_per_token, rel=0.15)
    assert fit.intercept == pytest.approx(model.base_ttft_ms / 1000, abs=0.006)
    # decode: 1 / TPOT is 1000 / ITL while the batch has room, and halves at twice the batch limit
    for level in (1, 2, 4):
        assert 1 / by_level[level].tpot == pytest.approx(1000 / model.itl_ms, rel=0.12)
    # at 8 in flight ITL doubles; the first wave of the level arrives at 1..8 in flight, so the pooled
    # median sits between 1x and 2x
    assert 1.3 * by_level[4].itl_p50 < by_level[8].itl_p50 <= 2.2 * model.itl_ms / 1000
    # saturation: throughput stops growing past the batch limit
    assert analysis.saturation == model.batch_limit
    notes = "\n".join(analysis.notes)
    assert re.search(r"TTFT grows 0\.\d+ ms per input token at concurrency 1 .*: prefill-bound", notes)
    assert re.search(r"ITL p50 rises \d+% from concurrency 4 to 8: decode batching saturates", notes)
    assert "throughput saturates at concurrency 4" in notes

    infos = {Path(i.path).name: i for i in write_plots(data.calls, rows, analyze(data.calls, rows), str(tmp_path))}
    saturation = infos["saturation.png"]
    assert [a.title for a in saturation.axes] == ["throughput", "average latency", "ITL p50"]
    assert all([(s.label, s.points) for s in a.series] == [("sim-batch4", 4)] for a in saturation.axes)
    scatter = infos["ttft_vs_input_tokens.png"].axes[0].series
    assert sorted((s.kind, s.points) for s in scatter) == [("line", 2), ("scatter", 12)]  # the points and the fit


async def test_report_recovers_the_simulators_own_model_prefill_queueing_and_cold_start(tmp_path: Path) -> None:
    """A named model of the simulator (llmtap_proxy.sim_model): prefill at 2000 tokens/s, 10 ms per token,
    a batch of 4 slots (more requests queue), and a 300 ms model load on the first request."""
    from llmtap_proxy.sim import start_sim
    from llmtap_proxy.sim_model import ModelSpec

    spec = ModelSpec("sim-slots4", base_ms=10, prefill_tps=2000, itl_ms=10, output_tokens=16, max_batch=4,
                     batch_knee=4, batch_alpha=0.0, cold_start_ms=300)
    loop = ThreadLoop("sim-slots4")
    sim = await loop.run(start_sim(models={spec.name: spec}))
    try:
        words = [10, 40, 80, 160, 240, 320]
        prompts = [Prompt(f"w{n}", [{"role": "user", "content": " ".join(["word"] * n)}]) for n in words]
        out = tmp_path / "slots.jsonl"
        await run_bench(BenchConfig(url=sim.url, models=[spec.name], concurrency=[1, 2, 4, 8], requests=12,
                                    max_tokens=16, prompts=prompts, warmup=1, out=str(out)))
    finally:
        await loop.run(sim.close())
        await loop.stop()

    data = load([str(out)])
    rows = summarize(data.calls)
    analysis = analyze(data.calls, rows)[spec.name]
    by_level = {r.concurrency: r for r in rows}
    fit = analysis.fit
    assert fit is not None and fit.r2 > 0.95
    assert fit.prefill_rate == pytest.approx(spec.prefill_tps, rel=0.15)
    assert fit.intercept == pytest.approx(spec.base_ms / 1000, abs=0.006)
    assert 1 / by_level[1].tpot == pytest.approx(1000 / spec.itl_ms, rel=0.12)
    # 8 callers share 4 slots: throughput stays at the 4-slot level and the extra 4 wait before prefill
    assert analysis.saturation == spec.max_batch
    assert by_level[8].ttft_p50 > by_level[4].ttft_p50 + 0.1
    assert 1 / by_level[8].tpot == pytest.approx(1000 / spec.itl_ms, rel=0.12)  # decoding itself is not slower
    # the warm-up call paid the model load; it is reported apart from the rows
    warmup = [c for c in data.calls if c.cold]
    assert len(warmup) == 1 and warmup[0].ttft >= spec.cold_start_ms / 1000
    notes = "\n".join(analysis.notes)
    assert "throughput saturates at concurrency 4" in notes and "cold start(s)" in notes
