"""Google Gemini API (`gcp.gemini`) and Vertex AI (`gcp.vertex_ai`): generateContent, streamGenerateContent.

The model is in the path, not the body: `/v1beta/models/{model}:streamGenerateContent` (Gemini API) or
`/v1/projects/{p}/locations/{l}/publishers/google/models/{model}:generateContent` (Vertex AI).
`request_facts` reads it from the `path` argument.

A stream comes in one of two framings, chosen by the client:
- `?alt=sse` (what the google-genai SDK asks for): `text/event-stream`, one response per `data:`;
- the default: `application/json`, one JSON array whose elements arrive over time.
A non-streamed `generateContent` answers `application/json` too, and the content type alone can't tell
the two apart. So `detect` (see `llmtap.providers`) hands a `:streamGenerateContent` call to this API's
streaming twin (`for_path`), whose `stream_format` reads `application/json` as a streamed array. The
twin is a separate stateless singleton, so concurrent calls share nothing. Without it (a route with a
provider override), a streamed array is still read whole at the end by `response_items`: usage and
finish reasons are right, but there is no TTFT or ITL for that call.

Usage (usageMetadata): input = promptTokenCount (cached tokens included, as semconv wants), output =
candidatesTokenCount + thoughtsTokenCount (thinking is output the model generated and is billed as
such, like OpenAI's reasoning tokens), reasoning = thoughtsTokenCount, cache read =
cachedContentTokenCount. Finish reasons are kept as Gemini spells them ("STOP", "MAX_TOKENS", ...).
Thought parts (`"thought": true`) are REASONING content; a functionCall's name and args are TOOL_CALL.
"""

