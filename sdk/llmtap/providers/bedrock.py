"""Amazon Bedrock runtime (`aws.bedrock`): Converse, ConverseStream, InvokeModel, InvokeModelWithResponseStream.

Paths (botocore's service model `bedrock-runtime/2023-09-30`): `/model/{modelId}/converse`,
`/converse-stream`, `/invoke`, `/invoke-with-response-stream`. The model id is in the path,
URL-encoded (`anthropic.claude-3-haiku-20240307-v1%3A0`); `request_facts` reads it from `path`.
Requests are SigV4-signed by the client; the proxy forwards method, path, query, headers and body byte for
byte (Host excepted: it is the upstream's), so the signature holds when the client signed for the
upstream's host and the route keeps the path (docs/providers.md, Bedrock).

The two streaming calls answer in the AWS event-stream framing (`llmtap.wire.aws_eventstream`):
- ConverseStream events: messageStart, contentBlockStart (a tool call's name), contentBlockDelta
  (`delta.text`, `delta.toolUse.input`, `delta.reasoningContent.text`), contentBlockStop, messageStop
  (`stopReason`), metadata (`usage`, `metrics.latencyMs`).
- InvokeModelWithResponseStream events: `chunk`, whose payload is `{"bytes": base64}` holding the
  model's own stream chunk. Read here: Anthropic Claude (the Messages stream events), Amazon Nova
  (Converse-shaped keys), Amazon Titan text, Meta Llama and Mistral. Bedrock adds
  `amazon-bedrock-invocationMetrics` (input/output token counts) to the last chunk of every model.
- Exception events (throttlingException, modelStreamErrorException, ...) become StreamErrors.

Usage: Converse's `inputTokens` excludes prompt-cache reads and writes (as Anthropic's API does), so
the semconv input count adds `cacheReadInputTokens` and `cacheWriteInputTokens`. Finish reasons are
kept as Bedrock spells them (end_turn, max_tokens, tool_use, ...). Responses name no model, so
gen_ai.response.model stays unset. InvokeModel's operation is "chat" for model families that take
messages (Anthropic, Nova) and "text_completion" for prompt-style families, decided from the model id
in the path.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import unquote

import orjson

from llmtap import semconv
from llmtap.providers._common import (
    INT,
    NUMBER,
    append_text,
    as_dict,
    as_int,
    as_list,
    as_str,
    json_text,
    load_object,
    read_params,
    string_list,
    text_message,
)
from llmtap.providers.anthropic import AnthropicAPI, AnthropicStreamParser
from llmtap.providers.base import (
    CHAT,
    NO_ITEMS,
    REASONING,
    TEXT,
    TEXT_COMPLETION,
    TOOL_CALL,
    ContentDelta,
    Finish,
    ProviderAPI,
    RequestFacts,
    StreamError,
    StreamItem,
    StreamParser,
    UsageReport,
)
from llmtap.wire.sse import SSEEvent

BEDROCK = "aws.bedrock"

_ACTIONS = {"converse": False, "converse-stream": True, "invoke": False, "invoke-with-response-stream": True}
_CHAT_MODEL_MARKERS = ("anthropic.", "amazon.nova", "deepseek.", "openai.")  # invoke bodies with "messages"

_INFERENCE_CONFIG: tuple[tuple[str, str, tuple[type, ...]], ...] = (
    ("maxTokens", semconv.REQUEST_MAX_TOKENS, INT),
    ("max_new_tokens", semconv.REQUEST_MAX_TOKENS, INT),  # Nova's invoke body
    ("temperature", semconv.REQUEST_TEMPERATURE, NUMBER),
    ("topP", semconv.REQUEST_TOP_P, NUMBER),
    ("top_p", semconv.REQUEST_TOP_P, NUMBER),
    ("topK", semconv.REQUEST_TOP_K, NUMBER),
    ("top_k", semconv.REQUEST_TOP_K, NUMBER),
)
# Native InvokeModel bodies of prompt-style families (Titan's textGenerationConfig, Llama, Mistral)
_NATIVE_PARAMS: tuple[tuple[str, str, tuple[type, ...]], ...] = (
    ("maxTokenCount", semconv.REQUEST_MAX_TOKENS, INT),
    ("max_gen_len", semconv.REQUEST_MAX_TOKENS, INT),
    ("max_tokens", semconv.REQUEST_MAX_TOKENS, INT),
    ("temperature", semconv.REQUEST_TEMPERATURE, NUMBER),
    ("topP", semconv.REQUEST_TOP_P, NUMBER),
    ("top_p", semconv.REQUEST_TOP_P, NUMBER),
    ("top_k", semconv.REQUEST_TOP_K, NUMBER),
)
_EXCEPTION_SUFFIX = "Exception"


def parse_path(path: str) -> tuple[str, str] | None:
    """(model id, action) for a Bedrock runtime path, else None. The model id is URL-decoded."""
    path = path.partition("?")[0].rstrip("/")
    head, _, action = path.rpartition("/")
    if action not in _ACTIONS:
        return None
    prefix, _, model = head.rpartition("/")
    if not model or not (prefix == "/model" or prefix.endswith("/model")):
        return None
    return unquote(model), action


def _operation(model: str, action: str) -> str:
    if action.startswith("converse"):
        return CHAT
    return CHAT if any(marker in model for marker in _CHAT_MODEL_MARKERS) else TEXT_COMPLETION


# --- request side -------------------------------------------------------------------------------


def _blocks(content: Any, texts: list[str]) -> list[dict[str, Any]]:
    """Semconv parts of Converse content blocks: [{"text"}, {"toolUse"}, {"toolResult"}, {"image"}, ...]."""
    if type(content) is str:  # Nova/other native bodies may use a bare string
        texts.append(content)
        return [{"type": "text", "content": content}]
    parts: list[dict[str, Any]] = []
    for block in as_list(content):
        if type(block) is not dict or not block:
            continue
        text = block.get("text")
        if type(text) is str:
            texts.append(text)
            parts.append({"type": "text", "content": text})
            continue
        use = block.get("toolUse")
        if type(use) is dict:
            arguments = use.get("input")
            if arguments is not None:
                texts.append(json_text(arguments))
            parts.append({"type": "tool_call", "id": as_str(use.get("toolUseId")), "name": as_str(use.get("name")),
                          "arguments": arguments})
            continue
        result = block.get("toolResult")
        if type(result) is dict:
            pieces = [as_str(as_dict(c).get("text")) or json_text(as_dict(c).get("json"))
                      for c in as_list(result.get("content"))]
            response = "\n".join(p for p in pieces if p)
            if response:
                texts.append(response)
            parts.append({"type": "tool_call_response", "id": as_str(result.get("toolUseId")), "response": response})
            continue
        parts.append({"type": next(iter(block))})
    return parts


def _converse_facts(facts: RequestFacts, data: dict[str, Any]) -> None:
    texts: list[str] = []
    messages: list[dict[str, Any]] = []
    system = _blocks(data.get("system"), texts)
    if system:
        messages.append({"role": "system", "parts": system})
    for msg in as_list(data.get("messages")):
        if type(msg) is dict:
            messages.append({"role": as_str(msg.get("role")) or "user", "parts": _blocks(msg.get("content"), texts)})
    config = as_dict(data.get("inferenceConfig"))
    read_params(config, _INFERENCE_CONFIG, facts.params)
    read_params(as_dict(data.get("additionalModelRequestFields")), _INFERENCE_CONFIG, facts.params)
    stop = string_list(config.get("stopSequences") or config.get("stop_sequences"))
    if stop is not None:
        facts.params[semconv.REQUEST_STOP_SEQUENCES] = stop
    facts.input_text = "\n".join(texts)
    facts.input_messages = messages


def _native_facts(facts: RequestFacts, data: dict[str, Any], body: bytes) -> None:
    """An InvokeModel body in the model's own format."""
    if "anthropic_version" in data or ("messages" in data and "max_tokens" in data and "inferenceConfig" not in data):
        claude = AnthropicAPI().request_facts(facts.operation, body)
        facts.params, facts.input_text, facts.input_messages = claude.params, claude.input_text, claude.input_messages
        return
    if "messages" in data:  # Nova and other Converse-shaped bodies
        _converse_facts(facts, data)
        return
    prompt = data.get("inputText", data.get("prompt"))
    if type(prompt) is str:
        facts.input_text = prompt
        facts.input_messages = [text_message("user", prompt)]
    config = as_dict(data.get("textGenerationConfig")) or data
    read_params(config, _NATIVE_PARAMS, facts.params)
    stop = string_list(config.get("stopSequences") or config.get("stop"))
    if stop is not None:
        facts.params[semconv.REQUEST_STOP_SEQUENCES] = stop


