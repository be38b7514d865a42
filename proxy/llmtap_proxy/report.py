"""`llmtap report`: per model and concurrency level, the figures people compare LLM deployments by.

Inputs, mixed freely (files or directories of them):
- `llmtap bench` JSON lines (`{"type": "request", ...}`; see `llmtap_proxy.bench`);
- OTLP JSON written by `llmtap serve --telemetry-file` (one `ExportTraceServiceRequest` or
  `ExportMetricsServiceRequest` per line), or a single OTLP JSON document per file.

Every figure follows docs/metrics.md. Per row (one model at one concurrency level; for spans, one
model, since spans do not carry the load level):

- warm-up calls (bench) and calls flagged `llmtap.cold_start` (spans) are left out of every statistic
  and counted under "cold"; failed calls are left out of the statistics and counted under "err";
- total time: the time during which at least one of the row's calls was in flight (the union of
  their [send, last byte] intervals): for a bench level, first send to last byte;
- throughput: output tokens of the successful calls / total time, with the reference tokenizer's
  counts (normalised, comparable across models) and with the provider's counts; requests/s likewise;
- average latency: mean duration (send to last byte); per token: mean of duration / (input + output
  tokens); per output token: mean of duration / output tokens (vLLM's benchmark_serving definitions);
  tokens are the provider's counts where reported, else the reference tokenizer's;
- TTFT p50/p90/p99 over calls; ITL p50/p99 over all inter-chunk gaps of all calls, pooled (percentiles
  interpolate linearly between order statistics, as numpy's default);
- TPOT: mean of the per-call TPOT, (last byte - first token) / (output tokens - 1);
- time for 100 output tokens = mean TTFT + 99 x mean TPOT.

Spans carry no per-chunk times, so ITL percentiles from spans come from the file's
`gen_ai.client.operation.time_per_output_chunk` histogram when the file holds metrics (shown with
"≈": estimated within the bucket boundaries, warm calls only), and are "-" otherwise.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Analysis",
    "Call",
    "Dataset",
    "Row",
    "add_arguments",
    "analyze",
    "calls_from_records",
    "histogram_quantile",
    "load",
    "main",
    "percentile",
    "render",
    "summarize",
]

ITL_METRIC = "gen_ai.client.operation.time_per_output_chunk"

# Heuristic thresholds for the bottleneck notes (stated in every report that shows notes).
PREFILL_MIN_R2 = 0.5  # the TTFT ~ input tokens line must explain at least half the variance
PREFILL_MIN_SHARE = 0.5  # and prefill must be at least half of TTFT at the median prompt
ITL_RISE = 0.25  # ITL p50 rising 25% or more between two levels: decode batching saturates
SATURATION_EFFICIENCY = 0.5  # a step that turns < 50% of the added concurrency into throughput
TTFT_QUEUE_RATIO = 2.0  # TTFT p50 doubling from the lowest to the highest level: queueing

HEURISTICS = (
    f"prefill-bound when TTFT fitted against input tokens (least squares, lowest concurrency level) has "
    f"R² ≥ {PREFILL_MIN_R2} and slope x median prompt ≥ {PREFILL_MIN_SHARE:.0%} of the median TTFT; "
    f"the inverse slope is the marginal prefill rate. Decode batching saturates when ITL p50 rises "
    f"≥ {ITL_RISE:.0%} between consecutive levels. Throughput saturates at level a when going to the next "
    f"level b gains less than {SATURATION_EFFICIENCY:.0%} of linear scaling: (T_b/T_a - 1) / (b/a - 1) < "
    f"{SATURATION_EFFICIENCY}. Requests queue when TTFT p50 grows ≥ {TTFT_QUEUE_RATIO:g}x from the lowest "
    f"to the highest level."
)


# --- inputs ----------------------------------------------------------------------------------------

@dataclass(slots=True)
class Call:
    """One LLM call, from a bench record or a span. Seconds and tokens."""

    source: str  # "bench" or "spans"
    model: str
    concurrency: int | None  # the bench level; None for spans
    cold: bool
    error: str | None
    start: float  # Unix seconds
    duration: float
    ttft: float | None
    itl: list[float] | None  # None: not recorded (spans)
    tpot: float | None
    input_tokens: int | None  # the provider's count, else the reference tokenizer's
    output_tokens: int | None  # the provider's count, else the reference tokenizer's
    provider_output_tokens: int | None
    normalized_output_tokens: int | None

    @property
    def end(self) -> float:
        return self.start + self.duration


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _tpot(ttft: float | None, decode_end: float | None, tokens: int | None) -> float | None:
    if ttft is None or decode_end is None or tokens is None or tokens < 2 or decode_end <= ttft:
        return None
    return (decode_end - ttft) / (tokens - 1)


def calls_from_records(records: Iterable[dict[str, Any]]) -> list[Call]:
    """Calls from `llmtap bench` request records (dicts as written in its JSONL)."""
    calls: list[Call] = []
    for rec in records:
        if rec.get("type", "request") != "request":
            continue
        usage = rec.get("usage") or {}
        provider_out, provider_in = _int(usage.get("output_tokens")), _int(usage.get("input_tokens"))
        normalized_out = _int(rec.get("normalized_output_tokens"))
        normalized_in = _int(rec.get("normalized_input_tokens"))
        output_tokens = provider_out if provider_out is not None else normalized_out
        times = [float(t) for t in rec.get("content_times") or []]
        ttft = rec.get("ttft")
        ttft = float(ttft) if ttft is not None else (times[0] if times else None)
        end = float(rec.get("end") or 0.0)
        error = rec.get("error") or None
        decode_end = end if error is None else (times[-1] if times else None)
        calls.append(Call(
            source="bench", model=str(rec.get("model")), concurrency=_int(rec.get("concurrency")),
            cold=rec.get("phase") == "warmup", error=error, start=float(rec.get("start") or 0.0), duration=end,
            ttft=ttft, itl=[b - a for a, b in itertools.pairwise(times)], tpot=_tpot(ttft, decode_end, output_tokens),
            input_tokens=provider_in if provider_in is not None else normalized_in, output_tokens=output_tokens,
            provider_output_tokens=provider_out, normalized_output_tokens=normalized_out,
        ))
    return calls


def _any_value(value: dict[str, Any]) -> Any:
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in value:
            return value[key]
    if "intValue" in value:
        return int(value["intValue"])
    if "arrayValue" in value:
        return [_any_value(v) for v in value["arrayValue"].get("values", [])]
    return None


def _attributes(items: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {a["key"]: _any_value(a.get("value") or {}) for a in items or [] if "key" in a}


def calls_from_otlp_traces(request: dict[str, Any]) -> list[Call]:
    """Calls from one OTLP/JSON ExportTraceServiceRequest: the spans that carry gen_ai.operation.name."""
    calls: list[Call] = []
    for resource_spans in request.get("resourceSpans") or []:
        for scope_spans in resource_spans.get("scopeSpans") or []:
            for span in scope_spans.get("spans") or []:
                attrs = _attributes(span.get("attributes"))
                if "gen_ai.operation.name" not in attrs:
                    continue
                start_ns, end_ns = int(span.get("startTimeUnixNano", 0)), int(span.get("endTimeUnixNano", 0))
                provider_out = _int(attrs.get("gen_ai.usage.output_tokens"))
                normalized_out = _int(attrs.get("llmtap.usage.normalized_output_tokens"))
                provider_in = _int(attrs.get("gen_ai.usage.input_tokens"))
                normalized_in = _int(attrs.get("llmtap.usage.normalized_input_tokens"))
                ttft, tpot = attrs.get("llmtap.ttft"), attrs.get("llmtap.tpot")
                calls.append(Call(
                    source="spans",
                    model=str(attrs.get("gen_ai.request.model") or attrs.get("gen_ai.response.model") or "unknown"),
                    concurrency=None, cold=attrs.get("llmtap.cold_start") is True,
                    error=attrs.get("error.type") or None, start=start_ns / 1e9,
                    duration=max(0, end_ns - start_ns) / 1e9,
                    ttft=float(ttft) if ttft is not None else None, itl=None,
                    tpot=float(tpot) if tpot is not None else None,
                    input_tokens=provider_in if provider_in is not None else normalized_in,
                    output_tokens=provider_out if provider_out is not None else normalized_out,
                    provider_output_tokens=provider_out, normalized_output_tokens=normalized_out,
                ))
    return calls


@dataclass
class Histogram:
    bounds: list[float]
    counts: list[int]


class _HistogramPoints:
    """ITL histogram points from OTLP/JSON metric lines: cumulative points keep the latest per series."""

    def __init__(self) -> None:
        self.latest: dict[tuple[Any, ...], tuple[int, dict[str, Any], dict[str, Any]]] = {}
        self.deltas: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def add(self, request: dict[str, Any]) -> None:
        for resource_metrics in request.get("resourceMetrics") or []:
            resource = _attributes((resource_metrics.get("resource") or {}).get("attributes"))
            instance = resource.get("service.instance.id")
            for scope_metrics in resource_metrics.get("scopeMetrics") or []:
                for metric in scope_metrics.get("metrics") or []:
                    if metric.get("name") != ITL_METRIC or "histogram" not in metric:
                        continue
                    histogram = metric["histogram"]
                    delta = int(histogram.get("aggregationTemporality", 2)) == 1
                    for point in histogram.get("dataPoints") or []:
                        attrs = _attributes(point.get("attributes"))
                        if delta:
                            self.deltas.append((attrs, point))
                            continue
                        key = (instance, point.get("startTimeUnixNano"), tuple(sorted(attrs.items(), key=str)))
                        at = int(point.get("timeUnixNano", 0))
                        if key not in self.latest or self.latest[key][0] <= at:
                            self.latest[key] = (at, attrs, point)

    def per_model(self) -> dict[str, Histogram]:
        merged: dict[str, Histogram] = {}
        points = [(attrs, point) for _at, attrs, point in self.latest.values()] + self.deltas
        for attrs, point in points:
            if attrs.get("llmtap.cold_start") is True or attrs.get("error.type"):
                continue
            model = str(attrs.get("gen_ai.request.model") or "unknown")
            bounds = [float(b) for b in point.get("explicitBounds") or []]
            counts = [int(c) for c in point.get("bucketCounts") or []]
            if len(counts) != len(bounds) + 1:
                continue
            found = merged.get(model)
            if found is None:
                merged[model] = Histogram(bounds, counts)
            elif found.bounds == bounds:
                found.counts = [a + b for a, b in zip(found.counts, counts, strict=True)]
        return merged


@dataclass
class Dataset:
    calls: list[Call] = field(default_factory=list)
    itl_histograms: dict[str, Histogram] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


def _files(paths: Iterable[str]) -> Iterator[Path]:
    for name in paths:
        path = Path(name)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl"))
        else:
            yield path


def _documents(path: Path) -> Iterator[dict[str, Any]]:
    """JSON lines, or one (pretty-printed) JSON document."""
    text = path.read_text(encoding="utf-8")
    items: list[Any] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if items:
                raise ValueError(f"{path}:{number}: not a JSON line: {exc}") from None
            try:
                items = [json.loads(text)]
            except json.JSONDecodeError:
                raise ValueError(f"{path}: neither JSON lines nor a JSON document: {exc}") from None
            break
    for item in items:
        if isinstance(item, dict):
            yield item


def load(paths: Iterable[str]) -> Dataset:
    """Read bench JSONL and OTLP JSON files (or directories of them) into one Dataset."""
    data = Dataset()
    histograms = _HistogramPoints()
    for path in _files(paths):
        data.files.append(str(path))
        records: list[dict[str, Any]] = []
        for item in _documents(path):
            if "resourceSpans" in item:
                data.calls += calls_from_otlp_traces(item)
            elif "resourceMetrics" in item:
                histograms.add(item)
            elif item.get("type") == "request":
                records.append(item)
        data.calls += calls_from_records(records)
    data.itl_histograms = histograms.per_model()
    return data


# --- statistics ------------------------------------------------------------------------------------

def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0-100), interpolating linearly between order statistics (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return None
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def histogram_quantile(q: float, histogram: Histogram) -> float | None:
    """The q-quantile (0-1) of an explicit-bucket histogram, interpolated within its bucket
    (as Prometheus' histogram_quantile; the lowest bucket starts at 0, the overflow bucket returns
    the highest finite bound)."""
    total = sum(histogram.counts)
    if total == 0:
        return None
    rank = q * total
    cumulative = 0
    for i, count in enumerate(histogram.counts):
        if count and cumulative + count >= rank:
            if i >= len(histogram.bounds):
                return histogram.bounds[-1] if histogram.bounds else None
            lower = histogram.bounds[i - 1] if i > 0 else 0.0
            return lower + (histogram.bounds[i] - lower) * (rank - cumulative) / count
        cumulative += count
    return histogram.bounds[-1] if histogram.bounds else None


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _busy_time(calls: list[Call]) -> float:
    """Length of the union of the calls' [start, end] intervals."""
    total, current_start, current_end = 0.0, None, None
    for call in sorted(calls, key=lambda c: c.start):
        if current_end is None or call.start > current_end:
            if current_end is not None and current_start is not None:
                total += current_end - current_start
            current_start, current_end = call.start, call.end
        else:
            current_end = max(current_end, call.end)
    if current_end is not None and current_start is not None:
        total += current_end - current_start
    return total


