"""One LLM call: its timeline, facts, usage and outcome, and the figures derived from them.

All times are `time.perf_counter_ns()` readings taken by the observer. Definitions follow
ARCHITECTURE.md (and vLLM's `bench serve`):
- TTFT: request sent -> first chunk carrying output content;
- time to first chunk: request sent -> first response body chunk of any kind;
- ITL: one sample per gap between consecutive content-bearing chunks;
- TPOT: (end - first token) / (output tokens - 1), for at least 2 output tokens;
- duration: request sent -> last byte (or failure).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

from llmtap.providers.base import (
    REASONING,
    TEXT,
    TOOL_CALL,
    ContentDelta,
    Finish,
    RequestFacts,
    ResponseInfo,
    ServerTimings,
    StreamError,
    StreamItem,
    UsageReport,
)
from llmtap.tokens import SOURCE_PROVIDER

DEFAULT_MAX_TIMESTAMPS = 1 << 16
DEFAULT_MAX_OUTPUT_CHARS = 1 << 20
_NS = 1e-9



@dataclass(slots=True)
class Figures:
    """Derived per-call figures, in seconds and tokens. None where not measurable."""

    duration: float
    time_to_first_chunk: float | None
    ttft: float | None
    itl: list[float]
    tpot: float | None
    output_tokens: int | None
    usage_source: str | None
    output_throughput: float | None  # output tokens / duration
    normalized_output_throughput: float | None = None  # reference-tokenizer output tokens / duration
    prefill_rate: float | None = None  # input tokens / TTFT
    decode_rate: float | None = None  # (output tokens - 1) / (end - first token)


class Exchange:
    """The facts and timeline of one call. Cheap to update per chunk; derive figures at the end."""

    __slots__ = (
        "content_chunks",
        "content_times",
        "error_message",
        "error_type",
        "facts",
        "finish_reasons",
        "max_output_chars",
        "max_timestamps",
        "normalized_input_tokens",
        "normalized_output_by_kind",
        "normalized_output_tokens",
        "normalized_source",
        "output_chars",
        "output_parts",
        "response_id",
        "response_model",
        "server_timings",
        "status_code",
        "streamed",
        "t_end_ns",
        "t_first_chunk_ns",
        "t_headers_ns",
        "t_received_ns",
        "t_sent_ns",
        "usage",
    )

    def __init__(
        self,
        facts: RequestFacts | None = None,
        *,
        max_timestamps: int = DEFAULT_MAX_TIMESTAMPS,
        max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
    ) -> None:
        self.facts = facts
        self.t_received_ns: int | None = None  # request fully received by the observer (proxy)
        self.t_sent_ns = 0
        self.t_headers_ns: int | None = None
        self.t_first_chunk_ns: int | None = None
        self.t_end_ns: int | None = None
        self.content_times = array("q")
        self.content_chunks = 0
        self.max_timestamps = max_timestamps
        self.output_parts: dict[str, list[str]] = {}
        self.output_chars = 0
        self.max_output_chars = max_output_chars
        self.usage = UsageReport()
        self.response_model: str | None = None
        self.response_id: str | None = None
        self.server_timings: ServerTimings | None = None  # what the model server says it spent
        self.finish_reasons: list[str] = []
        self.status_code: int | None = None
        self.streamed = False  # the response body was a stream (SSE, NDJSON, ...)
        self.error_type: str | None = None
        self.error_message: str | None = None
        self.normalized_input_tokens: int | None = None
        self.normalized_output_tokens: int | None = None
        self.normalized_output_by_kind: dict[str, int] = {}  # text / reasoning / tool_call
        self.normalized_source: str | None = None

    # --- timeline ---
    def mark_sent(self, t_ns: int) -> None:
        self.t_sent_ns = t_ns

    def mark_headers(self, t_ns: int, status_code: int) -> None:
        self.t_headers_ns = t_ns
        self.status_code = status_code

    def mark_chunk(self, t_ns: int) -> None:
        if self.t_first_chunk_ns is None:
            self.t_first_chunk_ns = t_ns

    def apply(self, items: tuple[StreamItem, ...] | list[StreamItem], t_ns: int) -> None:
        """Fold in the items of one received chunk. A chunk with content counts once, however many deltas."""
        has_content = False
        for item in items:
            if type(item) is ContentDelta:
                if item.text:
                    has_content = True
                    self._keep_output(item)
            elif type(item) is UsageReport:
                self._merge_usage(item)
            elif type(item) is ResponseInfo:
                if item.model:
                    self.response_model = item.model
                if item.id:
                    self.response_id = item.id
            elif type(item) is Finish:
                if item.reason:
                    self.finish_reasons.append(item.reason)
            elif type(item) is StreamError:
                self.error_type = item.type or "error"
                self.error_message = item.message
            elif type(item) is ServerTimings:
                self.server_timings = item
        if has_content:
            self.content_chunks += 1
            times = self.content_times
            if len(times) < self.max_timestamps:
                times.append(t_ns)

    def fail(self, error_type: str, message: str | None = None) -> None:
        if self.error_type is None:
            self.error_type = error_type
            self.error_message = message

    def finish(self, t_ns: int) -> bool:
        """Close the timeline. Returns False if it was already closed."""
        if self.t_end_ns is not None:
            return False
        self.t_end_ns = t_ns
        return True

    @property
    def finished(self) -> bool:
        return self.t_end_ns is not None

    # --- output text ---
    def output_text(self, kind: str | None = None) -> str:
        if kind is not None:
            return "".join(self.output_parts.get(kind, ()))
        return "".join("".join(parts) for parts in self.output_parts.values())

    def _keep_output(self, delta: ContentDelta) -> None:
        room = self.max_output_chars - self.output_chars
        if room <= 0:
            return
        text = delta.text if len(delta.text) <= room else delta.text[:room]
        self.output_chars += len(text)
        parts = self.output_parts.get(delta.kind)
        if parts is None:
            self.output_parts[delta.kind] = [text]
        else:
            parts.append(text)

    def _merge_usage(self, report: UsageReport) -> None:
        usage = self.usage
        if report.input_tokens is not None:
            usage.input_tokens = report.input_tokens
        if report.output_tokens is not None:
            usage.output_tokens = report.output_tokens
        if report.cache_read_input_tokens is not None:
            usage.cache_read_input_tokens = report.cache_read_input_tokens
        if report.cache_creation_input_tokens is not None:
            usage.cache_creation_input_tokens = report.cache_creation_input_tokens
        if report.reasoning_output_tokens is not None:
            usage.reasoning_output_tokens = report.reasoning_output_tokens

    # --- derived figures ---
    @property
    def t_first_token_ns(self) -> int | None:
        return self.content_times[0] if self.content_times else None

    def output_tokens(self) -> tuple[int | None, str | None]:
        """Output tokens for TPOT and throughput: the provider's count, else the reference tokenizer's."""
        if self.usage.output_tokens is not None:
            return self.usage.output_tokens, SOURCE_PROVIDER
        if self.normalized_output_tokens is not None:
            return self.normalized_output_tokens, self.normalized_source
        return None, None

    def input_tokens(self) -> int | None:
        """Input tokens: the provider's count, else the reference tokenizer's."""
        if self.usage.input_tokens is not None:
            return self.usage.input_tokens
        return self.normalized_input_tokens

    def itl_samples(self) -> list[float]:
        times = self.content_times
        return [(times[i] - times[i - 1]) * _NS for i in range(1, len(times))]

    def figures(self) -> Figures:
        """Streaming figures (TTFT, ITL, TPOT, time to first chunk) exist only for streamed responses."""
        end = self.t_end_ns if self.t_end_ns is not None else self.t_sent_ns
        sent = self.t_sent_ns
        tokens, source = self.output_tokens()
        duration = (end - sent) * _NS
        throughput = tokens / duration if tokens and duration > 0 else None
        ttft = first_chunk = tpot = prefill = decode = None
        itl: list[float] = []
        if self.streamed:
            first_token = self.t_first_token_ns
            if first_token is not None:
                ttft = (first_token - sent) * _NS
                # a call cut short (cancelled, timed out) ends its decoding at its last content chunk
                decode_end = end if self.error_type is None else self.content_times[-1]
                if tokens is not None and tokens >= 2 and decode_end > first_token:
                    tpot = (decode_end - first_token) * _NS / (tokens - 1)
                    decode = 1.0 / tpot
                input_tokens = self.input_tokens()
                if input_tokens and ttft > 0:
                    prefill = input_tokens / ttft
            if self.t_first_chunk_ns is not None:
                first_chunk = (self.t_first_chunk_ns - sent) * _NS
            itl = self.itl_samples()
        return Figures(
            duration=duration,
            time_to_first_chunk=first_chunk,
            ttft=ttft,
            itl=itl,
            tpot=tpot,
            output_tokens=tokens,
            usage_source=source,
            output_throughput=throughput,
            normalized_output_throughput=(
                self.normalized_output_tokens / duration
                if self.normalized_output_tokens and duration > 0 else None
            ),
            prefill_rate=prefill,
            decode_rate=decode,
        )


__all__ = ["REASONING", "TEXT", "TOOL_CALL", "Exchange", "Figures"]
