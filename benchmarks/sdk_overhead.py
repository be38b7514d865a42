"""What the llmtap client SDK adds per streamed chunk (and per call), against an uninstrumented client.

    python benchmarks/sdk_overhead.py                 # about 40 s
    python benchmarks/sdk_overhead.py --quick         # a few seconds
    python benchmarks/sdk_overhead.py --json out.json

The server is a synthetic in-process httpx2 transport that streams a canned OpenAI chat completion
(one SSE event per body chunk, ~180 bytes each, as real servers send them) with no network and no
waiting: the SDK's overhead is CPU work on the client's path. What is measured is CPU time (of the
application's thread, and of the whole process), so that other load on the machine does not read as
overhead. Each configuration streams the same response, uninstrumented ("plain") and through
llmtap's instrumented transport ("llmtap", with a real OpenTelemetry SDK: a BatchSpanProcessor into
a dropping exporter, and a MeterProvider with a reader), alternating, many times; medians compared.

Two clients:
  * httpx2      `client.stream(...)` + `iter_bytes()`: the bare HTTP client, where the SDK's work is
                the largest share of the total;
  * openai SDK  `OpenAI(http_client=...)`, `chat.completions.create(stream=True)`, iterating the
                parsed chunks, as an application does.
Overhead per call = a + b * chunks, fitted from two stream lengths: b is the per-chunk cost (timestamp,
SSE decoding, JSON classification of the chunk), a the per-call cost (span start and end, request
facts, token counting, metrics).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "sdk")]

import httpx2  # noqa: E402
import openai  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult  # noqa: E402

import llmtap  # noqa: E402
from llmtap.telemetry import Telemetry  # noqa: E402
from llmtap.transport import flush_pending  # noqa: E402

URL = "http://llm.bench/v1/chat/completions"
BODY = {"model": "bench-model", "messages": [{"role": "user", "content": "Tell me a story"}], "stream": True}
WORDS = (" alpha", " bravo", " charlie", " delta", " echo", " foxtrot", " golf", " hotel")


def sse_chunks(content_chunks: int) -> list[bytes]:
    def event(delta: str, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": json.loads(delta), "finish_reason": finish}
        data = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "bench-model",
                "choices": [choice]}
        return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"

    out = [event('{"role":"assistant","content":""}')]
    out += [event(json.dumps({"content": WORDS[i % len(WORDS)]})) for i in range(content_chunks)]
    out.append(event("{}", "stop"))
    out.append(b"data: [DONE]\n\n")
    return out


class _Body(httpx2.SyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks


class SyntheticServer(httpx2.BaseTransport):
    """Answers every request with the same canned SSE stream, chunk by chunk."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        request.read()
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, stream=_Body(self.chunks))


