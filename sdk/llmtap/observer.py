"""Feeds one call's bytes into its Exchange: the part shared by the proxy and the SDK.

The caller forwards each chunk first and then hands it here with its arrival time. Everything in
this class is guarded: a fault is counted and parsing stops for that call, but it never raises
into the traffic path. `finish()` runs exactly once and hands the Exchange to the sink (telemetry).
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Mapping
from typing import Protocol

from llmtap.exchange import Exchange
from llmtap.providers.base import ProviderAPI, RequestFacts, StreamItem, StreamParser
from llmtap.tokens import SOURCE_ESTIMATE, SOURCE_TOKENIZER, ReferenceTokenizer
from llmtap.wire import StreamDecoder, decoder_for

logger = logging.getLogger("llmtap.observer")

DEFAULT_MAX_RESPONSE_BODY = 8 * 1024 * 1024
# A deferred call hands its received chunks to the finisher in batches of this many chunks or bytes,
# which parses them and keeps only what it needs (text, usage): raw bytes do not pile up per stream.
BATCH_CHUNKS = 32
BATCH_BYTES = 64 * 1024


class CallSink(Protocol):
    def trace_headers(self, call: CallObserver) -> dict[str, str]: ...

    def on_facts(self, call: CallObserver) -> None: ...

    def end(self, call: CallObserver) -> None: ...

    def schedule_finish(self, call: CallObserver, error_type: str | None, t_ns: int) -> None: ...

    def schedule_facts(self, call: CallObserver) -> bool: ...

    def schedule_parse(self, call: CallObserver, batch: list[tuple[bytes, int]]) -> None: ...

    def fault(self, where: str) -> None: ...


class CallObserver:
    """One LLM call seen from outside: request body, response headers, then chunks with arrival times."""

    __slots__ = (
        "_body",
        "_body_size",
        "_decompress",
        "_deferred_bytes",
        "_finish_requested",
        "_finished",
        "_parser",
        "_pending",
        "_reading",
        "_request_body",
        "_response",
        "_sink",
        "_stream",
        "_tokenizer",
        "api",
        "context",
        "exchange",
        "max_response_body",
        "on_finisher",
        "operation",
        "path",
        "wall_sent_ns",
    )

    def __init__(
        self,
        api: ProviderAPI,
        operation: str,
        sink: CallSink,
        tokenizer: ReferenceTokenizer | None,
        *,
        max_response_body: int = DEFAULT_MAX_RESPONSE_BODY,
        context: object = None,
        path: str = "",
        deferred: bool = False,
    ) -> None:
        """`deferred`: the caller's thread only keeps what arrives (the request body, the response
        headers, each chunk with its arrival time) and hands it over in batches; parsing happens on the
        sink's finisher thread, so the event loop does nothing per chunk but an append."""
        self.api = api
        self.operation = operation
        self.path = path  # the request path as the upstream sees it
        self.exchange = Exchange(RequestFacts(api.name, operation, parsed=False))
        self.context = context  # the sink's per-call state (e.g. the span)
        self.max_response_body = max_response_body
        self.wall_sent_ns = time.time_ns()
        self._sink = sink
        self._tokenizer = tokenizer
        self._stream: StreamDecoder | None = None
        self._parser: StreamParser | None = None
        self._body: list[bytes] | None = None
        self._body_size = 0
        self._decompress: zlib._Decompress | None = None
        self._finished = False
        self._finish_requested = False
        self._request_body: bytes | None = None
        self._response: tuple[int, str, str] | None = None  # status, content type, content encoding
        self._pending: list[tuple[bytes, int]] | None = [] if deferred else None
        self._deferred_bytes = 0
        self._reading = False  # the response decoder is set up
        self.on_finisher = False  # its parsing and end run on the finisher thread, in order

    # --- request side ---
    def set_request_body(self, body: bytes) -> None:
        self._request_body = body
        if self._pending is None:
            self.read_request()
            return
        try:
            self.on_finisher = self._sink.schedule_facts(self)
        except Exception:
            self.on_finisher = False
        if not self.on_finisher:
            self.catch_up()  # the finisher is busy or absent: this call is parsed as it goes

    def read_request(self) -> None:
        """Parse the request body into facts, once (then tell the sink: cold start is decided there)."""
        body = self._request_body
        if body is None:
            return
        self._request_body = None
        try:
            self.exchange.facts = self.api.request_facts(self.operation, body, self.path)
            self._sink.on_facts(self)
        except Exception:
            self._fault("request_facts")

    def trace_headers(self) -> dict[str, str]:
        """W3C trace context to send upstream, so the upstream's spans join this call's trace."""
        try:
            return self._sink.trace_headers(self)
        except Exception:
            self._fault("trace_headers")
            return {}

    def mark_received(self, t_ns: int) -> None:
        self.exchange.t_received_ns = t_ns

    def mark_sent(self, t_ns: int | None = None) -> None:
        self.wall_sent_ns = time.time_ns()
        self.exchange.mark_sent(t_ns if t_ns is not None else time.perf_counter_ns())

    # --- response side ---
    def on_response(self, status: int, headers: Mapping[str, str], t_ns: int) -> None:
        try:
            self.exchange.mark_headers(t_ns, status)
            content_type = headers.get("content-type") or headers.get("Content-Type") or ""
            encoding = (headers.get("content-encoding") or headers.get("Content-Encoding") or "").lower()
            self._response = (status, content_type, encoding)
            if self._pending is None:
                self._start_reading(status, content_type, encoding)
        except Exception:
            self._fault("on_response")

    def _start_reading(self, status: int, content_type: str, encoding: str) -> None:
        """Set up the decoding of the response body (stream decoder and parser, or a buffer)."""
        if self._reading:
            return
        self._reading = True
        try:
            if encoding in ("gzip", "deflate", "x-gzip"):
                self._decompress = zlib.decompressobj(47)  # gzip or zlib, auto-detected
            elif encoding not in ("", "identity"):
                return  # br, zstd, ...: forwarded untouched, not read
            stream_format = self.api.stream_format(content_type) if status < 400 else None
            decoder = decoder_for(stream_format) if stream_format else None
            if decoder is not None:
                self._stream = decoder
                self.exchange.streamed = True
                self._parser = self.api.stream_parser(self.exchange.facts or RequestFacts(self.api.name, ""))
            else:
                self._body = []
        except Exception:
            self._fault("on_response")

    def on_chunk(self, chunk: bytes, t_ns: int) -> None:
        """Called after the chunk was forwarded. Hot path: keep it lean."""
        exchange = self.exchange
        if exchange.t_first_chunk_ns is None:
            exchange.t_first_chunk_ns = t_ns
        pending = self._pending
        if pending is not None:
            pending.append((chunk, t_ns))
            self._deferred_bytes += len(chunk)
            if len(pending) >= BATCH_CHUNKS or self._deferred_bytes >= BATCH_BYTES:
                self._hand_over()
            return
        self._read_chunk(chunk, t_ns)

    def _hand_over(self) -> None:
        batch = self._pending
        if not batch:
            return
        self._pending = []
        self._deferred_bytes = 0
        try:
            self._sink.schedule_parse(self, batch)
        except Exception:
            self._fault("schedule_parse")

    def parse_batch(self, batch: list[tuple[bytes, int]]) -> None:
        """Parse handed-over chunks (on the finisher thread, after the request facts, in order)."""
        self.read_request()
        if self._response is not None:
            self._start_reading(*self._response)
        for chunk, t_ns in batch:
            self._read_chunk(chunk, t_ns)

    def catch_up(self) -> None:
        """Parse what a deferred call has kept so far, and parse in line from now on. Only for a call
        that has handed nothing over (nothing of it is queued on the finisher)."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        self.parse_batch(pending)

    def _read_chunk(self, chunk: bytes, t_ns: int) -> None:
        exchange = self.exchange
        try:
            if self._decompress is not None:
                chunk = self._decompress.decompress(chunk)
            stream = self._stream
            if stream is not None:
                events = stream.feed(chunk)
                if events:
                    parser = self._parser
                    assert parser is not None
                    if len(events) == 1:
                        items = parser.on_event(events[0])
                    else:
                        items = []
                        for event in events:
                            items.extend(parser.on_event(event))
                    if items:
                        exchange.apply(items, t_ns)
            elif self._body is not None:
                self._body_size += len(chunk)
                if self._body_size <= self.max_response_body:
                    self._body.append(chunk)
                else:
                    self._body = None  # too big to parse; still forwarded
        except Exception:
            self._stream = None
            self._body = None
            self._fault("on_chunk")

    def fail(self, error_type: str, message: str | None = None) -> None:
        self.exchange.fail(error_type, message)

    # --- end ---
    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def ending(self) -> bool:
        """Finished, or its finish is scheduled."""
        return self._finished or self._finish_requested

    def finish_soon(self, error_type: str | None = None, t_ns: int | None = None) -> None:
        """Take the end time now and let the sink decide where the rest of `finish` runs (in line, or
        on the finisher thread, off the streaming path)."""
        if self._finish_requested or self._finished:
            return
        self._finish_requested = True
        t_ns = t_ns if t_ns is not None else time.perf_counter_ns()
        try:
            self._sink.schedule_finish(self, error_type, t_ns)
        except Exception:
            self.finish(error_type, t_ns)

    def finish(self, error_type: str | None = None, t_ns: int | None = None) -> None:
        """Close the call exactly once: parse a buffered body, count tokens, emit."""
        if self._finished:
            return
        self._finished = True
        rest = self._pending  # the last, partial batch (its earlier ones were parsed before this)
        if rest is not None:
            self._pending = None
            self.parse_batch(rest)
        self.read_request()
        exchange = self.exchange
        exchange.finish(t_ns if t_ns is not None else time.perf_counter_ns())
        if error_type is not None:
            exchange.fail(error_type)
        try:
            self._read_buffered_body()
            status = exchange.status_code
            if status is not None and status >= 400 and error_type is None:
                exchange.error_type = str(status)  # the status, not the body's vendor-specific type
            self._count_tokens()
        except Exception:
            self._fault("finish")
        try:
            self._sink.end(self)
        except Exception:
            self._fault("emit")

    def _read_buffered_body(self) -> None:
        if self._stream is not None and self._parser is not None:
            items: list[StreamItem] = []
            for event in self._stream.close():
                items.extend(self._parser.on_event(event))
            if items:
                self.exchange.apply(items, self.exchange.t_end_ns or 0)
        if not self._body:
            return
        body = b"".join(self._body)
        self._body = None
        if self._decompress is not None:
            body += self._decompress.flush()
        exchange = self.exchange
        items = self.api.response_items(
            exchange.facts or RequestFacts(self.api.name, ""), body
        )
        if items:
            # A non-streamed response is one chunk: its content arrived with its first byte.
            exchange.apply(items, exchange.t_first_chunk_ns or exchange.t_end_ns or 0)

    def _count_tokens(self) -> None:
        """Reference-tokenizer counts of the output (per kind: text, reasoning, tool-call arguments) and prompt."""
        tokenizer = self._tokenizer
        if tokenizer is None:
            return
        exchange = self.exchange
        sources: set[str] = set()
        if exchange.output_parts:
            total = 0
            for kind in exchange.output_parts:
                count, source = tokenizer.count(exchange.output_text(kind))
                exchange.normalized_output_by_kind[kind] = count
                total += count
                sources.add(source)
            exchange.normalized_output_tokens = total
        facts = exchange.facts
        if facts is not None and facts.input_text:
            exchange.normalized_input_tokens, source = tokenizer.count(facts.input_text)
            sources.add(source)
        if sources:
            # one estimate makes the whole normalised figure an estimate
            exchange.normalized_source = SOURCE_ESTIMATE if SOURCE_ESTIMATE in sources else SOURCE_TOKENIZER

    def _fault(self, where: str) -> None:
        logger.debug("observer fault in %s", where, exc_info=True)
        try:
            self._sink.fault(where)
        except Exception:
            pass
