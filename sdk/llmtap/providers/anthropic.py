"""The Anthropic Messages API (also served by llama.cpp and other compatible servers).

Usage follows the GenAI conventions: input tokens include cache reads and cache writes, which
Anthropic reports separately. Content deltas name their own kind (text_delta, input_json_delta,
thinking_delta), so the parser keeps no per-block state. As with OpenAI, a tool_use block's name
counts as TOOL_CALL content: it is model output and arrives before the first argument delta.
"""

from __future__ import annotations

from typing import Any

import orjson

from llmtap import semconv
from llmtap.providers.base import (
    CHAT,
    NO_ITEMS,
    REASONING,
    TEXT,
    TOOL_CALL,
    ContentDelta,
    Finish,
    ProviderAPI,
    RequestFacts,
    ResponseInfo,
    StreamError,
    StreamItem,
    StreamParser,
    UsageReport,
)
from llmtap.wire.sse import SSEEvent

_INT = (int,)
_NUMBER = (int, float)  # type(x) in _NUMBER excludes bool
_PARAMS: tuple[tuple[str, str, tuple[type, ...]], ...] = (
    ("max_tokens", semconv.REQUEST_MAX_TOKENS, _INT),
    ("temperature", semconv.REQUEST_TEMPERATURE, _NUMBER),
    ("top_p", semconv.REQUEST_TOP_P, _NUMBER),
    ("top_k", semconv.REQUEST_TOP_K, _INT),
)

# content_block_delta: delta type -> (field holding the content, content kind)
_DELTAS: dict[str, tuple[str, str]] = {
    "text_delta": ("text", TEXT),
    "input_json_delta": ("partial_json", TOOL_CALL),
    "thinking_delta": ("thinking", REASONING),
}
# content_block_start / non-streamed content: block type -> (field holding the content, content kind)
_BLOCKS: dict[str, tuple[str, str]] = {
    "text": ("text", TEXT),
    "thinking": ("thinking", REASONING),
    "tool_use": ("name", TOOL_CALL),
    "server_tool_use": ("name", TOOL_CALL),
}
_TOOL_BLOCKS = frozenset({"tool_use", "server_tool_use"})


def _str(value: Any) -> str | None:
    return value if type(value) is str else None


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def _dict(value: Any) -> dict[str, Any]:
    return value if type(value) is dict else {}


def _list(value: Any) -> list[Any]:
    return value if type(value) is list else []


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode() if value is not None else ""


# --- request side -------------------------------------------------------------------------------


