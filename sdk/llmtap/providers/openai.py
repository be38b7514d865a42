"""OpenAI-style APIs: Chat Completions, Completions, Embeddings and Responses.

Many servers speak this wire format (vLLM, llama.cpp, SGLang, Ollama's /v1, OpenRouter, Azure
deployment paths), so requests are recognised by path suffix alone. Stream chunks are parsed once
with orjson and only the keys that classify them are read. One stream parser reads both Chat
Completions chunks and Responses API events: a Responses event names itself in its "type" field.

Decision: a tool call's function name counts as TOOL_CALL content. It is model output (it shows up
in the output token count) and it arrives in the first chunk of the call, so that chunk is the
first token of a response that calls a tool. The Anthropic parser does the same with tool_use names.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import orjson

from llmtap import semconv
from llmtap.providers.base import (
    CHAT,
    EMBEDDINGS,
    NO_ITEMS,
    REASONING,
    TEXT,
    TEXT_COMPLETION,
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

# Checked in order: "/chat/completions" must come before "/completions".
_PATH_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("/chat/completions", CHAT),
    ("/completions", TEXT_COMPLETION),
    ("/embeddings", EMBEDDINGS),
    ("/responses", CHAT),  # the Responses API; not /responses/{id} or its sub-paths
)

_INT = (int,)
_NUMBER = (int, float)  # type(x) in _NUMBER excludes bool
# body key -> semconv attribute, accepted types. The first key found wins for an attribute.
_PARAMS: tuple[tuple[str, str, tuple[type, ...]], ...] = (
    ("max_completion_tokens", semconv.REQUEST_MAX_TOKENS, _INT),
    ("max_tokens", semconv.REQUEST_MAX_TOKENS, _INT),
    ("max_output_tokens", semconv.REQUEST_MAX_TOKENS, _INT),
    ("temperature", semconv.REQUEST_TEMPERATURE, _NUMBER),
    ("top_p", semconv.REQUEST_TOP_P, _NUMBER),
    ("top_k", semconv.REQUEST_TOP_K, _INT),  # vLLM / llama.cpp extension
    ("seed", semconv.REQUEST_SEED, _INT),
    ("n", semconv.REQUEST_CHOICE_COUNT, _INT),
    ("frequency_penalty", semconv.REQUEST_FREQUENCY_PENALTY, _NUMBER),
    ("presence_penalty", semconv.REQUEST_PRESENCE_PENALTY, _NUMBER),
)

_TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})

# Responses API stream events that carry output content in "delta".
_RESPONSES_DELTAS: dict[str, str] = {
    "response.output_text.delta": TEXT,
    "response.refusal.delta": TEXT,
    "response.function_call_arguments.delta": TOOL_CALL,
    "response.custom_tool_call_input.delta": TOOL_CALL,
    "response.mcp_call_arguments.delta": TOOL_CALL,
    "response.reasoning_text.delta": REASONING,
    "response.reasoning_summary_text.delta": REASONING,
}
_RESPONSES_INFO = frozenset({"response.created", "response.in_progress", "response.queued"})
_RESPONSES_END = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _str(value: Any) -> str | None:
    return value if type(value) is str else None


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def _dict(value: Any) -> dict[str, Any]:
    return value if type(value) is dict else {}


def _list(value: Any) -> list[Any]:
    return value if type(value) is list else []


def _text_message(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "parts": [{"type": "text", "content": text}]}


# --- request side -------------------------------------------------------------------------------


def _params(body: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, attr, types in _PARAMS:
        value = body.get(key)
        if type(value) in types and attr not in params:
            params[attr] = value
    stop = body.get("stop")
    if type(stop) is str:
        params[semconv.REQUEST_STOP_SEQUENCES] = [stop]
    elif type(stop) is list and stop and all(type(s) is str for s in stop):
        params[semconv.REQUEST_STOP_SEQUENCES] = list(stop)
    return params


def _content_parts(content: Any, texts: list[str]) -> list[dict[str, Any]]:
    """Semconv parts of a message's content (a string or a list of typed parts)."""
    if type(content) is str:
        if content:
            texts.append(content)
        return [{"type": "text", "content": content}]
    parts: list[dict[str, Any]] = []
    for part in _list(content):
        if type(part) is not dict:
            continue
        ptype = part.get("type")
        text = part.get("text")
        if type(ptype) is str and ptype in _TEXT_PART_TYPES and type(text) is str:
            texts.append(text)
            parts.append({"type": "text", "content": text})
        else:
            parts.append({"type": ptype if type(ptype) is str else "unknown"})
    return parts


