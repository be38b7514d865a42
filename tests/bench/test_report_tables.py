"""`llmtap report` on small hand-written inputs, against values computed by hand.

Times are binary fractions (multiples of 1/16 s) so that every expected value below is exact.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmtap_proxy import cli
from llmtap_proxy.report import (
    Histogram,
    analyze,
    histogram_quantile,
    load,
    percentile,
    render,
    summarize,
)


def req(model: str, concurrency: int, start: float, times: list[float], end: float, usage: dict[str, int] | None,
        n_in: int, n_out: int, phase: str = "measure", error: str | None = None) -> dict[str, Any]:
    return {"type": "request", "run_id": "fixture", "model": model, "api": "openai", "concurrency": concurrency,
            "phase": phase, "index": 0, "prompt_id": "p", "start": start, "status": 429 if error else 200,
            "error": error, "ttfc": times[0] if times else None, "ttft": times[0] if times else None,
            "content_times": times, "end": end, "usage": usage, "normalized_input_tokens": n_in,
            "normalized_output_tokens": n_out, "tokenizer": "cl100k_base", "output_text": ""}


BENCH = [
    {"type": "run", "run_id": "fixture", "tool": "llmtap bench"},
    # alpha, concurrency 1: a warm-up call, three good calls, one 429
    req("alpha", 1, 100.0, [0.5, 0.625], 0.75, {"input_tokens": 8, "output_tokens": 2}, 10, 3, phase="warmup"),
    req("alpha", 1, 101.0, [0.125, 0.25, 0.5], 0.5, {"input_tokens": 8, "output_tokens": 3}, 10, 4),
    req("alpha", 1, 102.0, [0.25, 0.375, 0.625, 0.75], 1.0, {"input_tokens": 24, "output_tokens": 4}, 30, 6),
    req("alpha", 1, 103.5, [0.5, 0.75], 0.75, {"input_tokens": 56, "output_tokens": 2}, 60, 2),
    req("alpha", 1, 104.5, [], 0.0625, None, 10, 0, error="429"),
    # alpha, concurrency 2: two overlapping calls
    req("alpha", 2, 200.0, [0.25, 0.5], 0.5, {"input_tokens": 8, "output_tokens": 2}, 10, 3),
    req("alpha", 2, 200.25, [0.125, 0.25, 0.375], 0.5, {"input_tokens": 8, "output_tokens": 3}, 10, 3),
    # beta: a server that reports no usage: output tokens come from the reference tokenizer
    req("beta", 1, 300.0, [0.25, 0.5, 0.75], 1.0, None, 16, 5),
]


@pytest.fixture
def bench_file(tmp_path: Path) -> Path:
    path = tmp_path / "bench.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in BENCH))
    return path


def test_bench_fixture_rows_match_hand_computed_values(bench_file: Path) -> None:
    data = load([str(bench_file)])
    rows = {(r.model, r.concurrency): r for r in summarize(data.calls)}
    assert list(rows) == [("alpha", 1), ("alpha", 2), ("beta", 1)]

    a1 = rows[("alpha", 1)]
    # busy intervals [101, 101.5] [102, 103] [103.5, 104.25] [104.5, 104.5625]; the warm-up is left out
    total = 0.5 + 1.0 + 0.75 + 0.0625
    assert (a1.requests, a1.errors, a1.cold) == (3, 1, 1)
    assert a1.total_time == total == 2.3125
    assert a1.observed_concurrency == 1.0
    assert a1.requests_per_s == 3 / 2.3125
    assert a1.provider_tokens_per_s == (3 + 4 + 2) / 2.3125
    assert a1.normalized_tokens_per_s == (4 + 6 + 2) / 2.3125
    assert a1.latency_avg == (0.5 + 1.0 + 0.75) / 3
    assert a1.latency_per_token == pytest.approx((0.5 / (8 + 3) + 1.0 / (24 + 4) + 0.75 / (56 + 2)) / 3, abs=1e-15)
    assert a1.latency_per_output_token == pytest.approx((0.5 / 3 + 1.0 / 4 + 0.75 / 2) / 3, abs=1e-15)
    # TTFT 0.125, 0.25, 0.5: p50 = 0.25; p90 at rank 1.8 = 0.25 + 0.8 x 0.25; p99 at rank 1.98
    assert (a1.ttft_p50, a1.ttft_p90, a1.ttft_p99) == (0.25, 0.45, 0.495)
    # ITL samples pooled: 0.125 0.25 | 0.125 0.25 0.125 | 0.25 -> p50 at rank 2.5 of the sorted six
    assert (a1.itl_p50, a1.itl_p99, a1.itl_source) == (0.1875, 0.25, "chunks")
    # TPOT per call: (0.5 - 0.125) / 2, (1.0 - 0.25) / 3, (0.75 - 0.5) / 1
    assert a1.tpot == (0.1875 + 0.25 + 0.25) / 3
    assert a1.time_100_tokens == (0.125 + 0.25 + 0.5) / 3 + 99 * ((0.1875 + 0.25 + 0.25) / 3)

    a2 = rows[("alpha", 2)]
    assert (a2.requests, a2.errors, a2.cold, a2.total_time) == (2, 0, 0, 0.75)  # [200, 200.75]
    assert a2.observed_concurrency == 1.0 / 0.75
    assert (a2.requests_per_s, a2.provider_tokens_per_s, a2.normalized_tokens_per_s) == (2 / 0.75, 5 / 0.75, 6 / 0.75)
    assert (a2.ttft_p50, a2.itl_p50, a2.tpot) == (0.1875, 0.125, (0.25 + 0.1875) / 2)

    beta = rows[("beta", 1)]
    assert beta.provider_tokens_per_s is None and beta.normalized_tokens_per_s == 5.0
    assert beta.tpot == (1.0 - 0.25) / (5 - 1)  # the tokenizer's 5 output tokens
    assert (beta.latency_per_token, beta.latency_per_output_token) == (1.0 / 21, 1.0 / 5)


def test_bottleneck_notes_state_the_slopes(bench_file: Path) -> None:
    data = load([str(bench_file)])
    rows = summarize(data.calls)
    alpha = analyze(data.calls, rows)["alpha"]
    # TTFT = 0.0625 + input / 128 exactly at concurrency 1 (8 -> 0.125, 24 -> 0.25, 56 -> 0.5)
    assert alpha.fit is not None
    assert (alpha.fit.slope, alpha.fit.r2) == (1 / 128, 1.0)
    assert alpha.fit.intercept == pytest.approx(0.0625, abs=1e-15)
    assert alpha.notes == [
        "TTFT grows 7.81 ms per input token at concurrency 1 (R² 1.00, n=3); at the median prompt (24 tokens) "
        "prefill is 75% of TTFT: prefill-bound (marginal prefill rate ≈ 128 tokens/s)",
        "decode ≈ 4 tokens/s per request at concurrency 1 (1 / TPOT)",
        "ITL p50 changes -33% from concurrency 1 to 2 (largest step -33%): decode batching keeps up",
        # normalised tok/s 12 / 2.3125 = 5.19 -> 8.0: (8 / 5.19 - 1) / (2 - 1) = 54% of linear
        "throughput still scales at concurrency 2 (every step ≥ 50% of linear): not saturated",
        "1 cold start(s) / warm-up call(s): TTFT 500.0 ms mean vs 187.5 ms warm p50 (2.7x); left out of the rows",
    ]
    assert analyze(data.calls, rows)["beta"].notes[0].startswith("prompt lengths vary too little")


def test_markdown_and_csv_output(bench_file: Path) -> None:
    data = load([str(bench_file)])
    rows = summarize(data.calls)
    markdown = render(rows, "markdown", analyze(data.calls, rows)).splitlines()
    assert markdown[0] == ("| model | conc | ok | err | cold | norm tok/s | prov tok/s | req/s | lat avg s "
                           "| lat/tok ms | lat/out tok ms | TTFT p50 ms | TTFT p90 ms | TTFT p99 ms | ITL p50 ms "
                           "| ITL p99 ms | TPOT ms | 100 tok s | total s |")
    assert markdown[1] == "| --- | ---: | " + "---: | " * 16 + "---: |"
    assert markdown[2] == ("| alpha | 1 | 3 | 1 | 1 | 5.2 | 3.9 | 1.30 | 0.750 | 31.4 | 263.9 | 250.0 | 450.0 | 495.0 "
                           "| 187.5 | 250.0 | 229.2 | 22.979 | 2.31 |")
    assert markdown[4] == ("| beta | 1 | 1 | 0 | 0 | 5.0 | - | 1.00 | 1.000 | 47.6 | 200.0 | 250.0 | 250.0 | 250.0 "
                           "| 250.0 | 250.0 | 187.5 | 18.812 | 1.00 |")
    assert "**Bottleneck notes**" in markdown and any("prefill-bound" in line for line in markdown)

    table = list(csv.DictReader(io.StringIO(render(rows, "csv"))))
    assert [(r["model"], r["concurrency"]) for r in table] == [("alpha", "1"), ("alpha", "2"), ("beta", "1")]
    assert float(table[0]["ttft_p90_s"]) == 0.45 and float(table[0]["total_time_s"]) == 2.3125
    assert float(table[0]["time_100_output_tokens_s"]) == rows[0].time_100_tokens
    assert table[2]["provider_tokens_per_s"] == "" and table[2]["itl_source"] == "chunks"


def test_percentiles_match_numpy_and_histogram_quantiles_interpolate_in_buckets() -> None:
    values = [0.3, 0.01, 0.2, 0.7, 0.05, 0.4, 0.11]
    for q in (0, 10, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), abs=1e-15)
    assert percentile([], 50) is None
    histogram = Histogram([0.01, 0.025, 0.05], [0, 4, 4, 0])
    assert histogram_quantile(0.5, histogram) == 0.025  # rank 4: the top of the second bucket
    assert histogram_quantile(0.99, histogram) == pytest.approx(0.025 + 0.025 * 3.92 / 4)
    assert histogram_quantile(0.5, Histogram([0.01], [0, 3])) == 0.01  # overflow bucket: highest bound


def attr(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    return {"key": key, "value": {"stringValue": value}}


def span(start: float, end: float, **attributes: Any) -> dict[str, Any]:
    return {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "chat gamma",
            "kind": 3, "startTimeUnixNano": str(int(start * 1e9)), "endTimeUnixNano": str(int(end * 1e9)),
            "attributes": [attr(k.replace("__", "."), v) for k, v in attributes.items()]}


def genai(start: float, end: float, **more: Any) -> dict[str, Any]:
    return span(start, end, **{"gen_ai.operation.name": "chat", "gen_ai.request.model": "gamma",
                               "gen_ai.usage.input_tokens": 8, "gen_ai.usage.output_tokens": 7,
                               "llmtap.usage.normalized_output_tokens": 9, **more})


def itl_point(counts: list[int], at: int, **attributes: Any) -> dict[str, Any]:
    return {"attributes": [attr(k, v) for k, v in {"gen_ai.request.model": "gamma", **attributes}.items()],
            "startTimeUnixNano": "1", "timeUnixNano": str(at), "count": str(sum(counts)),
            "bucketCounts": [str(c) for c in counts], "explicitBounds": [0.01, 0.025, 0.05]}


def metrics_line(*points: dict[str, Any]) -> dict[str, Any]:
    return {"resourceMetrics": [{"resource": {"attributes": [attr("service.instance.id", "i-1")]}, "scopeMetrics": [{
        "scope": {"name": "llmtap"}, "metrics": [{
            "name": "gen_ai.client.operation.time_per_output_chunk", "unit": "s",
            "histogram": {"aggregationTemporality": 2, "dataPoints": list(points)}}]}]}]}


def test_spans_and_metrics_from_a_telemetry_file(tmp_path: Path) -> None:
    spans = [
        genai(500.0, 500.5, **{"llmtap.ttft": 0.125, "llmtap.tpot": 0.0625, "llmtap.cold_start": False}),
        genai(501.0, 502.0, **{"llmtap.ttft": 0.25, "llmtap.tpot": 0.125, "llmtap.cold_start": False}),
        genai(499.0, 499.75, **{"llmtap.ttft": 0.5, "llmtap.cold_start": True}),
        genai(503.0, 503.125, **{"error.type": "timeout", "llmtap.cold_start": False}),
        span(400.0, 410.0, **{"http.route": "/healthz"}),  # not an LLM call
    ]
    lines = [
        {"resourceSpans": [{"resource": {}, "scopeSpans": [{"scope": {"name": "llmtap"}, "spans": spans}]}]},
        metrics_line(itl_point([0, 1, 0, 0], at=10)),  # an earlier cumulative export: superseded
        metrics_line(itl_point([0, 4, 4, 0], at=20), itl_point([0, 0, 0, 9], at=20, **{"llmtap.cold_start": True})),
    ]
    directory = tmp_path / "telemetry"
    directory.mkdir()
    (directory / "proxy.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    data = load([str(directory)])
    [row] = summarize(data.calls, data.itl_histograms)
    assert (row.source, row.model, row.concurrency) == ("spans", "gamma", None)
    assert (row.requests, row.errors, row.cold) == (2, 1, 1)
    assert row.total_time == 0.5 + 1.0 + 0.125 and row.observed_concurrency == 1.0
    assert row.requests_per_s == 2 / 1.625
    assert (row.provider_tokens_per_s, row.normalized_tokens_per_s) == (14 / 1.625, 18 / 1.625)
    assert (row.latency_avg, row.ttft_p50, row.tpot) == (0.75, 0.1875, 0.09375)
    assert row.time_100_tokens == 0.1875 + 99 * 0.09375
    assert row.latency_per_token == (0.5 / 15 + 1.0 / 15) / 2
    # ITL from the warm series of the latest cumulative export: buckets (0.01, 0.025] x4, (0.025, 0.05] x4
    assert (row.itl_source, row.itl_p50) == ("histogram", 0.025)
    assert row.itl_p99 == pytest.approx(0.025 + 0.025 * 3.92 / 4)
    markdown = render([row], "markdown").splitlines()[2]
    assert markdown.startswith("| gamma | ~1.0 | 2 | 1 | 1 |") and "| ≈25.0 | ≈49.5 |" in markdown


def test_report_command_prints_tables_and_writes_plots(bench_file: Path, tmp_path: Path, capsys) -> None:
    assert cli.main(["report", str(bench_file), "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("model,source,concurrency,")
    assert cli.main(["report", str(bench_file), "--plot", str(tmp_path / "plots")]) == 0
    captured = capsys.readouterr()
    assert "llmtap report" in captured.out and "alpha" in captured.out and "Bottleneck notes" in captured.out
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "saturation.png", "ttft_itl_distribution.png", "ttft_vs_input_tokens.png"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert cli.main(["report", str(empty)]) == 1
    broken = tmp_path / "broken.jsonl"
    broken.write_text(bench_file.read_text() + '{"type": "requ')  # cut short mid-line
    assert cli.main(["report", str(broken)]) == 2
    assert f"{broken}:10: not a JSON line" in capsys.readouterr().err
    pretty = tmp_path / "pretty.json"  # one indented OTLP document, as some tools write
    pretty.write_text(json.dumps({"resourceSpans": []}, indent=2))
    assert load([str(pretty)]).calls == []