from __future__ import annotations

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
)
from llmtap.providers.base import (
    GENERATE_CONTENT,
    NO_ITEMS,
    REASONING,
    TEXT,
    TOOL_CALL,
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

GEMINI = "gcp.gemini"
VERTEX_AI = "gcp.vertex_ai"

_ACTIONS = {"generateContent": False, "streamGenerateContent": True}  # action -> streamed

# generationConfig key (camelCase as the SDK sends it, snake_case as proto JSON also accepts) -> semconv
_PARAMS: tuple[tuple[str, str, tuple[type, ...]], ...] = (
    ("maxOutputTokens", semconv.REQUEST_MAX_TOKENS, INT),
    ("max_output_tokens", semconv.REQUEST_MAX_TOKENS, INT),
    ("temperature", semconv.REQUEST_TEMPERATURE, NUMBER),
    ("topP", semconv.REQUEST_TOP_P, NUMBER),
    ("top_p", semconv.REQUEST_TOP_P, NUMBER),
    ("topK", semconv.REQUEST_TOP_K, NUMBER),
    ("top_k", semconv.REQUEST_TOP_K, NUMBER),
    ("seed", semconv.REQUEST_SEED, INT),
    ("candidateCount", semconv.REQUEST_CHOICE_COUNT, INT),
    ("candidate_count", semconv.REQUEST_CHOICE_COUNT, INT),
    ("presencePenalty", semconv.REQUEST_PRESENCE_PENALTY, NUMBER),
    ("presence_penalty", semconv.REQUEST_PRESENCE_PENALTY, NUMBER),
    ("frequencyPenalty", semconv.REQUEST_FREQUENCY_PENALTY, NUMBER),
    ("frequency_penalty", semconv.REQUEST_FREQUENCY_PENALTY, NUMBER),
)


def parse_path(path: str) -> tuple[str | None, str, bool] | None:
    """(model, action, is Vertex AI) for a generateContent-family path, else None.

    The model is what follows the last `/models/` (`publishers/google/models/x` gives `x`), or
    `tunedModels/x` / `endpoints/x` for tuned models and Vertex endpoints.
    """
    path = path.partition("?")[0].rstrip("/")
    head, sep, action = path.rpartition(":")
    if not sep or action not in _ACTIONS:
        return None
    vertex = "/projects/" in head or "/publishers/" in head
    model: str | None = None
    for marker, keep in (("/models/", False), ("/tunedModels/", True), ("/endpoints/", True)):
        index = head.rfind(marker)
        if index >= 0:
            model = head[index + (1 if keep else len(marker)):]
            break
    return (unquote(model) if model else None), action, vertex


# --- request side -------------------------------------------------------------------------------


def _part(part: dict[str, Any], texts: list[str]) -> dict[str, Any]:
    text = part.get("text")
    if type(text) is str:
        texts.append(text)
        return {"type": "reasoning" if part.get("thought") is True else "text", "content": text}
    call = part.get("functionCall") or part.get("function_call")
    if type(call) is dict:
        arguments = call.get("args")
        if arguments is not None:
            texts.append(json_text(arguments))
        return {"type": "tool_call", "id": as_str(call.get("id")), "name": as_str(call.get("name")),
                "arguments": arguments}
    reply = part.get("functionResponse") or part.get("function_response")
    if type(reply) is dict:
        response = json_text(reply.get("response"))
        if response:
            texts.append(response)
        return {"type": "tool_call_response", "id": as_str(reply.get("id")), "response": response}
    kind = next(iter(part), "unknown")
    return {"type": kind if kind not in ("thought", "thoughtSignature") else "unknown"}


def _content(content: Any, texts: list[str], default_role: str) -> dict[str, Any] | None:
    if type(content) is str:  # the REST API wants Content objects; tolerate a bare string
        texts.append(content)
        return {"role": default_role, "parts": [{"type": "text", "content": content}]}
    if type(content) is not dict:
        return None
    role = as_str(content.get("role")) or default_role
    parts = [_part(p, texts) for p in as_list(content.get("parts")) if type(p) is dict and p]
    return {"role": "assistant" if role == "model" else role, "parts": parts}


def _params(body: dict[str, Any]) -> dict[str, Any]:
    config = as_dict(body.get("generationConfig") or body.get("generation_config"))
    params: dict[str, Any] = {}
    read_params(config, _PARAMS, params)
    stop = string_list(config.get("stopSequences") or config.get("stop_sequences"))
    if stop is not None:
        params[semconv.REQUEST_STOP_SEQUENCES] = stop
    return params


def _request_facts(provider: str, operation: str, body: bytes, path: str) -> RequestFacts:
    parsed_path = parse_path(path) if path else None
    model = parsed_path[0] if parsed_path else None
    stream = _ACTIONS[parsed_path[1]] if parsed_path else False
    data = orjson.loads(body)
    if type(data) is not dict:
        return RequestFacts(provider, operation, model=model, stream=stream, parsed=False)
    texts: list[str] = []
    messages: list[dict[str, Any]] = []
    system = data.get("systemInstruction") or data.get("system_instruction")
    if system is not None:
        message = _content(system, texts, "system")
        if message is not None:
            message["role"] = "system"
            messages.append(message)
    contents = data.get("contents")
    for content in (contents if type(contents) is list else [contents]):
        message = _content(content, texts, "user")
        if message is not None:
            messages.append(message)
    return RequestFacts(
        provider=provider,
        operation=operation,
        model=model or as_str(data.get("model")),
        stream=stream,
        params=_params(data),
        input_text="\n".join(t for t in texts if t),
        input_messages=messages,
    )


# --- response side ------------------------------------------------------------------------------


def usage_report(meta: dict[str, Any]) -> UsageReport:
    """usageMetadata -> UsageReport (see the module doc for what counts as output)."""
    candidates = as_int(meta.get("candidatesTokenCount"))
    thoughts = as_int(meta.get("thoughtsTokenCount"))
    output = None if candidates is None and thoughts is None else (candidates or 0) + (thoughts or 0)
    return UsageReport(
        input_tokens=as_int(meta.get("promptTokenCount")),
        output_tokens=output,
        cache_read_input_tokens=as_int(meta.get("cachedContentTokenCount")),
        reasoning_output_tokens=thoughts,
    )


def _error(err: dict[str, Any]) -> StreamError:
    """A google.rpc.Status-shaped error: {"code": 429, "message": ..., "status": "RESOURCE_EXHAUSTED"}."""
    status = err.get("status")
    code = err.get("code")
    name = status if type(status) is str and status else str(code) if type(code) is int else "error"
    return StreamError(name, as_str(err.get("message")) or "")


def _candidate_items(candidate: dict[str, Any], out: list[StreamItem]) -> None:
    for part in as_list(as_dict(candidate.get("content")).get("parts")):
        if type(part) is not dict:
            continue
        text = part.get("text")
        if text is not None:
            append_text(out, text, REASONING if part.get("thought") is True else TEXT)
            continue
        call = part.get("functionCall")
        if type(call) is dict:
            append_text(out, call.get("name"), TOOL_CALL)
            if call.get("args") is not None:
                append_text(out, json_text(call["args"]), TOOL_CALL)
            continue
        code = part.get("executableCode")
        if type(code) is dict:
            append_text(out, code.get("code"), TEXT)
    reason = candidate.get("finishReason")
    if type(reason) is str and reason:
        out.append(Finish(reason))


class GeminiStreamParser(StreamParser):
    """GenerateContentResponse objects, one per event (SSE data or streamed-array element)."""

    __slots__ = ("_id", "_model")

    def __init__(self) -> None:
        self._model: Any = None  # ResponseInfo is emitted when model or id change, not per chunk
        self._id: Any = None

    def on_event(self, event: SSEEvent) -> tuple[StreamItem, ...] | list[StreamItem]:
        obj = load_object(event.data) if event.data else None
        if obj is None:
            return NO_ITEMS
        return self.items(obj) or NO_ITEMS

    def items(self, obj: dict[str, Any]) -> list[StreamItem]:
        out: list[StreamItem] = []
        error = obj.get("error")
        if error is not None:
            out.append(_error(as_dict(error)) if type(error) is dict else StreamError("error", str(error)))
            return out
        model, rid = obj.get("modelVersion"), obj.get("responseId")
        if model != self._model or rid != self._id:
            self._model, self._id = model, rid
            if as_str(model) or as_str(rid):
                out.append(ResponseInfo(as_str(model), as_str(rid)))
        candidates = obj.get("candidates")
        if type(candidates) is list:
            if len(candidates) == 1 and type(candidates[0]) is dict:  # the common case
                _candidate_items(candidates[0], out)
            else:
                for candidate in candidates:
                    if type(candidate) is dict:
                        _candidate_items(candidate, out)
        else:
            block = as_dict(obj.get("promptFeedback")).get("blockReason")
            if type(block) is str and block:
                out.append(Finish(block))
        meta = obj.get("usageMetadata")
        if type(meta) is dict:
            out.append(usage_report(meta))
        return out


class GeminiAPI(ProviderAPI):
    """The Gemini API. `streamed_json`: read `application/json` as a streamed array (the twin)."""

    name = GEMINI
    vertex = False

    def __init__(self, *, streamed_json: bool = False) -> None:
        self.streamed_json = streamed_json
        self._twin = self if streamed_json else type(self)(streamed_json=True)

    def operation_for(self, method: str, path: str, headers: dict[str, str]) -> str | None:
        if method != "POST" and method.upper() != "POST":
            return None
        parsed = parse_path(path)
        if parsed is None or parsed[2] != self.vertex:
            return None
        return GENERATE_CONTENT

    def for_path(self, path: str) -> GeminiAPI:
        """This API for one call: its streaming twin for `:streamGenerateContent` (see the module doc)."""
        parsed = parse_path(path)
        return self._twin if parsed is not None and _ACTIONS[parsed[1]] else self

    def stream_format(self, content_type: str) -> str | None:
        if "text/event-stream" in content_type:
            return "sse"
        if self.streamed_json and "json" in content_type:
            return "json-array"
        return None

    def request_facts(self, operation: str, body: bytes, path: str = "") -> RequestFacts:
        try:
            return _request_facts(self.name, operation, body, path)
        except Exception:  # a body we can't read is still forwarded; never fail the call here
            try:
                parsed = parse_path(path) if path else None
            except Exception:
                parsed = None
            model = parsed[0] if parsed else None
            stream = _ACTIONS[parsed[1]] if parsed else False
            return RequestFacts(self.name, operation, model=model, stream=stream, parsed=False)

    def stream_parser(self, facts: RequestFacts) -> StreamParser:
        return GeminiStreamParser()

    def response_items(self, facts: RequestFacts, body: bytes) -> list[StreamItem]:
        """A generateContent body, an error body, or a whole streamed array read at the end."""
        try:
            data = orjson.loads(body)
            parser = GeminiStreamParser()
            if type(data) is dict:
                return parser.items(data)
            out: list[StreamItem] = []
            for element in as_list(data):
                if type(element) is dict:
                    out.extend(parser.items(element))
            return out
        except Exception:
            return []


class VertexAIAPI(GeminiAPI):
    """Vertex AI's generateContent family: the same wire format under /projects/.../publishers/google/."""

    name = VERTEX_AI
    vertex = True


__all__ = ["GEMINI", "VERTEX_AI", "GeminiAPI", "GeminiStreamParser", "VertexAIAPI", "parse_path", "usage_report"]