def _tool_call_part(call_id: Any, name: Any, arguments: Any, texts: list[str]) -> dict[str, Any]:
    if type(arguments) is str and arguments:
        texts.append(arguments)
    return {"type": "tool_call", "id": _str(call_id), "name": _str(name), "arguments": _str(arguments)}


def _tool_response_part(call_id: Any, output: Any, texts: list[str]) -> dict[str, Any]:
    pieces: list[str] = []
    _content_parts(output, pieces)
    response = "\n".join(pieces)
    if response:
        texts.append(response)
    return {"type": "tool_call_response", "id": _str(call_id), "response": response}


def _chat_messages(messages: Any, texts: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for msg in _list(messages):
        if type(msg) is not dict:
            continue
        role = _str(msg.get("role")) or "user"
        if role == "tool":
            parts = [_tool_response_part(msg.get("tool_call_id"), msg.get("content"), texts)]
        else:
            parts = _content_parts(msg.get("content"), texts)
            for call in _list(msg.get("tool_calls")):
                if type(call) is dict:
                    fn = _dict(call.get("function"))
                    parts.append(_tool_call_part(call.get("id"), fn.get("name"), fn.get("arguments"), texts))
        out.append({"role": role, "parts": parts})
    return out


def _responses_messages(body: dict[str, Any], texts: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if type(instructions) is str and instructions:
        texts.append(instructions)
        out.append(_text_message("system", instructions))
    items = body.get("input")
    if type(items) is str:
        texts.append(items)
        out.append(_text_message("user", items))
        return out
    for item in _list(items):
        if type(item) is not dict:
            continue
        itype = item.get("type")
        if itype == "function_call":
            part = _tool_call_part(item.get("call_id"), item.get("name"), item.get("arguments"), texts)
            out.append({"role": "assistant", "parts": [part]})
        elif itype == "function_call_output":
            part = _tool_response_part(item.get("call_id"), item.get("output"), texts)
            out.append({"role": "tool", "parts": [part]})
        elif type(item.get("role")) is str:  # an input message (type "message" or omitted)
            out.append({"role": item["role"], "parts": _content_parts(item.get("content"), texts)})
    return out


def _strings(value: Any) -> list[str]:
    """A prompt or embeddings input: a string or a list of strings. Token-id arrays are ignored."""
    if type(value) is str:
        return [value]
    return [v for v in _list(value) if type(v) is str]


def _request_facts(operation: str, body: bytes) -> RequestFacts:
    data = orjson.loads(body)
    if type(data) is not dict:
        return RequestFacts(OpenAIAPI.name, operation, parsed=False)
    texts: list[str] = []
    messages: list[dict[str, Any]] | None = None
    if "messages" in data:  # chat completions
        messages = _chat_messages(data["messages"], texts)
    elif operation == CHAT:  # the Responses API
        messages = _responses_messages(data, texts)
    elif operation == TEXT_COMPLETION:
        texts = _strings(data.get("prompt"))
        messages = [_text_message("user", t) for t in texts]
    else:
        texts = _strings(data.get("input"))
    return RequestFacts(
        provider=OpenAIAPI.name,
        operation=operation,
        model=_str(data.get("model")),
        stream=data.get("stream") is True,
        params=_params(data),
        input_text="\n".join(texts),
        input_messages=messages,
    )


# --- response side ------------------------------------------------------------------------------


def _usage(usage: dict[str, Any]) -> UsageReport:
    """Chat/Completions/Embeddings (prompt_/completion_tokens) and Responses (input_/output_tokens)."""
    input_tokens = _int(usage.get("prompt_tokens"))
    if input_tokens is None:
        input_tokens = _int(usage.get("input_tokens"))
    output_tokens = _int(usage.get("completion_tokens"))
    if output_tokens is None:
        output_tokens = _int(usage.get("output_tokens"))
    input_details = _dict(usage.get("prompt_tokens_details") or usage.get("input_tokens_details"))
    output_details = _dict(usage.get("completion_tokens_details") or usage.get("output_tokens_details"))
    return UsageReport(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_input_tokens=_int(input_details.get("cached_tokens")),
        reasoning_output_tokens=_int(output_details.get("reasoning_tokens")),
    )


def _stream_error(err: dict[str, Any], keys: tuple[str, ...], default: str) -> StreamError:
    """The first non-empty of err[keys] names the error (codes may be ints: 400)."""
    name = default
    for key in keys:
        value = err.get(key)
        if (type(value) is str and value) or type(value) is int:
            name = str(value)
            break
    return StreamError(name, _str(err.get("message")) or "")


def _body_error(obj: dict[str, Any]) -> StreamError | None:
    """{"error": {...}} (OpenAI) or a bare {"object": "error", ...} (older vLLM)."""
    err = obj.get("error")
    if type(err) is dict:
        return _stream_error(err, ("type", "code"), "error")
    if type(err) is str and err:
        return StreamError("error", err)
    if obj.get("object") == "error":
        return _stream_error(obj, ("type", "code"), "error")
    return None


def _response_end(resp: dict[str, Any], event_type: str | None) -> list[StreamItem]:
    """Usage and outcome of a Responses API response (a terminal stream event or a JSON body)."""
    out: list[StreamItem] = []
    usage = resp.get("usage")
    if type(usage) is dict:
        out.append(_usage(usage))
    status = resp.get("status")
    if event_type == "response.failed" or status == "failed":
        out.append(_stream_error(_dict(resp.get("error")), ("code", "type"), "response_failed"))
    elif event_type == "response.incomplete" or status == "incomplete":
        reason = _dict(resp.get("incomplete_details")).get("reason")
        out.append(Finish(reason if type(reason) is str and reason else "incomplete"))
    elif event_type == "response.completed" or status == "completed":
        out.append(Finish("stop"))
    return out


def _info(obj: dict[str, Any]) -> ResponseInfo | None:
    model, rid = _str(obj.get("model")), _str(obj.get("id"))
    return ResponseInfo(model, rid) if model or rid else None


def _append_text(out: list[StreamItem], text: Any, kind: str) -> None:
    if text and type(text) is str:
        out.append(ContentDelta(text, kind))


def _message_items(msg: dict[str, Any], out: list[StreamItem]) -> None:
    """Content of a non-streamed chat message."""
    _append_text(out, msg.get("reasoning_content") or msg.get("reasoning"), REASONING)
    _append_text(out, msg.get("content"), TEXT)
    for call in _list(msg.get("tool_calls")):
        fn = _dict(call.get("function")) if type(call) is dict else {}
        _append_text(out, fn.get("name"), TOOL_CALL)
        _append_text(out, fn.get("arguments"), TOOL_CALL)


def _output_items(output: list[Any], out: list[StreamItem]) -> None:
    """Content of a non-streamed Responses API output list."""
    for item in output:
        if type(item) is not dict:
            continue
        itype = item.get("type")
        if itype == "message":
            for part in _list(item.get("content")):
                part = _dict(part)
                ptype = part.get("type")
                if ptype == "output_text":
                    _append_text(out, part.get("text"), TEXT)
                elif ptype == "refusal":
                    _append_text(out, part.get("refusal"), TEXT)
        elif itype == "function_call":
            _append_text(out, item.get("name"), TOOL_CALL)
            _append_text(out, item.get("arguments"), TOOL_CALL)
        elif itype == "reasoning":
            for part in _list(item.get("content")) + _list(item.get("summary")):
                _append_text(out, _dict(part).get("text"), REASONING)


def _response_items(body: bytes) -> list[StreamItem]:
    obj = orjson.loads(body)
    if type(obj) is not dict:
        return []
    out: list[StreamItem] = []
    info = _info(obj)
    output = obj.get("output")
    if type(output) is list or obj.get("object") == "response":  # Responses API: errors in "status"
        if info is not None:
            out.append(info)
        _output_items(_list(output), out)
        return out + _response_end(obj, None)
    error = _body_error(obj)
    if error is not None:
        return [error]
    if info is not None:
        out.append(info)
    for choice in _list(obj.get("choices")):
        if type(choice) is not dict:
            continue
        msg = choice.get("message")
        if type(msg) is dict:
            _message_items(msg, out)
        else:
            _append_text(out, choice.get("text"), TEXT)
        reason = choice.get("finish_reason")
        if type(reason) is str and reason:
            out.append(Finish(reason))
    usage = obj.get("usage")
    if type(usage) is dict:
        out.append(_usage(usage))
    return out


def _delta_extras(delta: dict[str, Any], out: list[StreamItem]) -> None:
    """Reasoning and tool-call content of a chat delta (its text content is read inline)."""
    # vLLM / DeepSeek: reasoning_content; OpenRouter / newer vLLM: reasoning. Never both counted.
    _append_text(out, delta.get("reasoning_content") or delta.get("reasoning"), REASONING)
    calls = delta.get("tool_calls")
    if calls and type(calls) is list:
        for call in calls:
            fn = call.get("function") if type(call) is dict else None
            if type(fn) is dict:
                _append_text(out, fn.get("name"), TOOL_CALL)  # only in a call's first chunk
                _append_text(out, fn.get("arguments"), TOOL_CALL)


class OpenAIStreamParser(StreamParser):
    """Chat Completions / Completions chunks and Responses API events, one SSE event at a time."""

    __slots__ = ("_id", "_model")

    def __init__(self) -> None:
        self._model: Any = None  # the last model/id reported, so ResponseInfo is emitted on change only
        self._id: Any = None

    def on_event(self, event: SSEEvent) -> tuple[StreamItem, ...] | list[StreamItem]:
        data = event.data
        if not data or data == b"[DONE]":
            return NO_ITEMS
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return NO_ITEMS
        if type(obj) is not dict:
            return NO_ITEMS
        event_type = obj.get("type")
        if event_type is None and event.event != "message":
            event_type = event.event
        if type(event_type) is str:
            items = self._responses_event(event_type, obj)
            if items is not None:
                return items
        return self._chunk(obj)

    def _changed_info(self, obj: dict[str, Any]) -> ResponseInfo | None:
        model, rid = obj.get("model"), obj.get("id")
        if model == self._model and rid == self._id:
            return None
        self._model, self._id = model, rid
        return _info(obj)

    def _chunk(self, obj: dict[str, Any]) -> tuple[StreamItem, ...] | list[StreamItem]:
        """A Chat Completions or Completions chunk. The common cases are checked inline (hot path)."""
        if obj.get("error") is not None or obj.get("object") == "error":
            error = _body_error(obj)
            if error is not None:
                return (error,)
        out: list[StreamItem] = []
        if obj.get("model") != self._model or obj.get("id") != self._id:
            info = self._changed_info(obj)
            if info is not None:
                out.append(info)
        choices = obj.get("choices")
        if type(choices) is list:
            for choice in choices:
                if type(choice) is not dict:
                    continue
                delta = choice.get("delta")
                if type(delta) is dict:
                    text = delta.get("content")
                    if text and type(text) is str:
                        out.append(ContentDelta(text, TEXT))
                    if len(delta) > 1 or text is None:  # more than content: reasoning, tool calls, role
                        _delta_extras(delta, out)
                else:  # completions
                    _append_text(out, choice.get("text"), TEXT)
                reason = choice.get("finish_reason")
                if reason and type(reason) is str:
                    out.append(Finish(reason))
        usage = obj.get("usage")
        if type(usage) is dict:
            out.append(_usage(usage))
        return out or NO_ITEMS

    def _responses_event(
        self, event_type: str, obj: dict[str, Any]
    ) -> tuple[StreamItem, ...] | list[StreamItem] | None:
        """Items of a Responses API event; None when the event is not one (read it as a chunk)."""
        kind = _RESPONSES_DELTAS.get(event_type)
        if kind is not None:
            delta = obj.get("delta")
            return (ContentDelta(delta, kind),) if delta and type(delta) is str else NO_ITEMS
        if event_type in _RESPONSES_INFO or event_type in _RESPONSES_END:
            resp = _dict(obj.get("response"))
            info = self._changed_info(resp)
            out: list[StreamItem] = [] if info is None else [info]
            if event_type in _RESPONSES_END:
                out += _response_end(resp, event_type)
            return out or NO_ITEMS
        if event_type == "response.output_item.added":
            item = _dict(obj.get("item"))
            name = item.get("name")
            if item.get("type") == "function_call" and name and type(name) is str:
                return (ContentDelta(name, TOOL_CALL),)
            return NO_ITEMS
        if event_type == "error":
            err = obj.get("error")
            return (_stream_error(err if type(err) is dict else obj, ("code", "type"), "error"),)
        if event_type.startswith("response."):
            return NO_ITEMS
        return None


class OpenAIAPI(ProviderAPI):
    name = "openai"

    def operation_for(self, method: str, path: str, headers: dict[str, str]) -> str | None:
        if method != "POST" and method.upper() != "POST":
            return None
        path = path.partition("?")[0].rstrip("/")
        for suffix, operation in _PATH_SUFFIXES:
            if path.endswith(suffix):
                return operation
        return None

    def request_facts(self, operation: str, body: bytes, path: str = "") -> RequestFacts:
        try:
            return _request_facts(operation, body)
        except Exception:  # a body we can't read is still forwarded; never fail the call here
            return RequestFacts(self.name, operation, parsed=False)

    def stream_parser(self, facts: RequestFacts) -> StreamParser:
        return OpenAIStreamParser()

    def response_items(self, facts: RequestFacts, body: bytes) -> list[StreamItem]:
        try:
            return _response_items(body)
        except Exception:
            return []


# --- Azure OpenAI -------------------------------------------------------------------------------

_AZURE_DEPLOYMENTS = "/openai/deployments/"


def azure_deployment(path: str) -> str | None:
    """The deployment name in `/openai/deployments/{name}/...`, URL-decoded, else None."""
    path = path.partition("?")[0]
    index = path.find(_AZURE_DEPLOYMENTS)
    if index < 0:
        return None
    name = path[index + len(_AZURE_DEPLOYMENTS):].partition("/")[0]
    return unquote(name) or None


class AzureOpenAIAPI(OpenAIAPI):
    """Azure OpenAI (`azure.ai.openai`): the OpenAI wire format on Azure's paths.

    Recognised: deployment paths (`/openai/deployments/{deployment}/chat/completions?api-version=...`,
    also /completions, /embeddings, /responses) and the v1 paths (`/openai/v1/...`) when the request
    carries Azure's `api-key` header (Groq and others also serve `/openai/v1/`, with a bearer token).
    The body of a deployment call usually has no "model": the deployment name is then the requested
    model. The response chunks name the model actually served (gen_ai.response.model). The `api-key`
    header is forwarded untouched and never read or recorded.
    """

    name = "azure.ai.openai"

    def operation_for(self, method: str, path: str, headers: dict[str, str]) -> str | None:
        target = path.partition("?")[0]
        if _AZURE_DEPLOYMENTS in target or ("/openai/v1/" in target and "api-key" in headers):
            return super().operation_for(method, path, headers)
        return None

    def request_facts(self, operation: str, body: bytes, path: str = "") -> RequestFacts:
        facts = super().request_facts(operation, body, path)
        facts.provider = self.name
        if facts.model is None:
            try:
                facts.model = azure_deployment(path)
            except Exception:
                pass
        return facts