def _request_facts(operation: str, body: bytes, path: str) -> RequestFacts:
    parsed = parse_path(path) if path else None
    model, action = parsed if parsed else (None, "")
    facts = RequestFacts(BEDROCK, operation, model=model, stream=_ACTIONS.get(action, False))
    data = orjson.loads(body)
    if type(data) is not dict:
        facts.parsed = False
        return facts
    if action.startswith("converse"):
        _converse_facts(facts, data)
    else:
        _native_facts(facts, data, body)
    return facts


# --- response side ------------------------------------------------------------------------------


def converse_usage(usage: dict[str, Any]) -> UsageReport:
    """Converse TokenUsage -> UsageReport; input counts cache reads and writes too (semconv)."""
    input_tokens = as_int(usage.get("inputTokens"))
    cache_read = as_int(usage.get("cacheReadInputTokens"))
    cache_write = as_int(usage.get("cacheWriteInputTokens"))
    if input_tokens is not None:
        input_tokens += (cache_read or 0) + (cache_write or 0)
    return UsageReport(
        input_tokens=input_tokens,
        output_tokens=as_int(usage.get("outputTokens")),
        cache_read_input_tokens=cache_read,
        cache_creation_input_tokens=cache_write,
    )


def invocation_usage(metrics: dict[str, Any]) -> UsageReport:
    """`amazon-bedrock-invocationMetrics` -> UsageReport."""
    input_tokens = as_int(metrics.get("inputTokenCount"))
    cache_read = as_int(metrics.get("cacheReadInputTokenCount"))
    cache_write = as_int(metrics.get("cacheWriteInputTokenCount"))
    if input_tokens is not None:
        input_tokens += (cache_read or 0) + (cache_write or 0)
    return UsageReport(
        input_tokens=input_tokens,
        output_tokens=as_int(metrics.get("outputTokenCount")),
        cache_read_input_tokens=cache_read,
        cache_creation_input_tokens=cache_write,
    )


