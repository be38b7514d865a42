"""Cohere's v2 Chat API: POST /v2/chat, streamed as SSE when the body says `"stream": true`.

Stream events (their `type`, also sent as the SSE event name), per the API reference
(https://docs.cohere.com/v2/reference/chat-stream) and the official SDK's `V2ChatStreamResponse`:
message-start (the response id), content-start / content-delta (`delta.message.content.text`, or
`.thinking` for reasoning models), content-end, tool-plan-delta (`delta.message.tool_plan`, the model's
plan before it calls tools: REASONING content), tool-call-start (the call's function name) /
tool-call-delta (argument text) / tool-call-end (TOOL_CALL content), citation-start / citation-end,
message-end (`delta.finish_reason` and `delta.usage`), and debug.

Usage: `usage.tokens` (what the model processed) when present, else `usage.billed_units`. Finish
reasons are kept as Cohere spells them (COMPLETE, MAX_TOKENS, STOP_SEQUENCE, TOOL_CALL, ERROR,
TIMEOUT); ERROR and TIMEOUT also mark the call as failed. Responses name no model, so
gen_ai.response.model stays unset. The legacy v1 API (/v1/chat, /v1/generate) is not read.
"""

from __future__ import annotations

from typing import Any

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
)
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

COHERE = "cohere"

_PARAMS: tuple[tuple[str, str, tuple[type, ...]], ...] = (
    ("max_tokens", semconv.REQUEST_MAX_TOKENS, INT),
    ("temperature", semconv.REQUEST_TEMPERATURE, NUMBER),
    ("p", semconv.REQUEST_TOP_P, NUMBER),
    ("k", semconv.REQUEST_TOP_K, NUMBER),
    ("seed", semconv.REQUEST_SEED, INT),
    ("frequency_penalty", semconv.REQUEST_FREQUENCY_PENALTY, NUMBER),
    ("presence_penalty", semconv.REQUEST_PRESENCE_PENALTY, NUMBER),
)
_FAILED = frozenset({"ERROR", "TIMEOUT"})


# --- request side -------------------------------------------------------------------------------


def _content(content: Any, texts: list[str]) -> list[dict[str, Any]]:
    if type(content) is str:
        if content:
            texts.append(content)
        return [{"type": "text", "content": content}]
    parts: list[dict[str, Any]] = []
    for item in as_list(content):
        item = as_dict(item)
        kind = as_str(item.get("type")) or "unknown"
        text = item.get("text") if kind == "text" else item.get("thinking") if kind == "thinking" else None
        if type(text) is str:
            texts.append(text)
            parts.append({"type": "text" if kind == "text" else "reasoning", "content": text})
        else:
            parts.append({"type": kind})
    return parts


