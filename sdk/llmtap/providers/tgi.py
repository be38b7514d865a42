"""Hugging Face Text Generation Inference, native API: /generate and /generate_stream.

(TGI's OpenAI-compatible /v1/chat/completions is read by the OpenAI module. The legacy root route
`POST /`, which streams or not depending on the body, is not recognised: a path of "/" says nothing.)

/generate_stream is SSE; each event carries one token, `{"index", "token": {"id", "text", "logprob",
"special"}, "generated_text", "details"}`. The last one also has `generated_text` and `details`
(`finish_reason`: length | eos_token | stop_sequence, `generated_tokens`, `seed`, and on TGI 2+
`input_length`). Special tokens (`"special": true`, e.g. the EOS token) are not output content. An
error mid-stream is an event `{"error": ..., "error_type": "generation" | "overloaded" | ...}`.

/generate answers `{"generated_text", "details"}`; details only when the request asked for them
(`parameters.details`), so without them usage comes from the reference tokenizer. The request names
no model (a TGI server serves one), so gen_ai.request.model stays unset unless the body has "model".

gen_ai.provider.name is "huggingface.tgi", a custom value: the conventions list no Hugging Face value.
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
    load_object,
    read_params,
    string_list,
    text_message,
)
from llmtap.providers.base import (
    NO_ITEMS,
    TEXT,
    TEXT_COMPLETION,
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

TGI = "huggingface.tgi"

_PARAMS: tuple[tuple[str, str, tuple[type, ...]], ...] = (
    ("max_new_tokens", semconv.REQUEST_MAX_TOKENS, INT),
    ("temperature", semconv.REQUEST_TEMPERATURE, NUMBER),
    ("top_p", semconv.REQUEST_TOP_P, NUMBER),
    ("top_k", semconv.REQUEST_TOP_K, NUMBER),
    ("seed", semconv.REQUEST_SEED, INT),
    ("frequency_penalty", semconv.REQUEST_FREQUENCY_PENALTY, NUMBER),
)


def _request_facts(operation: str, body: bytes, path: str) -> RequestFacts:
    stream = path.partition("?")[0].rstrip("/").endswith("/generate_stream")
    data = orjson.loads(body)
    if type(data) is not dict:
        return RequestFacts(TGI, operation, stream=stream, parsed=False)
    parameters = as_dict(data.get("parameters"))
    params: dict[str, Any] = {}
    read_params(parameters, _PARAMS, params)
    stop = string_list(parameters.get("stop"))
    if stop is not None:
        params[semconv.REQUEST_STOP_SEQUENCES] = stop
    inputs = data.get("inputs")
    text = inputs if type(inputs) is str else ""
    return RequestFacts(
        provider=TGI,
        operation=operation,
        model=as_str(data.get("model")),
        stream=stream or data.get("stream") is True,
        params=params,
        input_text=text,
        input_messages=[text_message("user", text)] if text else [],
    )


def _details(details: dict[str, Any], out: list[StreamItem]) -> None:
    reason = details.get("finish_reason")
    if type(reason) is str and reason:
        out.append(Finish(reason))
    generated = as_int(details.get("generated_tokens"))
    input_length = as_int(details.get("input_length"))
    if input_length is None:
        prefill = as_list(details.get("prefill"))  # only with decoder_input_details
        input_length = len(prefill) or None
    if generated is not None or input_length is not None:
        out.append(UsageReport(input_tokens=input_length, output_tokens=generated))


def _error(obj: dict[str, Any]) -> StreamError:
    kind = obj.get("error_type")
    message = obj.get("error")
    return StreamError(kind if type(kind) is str and kind else "error", message if type(message) is str else "")


class TGIStreamParser(StreamParser):
    """/generate_stream events. Stateless."""

    __slots__ = ()

    def on_event(self, event: SSEEvent) -> tuple[StreamItem, ...] | list[StreamItem]:
        obj = load_object(event.data) if event.data else None
        if obj is None:
            return NO_ITEMS
        if obj.get("error") is not None:
            return (_error(obj),)
        token = obj.get("token")
        details = obj.get("details")
        if type(details) is not dict:  # every token but the last: the hot path
            if type(token) is dict and token.get("special") is not True:
                text = token.get("text")
                if text and type(text) is str:
                    return (ContentDelta(text, TEXT),)
            return NO_ITEMS
        out: list[StreamItem] = []
        if type(token) is dict and token.get("special") is not True:
            append_text(out, token.get("text"), TEXT)
        _details(details, out)
        return out


class TGIAPI(ProviderAPI):
    name = TGI

    def operation_for(self, method: str, path: str, headers: dict[str, str]) -> str | None:
        if method != "POST" and method.upper() != "POST":
            return None
        path = path.partition("?")[0].rstrip("/")
        if path.endswith(("/generate", "/generate_stream")) and not path.endswith("/api/generate"):
            return TEXT_COMPLETION
        return None

    def request_facts(self, operation: str, body: bytes, path: str = "") -> RequestFacts:
        try:
            return _request_facts(operation, body, path)
        except Exception:  # a body we can't read is still forwarded; never fail the call here
            return RequestFacts(self.name, operation, parsed=False)

    def stream_parser(self, facts: RequestFacts) -> StreamParser:
        return TGIStreamParser()

    def response_items(self, facts: RequestFacts, body: bytes) -> list[StreamItem]:
        """A /generate body (or the compat route's one-element list), or an error body."""
        try:
            data = orjson.loads(body)
            if type(data) is list and data:
                data = data[0]
            if type(data) is not dict:
                return []
            if data.get("error") is not None:
                return [_error(data)]
            out: list[StreamItem] = []
            append_text(out, data.get("generated_text"), TEXT)
            details = data.get("details")
            if type(details) is dict:
                _details(details, out)
            return out
        except Exception:
            return []


__all__ = ["TGI", "TGIAPI", "TGIStreamParser"]