def _exception(name: str, data: bytes) -> StreamError:
    obj = load_object(data) if data[:1] == b"{" else None
    message = as_str(obj.get("message") or obj.get("Message")) if obj is not None else None
    if message is None:
        message = data.decode("utf-8", "replace") if data and data[:1] != b"{" else ""
    return StreamError(name, message or "")


def _converse_event(kind: str, obj: dict[str, Any]) -> tuple[StreamItem, ...] | list[StreamItem]:
    """One ConverseStream event (also Nova's native stream chunks, keyed the same way)."""
    if kind == "contentBlockDelta":
        delta = as_dict(obj.get("delta"))
        text = delta.get("text")
        if text is not None:
            return (ContentDelta(text, TEXT),) if text and type(text) is str else NO_ITEMS
        use = delta.get("toolUse")
        if type(use) is dict:
            piece = use.get("input")
            return (ContentDelta(piece, TOOL_CALL),) if piece and type(piece) is str else NO_ITEMS
        reasoning = delta.get("reasoningContent")
        if type(reasoning) is dict:
            piece = reasoning.get("text")
            return (ContentDelta(piece, REASONING),) if piece and type(piece) is str else NO_ITEMS
        return NO_ITEMS
    if kind == "contentBlockStart":
        name = as_dict(as_dict(obj.get("start")).get("toolUse")).get("name")
        return (ContentDelta(name, TOOL_CALL),) if name and type(name) is str else NO_ITEMS
    if kind == "messageStop":
        reason = obj.get("stopReason")
        return (Finish(reason),) if reason and type(reason) is str else NO_ITEMS
    if kind == "metadata":
        usage = obj.get("usage")
        return (converse_usage(usage),) if type(usage) is dict else NO_ITEMS
    return NO_ITEMS  # messageStart, contentBlockStop, unknown


