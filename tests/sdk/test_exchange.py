"""The figures, exactly as ARCHITECTURE.md defines them, on hand-built timelines."""

from __future__ import annotations

import pytest

from llmtap.exchange import Exchange
from llmtap.providers.base import (
    REASONING,
    TOOL_CALL,
    ContentDelta,
    Finish,
    RequestFacts,
    ResponseInfo,
    StreamError,
    UsageReport,
)

MS = 1_000_000  # ns


def streamed(*content_at_ms: int, first_chunk_ms: int = 5, end_ms: int | None = None) -> Exchange:
    exchange = Exchange(RequestFacts("openai", "chat", model="m", stream=True))
    exchange.streamed = True
    exchange.mark_sent(1000 * MS)
    exchange.mark_headers(1000 * MS + 2 * MS, 200)
    exchange.mark_chunk(1000 * MS + first_chunk_ms * MS)
    exchange.apply([ResponseInfo("m-2024", "id-1")], 1000 * MS + first_chunk_ms * MS)  # role-only chunk
    exchange.apply([ContentDelta("")], 1000 * MS + first_chunk_ms * MS)  # empty content does not count
    for t in content_at_ms:
        exchange.apply([ContentDelta(" word")], 1000 * MS + t * MS)
    exchange.finish(1000 * MS + (end_ms if end_ms is not None else content_at_ms[-1] + 1) * MS)
    return exchange


def test_ttft_is_first_content_bearing_chunk_not_first_chunk() -> None:
    figures = streamed(50, 70, 95).figures()
    assert figures.time_to_first_chunk == pytest.approx(0.005)
    assert figures.ttft == pytest.approx(0.050)


def test_itl_has_one_sample_per_gap() -> None:
    figures = streamed(50, 70, 95, 96).figures()
    assert figures.itl == pytest.approx([0.020, 0.025, 0.001])


def test_tpot_uses_provider_tokens_when_reported() -> None:
    exchange = streamed(50, 70, 90, end_ms=150)
    exchange.apply([UsageReport(input_tokens=7, output_tokens=11)], 1149 * MS)
    figures = exchange.figures()
    assert figures.usage_source == "provider" and figures.output_tokens == 11
    assert figures.tpot == pytest.approx((0.150 - 0.050) / 10)
    assert figures.duration == pytest.approx(0.150)
    assert figures.output_throughput == pytest.approx(11 / 0.150)


def test_tpot_falls_back_to_reference_tokenizer_counts() -> None:
    exchange = streamed(50, 70, 90, end_ms=110)
    assert exchange.figures().tpot is None  # nothing to count with yet
    exchange.normalized_output_tokens, exchange.normalized_source = 4, "tokenizer"
    figures = exchange.figures()
    assert figures.usage_source == "tokenizer"
    assert figures.tpot == pytest.approx((0.110 - 0.050) / 3)


def test_tpot_needs_two_tokens() -> None:
    exchange = streamed(50, end_ms=60)
    exchange.apply([UsageReport(output_tokens=1)], 1059 * MS)
    assert exchange.figures().tpot is None


def test_several_deltas_in_one_chunk_count_once() -> None:
    exchange = streamed(50)
    exchange.apply([ContentDelta("a"), ContentDelta("b", TOOL_CALL), ContentDelta("c", REASONING)], 1060 * MS)
    assert exchange.content_chunks == 2 and len(exchange.itl_samples()) == 1
    assert exchange.output_text() == " wordabc"
    assert exchange.output_text(TOOL_CALL) == "b" and exchange.output_text(REASONING) == "c"


def test_non_streamed_calls_have_no_streaming_figures() -> None:
    exchange = Exchange(RequestFacts("openai", "chat", model="m"))
    exchange.mark_sent(0)
    exchange.mark_chunk(30 * MS)
    exchange.apply([ContentDelta("hello there"), UsageReport(output_tokens=2), Finish("stop")], 30 * MS)
    exchange.finish(31 * MS)
    figures = exchange.figures()
    assert (figures.ttft, figures.time_to_first_chunk, figures.tpot, figures.itl) == (None, None, None, [])
    assert figures.duration == pytest.approx(0.031)
    assert exchange.finish_reasons == ["stop"]


def test_finish_is_once_and_first_error_wins() -> None:
    exchange = streamed(50)
    assert exchange.finish(5 * MS) is False
    exchange.apply([StreamError("overloaded_error", "busy")], 0)
    exchange.fail("timeout")
    assert exchange.error_type == "overloaded_error"


def test_memory_is_bounded() -> None:
    exchange = Exchange(max_timestamps=3, max_output_chars=4)
    for i in range(10):
        exchange.apply([ContentDelta("xy")], i)
    assert exchange.content_chunks == 10
    assert len(exchange.content_times) == 3
    assert exchange.output_text() == "xyxy"


def test_tpot_of_a_call_cut_short_ends_at_its_last_content_chunk() -> None:
    exchange = streamed(50, 70, 90, end_ms=5000)  # cancelled long after the last token
    exchange.fail("cancelled")
    exchange.normalized_output_tokens, exchange.normalized_source = 3, "tokenizer"
    assert exchange.figures().tpot == pytest.approx((0.090 - 0.050) / 2)
    assert exchange.figures().duration == pytest.approx(5.0)