@dataclass
class Row:
    source: str
    model: str
    concurrency: int | None
    observed_concurrency: float | None  # mean calls in flight: sum of durations / total time
    requests: int  # successful, warm
    errors: int
    cold: int
    total_time: float | None
    requests_per_s: float | None
    normalized_tokens_per_s: float | None
    provider_tokens_per_s: float | None
    latency_avg: float | None
    latency_per_token: float | None
    latency_per_output_token: float | None
    ttft_p50: float | None
    ttft_p90: float | None
    ttft_p99: float | None
    itl_p50: float | None
    itl_p99: float | None
    itl_source: str | None  # "chunks" or "histogram"
    tpot: float | None
    time_100_tokens: float | None
    ttft_mean: float | None = None


def _row(source: str, model: str, concurrency: int | None, calls: list[Call],
         histogram: Histogram | None) -> Row:
    warm = [c for c in calls if not c.cold]
    ok = [c for c in warm if c.error is None]
    total = _busy_time(warm) if warm else None

    def per_s(amount: float) -> float | None:
        return amount / total if total else None

    provider = [c.provider_output_tokens for c in ok]
    normalized = [c.normalized_output_tokens for c in ok]
    ttfts = [c.ttft for c in ok if c.ttft is not None]
    itl = [gap for c in ok if c.itl is not None for gap in c.itl]
    itl_known = any(c.itl is not None for c in ok)
    tpots = [c.tpot for c in ok if c.tpot is not None]
    ttft_mean, tpot_mean = _mean(ttfts), _mean(tpots)
    itl_p50 = itl_p99 = itl_source = None
    if itl_known and itl:
        itl_p50, itl_p99, itl_source = percentile(itl, 50), percentile(itl, 99), "chunks"
    elif not itl_known and histogram is not None and sum(histogram.counts):
        itl_p50, itl_p99 = histogram_quantile(0.5, histogram), histogram_quantile(0.99, histogram)
        itl_source = "histogram"
    return Row(
        source=source, model=model, concurrency=concurrency,
        observed_concurrency=sum(c.duration for c in warm) / total if total else None,
        requests=len(ok), errors=sum(1 for c in warm if c.error is not None), cold=len(calls) - len(warm),
        total_time=total,
        requests_per_s=per_s(len(ok)) if ok else None,
        normalized_tokens_per_s=per_s(sum(normalized)) if ok and None not in normalized else None,  # type: ignore[arg-type]
        provider_tokens_per_s=per_s(sum(provider)) if ok and None not in provider else None,  # type: ignore[arg-type]
        latency_avg=_mean([c.duration for c in ok]),
        latency_per_token=_mean([c.duration / (c.input_tokens + c.output_tokens) for c in ok
                                 if c.input_tokens is not None and c.output_tokens
                                 and c.input_tokens + c.output_tokens > 0]),
        latency_per_output_token=_mean([c.duration / c.output_tokens for c in ok if c.output_tokens]),
        ttft_p50=percentile(ttfts, 50), ttft_p90=percentile(ttfts, 90), ttft_p99=percentile(ttfts, 99),
        itl_p50=itl_p50, itl_p99=itl_p99, itl_source=itl_source, tpot=tpot_mean,
        time_100_tokens=ttft_mean + 99 * tpot_mean if ttft_mean is not None and tpot_mean is not None else None,
        ttft_mean=ttft_mean,
    )


