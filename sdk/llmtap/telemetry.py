"""The only module that talks to OpenTelemetry: instruments, span emission, cold starts, set-up.

Instruments are built once. Per call, a span is started when the call begins (so that its context
can travel upstream in `traceparent`), and everything else (attributes, histograms) is recorded
once, when the call finishes.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import orjson
from opentelemetry import propagate, trace
from opentelemetry.metrics import MeterProvider, get_meter_provider
from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider

from llmtap import semconv
from llmtap.exchange import Figures
from llmtap.observer import CallObserver
from llmtap.providers.base import ProviderAPI
from llmtap.tokens import ReferenceTokenizer

logger = logging.getLogger("llmtap.telemetry")

INSTRUMENTATION_NAME = "llmtap"
DEFAULT_COLD_START_IDLE_S = 300.0
DEFAULT_CONTENT_MAX_CHARS = 64 * 1024
REDACTED = "[REDACTED]"
_TRUE = ("1", "true", "yes", "on")


# Spans / metric batches whose export failed (collector down, slow, 5xx), by signal. Module-level
# because exporters are built before the Telemetry that reports them as llmtap.telemetry.export_failures.
EXPORT_FAILURES: dict[str, int] = {"traces": 0, "metrics": 0}
_EXPORTER_LOGGERS = (
    "opentelemetry.exporter",
    "opentelemetry.sdk.trace.export",
    "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk.metrics._internal.export",
)


class _LogOnce(logging.Filter):
    """Lets each distinct exporter message through once: a dead collector is reported, not repeated."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = record.name  # one line per exporter (or processor), whatever it says next
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
        if record.levelno >= logging.WARNING:
            record.msg = f"{record.msg} (further occurrences are counted in llmtap.telemetry.export_failures)"
        return True


_LOG_ONCE = _LogOnce()


def _quiet_exporter_logs() -> None:
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(_EXPORTER_LOGGERS):
            exporter_logger = logging.getLogger(name)
            if _LOG_ONCE not in exporter_logger.filters:
                exporter_logger.addFilter(_LOG_ONCE)


