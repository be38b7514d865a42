"""A tiny OTLP/HTTP receiver for benchmarks: accepts everything, answers fast, counts what it got.

    python benchmarks/otlp_sink.py --port 4318

POST /v1/traces, /v1/metrics and /v1/logs answer 200 with an empty protobuf body (an empty
Export*ServiceResponse serialises to zero bytes), so the exporter sees success and the sink costs
the exporting process as little as possible. The sink only counts requests and bytes on the way
in; the bodies are kept (bounded) and decoded lazily, when someone asks GET /stats, so that
decoding never competes for CPU with the processes being measured. GET /healthz answers ok.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import signal
import zlib
from collections import Counter
from typing import Any

from aiohttp import web

MAX_KEPT_BYTES = 256 * 1024 * 1024
KINDS = ("traces", "metrics", "logs")


class Sink:
    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.bodies: dict[str, list[tuple[str, bytes]]] = {kind: [] for kind in KINDS}
        self.kept = 0
        self.dropped = 0

    def add(self, kind: str, encoding: str, body: bytes) -> None:
        self.requests[kind] += 1
        self.bytes[kind] += len(body)
        if self.kept + len(body) <= MAX_KEPT_BYTES:
            self.bodies[kind].append((encoding, body))
            self.kept += len(body)
        else:
            self.dropped += 1

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            kind: {"requests": self.requests[kind], "bytes": self.bytes[kind]} for kind in KINDS
        }
        out["bodies_not_kept"] = self.dropped
        out.update(decode(self.bodies))
        return out


def _plain(encoding: str, body: bytes) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


def decode(bodies: dict[str, list[tuple[str, bytes]]]) -> dict[str, Any]:
    """Span and metric counts, when opentelemetry-proto is installed (the `test` extra has it)."""
    try:
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    except ImportError:
        return {"decoded": False}
    span_names: Counter[str] = Counter()
    errors = 0
    for encoding, body in bodies["traces"]:
        try:
            request = ExportTraceServiceRequest.FromString(_plain(encoding, body))
        except Exception:
            errors += 1
            continue
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    span_names[span.name] += 1
    metric_points: Counter[str] = Counter()
    histograms: dict[str, dict[str, float]] = {}  # name -> {"count", "sum"} over all data points
    for encoding, body in bodies["metrics"]:
        try:
            request = ExportMetricsServiceRequest.FromString(_plain(encoding, body))
        except Exception:
            errors += 1
            continue
        seen: dict[str, dict[str, float]] = {}
        for resource_metrics in request.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data")
                    points = getattr(metric, kind).data_points if kind else []
                    metric_points[metric.name] += len(points)
                    if kind == "histogram":
                        totals = seen.setdefault(metric.name, {"count": 0, "sum": 0.0, "delta": 0})
                        totals["count"] += sum(p.count for p in points)
                        totals["sum"] += sum(p.sum for p in points)
                        totals["delta"] = int(metric.histogram.aggregation_temporality == 1)
        for name, totals in seen.items():
            if totals.pop("delta") and name in histograms:  # delta: add up; cumulative: the latest wins
                histograms[name] = {k: histograms[name][k] + totals[k] for k in totals}
            else:
                histograms[name] = totals
    return {
        "decoded": True,
        "decode_errors": errors,
        "spans": sum(span_names.values()),
        "span_names": dict(span_names.most_common(10)),
        "metric_names": sorted(metric_points),
        "histograms": histograms,
    }


def create_app(sink: Sink) -> web.Application:
    def receiver(kind: str) -> Any:
        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            sink.add(kind, request.headers.get("Content-Encoding", "").lower(), body)
            return web.Response(body=b"", content_type="application/x-protobuf")

        return handle

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(sink.stats))

    app = web.Application(client_max_size=64 * 1024 * 1024)
    for kind in KINDS:
        app.router.add_post(f"/v1/{kind}", receiver(kind))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/stats", stats)
    return app


async def serve(host: str, port: int) -> None:
    runner = web.AppRunner(create_app(Sink()), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"otlp sink: listening on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