def summarize(calls: list[Call], itl_histograms: dict[str, Histogram] | None = None) -> list[Row]:
    """One row per (source, model, concurrency level), sorted by model, source, level."""
    groups: dict[tuple[str, str, int | None], list[Call]] = defaultdict(list)
    for call in calls:
        groups[(call.source, call.model, call.concurrency)].append(call)
    histograms = itl_histograms or {}
    rows = [_row(source, model, level, group, histograms.get(model) if source == "spans" else None)
            for (source, model, level), group in groups.items()]
    rows.sort(key=lambda r: (r.model, r.source, r.concurrency if r.concurrency is not None else -1))
    return rows


# --- bottleneck notes ------------------------------------------------------------------------------

@dataclass
class Fit:
    """TTFT = intercept + slope x input tokens, least squares (seconds, tokens)."""

    slope: float
    intercept: float
    r2: float
    n: int
    concurrency: int | None
    median_input: float
    median_ttft: float

    @property
    def prefill_share(self) -> float:
        return self.slope * self.median_input / self.median_ttft if self.median_ttft > 0 else 0.0

    @property
    def prefill_rate(self) -> float | None:
        return 1.0 / self.slope if self.slope > 0 else None


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float, float] | None:
    """(slope, intercept, R²) of the least-squares line, or None when x does not vary."""
    n = len(xs)
    if n < 2:
        return None
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = mean_y - slope * mean_x
    ss_tot = sum((y - mean_y) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    return slope, intercept, (1.0 - ss_res / ss_tot) if ss_tot > 0 else 1.0


@dataclass
class Analysis:
    model: str
    fit: Fit | None = None
    saturation: int | None = None  # the level after which added concurrency buys < 50% of linear
    notes: list[str] = field(default_factory=list)


def _prefill_fit(calls: list[Call]) -> Fit | None:
    usable = [c for c in calls if not c.cold and c.error is None and c.ttft is not None and c.input_tokens]
    levels = sorted({c.concurrency for c in usable if c.concurrency is not None})
    level = levels[0] if levels else None
    if level is not None:
        usable = [c for c in usable if c.concurrency == level]
    xs = [float(c.input_tokens) for c in usable]  # type: ignore[arg-type]
    ys = [c.ttft for c in usable]  # type: ignore[misc]
    if len(set(xs)) < 3 or max(xs) < 2 * min(xs):
        return None
    line = fit_line(xs, ys)  # type: ignore[arg-type]
    if line is None:
        return None
    slope, intercept, r2 = line
    return Fit(slope, intercept, r2, len(xs), level, statistics.median(xs), statistics.median(ys))  # type: ignore[type-var]


def _throughput(row: Row) -> float | None:
    for value in (row.normalized_tokens_per_s, row.provider_tokens_per_s, row.requests_per_s):
        if value is not None:
            return value
    return None


def analyze(calls: list[Call], rows: list[Row]) -> dict[str, Analysis]:
    """Bottleneck notes per model, from the slopes (see HEURISTICS)."""
    analyses: dict[str, Analysis] = {}
    by_model: dict[str, list[Call]] = defaultdict(list)
    for call in calls:
        by_model[call.model].append(call)
    for model, model_calls in sorted(by_model.items()):
        analysis = analyses[model] = Analysis(model)
        notes = analysis.notes
        fit = analysis.fit = _prefill_fit(model_calls)
        if fit is None:
            notes.append("prompt lengths vary too little (or too few calls) to fit TTFT against input tokens")
        else:
            at = f" at concurrency {fit.concurrency}" if fit.concurrency is not None else ""
            head = (f"TTFT grows {fit.slope * 1000:.3g} ms per input token{at} (R² {fit.r2:.2f}, n={fit.n}); "
                    f"at the median prompt ({fit.median_input:.0f} tokens) prefill is {fit.prefill_share:.0%} of TTFT")
            if fit.r2 >= PREFILL_MIN_R2 and fit.prefill_share >= PREFILL_MIN_SHARE and fit.prefill_rate:
                notes.append(f"{head}: prefill-bound (marginal prefill rate ≈ {fit.prefill_rate:,.0f} tokens/s)")
            else:
                notes.append(f"{head}: not prefill-bound; fixed overhead or queueing dominates TTFT")
        levels = sorted((r for r in rows if r.model == model and r.concurrency is not None and r.requests),
                        key=lambda r: r.concurrency or 0)
        if levels and levels[0].tpot:
            notes.append(f"decode ≈ {1 / levels[0].tpot:,.0f} tokens/s per request at concurrency "
                         f"{levels[0].concurrency} (1 / TPOT)")
        if len(levels) >= 2:
            _level_notes(analysis, levels)
        cold = [c for c in model_calls if c.cold and c.error is None and c.ttft is not None]
        warm = [r.ttft_p50 for r in rows if r.model == model and r.ttft_p50 is not None]
        if cold and warm:
            cold_ttft, warm_ttft = statistics.fmean(c.ttft for c in cold), min(warm)  # type: ignore[misc]
            notes.append(f"{len(cold)} cold start(s) / warm-up call(s): TTFT {cold_ttft * 1000:.1f} ms mean vs "
                         f"{warm_ttft * 1000:.1f} ms warm p50 ({cold_ttft / warm_ttft:.1f}x); left out of the rows")
    return analyses


def _level_notes(analysis: Analysis, levels: list[Row]) -> None:
    notes = analysis.notes
    pairs = list(itertools.pairwise(levels))
    itl_pairs = [(a, b, b.itl_p50 / a.itl_p50 - 1) for a, b in pairs if a.itl_p50 and b.itl_p50]
    if itl_pairs:
        a, b, rise = max(itl_pairs, key=lambda p: p[2])
        if rise >= ITL_RISE:
            notes.append(f"ITL p50 rises {rise:.0%} from concurrency {a.concurrency} to {b.concurrency}: "
                         "decode batching saturates")
        else:
            first, last = levels[0], levels[-1]
            change = (last.itl_p50 / first.itl_p50 - 1) if first.itl_p50 and last.itl_p50 else rise
            notes.append(f"ITL p50 changes {change:+.0%} from concurrency {first.concurrency} to "
                         f"{last.concurrency} (largest step {rise:+.0%}): decode batching keeps up")
    for a, b in pairs:
        ta, tb = _throughput(a), _throughput(b)
        if not ta or tb is None or a.concurrency is None or b.concurrency is None:
            continue
        efficiency = (tb / ta - 1) / (b.concurrency / a.concurrency - 1)
        if efficiency < SATURATION_EFFICIENCY:
            analysis.saturation = a.concurrency
            notes.append(f"throughput saturates at concurrency {a.concurrency}: going to {b.concurrency} "
                         f"({b.concurrency / a.concurrency:g}x) raises it {tb / ta:.2f}x ({efficiency:.0%} of linear)")
            break
    else:
        if analysis.saturation is None:
            notes.append(f"throughput still scales at concurrency {levels[-1].concurrency} "
                         f"(every step ≥ {SATURATION_EFFICIENCY:.0%} of linear): not saturated")
    first, last = levels[0], levels[-1]
    if first.ttft_p50 and last.ttft_p50 and last.ttft_p50 >= TTFT_QUEUE_RATIO * first.ttft_p50:
        notes.append(f"TTFT p50 grows {last.ttft_p50 / first.ttft_p50:.1f}x from concurrency {first.concurrency} "
                     f"to {last.concurrency}: requests queue before prefill")


# --- rendering -------------------------------------------------------------------------------------

def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _concurrency(row: Row) -> str:
    if row.concurrency is not None:
        return str(row.concurrency)
    return "-" if row.observed_concurrency is None else f"~{row.observed_concurrency:.1f}"


def _itl(row: Row, value: float | None) -> str:
    text = _ms(value)
    return f"≈{text}" if row.itl_source == "histogram" and value is not None else text


COLUMNS: list[tuple[str, Any]] = [
    ("model", lambda r: r.model),
    ("conc", _concurrency),
    ("ok", lambda r: str(r.requests)),
    ("err", lambda r: str(r.errors)),
    ("cold", lambda r: str(r.cold)),
    ("norm tok/s", lambda r: _num(r.normalized_tokens_per_s)),
    ("prov tok/s", lambda r: _num(r.provider_tokens_per_s)),
    ("req/s", lambda r: _num(r.requests_per_s, 2)),
    ("lat avg s", lambda r: _num(r.latency_avg, 3)),
    ("lat/tok ms", lambda r: _ms(r.latency_per_token)),
    ("lat/out tok ms", lambda r: _ms(r.latency_per_output_token)),
    ("TTFT p50 ms", lambda r: _ms(r.ttft_p50)),
    ("TTFT p90 ms", lambda r: _ms(r.ttft_p90)),
    ("TTFT p99 ms", lambda r: _ms(r.ttft_p99)),
    ("ITL p50 ms", lambda r: _itl(r, r.itl_p50)),
    ("ITL p99 ms", lambda r: _itl(r, r.itl_p99)),
    ("TPOT ms", lambda r: _ms(r.tpot)),
    ("100 tok s", lambda r: _num(r.time_100_tokens, 3)),
    ("total s", lambda r: _num(r.total_time, 2)),
]

CSV_COLUMNS: list[tuple[str, Any]] = [
    ("model", lambda r: r.model),
    ("source", lambda r: r.source),
    ("concurrency", lambda r: r.concurrency),
    ("observed_concurrency", lambda r: r.observed_concurrency),
    ("requests_ok", lambda r: r.requests),
    ("errors", lambda r: r.errors),
    ("cold_starts", lambda r: r.cold),
    ("normalized_tokens_per_s", lambda r: r.normalized_tokens_per_s),
    ("provider_tokens_per_s", lambda r: r.provider_tokens_per_s),
    ("requests_per_s", lambda r: r.requests_per_s),
    ("latency_avg_s", lambda r: r.latency_avg),
    ("latency_per_token_s", lambda r: r.latency_per_token),
    ("latency_per_output_token_s", lambda r: r.latency_per_output_token),
    ("ttft_p50_s", lambda r: r.ttft_p50),
    ("ttft_p90_s", lambda r: r.ttft_p90),
    ("ttft_p99_s", lambda r: r.ttft_p99),
    ("itl_p50_s", lambda r: r.itl_p50),
    ("itl_p99_s", lambda r: r.itl_p99),
    ("itl_source", lambda r: r.itl_source),
    ("tpot_s", lambda r: r.tpot),
    ("time_100_output_tokens_s", lambda r: r.time_100_tokens),
    ("total_time_s", lambda r: r.total_time),
]

LEGEND = (
    "conc: the bench concurrency level (~x: mean calls in flight, from spans). ok/err/cold: successful, "
    "failed and cold-start or warm-up calls (only ok calls enter the statistics). tok/s: output tokens "
    "/ total time, normalised = reference tokenizer, prov = provider-reported. lat/tok: mean of latency / "
    "(input + output tokens). 100 tok = mean TTFT + 99 x mean TPOT. total: time with at least one call in "
    "flight. ≈: from the metrics histogram's buckets."
)


def _columns(rows: list[Row]) -> list[tuple[str, Any]]:
    columns = list(COLUMNS)
    if len({r.source for r in rows}) > 1:
        columns.insert(1, ("source", lambda r: r.source))
    return columns


def render(rows: list[Row], fmt: str = "table", analyses: dict[str, Analysis] | None = None) -> str:
    """The rows (and notes) as a rich table, Markdown or CSV text."""
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([name for name, _ in CSV_COLUMNS])
        for row in rows:
            writer.writerow(["" if (v := get(row)) is None else v for _, get in CSV_COLUMNS])
        return buffer.getvalue()
    columns = _columns(rows)
    text_columns = 1 + len(columns) - len(COLUMNS)  # model (and source): left-aligned; figures: right
    notes = [(model, note) for model, a in sorted((analyses or {}).items()) for note in a.notes]
    if fmt == "markdown":
        lines = ["| " + " | ".join(name for name, _ in columns) + " |",
                 "| " + " | ".join("---" if i < text_columns else "---:" for i in range(len(columns))) + " |"]
        lines += ["| " + " | ".join(get(row) for _, get in columns) + " |" for row in rows]
        lines += ["", LEGEND]
        if notes:
            lines += ["", "**Bottleneck notes**", ""] + [f"- **{model}**: {note}" for model, note in notes]
            lines += ["", f"_How: {HEURISTICS}_"]
        return "\n".join(lines) + "\n"
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r} (table, markdown, csv)")
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text when rich is not installed
        return render(rows, "markdown", analyses)
    table = Table(title="llmtap report", title_justify="left")
    for i, (name, _) in enumerate(columns):
        table.add_column(name, justify="left" if i < text_columns else "right")
    for row in rows:
        table.add_row(*(get(row) for _, get in columns))
    buffer = io.StringIO()
    console = Console(file=buffer, width=240, color_system=None, force_terminal=False)
    console.print(table)
    console.print(LEGEND, soft_wrap=False, width=120)
    if notes:
        console.print("\nBottleneck notes:")
        for model, note in notes:
            console.print(f"  {model}: {note}", width=200)
        console.print(f"\nHow: {HEURISTICS}", width=120)
    return buffer.getvalue()