def _messages(messages: Any, texts: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for msg in as_list(messages):
        if type(msg) is not dict:
            continue
        role = as_str(msg.get("role")) or "user"
        if role == "tool":
            pieces: list[str] = []
            _content(msg.get("content"), pieces)
            response = "\n".join(pieces)
            if response:
                texts.append(response)
            parts = [{"type": "tool_call_response", "id": as_str(msg.get("tool_call_id")), "response": response}]
        else:
            parts = _content(msg.get("content"), texts)
            for call in as_list(msg.get("tool_calls")):
                call = as_dict(call)
                fn = as_dict(call.get("function"))
                arguments = fn.get("arguments")
                if type(arguments) is str and arguments:
                    texts.append(arguments)
                parts.append({"type": "tool_call", "id": as_str(call.get("id")), "name": as_str(fn.get("name")),
                              "arguments": as_str(arguments)})
        out.append({"role": role, "parts": parts})
    return out


def _request_facts(operation: str, body: bytes) -> RequestFacts:
    data = orjson.loads(body)
    if type(data) is not dict:
        return RequestFacts(COHERE, operation, parsed=False)
    params: dict[str, Any] = {}
    read_params(data, _PARAMS, params)
    stop = string_list(data.get("stop_sequences"))
    if stop is not None:
        params[semconv.REQUEST_STOP_SEQUENCES] = stop
    texts: list[str] = []
    messages = _messages(data.get("messages"), texts)
    return RequestFacts(
        provider=COHERE,
        operation=operation,
        model=as_str(data.get("model")),
        stream=data.get("stream") is True,
        params=params,
        input_text="\n".join(texts),
        input_messages=messages,
    )


# --- response side ------------------------------------------------------------------------------


def usage_report(usage: dict[str, Any]) -> UsageReport | None:
    for key in ("tokens", "billed_units"):
        counts = as_dict(usage.get(key))
        report = UsageReport(as_int(counts.get("input_tokens")), as_int(counts.get("output_tokens")))
        if report.input_tokens is not None or report.output_tokens is not None:
            return report
    return None


def _finish(reason: Any, out: list[StreamItem]) -> None:
    if type(reason) is str and reason:
        out.append(Finish(reason))
        if reason in _FAILED:
            out.append(StreamError(reason.lower(), f"generation ended with finish_reason {reason}"))


def _message_end(delta: dict[str, Any]) -> list[StreamItem]:
    out: list[StreamItem] = []
    _finish(delta.get("finish_reason"), out)
    error = delta.get("error")
    if type(error) is str and error:
        out.append(StreamError("error", error))
    report = usage_report(as_dict(delta.get("usage")))
    if report is not None:
        out.append(report)
    return out


def _content_item(content: Any) -> tuple[StreamItem, ...]:
    content = as_dict(content)
    text = content.get("text")
    if text and type(text) is str:
        return (ContentDelta(text, TEXT),)
    thinking = content.get("thinking")
    if thinking and type(thinking) is str:
        return (ContentDelta(thinking, REASONING),)
    return NO_ITEMS


class CohereStreamParser(StreamParser):
    """v2 chat stream events. Stateless."""

    __slots__ = ()

    def on_event(self, event: SSEEvent) -> tuple[StreamItem, ...] | list[StreamItem]:
        obj = load_object(event.data) if event.data else None
        if obj is None:
            return NO_ITEMS
        kind = obj.get("type")
        if type(kind) is not str:
            kind = event.event
        message = as_dict(as_dict(obj.get("delta")).get("message"))
        if kind == "content-delta" or kind == "content-start":
            return _content_item(message.get("content"))
        if kind == "tool-plan-delta":
            plan = message.get("tool_plan")
            return (ContentDelta(plan, REASONING),) if plan and type(plan) is str else NO_ITEMS
        if kind == "tool-call-start" or kind == "tool-call-delta":
            fn = as_dict(as_dict(message.get("tool_calls")).get("function"))
            out: list[StreamItem] = []
            append_text(out, fn.get("name"), TOOL_CALL)
            append_text(out, fn.get("arguments"), TOOL_CALL)
            return out or NO_ITEMS
        if kind == "message-start":
            rid = as_str(obj.get("id"))
            return (ResponseInfo(None, rid),) if rid else NO_ITEMS
        if kind == "message-end":
            return _message_end(as_dict(obj.get("delta"))) or NO_ITEMS
        return NO_ITEMS  # content-end, tool-call-end, citation-*, debug, unknown


def _response_items(body: bytes) -> list[StreamItem]:
    obj = load_object(body)
    if obj is None:
        return []
    message = obj.get("message")
    if type(message) is not dict:  # an error body: {"id": ..., "message": "..."}
        text = as_str(message) or as_str(obj.get("error")) or ""
        return [StreamError("error", text)] if text else []
    out: list[StreamItem] = []
    rid = as_str(obj.get("id"))
    if rid:
        out.append(ResponseInfo(None, rid))
    append_text(out, message.get("tool_plan"), REASONING)
    for item in as_list(message.get("content")):
        item = as_dict(item)
        if item.get("type") == "thinking":
            append_text(out, item.get("thinking"), REASONING)
        else:
            append_text(out, item.get("text"), TEXT)
    for call in as_list(message.get("tool_calls")):
        fn = as_dict(as_dict(call).get("function"))
        append_text(out, fn.get("name"), TOOL_CALL)
        append_text(out, json_text(fn.get("arguments")), TOOL_CALL)
    _finish(obj.get("finish_reason"), out)
    report = usage_report(as_dict(obj.get("usage")))
    if report is not None:
        out.append(report)
    return out


class CohereAPI(ProviderAPI):
    name = COHERE

    def operation_for(self, method: str, path: str, headers: dict[str, str]) -> str | None:
        if method != "POST" and method.upper() != "POST":
            return None
        return CHAT if path.partition("?")[0].rstrip("/").endswith("/v2/chat") else None

    def request_facts(self, operation: str, body: bytes, path: str = "") -> RequestFacts:
        try:
            return _request_facts(operation, body)
        except Exception:  # a body we can't read is still forwarded; never fail the call here
            return RequestFacts(self.name, operation, parsed=False)

    def stream_parser(self, facts: RequestFacts) -> StreamParser:
        return CohereStreamParser()

    def response_items(self, facts: RequestFacts, body: bytes) -> list[StreamItem]:
        try:
            return _response_items(body)
        except Exception:
            return []


__all__ = ["COHERE", "CohereAPI", "CohereStreamParser", "usage_report"]
