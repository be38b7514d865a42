"""Ollama's native API: /api/chat, /api/generate (NDJSON streams) and /api/embed.

(Ollama's OpenAI-compatible /v1/... paths are read by the OpenAI module.) A request streams unless
its body says `"stream": false`. Each NDJSON line is one object; the last has `"done": true` and the
server's own accounting: prompt_eval_count / eval_count (input / output tokens), done_reason, and
durations in nanoseconds: total_duration, load_duration (the time spent loading the model: a
server-reported cold start), prompt_eval_duration and eval_duration.

The durations become a `ServerTimings` item, built by `ollama_server_timings`. The core does not
read that item yet (`Exchange.apply` ignores item types it doesn't know), so it costs nothing until
it is wired: see `ServerTimings`.

gen_ai.provider.name is "ollama": Ollama is not among the conventions' well-known values, which
allow a custom value for providers they don't list.
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
    text_message,
)
from llmtap.providers.base import (
    CHAT,
    EMBEDDINGS,
    NO_ITEMS,
    REASONING,
    TEXT,
    TEXT_COMPLETION,
    TOOL_CALL,
    Finish,
    ProviderAPI,
    RequestFacts,
    ResponseInfo,
    ServerTimings,
    StreamError,
    StreamItem,
    StreamParser,
    UsageReport,
)
from llmtap.wire.sse import SSEEvent

OLLAMA = "ollama"

_PATHS: tuple[tuple[str, str], ...] = (
    ("/api/chat", CHAT),
    ("/api/generate", TEXT_COMPLETION),
    ("/api/embed", EMBEDDINGS),
    ("/api/embeddings", EMBEDDINGS),  # the older single-prompt endpoint
)

# options key -> semconv attribute
_OPTIONS: tuple[tuple[str, str, tuple[type, ...]], ...] = (
    ("num_predict", semconv.REQUEST_MAX_TOKENS, INT),
    ("temperature", semconv.REQUEST_TEMPERATURE, NUMBER),
    ("top_p", semconv.REQUEST_TOP_P, NUMBER),
    ("top_k", semconv.REQUEST_TOP_K, NUMBER),
    ("seed", semconv.REQUEST_SEED, INT),
    ("frequency_penalty", semconv.REQUEST_FREQUENCY_PENALTY, NUMBER),
    ("presence_penalty", semconv.REQUEST_PRESENCE_PENALTY, NUMBER),
)

_NS = 1e-9


def _seconds(value: Any) -> float | None:
    ns = as_int(value)
    return ns * _NS if ns is not None and ns >= 0 else None


def ollama_server_timings(obj: dict[str, Any]) -> ServerTimings | None:
    """The durations of an Ollama `done` object (or a non-streamed body), or None if it has none."""
    timings = ServerTimings(
        load_duration_s=_seconds(obj.get("load_duration")),
        prompt_eval_duration_s=_seconds(obj.get("prompt_eval_duration")),
        eval_duration_s=_seconds(obj.get("eval_duration")),
        total_duration_s=_seconds(obj.get("total_duration")),
    )
    if timings == ServerTimings():
        return None
    return timings


# --- request side -------------------------------------------------------------------------------


def _params(body: dict[str, Any]) -> dict[str, Any]:
    options = as_dict(body.get("options"))
    params: dict[str, Any] = {}
    read_params(options, _OPTIONS, params)
    stop = string_list(options.get("stop"))
    if stop is not None:
        params[semconv.REQUEST_STOP_SEQUENCES] = stop
    return params


def _chat_messages(messages: Any, texts: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for msg in as_list(messages):
        if type(msg) is not dict:
            continue
        role = as_str(msg.get("role")) or "user"
        content = msg.get("content")
        parts: list[dict[str, Any]] = []
        if type(content) is str:
            if content:
                texts.append(content)
            if role == "tool":
                parts.append({"type": "tool_call_response", "id": as_str(msg.get("tool_call_id")),
                              "response": content})
            else:
                parts.append({"type": "text", "content": content})
        for call in as_list(msg.get("tool_calls")):
            fn = as_dict(as_dict(call).get("function"))
            arguments = fn.get("arguments")
            if arguments is not None:
                texts.append(json_text(arguments))
            parts.append({"type": "tool_call", "id": as_str(as_dict(call).get("id")), "name": as_str(fn.get("name")),
                          "arguments": arguments})
        if msg.get("images"):
            parts.append({"type": "image"})
        out.append({"role": role, "parts": parts})
    return out


def _request_facts(operation: str, body: bytes) -> RequestFacts:
    data = orjson.loads(body)
    if type(data) is not dict:
        return RequestFacts(OLLAMA, operation, parsed=False)
    texts: list[str] = []
    messages: list[dict[str, Any]] | None = None
    if operation == CHAT:
        messages = _chat_messages(data.get("messages"), texts)
    elif operation == TEXT_COMPLETION:
        messages = []
        for key, role in (("system", "system"), ("prompt", "user")):
            text = data.get(key)
            if type(text) is str and text:
                texts.append(text)
                messages.append(text_message(role, text))
    else:  # embeddings: "input" (a string or a list) or the older "prompt"
        value = data.get("input", data.get("prompt"))
        texts = [value] if type(value) is str else [v for v in as_list(value) if type(v) is str]
    return RequestFacts(
        provider=OLLAMA,
        operation=operation,
        model=as_str(data.get("model")),
        stream=operation != EMBEDDINGS and data.get("stream") is not False,
        params=_params(data),
        input_text="\n".join(texts),
        input_messages=messages,
    )


# --- response side ------------------------------------------------------------------------------


def _done_items(obj: dict[str, Any], out: list[StreamItem]) -> None:
    reason = obj.get("done_reason")
    if type(reason) is str and reason:
        out.append(Finish(reason))
    report = UsageReport(as_int(obj.get("prompt_eval_count")), as_int(obj.get("eval_count")))
    if report.input_tokens is not None or report.output_tokens is not None:
        out.append(report)
    timings = ollama_server_timings(obj)
    if timings is not None:
        out.append(timings)  # type: ignore[arg-type]  # not a StreamItem yet; see ServerTimings


def _message_items(obj: dict[str, Any], out: list[StreamItem]) -> None:
    """Content of one chat chunk (message) or generate chunk (response / thinking)."""
    msg = obj.get("message")
    if type(msg) is dict:
        append_text(out, msg.get("thinking"), REASONING)
        append_text(out, msg.get("content"), TEXT)
        for call in as_list(msg.get("tool_calls")):
            fn = as_dict(as_dict(call).get("function"))
            append_text(out, fn.get("name"), TOOL_CALL)
            if fn.get("arguments") is not None:
                append_text(out, json_text(fn["arguments"]), TOOL_CALL)
    else:
        append_text(out, obj.get("thinking"), REASONING)
        append_text(out, obj.get("response"), TEXT)


class OllamaStreamParser(StreamParser):
    """One NDJSON object per event."""

    __slots__ = ("_model",)

    def __init__(self) -> None:
        self._model: Any = None

    def on_event(self, event: SSEEvent) -> tuple[StreamItem, ...] | list[StreamItem]:
        obj = load_object(event.data) if event.data else None
        if obj is None:
            return NO_ITEMS
        return self.items(obj) or NO_ITEMS

    def items(self, obj: dict[str, Any]) -> list[StreamItem]:
        error = obj.get("error")
        if error is not None:
            return [StreamError("error", error if type(error) is str else json_text(error))]
        out: list[StreamItem] = []
        model = obj.get("model")
        if model != self._model:
            self._model = model
            if type(model) is str and model:
                out.append(ResponseInfo(model, None))
        _message_items(obj, out)
        if obj.get("done") is True:
            _done_items(obj, out)
        return out


class OllamaAPI(ProviderAPI):
    name = OLLAMA

    def operation_for(self, method: str, path: str, headers: dict[str, str]) -> str | None:
        if method != "POST" and method.upper() != "POST":
            return None
        path = path.partition("?")[0].rstrip("/")
        for suffix, operation in _PATHS:
            if path.endswith(suffix):
                return operation
        return None

    def stream_format(self, content_type: str) -> str | None:
        if "ndjson" in content_type or "jsonl" in content_type:
            return "ndjson"
        return "sse" if "text/event-stream" in content_type else None

    def request_facts(self, operation: str, body: bytes, path: str = "") -> RequestFacts:
        try:
            return _request_facts(operation, body)
        except Exception:  # a body we can't read is still forwarded; never fail the call here
            return RequestFacts(self.name, operation, parsed=False)

    def stream_parser(self, facts: RequestFacts) -> StreamParser:
        return OllamaStreamParser()

    def response_items(self, facts: RequestFacts, body: bytes) -> list[StreamItem]:
        """A non-streamed body (one `done` object), an embeddings body, or an error body."""
        try:
            obj = load_object(body)
            if obj is None:
                return []
            if facts.operation == EMBEDDINGS or "embeddings" in obj or "embedding" in obj:
                out: list[StreamItem] = []
                if as_str(obj.get("model")):
                    out.append(ResponseInfo(obj["model"], None))
                if obj.get("error") is not None:
                    return [StreamError("error", json_text(obj["error"]))]
                count = as_int(obj.get("prompt_eval_count"))
                if count is not None:
                    out.append(UsageReport(input_tokens=count))
                timings = ollama_server_timings(obj)
                if timings is not None:
                    out.append(timings)  # type: ignore[arg-type]
                return out
            return OllamaStreamParser().items(obj)
        except Exception:
            return []


__all__ = ["OLLAMA", "OllamaAPI", "OllamaStreamParser", "ServerTimings", "ollama_server_timings"]