class _Drop(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def make_telemetry() -> tuple[Telemetry, TracerProvider, MeterProvider]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(_Drop()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    telemetry = Telemetry(tracer_provider, meter_provider, observer_name="sdk")
    telemetry.tokenizer.load()
    return telemetry, tracer_provider, meter_provider


def bare_call(client: httpx2.Client) -> None:
    with client.stream("POST", URL, json=BODY) as response:
        for _ in response.iter_bytes():
            pass


def sdk_call(client: openai.OpenAI) -> None:
    for _ in client.chat.completions.create(model="bench-model", messages=BODY["messages"], stream=True):
        pass


def timed(call: Callable[[], None], repeats: int, path: list[float], total: list[float]) -> None:
    """CPU time of each call: of the application's thread (its path), and of the whole process once
    llmtap's finisher thread has ended the call too. CPU time, not wall time, so that other load on the
    machine does not show up as overhead."""
    thread_ns, process_ns = time.thread_time_ns, time.process_time_ns
    for _ in range(repeats):
        start_thread, start_process = thread_ns(), process_ns()
        call()
        path.append((thread_ns() - start_thread) / 1000)
        flush_pending()
        total.append((process_ns() - start_process) / 1000)


def measure(kind: str, chunks: int, repeats: int, rounds: int, telemetry: Telemetry) -> dict[str, float]:
    server = SyntheticServer(sse_chunks(chunks))
    plain_http = httpx2.Client(transport=server)
    tapped_http = httpx2.Client(transport=llmtap.wrap_transport(server, telemetry=telemetry))
    if kind == "openai":
        plain_client: Any = openai.OpenAI(base_url="http://llm.bench/v1", api_key="x", http_client=plain_http)
        tapped_client: Any = openai.OpenAI(base_url="http://llm.bench/v1", api_key="x", http_client=tapped_http)
        call = sdk_call
    else:
        plain_client, tapped_client, call = plain_http, tapped_http, bare_call
    for _ in range(20):  # warm-up: models, parsers, connection-free paths
        call(plain_client)
        call(tapped_client)
    samples: dict[str, tuple[list[float], list[float]]] = {"plain": ([], []), "llmtap": ([], [])}
    clients = {"plain": plain_client, "llmtap": tapped_client}
    gc.collect()
    gc.freeze()  # the heap of the SDKs is not ours to measure: keep full collections of it out of the figures
    for i in range(rounds):  # alternate, so that drift hits both alike
        for name in ("plain", "llmtap") if i % 2 == 0 else ("llmtap", "plain"):
            timed(lambda c=clients[name]: call(c), repeats, *samples[name])
    return {
        "plain_us": statistics.median(samples["plain"][0]),
        "llmtap_us": statistics.median(samples["llmtap"][0]),  # on the application's path
        "llmtap_total_us": statistics.median(samples["llmtap"][1]),  # with the call's ending, in the background
    }


def run(quick: bool) -> dict[str, Any]:
    telemetry, tracer_provider, meter_provider = make_telemetry()
    short = 10
    longs = {"httpx2": 200 if quick else 1000, "openai": 100 if quick else 200}  # openai: ~300 us a chunk by itself
    repeats, rounds = (20, 4) if quick else (40, 10)
    results: dict[str, Any] = {
        "python": platform.python_version(), "machine": platform.machine(), "processor": platform.processor(),
        "httpx2": httpx2.__version__, "openai": openai.__version__, "clients": {},
    }
    for kind in ("httpx2", "openai"):
        long = longs[kind]
        rows = {n: measure(kind, n, repeats if n == short else max(4, repeats // 5), rounds, telemetry)
                for n in (short, long)}
        fits = {}
        for figure in ("llmtap_us", "llmtap_total_us"):
            added = {n: row[figure] - row["plain_us"] for n, row in rows.items()}
            per_chunk = (added[long] - added[short]) / (long - short)
            fits[figure] = (per_chunk, added[short] - per_chunk * short)
        results["clients"][kind] = {
            "rows": {str(n): row for n, row in rows.items()},
            "per_chunk_us": fits["llmtap_us"][0],
            "per_call_us": fits["llmtap_us"][1],
            "total_per_chunk_us": fits["llmtap_total_us"][0],
            "total_per_call_us": fits["llmtap_total_us"][1],
            "plain_per_chunk_us": rows[long]["plain_us"] / long,
        }
    tracer_provider.shutdown()
    meter_provider.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = run(args.quick)
    print(f"llmtap SDK overhead (Python {results['python']}, {results['machine']}; openai {results['openai']}, "
          f"httpx2 {results['httpx2']})")
    print("median CPU time of one streamed call, us; 'llmtap': of the application's thread, 'all': of the process,")
    print("with the ending of the call (tokens, span, histograms) that llmtap's finisher thread does off that path")
    print(f"{'client':<8} {'chunks':>7} {'plain':>10} {'llmtap':>10} {'added':>9} {'all':>10} {'added':>9}")
    for kind, data in results["clients"].items():
        for n, row in data["rows"].items():
            print(f"{kind:<8} {n:>7} {row['plain_us']:>10.1f} {row['llmtap_us']:>10.1f} "
                  f"{row['llmtap_us'] - row['plain_us']:>9.1f} {row['llmtap_total_us']:>10.1f} "
                  f"{row['llmtap_total_us'] - row['plain_us']:>9.1f}")
    for kind, data in results["clients"].items():
        print(f"{kind}: on the application's path +{data['per_chunk_us']:.2f} us per streamed chunk and "
              f"+{data['per_call_us']:.0f} us per call (the client alone: {data['plain_per_chunk_us']:.2f} us "
              f"per chunk); in all, +{data['total_per_chunk_us']:.2f} us per chunk, +{data['total_per_call_us']:.0f} "
              f"us per call")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
