"""What every provider module produces: request facts and normalised stream events.

Providers know nothing of OpenTelemetry; they speak in these plain types, and the Exchange turns
them into figures. Attribute keys in `RequestFacts.params` are the GenAI semconv names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from llmtap.wire.sse import SSEEvent

# Operation names (gen_ai.operation.name)
CHAT = "chat"
TEXT_COMPLETION = "text_completion"
EMBEDDINGS = "embeddings"
GENERATE_CONTENT = "generate_content"

# Kinds of output content
TEXT = "text"
TOOL_CALL = "tool_call"
REASONING = "reasoning"


@dataclass(slots=True)
class RequestFacts:
    """What the request says: the provider, the operation, the model and its parameters."""

    provider: str
    operation: str
    model: str | None = None
    stream: bool = False
    params: dict[str, Any] = field(default_factory=dict)  # semconv gen_ai.request.* -> value
    input_text: str = ""  # prompt text, for reference-tokenizer counting
    input_messages: list[dict[str, Any]] | None = None  # semconv-shaped, for opt-in content capture
    parsed: bool = True  # False when the body could not be read; the call is still forwarded


@dataclass(slots=True)
class ContentDelta:
    """Output content that arrived in one stream event."""

    text: str
    kind: str = TEXT


@dataclass(slots=True)
class UsageReport:
    """Token usage as the provider reports it. None means "not reported"."""

    input_tokens: int | None = None  # all input, cached included (semconv)
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    reasoning_output_tokens: int | None = None


@dataclass(slots=True)
class ResponseInfo:
    model: str | None = None
    id: str | None = None


@dataclass(slots=True)
class Finish:
    reason: str


@dataclass(slots=True)
class ServerTimings:
    """Durations the model server reports for one call (Ollama's `done` stats), in seconds."""

    load_duration_s: float | None = None  # model load: a server-reported cold start
    prompt_eval_duration_s: float | None = None
    eval_duration_s: float | None = None
    total_duration_s: float | None = None


@dataclass(slots=True)
class StreamError:
    """An error the provider reported inside a stream or an error body."""

    type: str
    message: str = ""


StreamItem = ContentDelta | UsageReport | ResponseInfo | Finish | StreamError | ServerTimings

NO_ITEMS: tuple[StreamItem, ...] = ()


class StreamParser(ABC):
    """Reads one response's stream events into normalised items. One instance per call."""

    @abstractmethod
    def on_event(self, event: SSEEvent) -> tuple[StreamItem, ...] | list[StreamItem]:
        """Must not raise on bad input; the observer guards it anyway."""


class ProviderAPI(ABC):
    """One API family: recognises its requests and reads its responses."""

    name: str  # gen_ai.provider.name

    @abstractmethod
    def operation_for(self, method: str, path: str, headers: dict[str, str]) -> str | None:
        """The operation name if this API serves the request, else None. Cheap: no body parsing."""

    @abstractmethod
    def request_facts(self, operation: str, body: bytes, path: str = "") -> RequestFacts:
        """Facts from the request body (and the path, for APIs that put the model there, such as Gemini,
        Bedrock or Azure deployments). Never raises: a body it can't read gives parsed=False."""

    def stream_format(self, content_type: str) -> str | None:
        """The wire framing of a streamed response with this content type ("sse", "ndjson", ...; see
        `llmtap.wire.decoder_for`), or None when the body is one JSON document to read at the end."""
        return "sse" if "text/event-stream" in content_type else None

    @abstractmethod
    def stream_parser(self, facts: RequestFacts) -> StreamParser:
        """A fresh parser for one streamed response; it receives the events of `stream_format`'s decoder."""

    @abstractmethod
    def response_items(self, facts: RequestFacts, body: bytes) -> list[StreamItem]:
        """Items from a complete non-streamed JSON response (or an error body)."""