def _counting(exporter_class: type, signal: str) -> type:
    """A subclass of an OTel exporter whose failed exports are counted in EXPORT_FAILURES."""

    def export(self: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = exporter_class.export(self, batch, *args, **kwargs)
        except Exception:
            EXPORT_FAILURES[signal] += 1
            raise
        if getattr(result, "name", "") == "FAILURE":
            EXPORT_FAILURES[signal] += len(batch) if signal == "traces" and hasattr(batch, "__len__") else 1
        return result

    return type(f"Counting{exporter_class.__name__}", (exporter_class,), {"export": export})


def capture_content_enabled() -> bool:
    return os.environ.get(semconv.CAPTURE_CONTENT_ENV, "").strip().lower() in _TRUE


class ColdStartTracker:
    """Flags the first call to an (upstream, model) pair since start, or after an idle spell.

    A pair is idle only while none of its calls is in flight: the idle clock starts when its last
    call ends, so a long call does not make the next one look cold.
    """

    def __init__(self, idle_threshold_s: float = DEFAULT_COLD_START_IDLE_S) -> None:
        self.idle_threshold_ns = int(idle_threshold_s * 1e9)
        self._last_seen: dict[tuple[str, int, str], int] = {}
        self._in_flight: dict[tuple[str, int, str], int] = {}
        self._lock = threading.Lock()

    def check(self, key: tuple[str, int, str], now_ns: int) -> bool:
        """A call to `key` starts: is it a cold start? Pair every check with one `touch` at its end."""
        with self._lock:
            last = self._last_seen.get(key)
            busy = self._in_flight.get(key, 0) > 0
            self._in_flight[key] = self._in_flight.get(key, 0) + 1
            self._last_seen[key] = now_ns
        return not busy and (last is None or now_ns - last > self.idle_threshold_ns)

    def touch(self, key: tuple[str, int, str], now_ns: int) -> None:
        """A call to `key` ends."""
        with self._lock:
            remaining = self._in_flight.get(key, 0) - 1
            if remaining > 0:
                self._in_flight[key] = remaining
            else:
                self._in_flight.pop(key, None)
            if self._last_seen.get(key, 0) < now_ns:
                self._last_seen[key] = now_ns


class ActiveCalls:
    """Calls in flight per (provider, operation, server address, server port), observed at collection."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, str, int], int] = {}
        self._lock = threading.Lock()

    def add(self, key: tuple[str, str, str, int], delta: int) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + delta

    def observe(self, _options: Any) -> list[Any]:
        from opentelemetry.metrics import Observation

        with self._lock:
            counts = list(self._counts.items())
        return [
            Observation(count, {
                semconv.PROVIDER_NAME: provider,
                semconv.OPERATION_NAME: operation,
                semconv.SERVER_ADDRESS: address,
                semconv.SERVER_PORT: port,
            })
            for (provider, operation, address, port), count in counts
        ]


@dataclass(slots=True)
class _CallState:
    span: trace.Span
    observer_name: str
    server_address: str
    server_port: int
    active_key: tuple[str, str, str, int]
    cold_start: bool | None = None
    counted_done: bool = False  # llmtap.requests.active was decremented


class Telemetry:
    """Builds the instruments once and turns finished calls into a span plus histogram records."""

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        *,
        observer_name: str = semconv.OBSERVER_PROXY,
        capture_content: bool | None = None,
        content_max_chars: int = DEFAULT_CONTENT_MAX_CHARS,
        redact_patterns: list[re.Pattern[str]] | None = None,
        cold_start_idle_s: float = DEFAULT_COLD_START_IDLE_S,
        tokenizer: ReferenceTokenizer | None = None,
        finish_in_background: bool = False,
    ) -> None:
        self.tracer_provider = tracer_provider or trace.get_tracer_provider()
        self.meter_provider = meter_provider or get_meter_provider()
        self.observer_name = observer_name
        self.capture_content = capture_content_enabled() if capture_content is None else capture_content
        self.content_max_chars = content_max_chars
        self.redact_patterns = list(redact_patterns or [])
        self.cold_starts = ColdStartTracker(cold_start_idle_s)
        self.tokenizer = tokenizer if tokenizer is not None else ReferenceTokenizer()
        # End calls (tokens, figures, span, histograms) on the finisher thread, not the caller's path
        self.finish_in_background = finish_in_background
        self.tracer = self.tracer_provider.get_tracer(INSTRUMENTATION_NAME)
        meter = self.meter_provider.get_meter(INSTRUMENTATION_NAME)

        def histogram(name: str, unit: str, description: str, buckets: tuple[float, ...]) -> Any:
            return meter.create_histogram(
                name, unit=unit, description=description, explicit_bucket_boundaries_advisory=list(buckets)
            )

        self.duration = histogram(
            semconv.METRIC_OPERATION_DURATION, "s", "GenAI operation duration.", semconv.BUCKETS_DURATION
        )
        self.token_usage = histogram(
            semconv.METRIC_TOKEN_USAGE, "{token}", "Number of input and output tokens used.",
            semconv.BUCKETS_TOKENS,
        )
        self.time_to_first_chunk = histogram(
            semconv.METRIC_TIME_TO_FIRST_CHUNK, "s", "Time to receive the first response chunk.",
            semconv.BUCKETS_TIME_TO_FIRST_TOKEN,
        )
        self.time_per_output_chunk = histogram(
            semconv.METRIC_TIME_PER_OUTPUT_CHUNK, "s",
            "Gap between consecutive content-bearing chunks (inter-token latency).",
            semconv.BUCKETS_TIME_PER_OUTPUT_TOKEN,
        )
        self.time_to_first_token = histogram(
            semconv.METRIC_SERVER_TIME_TO_FIRST_TOKEN, "s", "Time to the first content-bearing chunk.",
            semconv.BUCKETS_TIME_TO_FIRST_TOKEN,
        )
        self.time_per_output_token = histogram(
            semconv.METRIC_SERVER_TIME_PER_OUTPUT_TOKEN, "s", "Time per output token after the first.",
            semconv.BUCKETS_TIME_PER_OUTPUT_TOKEN,
        )
        self.output_throughput = histogram(
            semconv.METRIC_OUTPUT_THROUGHPUT, "{token}/s", "Output tokens per second of one call.",
            semconv.BUCKETS_THROUGHPUT,
        )
        self.normalized_output_throughput = histogram(
            semconv.METRIC_NORMALIZED_OUTPUT_THROUGHPUT, "{token}/s",
            "Output tokens per second of one call, counted with the reference tokenizer.",
            semconv.BUCKETS_THROUGHPUT,
        )
        self.prefill_rate = histogram(
            semconv.METRIC_PREFILL_RATE, "{token}/s", "Input tokens / TTFT: the prefill (compute-bound) phase.",
            semconv.BUCKETS_PREFILL_RATE,
        )
        self.decode_rate = histogram(
            semconv.METRIC_DECODE_RATE, "{token}/s",
            "(Output tokens - 1) / (end - first token): the decode (memory-bound) phase.",
            semconv.BUCKETS_THROUGHPUT,
        )
        self.normalized_tokens = histogram(
            semconv.METRIC_NORMALIZED_TOKENS, "{token}", "Tokens counted with the reference tokenizer.",
            semconv.BUCKETS_TOKENS,
        )
        self.proxy_overhead = histogram(
            semconv.METRIC_PROXY_OVERHEAD, "s", "Time the proxy added before sending a request upstream.",
            semconv.BUCKETS_PROXY_OVERHEAD,
        )
        # In-flight calls are plain counters, read at collection time: a synchronous up-down counter
        # costs two OpenTelemetry records per call on the request path (about as much as the span).
        self.requests_active = ActiveCalls()
        meter.create_observable_up_down_counter(
            semconv.METRIC_REQUESTS_ACTIVE, callbacks=[self.requests_active.observe], unit="{request}",
            description="LLM calls in flight.",
        )
        self.cold_start_counter = meter.create_counter(
            semconv.METRIC_COLD_STARTS, unit="{request}", description="Calls flagged as cold starts."
        )
        meter.create_observable_counter(
            semconv.METRIC_EXPORT_FAILURES, callbacks=[_export_failures], unit="{item}",
            description="Spans (and metric batches) whose export failed; the data is lost, traffic is not.",
        )
        self.internal_errors = meter.create_counter(
            semconv.METRIC_INTERNAL_ERRORS, unit="{error}",
            description="Telemetry faults swallowed so that traffic could go on.",
        )
        self.internal_errors.add(0)  # the series exists from the start, so dashboards can reference it
        self._fault_logged: set[str] = set()
        # Called with each finished call and its figures (demo, reports). Faults are counted, not raised.
        self.listeners: list[Callable[[CallObserver, Figures], None]] = []

    # --- per call ---
    def observe(
        self,
        api: ProviderAPI,
        operation: str,
        *,
        server_address: str,
        server_port: int,
        parent_headers: Mapping[str, str] | None = None,
        observer_name: str | None = None,
        path: str = "",
        span: trace.Span | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> CallObserver:
        """Start observing one LLM call: opens its span and counts it as active.

        `span`: record into this span instead of starting one (the SDK passes a wrapper around another
        instrumentation's span for the same call; see llmtap.coexist). `attributes`: span attributes
        known at the start (the SDK's attempt number)."""
        parent = propagate.extract(parent_headers) if parent_headers else None
        if span is None:
            span = self.tracer.start_span(operation, context=parent, kind=SpanKind.CLIENT, attributes=attributes)
        elif attributes:
            span.set_attributes(attributes)
        active = (api.name, operation, server_address, server_port)
        self.requests_active.add(active, 1)
        state = _CallState(
            span, observer_name or self.observer_name, server_address, server_port, active
        )
        return CallObserver(
            api, operation, self, self.tokenizer, context=state, path=path, deferred=self.finish_in_background
        )

    def trace_headers(self, call: CallObserver) -> dict[str, str]:
        """W3C trace context of the call's span, to send upstream."""
        carrier: dict[str, str] = {}
        state = call.context
        if isinstance(state, _CallState):
            propagate.inject(carrier, context=trace.set_span_in_context(state.span))
        return carrier

    def _count_done(self, state: _CallState) -> None:
        if not state.counted_done:
            state.counted_done = True
            self.requests_active.add(state.active_key, -1)

    def schedule_finish(self, call: CallObserver, error_type: str | None, t_ns: int) -> None:
        state = call.context
        if isinstance(state, _CallState):
            self._count_done(state)  # the call's traffic is over now, whenever its telemetry is done
        if self.finish_in_background:
            from llmtap.finisher import FINISHER

            FINISHER.ensure_started()
            FINISHER.finish(call, error_type, t_ns)
        else:
            call.finish(error_type, t_ns)

    def schedule_facts(self, call: CallObserver) -> bool:
        """Hand a deferred call to the finisher thread: True if its parsing and end run there."""
        if not self.finish_in_background:
            return False
        from llmtap.finisher import FINISHER

        FINISHER.ensure_started()
        return FINISHER.read_request(call)

    def schedule_parse(self, call: CallObserver, batch: list[tuple[bytes, int]]) -> None:
        from llmtap.finisher import FINISHER

        FINISHER.parse(call, batch)

    def on_facts(self, call: CallObserver) -> None:
        self.check_cold_start(call)

    def check_cold_start(self, call: CallObserver) -> None:
        """Decide cold start in call order, at the call's start time; once the request facts are known."""
        state = call.context
        if not isinstance(state, _CallState) or state.cold_start is not None:
            return
        exchange = call.exchange
        facts = exchange.facts
        model = (facts.model if facts else None) or ""
        started = exchange.t_received_ns or exchange.t_sent_ns or time.perf_counter_ns()
        state.cold_start = self.cold_starts.check((state.server_address, state.server_port, model), started)

    def fault(self, where: str) -> None:
        self.internal_errors.add(1, {"llmtap.fault": where})
        if where not in self._fault_logged:
            self._fault_logged.add(where)
            logger.warning("telemetry fault in %s (counted in %s; logged once)", where,
                           semconv.METRIC_INTERNAL_ERRORS)

    def cold_start_of(self, call: CallObserver) -> bool:
        state = call.context
        return bool(state.cold_start) if isinstance(state, _CallState) else False

    def end(self, call: CallObserver) -> None:
        state = call.context
        if not isinstance(state, _CallState):
            return
        self._count_done(state)
        self.check_cold_start(call)
        exchange = call.exchange
        facts = exchange.facts
        model = facts.model if facts else None
        self.cold_starts.touch(
            (state.server_address, state.server_port, model or ""), exchange.t_end_ns or time.perf_counter_ns()
        )
        figures = exchange.figures()
        span = state.span
        operation = call.operation
        span.update_name(f"{operation} {model}" if model else operation)

        attributes: dict[str, Any] = {
            semconv.OPERATION_NAME: operation,
            semconv.PROVIDER_NAME: facts.provider if facts else call.api.name,
            semconv.SERVER_ADDRESS: state.server_address,
            semconv.SERVER_PORT: state.server_port,
        }
        if model:
            attributes[semconv.REQUEST_MODEL] = model
        if exchange.response_model:
            attributes[semconv.RESPONSE_MODEL] = exchange.response_model
        if exchange.error_type:
            attributes[semconv.ERROR_TYPE] = exchange.error_type
        attributes[semconv.COLD_START] = bool(state.cold_start)
        metric_attributes = dict(attributes)

        if facts is not None:
            attributes[semconv.REQUEST_STREAM] = facts.stream
            attributes.update(facts.params)
        if exchange.response_id:
            attributes[semconv.RESPONSE_ID] = exchange.response_id
        if exchange.finish_reasons:
            attributes[semconv.RESPONSE_FINISH_REASONS] = exchange.finish_reasons
        if exchange.status_code is not None:
            attributes[semconv.HTTP_RESPONSE_STATUS_CODE] = exchange.status_code
        attributes[semconv.OBSERVER] = state.observer_name
        usage = exchange.usage
        timings = exchange.server_timings
        for key, value in (
            (semconv.USAGE_INPUT_TOKENS, usage.input_tokens),
            (semconv.USAGE_OUTPUT_TOKENS, usage.output_tokens),
            (semconv.USAGE_CACHE_READ_INPUT_TOKENS, usage.cache_read_input_tokens),
            (semconv.USAGE_CACHE_CREATION_INPUT_TOKENS, usage.cache_creation_input_tokens),
            (semconv.USAGE_REASONING_OUTPUT_TOKENS, usage.reasoning_output_tokens),
            (semconv.NORMALIZED_INPUT_TOKENS, exchange.normalized_input_tokens),
            (semconv.NORMALIZED_OUTPUT_TOKENS, exchange.normalized_output_tokens),
            (semconv.RESPONSE_TIME_TO_FIRST_CHUNK, figures.time_to_first_chunk),
            (semconv.TTFT, figures.ttft),
            (semconv.TPOT, figures.tpot),
            (semconv.OUTPUT_THROUGHPUT, figures.output_throughput),
            (semconv.NORMALIZED_OUTPUT_THROUGHPUT, figures.normalized_output_throughput),
            (semconv.PREFILL_RATE, figures.prefill_rate),
            (semconv.DECODE_RATE, figures.decode_rate),
            (semconv.NORMALIZED_REASONING_TOKENS, exchange.normalized_output_by_kind.get("reasoning")),
            (semconv.NORMALIZED_TOOL_CALL_TOKENS, exchange.normalized_output_by_kind.get("tool_call")),
            (semconv.SERVER_LOAD_DURATION, timings.load_duration_s if timings else None),
            (semconv.SERVER_PROMPT_EVAL_DURATION, timings.prompt_eval_duration_s if timings else None),
            (semconv.SERVER_EVAL_DURATION, timings.eval_duration_s if timings else None),
            (semconv.USAGE_SOURCE, figures.usage_source),
        ):
            if value is not None:
                attributes[key] = value
        if exchange.normalized_input_tokens is not None or exchange.normalized_output_tokens is not None:
            attributes[semconv.NORMALIZED_TOKENIZER] = self.tokenizer.name
        if exchange.streamed:
            attributes[semconv.CONTENT_CHUNKS] = exchange.content_chunks
        overhead = None
        if exchange.t_received_ns is not None and exchange.t_sent_ns:
            overhead = max(0, exchange.t_sent_ns - exchange.t_received_ns) * 1e-9
            attributes[semconv.PROXY_OVERHEAD] = overhead
        if exchange.t_headers_ns is not None and exchange.t_sent_ns:
            attributes[semconv.UPSTREAM_TIME_TO_HEADERS] = (exchange.t_headers_ns - exchange.t_sent_ns) * 1e-9
        if self.capture_content:
            self._add_content(attributes, call)
        span.set_attributes(attributes)

        wall = call.wall_sent_ns
        if exchange.t_first_token_ns is not None and exchange.streamed:
            span.add_event(
                semconv.EVENT_FIRST_TOKEN,
                timestamp=wall + exchange.t_first_token_ns - exchange.t_sent_ns,
            )
        if exchange.error_type:
            span.set_status(Status(StatusCode.ERROR, exchange.error_message or exchange.error_type))
        end_ns = wall + (exchange.t_end_ns or exchange.t_sent_ns) - exchange.t_sent_ns
        span.end(end_time=max(end_ns, wall))

        self._record_metrics(metric_attributes, exchange, figures, overhead, state)
        for listener in self.listeners:
            try:
                listener(call, figures)
            except Exception:
                self.fault("listener")

    def _record_metrics(
        self, attrs: dict[str, Any], exchange: Any, figures: Figures, overhead: float | None, state: _CallState
    ) -> None:
        self.duration.record(figures.duration, attrs)
        usage = exchange.usage
        if usage.input_tokens is not None:
            self.token_usage.record(usage.input_tokens, {**attrs, semconv.TOKEN_TYPE: semconv.TOKEN_TYPE_INPUT})
        if usage.output_tokens is not None:
            self.token_usage.record(
                usage.output_tokens, {**attrs, semconv.TOKEN_TYPE: semconv.TOKEN_TYPE_OUTPUT}
            )
        if exchange.normalized_input_tokens is not None:
            self.normalized_tokens.record(
                exchange.normalized_input_tokens, {**attrs, semconv.TOKEN_TYPE: semconv.TOKEN_TYPE_INPUT}
            )
        if exchange.normalized_output_tokens is not None:
            self.normalized_tokens.record(
                exchange.normalized_output_tokens, {**attrs, semconv.TOKEN_TYPE: semconv.TOKEN_TYPE_OUTPUT}
            )
        if figures.time_to_first_chunk is not None:
            self.time_to_first_chunk.record(figures.time_to_first_chunk, attrs)
        if figures.ttft is not None:
            self.time_to_first_token.record(figures.ttft, attrs)
        record_gap = self.time_per_output_chunk.record
        for gap in figures.itl:
            record_gap(gap, attrs)
        if figures.tpot is not None:
            self.time_per_output_token.record(figures.tpot, attrs)
        if figures.output_throughput is not None:
            self.output_throughput.record(figures.output_throughput, attrs)
        if figures.normalized_output_throughput is not None:
            self.normalized_output_throughput.record(figures.normalized_output_throughput, attrs)
        if figures.prefill_rate is not None:
            self.prefill_rate.record(figures.prefill_rate, attrs)
        if figures.decode_rate is not None:
            self.decode_rate.record(figures.decode_rate, attrs)
        if overhead is not None:
            self.proxy_overhead.record(overhead, attrs)
        if state.cold_start:
            self.cold_start_counter.add(1, attrs)

    def _add_content(self, attributes: dict[str, Any], call: CallObserver) -> None:
        """Opt-in prompt/completion capture, redacted and then capped, in the semconv message shape."""
        limit = self.content_max_chars
        exchange = call.exchange
        facts = exchange.facts
        if facts is not None and facts.input_messages is not None:
            attributes[semconv.INPUT_MESSAGES] = _capped_json(self._redact(facts.input_messages), limit)
        parts: list[dict[str, Any]] = []
        if exchange.output_parts.get("text"):
            parts.append({"type": "text", "content": exchange.output_text("text")})
        if exchange.output_parts.get("reasoning"):
            parts.append({"type": "reasoning", "content": exchange.output_text("reasoning")})
        if exchange.output_parts.get("tool_call"):
            parts.append({"type": "tool_call", "arguments": exchange.output_text("tool_call")})
        if parts:
            message: dict[str, Any] = {"role": "assistant", "parts": parts}
            if exchange.finish_reasons:
                message["finish_reason"] = exchange.finish_reasons[0]
            attributes[semconv.OUTPUT_MESSAGES] = _capped_json(self._redact([message]), limit)

    def _redact(self, value: Any) -> Any:
        if not self.redact_patterns:
            return value
        if isinstance(value, str):
            for pattern in self.redact_patterns:
                value = pattern.sub(REDACTED, value)
            return value
        if isinstance(value, list):
            return [self._redact(item) for item in value]
        if isinstance(value, dict):
            return {key: self._redact(item) for key, item in value.items()}
        return value

    # --- lifecycle ---
    def force_flush(self, timeout_millis: int = 10_000) -> None:
        if self.finish_in_background:
            from llmtap.finisher import FINISHER

            FINISHER.flush(timeout_millis / 1000)
        for provider in (self.tracer_provider, self.meter_provider):
            flush = getattr(provider, "force_flush", None)
            if flush is not None:
                try:
                    flush(timeout_millis=timeout_millis)
                except Exception:
                    logger.warning("telemetry flush failed", exc_info=True)

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Flush and stop the providers, giving up after `timeout_s`: an unreachable collector's
        retries must not hold a terminating process past its grace period."""

        def stop() -> None:
            self.force_flush(timeout_millis=int(timeout_s * 1000))
            for provider in (self.tracer_provider, self.meter_provider):
                halt = getattr(provider, "shutdown", None)
                if halt is not None:
                    try:
                        halt()
                    except Exception:
                        logger.warning("telemetry shutdown failed", exc_info=True)

        worker = threading.Thread(target=stop, name="llmtap-telemetry-shutdown", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            logger.warning("telemetry flush did not finish within %.1f s; unsent telemetry is dropped", timeout_s)


def _export_failures(_options: Any) -> list[Any]:
    from opentelemetry.metrics import Observation

    return [Observation(count, {"llmtap.signal": signal}) for signal, count in EXPORT_FAILURES.items()]


def _capped_json(value: Any, limit: int) -> str:
    """JSON of the value, cut to `limit` characters with a visible marker when it is longer."""
    text = orjson.dumps(value).decode()
    if len(text) <= limit:
        return text
    marker = "...[truncated]"
    return text[: max(0, limit - len(marker))] + marker


# --- set-up from the standard OTEL_* environment variables ---
@dataclass(slots=True)
class TelemetryTargets:
    traces: str  # "otlp (http/protobuf) -> URL", "console", "none"
    metrics: str
    scrape_servers: list[Any] = field(default_factory=list)  # Prometheus endpoints to stop at shutdown

    def close(self) -> None:
        for server in self.scrape_servers:
            server.shutdown()
            server.server_close()
        self.scrape_servers.clear()


def _prometheus_reader(host: str, port: int) -> tuple[Any, Any, str]:
    """The OTel Prometheus exporter on its own registry and HTTP server (a daemon thread)."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader, start_http_server
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=True)
    reader = PrometheusMetricReader(registry=registry)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    bound = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    return reader, server, f"prometheus -> http://{shown}:{bound}/metrics"


def _exporter_names(variable: str, default: str) -> list[str]:
    raw = os.environ.get(variable, default)
    return [name.strip().lower() for name in raw.split(",") if name.strip()]


def _protocol(signal: str) -> str:
    return (
        os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip().lower()


def _otlp_target(signal: str) -> str:
    protocol = _protocol(signal)
    endpoint = os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    default = "http://localhost:4317" if protocol == "grpc" else "http://localhost:4318"
    return f"otlp ({protocol}) -> {endpoint or default}"


def configure_from_env(
    service_name: str = "llmtap",
    console_out: IO[str] | None = None,
    *,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    telemetry_file: str | None = None,
    instance_suffix: str = "",
) -> tuple[Any, Any, TelemetryTargets]:
    """SDK providers built from OTEL_* variables: OTLP over http/protobuf by default, grpc when
    asked, console, prometheus, or none. `metrics_port` adds a Prometheus scrape endpoint whatever
    OTEL_METRICS_EXPORTER says. `telemetry_file` adds OTLP JSON-lines file exporters for spans and
    metrics (llmtap.otlp_file) beside whatever OTEL_* selects.
    service.instance.id is the one OTEL_RESOURCE_ATTRIBUTES sets, followed by `instance_suffix` (the
    proxy's workers add "-w<index>" so that they stay apart), or else a random UUID for this call.
    Returns (tracer_provider, meter_provider, where the data goes)."""
    from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    chosen = OTELResourceDetector().detect().attributes.get("service.instance.id")  # OTEL_RESOURCE_ATTRIBUTES
    attributes: dict[str, Any] = {
        "service.instance.id": f"{chosen}{instance_suffix}" if chosen else str(uuid.uuid4()),
    }
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = service_name
    resource = Resource.create(attributes)

    # shutdown is ours (Telemetry.shutdown, bounded), not an unbounded atexit hook
    tracer_provider = SdkTracerProvider(resource=resource, shutdown_on_exit=False)
    traces: list[str] = []
    for name in _exporter_names("OTEL_TRACES_EXPORTER", "otlp"):
        if name == "otlp":
            tracer_provider.add_span_processor(BatchSpanProcessor(_otlp_span_exporter()))
            traces.append(_otlp_target("TRACES"))
        elif name == "console":
            exporter = ConsoleSpanExporter(out=console_out) if console_out else ConsoleSpanExporter()
            tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
            traces.append("console")
    if telemetry_file:
        from llmtap.otlp_file import OTLPJsonFileSpanExporter

        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPJsonFileSpanExporter(telemetry_file)))
        traces.append(f"file -> {telemetry_file}")

    readers = []
    metrics: list[str] = []
    servers: list[Any] = []
    exporters = _exporter_names("OTEL_METRICS_EXPORTER", "otlp")
    if metrics_port is None and "prometheus" in exporters:
        metrics_port = int(os.environ.get("OTEL_EXPORTER_PROMETHEUS_PORT", "9464"))
        metrics_host = os.environ.get("OTEL_EXPORTER_PROMETHEUS_HOST", "localhost")
    if metrics_port is not None:
        reader, server, where = _prometheus_reader(metrics_host, metrics_port)
        readers.append(reader)
        servers.append(server)
        metrics.append(where)
    for name in exporters:
        if name == "otlp":
            readers.append(PeriodicExportingMetricReader(_otlp_metric_exporter()))
            metrics.append(_otlp_target("METRICS"))
        elif name == "console":
            exporter = ConsoleMetricExporter(out=console_out) if console_out else ConsoleMetricExporter()
            readers.append(PeriodicExportingMetricReader(exporter))
            metrics.append("console")
    if telemetry_file:
        from llmtap.otlp_file import OTLPJsonFileMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPJsonFileMetricExporter(telemetry_file)))
        metrics.append(f"file -> {telemetry_file}")
    meter_provider = SdkMeterProvider(resource=resource, metric_readers=readers, shutdown_on_exit=False)
    _quiet_exporter_logs()
    targets = TelemetryTargets(", ".join(traces) or "none", ", ".join(metrics) or "none", servers)
    return tracer_provider, meter_provider, targets


def _otlp_span_exporter() -> Any:
    if _protocol("TRACES") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return _counting(OTLPSpanExporter, "traces")()


def _otlp_metric_exporter() -> Any:
    if _protocol("METRICS") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    return _counting(OTLPMetricExporter, "metrics")()