class BedrockStreamParser(StreamParser):
    """Event-stream events of ConverseStream or InvokeModelWithResponseStream."""

    __slots__ = ("_anthropic",)

    def __init__(self) -> None:
        self._anthropic: AnthropicStreamParser | None = None

    def on_event(self, event: SSEEvent) -> tuple[StreamItem, ...] | list[StreamItem]:
        kind = event.event
        data = event.data
        if kind == "chunk":
            return self._chunk(data)
        if kind.endswith(_EXCEPTION_SUFFIX):
            return (_exception(kind, data),)
        obj = load_object(data) if data else None
        if obj is not None:
            return _converse_event(kind, obj)
        if data and data[:1] != b"{":  # a protocol `error` message: its text
            return (StreamError(kind, data.decode("utf-8", "replace")),)
        return NO_ITEMS

    def _chunk(self, data: bytes) -> tuple[StreamItem, ...] | list[StreamItem]:
        wrapper = load_object(data) if data else None
        raw = wrapper.get("bytes") if wrapper is not None else None
        if type(raw) is not str:
            return NO_ITEMS
        try:
            inner = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            return NO_ITEMS
        obj = load_object(inner)
        if obj is None:
            return NO_ITEMS
        return self.native_items(obj, inner)

    def native_items(self, obj: dict[str, Any], raw: bytes) -> list[StreamItem] | tuple[StreamItem, ...]:
        """One model-native stream chunk (the decoded `bytes` of a `chunk` event)."""
        out: list[StreamItem] = []
        if type(obj.get("type")) is str:  # Anthropic Claude: a Messages stream event
            parser = self._anthropic
            if parser is None:
                parser = self._anthropic = AnthropicStreamParser()
            out.extend(parser.on_event(SSEEvent(raw)))
        elif len(obj) <= 2 and any(key in obj for key in _NOVA_KEYS):  # Amazon Nova: {"contentBlockDelta": {...}}
            for key, value in obj.items():
                if key in _NOVA_KEYS and type(value) is dict:
                    out.extend(_converse_event(key, value))
        else:
            _prompt_family_items(obj, out)
        metrics = obj.get("amazon-bedrock-invocationMetrics")
        if type(metrics) is dict:
            out.append(invocation_usage(metrics))
        return out or NO_ITEMS


_NOVA_KEYS = frozenset({"messageStart", "contentBlockStart", "contentBlockDelta", "contentBlockStop",
                        "messageStop", "metadata"})


def _prompt_family_items(obj: dict[str, Any], out: list[StreamItem]) -> None:
    """Titan text, Meta Llama and Mistral chunks (streamed) or bodies (InvokeModel)."""
    if "outputText" in obj:  # Titan stream chunk
        append_text(out, obj.get("outputText"), TEXT)
        reason = obj.get("completionReason")
        if type(reason) is str and reason:
            out.append(Finish(reason))
        report = UsageReport(as_int(obj.get("inputTextTokenCount")), as_int(obj.get("totalOutputTextTokenCount")))
        if report.input_tokens is not None or report.output_tokens is not None:
            out.append(report)
        return
    if "results" in obj:  # Titan InvokeModel body
        output = 0
        for result in as_list(obj.get("results")):
            result = as_dict(result)
            append_text(out, result.get("outputText"), TEXT)
            output += as_int(result.get("tokenCount")) or 0
            reason = result.get("completionReason")
            if type(reason) is str and reason:
                out.append(Finish(reason))
        out.append(UsageReport(as_int(obj.get("inputTextTokenCount")), output or None))
        return
    if "generation" in obj:  # Llama
        append_text(out, obj.get("generation"), TEXT)
        reason = obj.get("stop_reason")
        if type(reason) is str and reason:
            out.append(Finish(reason))
        report = UsageReport(as_int(obj.get("prompt_token_count")), as_int(obj.get("generation_token_count")))
        if report.input_tokens is not None or report.output_tokens is not None:
            out.append(report)
        return
    for output in as_list(obj.get("outputs")):  # Mistral
        output = as_dict(output)
        append_text(out, output.get("text"), TEXT)
        reason = output.get("stop_reason")
        if type(reason) is str and reason:
            out.append(Finish(reason))


