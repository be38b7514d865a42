"""`report --plot`: real PNGs, with the series the data calls for (read back from the drawn figures)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from llmtap_proxy.plots import write_plots
from llmtap_proxy.report import analyze, load, summarize
from tests.bench.test_report_tables import BENCH, genai

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    assert data[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


def series(info, axes: int) -> list[tuple[str, str, int]]:
    return sorted((s.label, s.kind, s.points) for s in info.axes[axes].series)


def test_plots_from_bench_results(tmp_path: Path) -> None:
    source = tmp_path / "bench.jsonl"
    source.write_text("".join(json.dumps(item) + "\n" for item in BENCH))
    data = load([str(source)])
    rows = summarize(data.calls)
    written = write_plots(data.calls, rows, analyze(data.calls, rows), str(tmp_path / "p"))
    infos = {Path(i.path).name: i for i in written}
    assert set(infos) == {"ttft_itl_distribution.png", "saturation.png", "ttft_vs_input_tokens.png"}
    for name, info in infos.items():
        path = Path(info.path)
        assert path.parent == tmp_path / "p"
        width, height = png_size(path)
        assert width >= 600 and height >= 400, name
        assert path.stat().st_size < 200_000

    distribution = infos["ttft_itl_distribution.png"]
    assert [a.title for a in distribution.axes] == ["TTFT distribution", "ITL (per content chunk) distribution"]
    # one empirical CDF per model and level; the warm-up and the failed call are left out
    assert series(distribution, 0) == [("alpha c=1", "line", 3), ("alpha c=2", "line", 2), ("beta c=1", "line", 1)]
    assert series(distribution, 1) == [("alpha c=1", "line", 6), ("alpha c=2", "line", 3), ("beta c=1", "line", 2)]

    saturation = infos["saturation.png"]
    for axes in range(3):
        assert series(saturation, axes) == [("alpha", "line", 2), ("beta", "line", 1)]
    assert saturation.axes[0].xlabel == "concurrency"

    prefill = infos["ttft_vs_input_tokens.png"].axes[0]
    assert (prefill.xlabel, prefill.ylabel) == ("input tokens", "TTFT (ms)")
    # alpha: 3 points at concurrency 1 and its fitted line; beta: one point, too few to fit
    assert series(infos["ttft_vs_input_tokens.png"], 0) == [
        ("alpha c=1", "scatter", 3), ("alpha: 7.81 ms/token, R² 1.00", "line", 2), ("beta c=1", "scatter", 1)]


def test_plots_from_spans_skip_the_concurrency_curve(tmp_path: Path) -> None:
    spans = [genai(10.0 + i, 10.5 + i, **{"llmtap.ttft": 0.1 * (i + 1), "gen_ai.usage.input_tokens": 10 * (i + 1)})
             for i in range(4)]
    source = tmp_path / "spans.jsonl"
    source.write_text(json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}) + "\n")
    data = load([str(source)])
    rows = summarize(data.calls)
    infos = {Path(i.path).name: i for i in write_plots(data.calls, rows, analyze(data.calls, rows), str(tmp_path))}
    assert set(infos) == {"ttft_itl_distribution.png", "ttft_vs_input_tokens.png"}  # no levels: no saturation curve
    assert series(infos["ttft_itl_distribution.png"], 0) == [("gamma", "line", 4)]
    assert series(infos["ttft_itl_distribution.png"], 1) == []  # spans carry no per-chunk times
    assert series(infos["ttft_vs_input_tokens.png"], 0) == [
        ("gamma", "scatter", 4), ("gamma: 10 ms/token, R² 1.00", "line", 2)]
    for info in infos.values():
        png_size(Path(info.path))
