"""Living beside other GenAI instrumentation: one GenAI span per call, whoever opened it.

The `anthropic` SDK (2.x) opens its own CLIENT span per API call ("anthropic.messages.create", scope
`com.anthropic.sdk.python`) whenever a TracerProvider is available, keeps it current while it sends
each attempt, injects its `traceparent`, and ends it when the response body has been read, closed or
dropped. opentelemetry-instrumentation-openai-v2 does the same for `openai` calls. Such a span has the
request and usage attributes but none of llmtap's figures (TTFT, ITL, TPOT, normalised tokens, cold
starts) and, for the Anthropic SDK, no metrics.

When the span that is current as an LLM request leaves the application is such a span, the SDK
transport *adopts* it: llmtap records its figures as attributes on that span (adding, never
overwriting) and records its metrics, but opens no span of its own, so a trace has one GenAI span per
call. `AdoptedSpan` is the wrapper that `Telemetry` writes into: it never renames, ends or sets the
status of the span it wraps, and an attempt that failed (a 429 that the SDK retries, say) writes
nothing to it, because the owner records the outcome of the logical call itself.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, SpanKind, Status
from opentelemetry.util.types import Attributes, AttributeValue

from llmtap import semconv

logger = logging.getLogger("llmtap.sdk")

ANTHROPIC_SCOPE = "com.anthropic.sdk.python"
LLMTAP_SCOPE = "llmtap"

# Operations of one inference call. An agent's span ("invoke_agent", "execute_tool") is never adopted.
INFERENCE_OPERATIONS = frozenset(
    {"chat", "text_completion", "generate_content", "embeddings", "completion", "embedding", "responses"}
)
# OpenLLMetry (traceloop) marks its spans with this attribute instead of gen_ai.operation.name.
OPENLLMETRY_REQUEST_TYPE = "llm.request.type"


def adoptable_span(span: trace.Span | None = None) -> trace.Span | None:
    """The current span if it is another instrumentation's GenAI span for one inference call, else None.

    That is a recording CLIENT span, not llmtap's, whose gen_ai.operation.name (or OpenLLMetry's
    llm.request.type) names an inference operation. Spans of the OpenTelemetry API without attributes
    (non-SDK implementations) are never adopted.
    """
    span = span if span is not None else trace.get_current_span()
    if not span.is_recording() or getattr(span, "kind", None) is not SpanKind.CLIENT:
        return None
    attributes = getattr(span, "attributes", None)
    if not attributes:
        return None
    scope = getattr(span, "instrumentation_scope", None)
    if scope is not None and scope.name == LLMTAP_SCOPE:
        return None
    operation = attributes.get(semconv.OPERATION_NAME) or attributes.get(OPENLLMETRY_REQUEST_TYPE)
    return span if operation in INFERENCE_OPERATIONS else None


class AdoptedSpan(trace.Span):
    """Another instrumentation's span, seen through what llmtap may do to it.

    Passes through: the span context (so `traceparent` carries the owner's span), new attributes and the
    first-token event. Drops: renaming, ending, status, attributes the owner already set, and everything
    once `silence()` was called (a failed attempt: the owner records the call's outcome).
    """

    __slots__ = ("_silenced", "span")

    def __init__(self, span: trace.Span) -> None:
        self.span = span
        self._silenced = False

    def silence(self) -> None:
        self._silenced = True

    @property
    def scope_name(self) -> str:
        scope = getattr(self.span, "instrumentation_scope", None)
        return scope.name if scope is not None else ""

    def _writable(self) -> bool:
        return not self._silenced and self.span.is_recording()

    # --- passed through ---
    def get_span_context(self) -> SpanContext:
        return self.span.get_span_context()

    def is_recording(self) -> bool:
        return self.span.is_recording()

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        if not self._writable():
            return
        existing = getattr(self.span, "attributes", None) or {}
        new = {key: value for key, value in attributes.items() if key not in existing}
        if new:
            self.span.set_attributes(new)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.set_attributes({key: value})

    def add_event(self, name: str, attributes: Attributes = None, timestamp: int | None = None) -> None:
        if self._writable():
            self.span.add_event(name, attributes, timestamp)

    # --- the owner's business ---
    def update_name(self, name: str) -> None:
        pass

    def set_status(self, status: Status | Any, description: str | None = None) -> None:
        pass

    def end(self, end_time: int | None = None) -> None:
        pass

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        pass

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        pass

    def add_links(self, links: Sequence[Link]) -> None:  # pragma: no cover - newer API versions
        pass


# --- what else is installed ---
@dataclass(frozen=True, slots=True)
class Detected:
    name: str
    active: bool
    note: str


_OTHER_INSTRUMENTORS = (
    (
        "opentelemetry-instrumentation-openai-v2",
        "opentelemetry.instrumentation.openai_v2",
        "OpenAIInstrumentor",
        "its chat span is adopted (llmtap adds its figures, opens no second span); it records "
        "gen_ai.client.operation.duration and gen_ai.client.token.usage too: filter metrics by scope",
    ),
    (
        "OpenLLMetry (opentelemetry-instrumentation-openai)",
        "opentelemetry.instrumentation.openai",
        "OpenAIInstrumentor",
        "its span is adopted when it is current during the request; it records its own duration and "
        "token metrics: filter metrics by scope",
    ),
    (
        "OpenLLMetry (opentelemetry-instrumentation-anthropic)",
        "opentelemetry.instrumentation.anthropic",
        "AnthropicInstrumentor",
        "its span is adopted when it is current during the request; filter metrics by scope",
    ),
)


def detect_instrumentations() -> list[Detected]:
    """Other GenAI instrumentation in this process. Looks only at modules already imported: imports nothing."""
    found: list[Detected] = []
    for name, module_name, class_name, note in _OTHER_INSTRUMENTORS:
        module = sys.modules.get(module_name)
        if module is None:
            continue
        active = False
        try:
            instrumentor = getattr(module, class_name)()  # BaseInstrumentor is a singleton
            active = bool(getattr(instrumentor, "is_instrumented_by_opentelemetry", False))
        except Exception:
            logger.debug("could not read the state of %s", name, exc_info=True)
        found.append(Detected(name, active, note))
    if "anthropic" in sys.modules:
        found.append(
            Detected(
                "anthropic SDK tracing",
                True,
                "per-client: on by default when a TracerProvider exists; its span is adopted. Switch it off with "
                "Anthropic(open_telemetry=False) or ANTHROPIC_OPEN_TELEMETRY=false to get llmtap's own span",
            )
        )
    return found


def anthropic_client_traces(client: Any) -> bool:
    """Whether an anthropic client opens its own span per call (its `open_telemetry` option)."""
    try:
        return bool(client.open_telemetry["traces"]["enabled"])
    except Exception:
        return False


__all__ = [
    "ANTHROPIC_SCOPE",
    "INFERENCE_OPERATIONS",
    "AdoptedSpan",
    "Detected",
    "adoptable_span",
    "anthropic_client_traces",
    "detect_instrumentations",
]