def _converse_body(obj: dict[str, Any]) -> list[StreamItem]:
    """A Converse response (also Nova's InvokeModel body)."""
    out: list[StreamItem] = []
    message = as_dict(as_dict(obj.get("output")).get("message"))
    for block in as_list(message.get("content")):
        block = as_dict(block)
        if "text" in block:
            append_text(out, block.get("text"), TEXT)
        elif type(block.get("toolUse")) is dict:
            use = block["toolUse"]
            append_text(out, use.get("name"), TOOL_CALL)
            append_text(out, json_text(use.get("input")), TOOL_CALL)
        elif type(block.get("reasoningContent")) is dict:
            append_text(out, as_dict(block["reasoningContent"].get("reasoningText")).get("text"), REASONING)
    reason = obj.get("stopReason")
    if type(reason) is str and reason:
        out.append(Finish(reason))
    usage = obj.get("usage")
    if type(usage) is dict:
        out.append(converse_usage(usage))
    return out


def _response_items(facts: RequestFacts, body: bytes) -> list[StreamItem]:
    obj = load_object(body)
    if obj is None:
        return []
    if "output" in obj or "stopReason" in obj:
        return _converse_body(obj)
    if type(obj.get("type")) is str:  # Anthropic Claude's native body (or error)
        return AnthropicAPI().response_items(facts, body)
    message = obj.get("message") or obj.get("Message")
    if type(message) is str and len(obj) <= 2:  # an error body: {"message": "..."}
        return [StreamError("error", message)]
    out: list[StreamItem] = []
    _prompt_family_items(obj, out)
    metrics = obj.get("amazon-bedrock-invocationMetrics")
    if type(metrics) is dict:
        out.append(invocation_usage(metrics))
    return out


class BedrockAPI(ProviderAPI):
    name = BEDROCK

    def operation_for(self, method: str, path: str, headers: dict[str, str]) -> str | None:
        if method != "POST" and method.upper() != "POST":
            return None
        parsed = parse_path(path)
        return _operation(*parsed) if parsed is not None else None

    def stream_format(self, content_type: str) -> str | None:
        if "vnd.amazon.eventstream" in content_type:
            return "aws-eventstream"
        return "sse" if "text/event-stream" in content_type else None

    def request_facts(self, operation: str, body: bytes, path: str = "") -> RequestFacts:
        try:
            return _request_facts(operation, body, path)
        except Exception:  # a body we can't read is still forwarded; never fail the call here
            try:
                parsed = parse_path(path) if path else None
            except Exception:
                parsed = None
            return RequestFacts(self.name, operation, model=parsed[0] if parsed else None,
                                stream=_ACTIONS.get(parsed[1], False) if parsed else False, parsed=False)

    def stream_parser(self, facts: RequestFacts) -> StreamParser:
        return BedrockStreamParser()

    def response_items(self, facts: RequestFacts, body: bytes) -> list[StreamItem]:
        try:
            return _response_items(facts, body)
        except Exception:
            return []


__all__ = ["BEDROCK", "BedrockAPI", "BedrockStreamParser", "converse_usage", "invocation_usage", "parse_path"]