# --- command line ---------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="PATH",
                        help="bench JSONL files, OTLP JSON files from --telemetry-file, or directories of them")
    parser.add_argument("--format", choices=("table", "markdown", "csv"), default="table")
    parser.add_argument("--plot", metavar="DIR", help="write PNG plots into DIR (needs matplotlib)")
    parser.add_argument("--no-notes", action="store_true", help="leave out the bottleneck notes")


def main(args: argparse.Namespace) -> int:
    try:
        data = load(args.inputs)
    except (OSError, ValueError) as exc:
        print(f"llmtap report: {exc}", file=sys.stderr)
        return 2
    if not data.calls:
        print(f"llmtap report: no LLM calls found in {', '.join(data.files) or 'the inputs'}", file=sys.stderr)
        return 1
    rows = summarize(data.calls, data.itl_histograms)
    analyses = None if args.no_notes else analyze(data.calls, rows)
    sys.stdout.write(render(rows, args.format, analyses))
    if args.plot:
        from llmtap_proxy.plots import write_plots

        try:
            infos = write_plots(data.calls, rows, analyses or analyze(data.calls, rows), args.plot)
        except ImportError as exc:
            print(f"llmtap report: plots need matplotlib (pip install 'llmtap[report]'): {exc}", file=sys.stderr)
            return 2
        for info in infos:
            print(f"wrote {info.path}", file=sys.stderr)
    return 0