def _params(body: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, attr, types in _PARAMS:
        value = body.get(key)
        if type(value) in types:
            params[attr] = value
    stop = body.get("stop_sequences")
    if type(stop) is list and stop and all(type(s) is str for s in stop):
        params[semconv.REQUEST_STOP_SEQUENCES] = list(stop)
    return params


def _block_text(content: Any) -> str:
    """Text of a string or of a list of text blocks (system prompts, tool_result content)."""
    if type(content) is str:
        return content
    texts = [_str(b.get("text")) for b in _list(content) if type(b) is dict and b.get("type") == "text"]
    return "\n".join(t for t in texts if t is not None)


def _parts(content: Any, texts: list[str]) -> list[dict[str, Any]]:
    """Semconv parts of a message's content (a string or a list of content blocks)."""
    if type(content) is str:
        if content:
            texts.append(content)
        return [{"type": "text", "content": content}]
    parts: list[dict[str, Any]] = []
    for block in _list(content):
        if type(block) is not dict:
            continue
        btype = block.get("type")
        if btype == "text" and type(block.get("text")) is str:
            texts.append(block["text"])
            parts.append({"type": "text", "content": block["text"]})
        elif btype == "tool_use":
            arguments = block.get("input")
            if arguments is not None:
                texts.append(_json_text(arguments))
            call_id, name = _str(block.get("id")), _str(block.get("name"))
            parts.append({"type": "tool_call", "id": call_id, "name": name, "arguments": arguments})
        elif btype == "tool_result":
            response = _block_text(block.get("content"))
            if response:
                texts.append(response)
            call_id = _str(block.get("tool_use_id"))
            parts.append({"type": "tool_call_response", "id": call_id, "response": response})
        elif btype == "thinking" and type(block.get("thinking")) is str:
            parts.append({"type": "reasoning", "content": block["thinking"]})
        else:
            parts.append({"type": btype if type(btype) is str else "unknown"})
    return parts


def _request_facts(operation: str, body: bytes) -> RequestFacts:
    data = orjson.loads(body)
    if type(data) is not dict:
        return RequestFacts(AnthropicAPI.name, operation, parsed=False)
    texts: list[str] = []
    messages: list[dict[str, Any]] = []
    system = _block_text(data.get("system"))
    if system:
        texts.append(system)
        messages.append({"role": "system", "parts": [{"type": "text", "content": system}]})
    for msg in _list(data.get("messages")):
        if type(msg) is dict:
            role = _str(msg.get("role")) or "user"
            messages.append({"role": role, "parts": _parts(msg.get("content"), texts)})
    return RequestFacts(
        provider=AnthropicAPI.name,
        operation=operation,
        model=_str(data.get("model")),
        stream=data.get("stream") is True,
        params=_params(data),
        input_text="\n".join(texts),
        input_messages=messages,
    )


# --- response side ------------------------------------------------------------------------------


def _usage(usage: dict[str, Any]) -> UsageReport:
    """Anthropic usage; input_tokens becomes the semconv total (uncached + cache reads + cache writes)."""
    input_tokens = _int(usage.get("input_tokens"))
    cache_read = _int(usage.get("cache_read_input_tokens"))
    cache_creation = _int(usage.get("cache_creation_input_tokens"))
    if input_tokens is not None:
        input_tokens += (cache_read or 0) + (cache_creation or 0)
    return UsageReport(
        input_tokens=input_tokens,
        output_tokens=_int(usage.get("output_tokens")),
        cache_read_input_tokens=cache_read,
        cache_creation_input_tokens=cache_creation,
    )


def _error(err: Any) -> StreamError:
    err = _dict(err)
    etype = err.get("type")
    return StreamError(etype if type(etype) is str and etype else "error", _str(err.get("message")) or "")


def _block_item(block: dict[str, Any]) -> ContentDelta | None:
    btype = block.get("type")
    spec = _BLOCKS.get(btype) if type(btype) is str else None
    if spec is None:
        return None
    text = block.get(spec[0])
    return ContentDelta(text, spec[1]) if text and type(text) is str else None


def _response_items(body: bytes) -> list[StreamItem]:
    obj = orjson.loads(body)
    if type(obj) is not dict:
        return []
    if obj.get("type") == "error" or type(obj.get("error")) is dict:  # also the OpenAI error shape
        return [_error(obj.get("error"))]
    out: list[StreamItem] = []
    model, rid = _str(obj.get("model")), _str(obj.get("id"))
    if model or rid:
        out.append(ResponseInfo(model, rid))
    for block in _list(obj.get("content")):
        if type(block) is not dict:
            continue
        item = _block_item(block)
        if item is not None:
            out.append(item)
        if _str(block.get("type")) in _TOOL_BLOCKS and "input" in block:
            out.append(ContentDelta(_json_text(block["input"]), TOOL_CALL))
    usage = obj.get("usage")
    if type(usage) is dict:
        out.append(_usage(usage))
    reason = obj.get("stop_reason")
    if type(reason) is str and reason:
        out.append(Finish(reason))
    return out


class AnthropicStreamParser(StreamParser):
    """Messages API stream events, one SSE event at a time. Stateless."""

    __slots__ = ()

    def on_event(self, event: SSEEvent) -> tuple[StreamItem, ...] | list[StreamItem]:
        data = event.data
        if not data:
            return NO_ITEMS
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return NO_ITEMS
        if type(obj) is not dict:
            return NO_ITEMS
        event_type = obj.get("type")
        if type(event_type) is not str:
            event_type = event.event
        if event_type == "content_block_delta":
            delta = _dict(obj.get("delta"))
            dtype = delta.get("type")
            spec = _DELTAS.get(dtype) if type(dtype) is str else None
            if spec is None:  # signature_delta, citations_delta, ...
                return NO_ITEMS
            text = delta.get(spec[0])
            return (ContentDelta(text, spec[1]),) if text and type(text) is str else NO_ITEMS
        if event_type == "content_block_start":
            item = _block_item(_dict(obj.get("content_block")))
            return NO_ITEMS if item is None else (item,)
        if event_type == "message_start":
            return self._message_start(_dict(obj.get("message")))
        if event_type == "message_delta":
            return self._message_delta(obj)
        if event_type == "error":
            return (_error(obj.get("error")),)
        return NO_ITEMS  # ping, content_block_stop, message_stop, unknown

    @staticmethod
    def _message_start(message: dict[str, Any]) -> list[StreamItem] | tuple[StreamItem, ...]:
        out: list[StreamItem] = []
        model, rid = _str(message.get("model")), _str(message.get("id"))
        if model or rid:
            out.append(ResponseInfo(model, rid))
        usage = message.get("usage")
        if type(usage) is dict:
            report = _usage(usage)
            # message_start's output_tokens is a placeholder (usually 1); message_delta has the count.
            # Keeping it would pass for a provider count if the stream died before message_delta.
            report.output_tokens = None
            out.append(report)
        return out or NO_ITEMS

    @staticmethod
    def _message_delta(obj: dict[str, Any]) -> list[StreamItem] | tuple[StreamItem, ...]:
        out: list[StreamItem] = []
        reason = _dict(obj.get("delta")).get("stop_reason")
        if type(reason) is str and reason:
            out.append(Finish(reason))
        usage = obj.get("usage")
        if type(usage) is dict:
            out.append(_usage(usage))
        return out or NO_ITEMS


class AnthropicAPI(ProviderAPI):
    name = "anthropic"

    def operation_for(self, method: str, path: str, headers: dict[str, str]) -> str | None:
        if method != "POST" and method.upper() != "POST":
            return None
        path = path.partition("?")[0].rstrip("/")
        if path.endswith("/v1/messages") or (path.endswith("/messages") and "anthropic-version" in headers):
            return CHAT
        return None

    def request_facts(self, operation: str, body: bytes, path: str = "") -> RequestFacts:
        try:
            return _request_facts(operation, body)
        except Exception:  # a body we can't read is still forwarded; never fail the call here
            return RequestFacts(self.name, operation, parsed=False)

    def stream_parser(self, facts: RequestFacts) -> StreamParser:
        return AnthropicStreamParser()

    def response_items(self, facts: RequestFacts, body: bytes) -> list[StreamItem]:
        try:
            return _response_items(body)
        except Exception:
            return []
