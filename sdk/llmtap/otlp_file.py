"""OTLP JSON-lines file exporters for spans and metrics (`llmtap serve --telemetry-file PATH`).

Each export appends one line to the file: an `ExportTraceServiceRequest` (spans) or an
`ExportMetricsServiceRequest` (metrics), encoded with the official OTLP protobuf encoders and written
in OTLP/JSON as the OTLP specification defines it: protobuf's JSON mapping (lowerCamelCase field names,
64-bit integers as strings) with two exceptions the specification makes, trace and span ids as hex
strings rather than base64, and enums as integers. That is also what the OpenTelemetry Collector's
`file` exporter writes and its `otlpjsonfile` receiver reads, so a file can be replayed into a
collector later. Spans and metrics may share one file: a line holds either `resourceSpans` or
`resourceMetrics`.

Both exporters for one path share a single handle and lock, so lines from the span processor's and
the metric reader's threads never interleave. Every line is flushed as it is written.
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Sequence
from typing import IO, Any

import orjson
from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

__all__ = ["OTLPJsonFileMetricExporter", "OTLPJsonFileSpanExporter", "to_otlp_json"]

_ID_FIELDS = frozenset({"traceId", "spanId", "parentSpanId"})


def _hex_ids(value: Any) -> Any:
    """Rewrite base64 trace/span ids (protobuf's mapping of bytes) as hex, as OTLP/JSON requires."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in _ID_FIELDS and isinstance(item, str):
                value[key] = base64.b64decode(item).hex()
            else:
                _hex_ids(item)
    elif isinstance(value, list):
        for item in value:
            _hex_ids(item)
    return value


def to_otlp_json(message: Any) -> bytes:
    """One OTLP protobuf request as one line of OTLP/JSON (no trailing newline)."""
    return orjson.dumps(_hex_ids(MessageToDict(message, use_integers_for_enums=True)))


class _Sink:
    """One append-mode file shared by every exporter writing to the same path."""

    _open: dict[str, _Sink] = {}
    _registry_lock = threading.Lock()

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.users = 0
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self.file: IO[bytes] | None = open(path, "ab")  # noqa: SIM115 - closed by release()

    @classmethod
    def acquire(cls, path: str) -> _Sink:
        key = os.path.abspath(path)
        with cls._registry_lock:
            sink = cls._open.get(key)
            if sink is None:
                sink = cls._open[key] = _Sink(path)
            sink.users += 1
            return sink

    def write(self, line: bytes) -> None:
        with self.lock:
            if self.file is None:
                raise ValueError(f"telemetry file {self.path} is closed")
            self.file.write(line + b"\n")
            self.file.flush()

    def release(self) -> None:
        with _Sink._registry_lock:
            self.users -= 1
            if self.users > 0:
                return
            _Sink._open.pop(os.path.abspath(self.path), None)
        with self.lock:
            if self.file is not None:
                self.file.close()
                self.file = None


class OTLPJsonFileSpanExporter(SpanExporter):
    """Appends one `ExportTraceServiceRequest` per export to `path`, as a line of OTLP/JSON."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sink: _Sink | None = _Sink.acquire(path)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        sink = self._sink
        if sink is None:
            return SpanExportResult.FAILURE
        if not spans:
            return SpanExportResult.SUCCESS
        try:
            sink.write(to_otlp_json(encode_spans(spans)))
        except (OSError, ValueError):
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True  # every line is flushed as it is written

    def shutdown(self) -> None:
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.release()


class OTLPJsonFileMetricExporter(MetricExporter):
    """Appends one `ExportMetricsServiceRequest` per collection to `path`, as a line of OTLP/JSON.

    Temporality is the SDK default (cumulative), as with the OTLP exporters: the last line of a
    process holds its totals.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._sink: _Sink | None = _Sink.acquire(path)

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        sink = self._sink
        if sink is None:
            return MetricExportResult.FAILURE
        try:
            request = encode_metrics(metrics_data)
            if not request.resource_metrics:
                return MetricExportResult.SUCCESS
            sink.write(to_otlp_json(request))
        except (OSError, ValueError):
            return MetricExportResult.FAILURE
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.release()
