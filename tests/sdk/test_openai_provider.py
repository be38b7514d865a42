"""OpenAI-style APIs: recognition, request facts, stream parsing and non-streamed bodies."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmtap import semconv
from llmtap.providers import PROVIDERS, detect, get_provider
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
    RequestFacts,
    ResponseInfo,
    StreamError,
    StreamItem,
    UsageReport,
)
from llmtap.providers.openai import OpenAIAPI
from llmtap.wire.sse import SSEDecoder, SSEEvent

API = OpenAIAPI()
FACTS = RequestFacts("openai", CHAT)


def sse(*payloads: Any) -> bytes:
    """An SSE body: dicts become JSON `data:` lines; (event, dict) pairs also get an `event:` line."""
    out = []
    for payload in payloads:
        event, data = payload if isinstance(payload, tuple) else (None, payload)
        raw = data if isinstance(data, bytes) else orjson.dumps(data)
        out.append((f"event: {event}\n".encode() if event else b"") + b"data: " + raw + b"\n\n")
    return b"".join(out)


def parse_stream(body: bytes, chunk_size: int = 7) -> list[StreamItem]:
    parser = API.stream_parser(FACTS)
    decoder = SSEDecoder()
    items: list[StreamItem] = []
    for i in range(0, len(body), chunk_size):
        for event in decoder.feed(body[i : i + chunk_size]):
            items += parser.on_event(event)
    return items


def content(items: list[StreamItem]) -> list[tuple[str, str]]:
    return [(i.kind, i.text) for i in items if isinstance(i, ContentDelta)]


def facts(operation: str, body: dict[str, Any]) -> RequestFacts:
    return API.request_facts(operation, orjson.dumps(body))


# --- recognition --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "operation"),
    [
        ("POST", "/v1/chat/completions", CHAT),
        ("POST", "/openai/v1/chat/completions", CHAT),
        ("POST", "/chat/completions/", CHAT),
        ("POST", "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21", CHAT),
        ("POST", "/v1/completions", TEXT_COMPLETION),
        ("POST", "/openai/deployments/emb/embeddings?api-version=2024-10-21", EMBEDDINGS),
        ("POST", "/v1/embeddings", EMBEDDINGS),
        ("POST", "/v1/responses", CHAT),
        ("post", "/v1/responses", CHAT),
        ("GET", "/v1/responses/resp_123", None),
        ("GET", "/v1/chat/completions", None),
        ("POST", "/v1/responses/resp_123/cancel", None),
        ("POST", "/v1/responses/input_tokens", None),
        ("POST", "/v1/chat/completions/abc", None),
        ("GET", "/v1/models", None),
        ("POST", "/v1/audio/transcriptions", None),
        ("POST", "/v1/mycompletions", None),
    ],
)
def test_operation_for(method: str, path: str, operation: str | None) -> None:
    assert API.operation_for(method, path, {}) == operation


def test_registry_and_detection() -> None:
    assert get_provider("openai") is PROVIDERS["openai"]
    assert get_provider("nope") is None
    found = detect("POST", "/v1/chat/completions", {"content-type": "application/json"})
    assert found is not None and found[0].name == "openai" and found[1] == CHAT
    found = detect("POST", "/v1/messages", {})
    assert found is not None and found[0].name == "anthropic"
    found = detect("POST", "/anthropic/messages", {"anthropic-version": "2023-06-01"})
    assert found is not None and found[0].name == "anthropic"
    assert detect("POST", "/v1/threads/t_1/messages", {}) is None
    assert detect("GET", "/health", {}) is None


# --- request facts ------------------------------------------------------------------------------


def test_chat_request_facts() -> None:
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 256,
        "max_tokens": 100,
        "temperature": 0.2,
        "top_p": 1,
        "stop": "\n\n",
        "seed": 42,
        "n": 2,
        "frequency_penalty": 0.5,
        "presence_penalty": -1,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}, {"type": "image_url"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "wx", "arguments": '{"c":"P"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
    }
    f = facts(CHAT, body)
    assert f.parsed and f.provider == "openai" and f.operation == CHAT
    assert f.model == "gpt-4o-mini" and f.stream is True
    assert f.params == {
        semconv.REQUEST_MAX_TOKENS: 256,
        semconv.REQUEST_TEMPERATURE: 0.2,
        semconv.REQUEST_TOP_P: 1,
        semconv.REQUEST_STOP_SEQUENCES: ["\n\n"],
        semconv.REQUEST_SEED: 42,
        semconv.REQUEST_CHOICE_COUNT: 2,
        semconv.REQUEST_FREQUENCY_PENALTY: 0.5,
        semconv.REQUEST_PRESENCE_PENALTY: -1,
    }
    assert f.input_text == 'Be brief.\nWeather?\n{"c":"P"}\nsunny'
    assert f.input_messages == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [{"type": "text", "content": "Weather?"}, {"type": "image_url"}]},
        {
            "role": "assistant",
            "parts": [{"type": "tool_call", "id": "call_1", "name": "wx", "arguments": '{"c":"P"}'}],
        },
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_1", "response": "sunny"}]},
    ]


def test_params_of_wrong_type_are_left_out() -> None:
    f = facts(
        CHAT,
        {
            "messages": [],
            "temperature": True,
            "max_tokens": "9",
            "seed": 1.5,
            "stop": ["a", 1],
            "n": None,
            "stream": "yes",
            "model": 5,
        },
    )
    assert f.parsed and f.params == {} and f.stream is False and f.model is None
    assert facts(CHAT, {"messages": [], "stop": ["a", "b"]}).params == {
        semconv.REQUEST_STOP_SEQUENCES: ["a", "b"]
    }


def test_responses_request_facts() -> None:
    body = {
        "model": "gpt-4.1",
        "instructions": "You are terse.",
        "max_output_tokens": 50,
        "stream": True,
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Hi"}, {"type": "input_image"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
        ],
    }
    f = facts(CHAT, body)
    assert f.model == "gpt-4.1" and f.stream and f.params == {semconv.REQUEST_MAX_TOKENS: 50}
    assert f.input_text == "You are terse.\nHi\nHello\n{}\n42"
    assert f.input_messages == [
        {"role": "system", "parts": [{"type": "text", "content": "You are terse."}]},
        {"role": "user", "parts": [{"type": "text", "content": "Hi"}, {"type": "input_image"}]},
        {"role": "assistant", "parts": [{"type": "text", "content": "Hello"}]},
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "c1", "name": "f", "arguments": "{}"}]},
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": "42"}]},
    ]
    f = facts(CHAT, {"model": "gpt-4.1", "input": "Tell me a joke"})
    assert f.input_text == "Tell me a joke" and not f.stream
    assert f.input_messages == [{"role": "user", "parts": [{"type": "text", "content": "Tell me a joke"}]}]


def test_completions_and_embeddings_request_facts() -> None:
    f = facts(
        TEXT_COMPLETION, {"model": "gpt-3.5-turbo-instruct", "prompt": ["Say", "this"], "max_tokens": 7}
    )
    assert f.input_text == "Say\nthis" and f.params == {semconv.REQUEST_MAX_TOKENS: 7}
    assert f.input_messages == [
        {"role": "user", "parts": [{"type": "text", "content": "Say"}]},
        {"role": "user", "parts": [{"type": "text", "content": "this"}]},
    ]
    assert facts(TEXT_COMPLETION, {"prompt": [1, 2, 3]}).input_text == ""
    f = facts(EMBEDDINGS, {"model": "text-embedding-3-small", "input": ["a", "b"]})
    assert f.model == "text-embedding-3-small" and f.input_text == "a\nb" and f.input_messages is None
    assert facts(EMBEDDINGS, {"input": "one"}).input_text == "one"
    assert facts(EMBEDDINGS, {"input": [[1, 2], [3]]}).input_text == ""


@pytest.mark.parametrize("body", [b"", b"{", b"[1, 2]", b"null", b'"text"', b"\xff\xfe", b'{"messages": 5}'])
def test_malformed_request_bodies(body: bytes) -> None:
    f = API.request_facts(CHAT, body)
    assert f.provider == "openai" and f.operation == CHAT
    if body == b'{"messages": 5}':
        assert f.parsed and f.input_messages == []
    else:
        assert not f.parsed


# --- chat completions stream --------------------------------------------------------------------


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choices = (
        [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    )
    return {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion.chunk",
        "created": 1741570283,
        "model": "gpt-4o-mini-2024-07-18",
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
        "choices": choices,
        "usage": None,
        **extra,
    }


def test_chat_stream() -> None:
    usage = {
        "prompt_tokens": 19,
        "completion_tokens": 10,
        "total_tokens": 29,
        "prompt_tokens_details": {"cached_tokens": 3, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }
    body = sse(
        chunk({"role": "assistant", "content": "", "refusal": None}),
        chunk({"content": "Hello"}),
        chunk({"content": ""}),
        chunk({"content": " world"}),
        chunk({}, "stop"),
        chunk(None, usage=usage),
        b"[DONE]",
    )
    items = parse_stream(body)
    assert items == [
        ResponseInfo("gpt-4o-mini-2024-07-18", "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"),
        ContentDelta("Hello", TEXT),
        ContentDelta(" world", TEXT),
        Finish("stop"),
        UsageReport(input_tokens=19, output_tokens=10, cache_read_input_tokens=3, reasoning_output_tokens=0),
    ]


def test_role_only_and_empty_chunks_yield_nothing() -> None:
    parser = API.stream_parser(FACTS)
    first = chunk({"role": "assistant", "content": ""})
    assert parser.on_event(SSEEvent(orjson.dumps(first))) == [ResponseInfo(first["model"], first["id"])]
    for delta in ({"role": "assistant"}, {"content": ""}, {"content": None}, {}, {"tool_calls": []}):
        assert parser.on_event(SSEEvent(orjson.dumps(chunk(delta)))) is NO_ITEMS
    assert parser.on_event(SSEEvent(b"[DONE]")) is NO_ITEMS
    assert parser.on_event(SSEEvent(b"")) is NO_ITEMS


def test_response_info_is_reported_again_when_it_changes() -> None:
    # Azure sends a first chunk with empty model and id (prompt filter results)
    azure_first = {
        "choices": [],
        "created": 0,
        "id": "",
        "model": "",
        "object": "",
        "prompt_filter_results": [],
    }
    items = parse_stream(sse(azure_first, chunk({"content": "a"}), chunk({"content": "b"}, model="other")))
    infos = [i for i in items if isinstance(i, ResponseInfo)]
    assert infos == [
        ResponseInfo("gpt-4o-mini-2024-07-18", "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"),
        ResponseInfo("other", "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"),
    ]


def test_chat_stream_tool_calls() -> None:
    body = sse(
        chunk(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ],
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"location":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]}),
        chunk({}, "tool_calls"),
        b"[DONE]",
    )
    items = parse_stream(body, chunk_size=1)
    assert content(items) == [
        (TOOL_CALL, "get_weather"),
        (TOOL_CALL, '{"location":'),
        (TOOL_CALL, ' "Paris"}'),
    ]
    assert items[-1] == Finish("tool_calls")


def test_chat_stream_reasoning_fields() -> None:
    body = sse(
        chunk({"role": "assistant", "reasoning_content": "Let me think"}),  # DeepSeek / vLLM
        chunk({"reasoning": "more", "reasoning_content": "more"}),  # both set: counted once
        chunk({"reasoning": "done."}),  # OpenRouter / newer vLLM
        chunk({"content": "42"}),
    )
    assert content(parse_stream(body)) == [
        (REASONING, "Let me think"),
        (REASONING, "more"),
        (REASONING, "done."),
        (TEXT, "42"),
    ]


def test_multiple_choices() -> None:
    two = chunk({"content": "a"})
    two["choices"].append({"index": 1, "delta": {"content": "b"}, "finish_reason": "length"})
    assert content(parse_stream(sse(two))) == [(TEXT, "a"), (TEXT, "b")]
    assert parse_stream(sse(two))[-1] == Finish("length")


def test_completions_stream() -> None:
    def cmpl(text: str, finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "cmpl-7iA7iJjj8V2zOkCGvWF2hAkDWBQZe",
            "object": "text_completion",
            "created": 1690759702,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
            "model": "gpt-3.5-turbo-instruct",
        }

    items = parse_stream(sse(cmpl("This"), cmpl(""), cmpl(" is"), cmpl("", "length"), b"[DONE]"))
    assert items == [
        ResponseInfo("gpt-3.5-turbo-instruct", "cmpl-7iA7iJjj8V2zOkCGvWF2hAkDWBQZe"),
        ContentDelta("This", TEXT),
        ContentDelta(" is", TEXT),
        Finish("length"),
    ]


def test_chat_stream_errors() -> None:
    err = {
        "error": {"message": "The server had an error", "type": "server_error", "param": None, "code": None}
    }
    assert parse_stream(sse(chunk({"content": "a"}), err))[-1] == StreamError(
        "server_error", "The server had an error"
    )
    vllm = {"object": "error", "message": "too long", "type": "BadRequestError", "param": None, "code": 400}
    assert parse_stream(sse(vllm)) == [StreamError("BadRequestError", "too long")]
    assert parse_stream(sse({"error": {"code": 500}})) == [StreamError("500", "")]
    assert parse_stream(sse({"error": "boom"})) == [StreamError("error", "boom")]


# --- Responses API stream -----------------------------------------------------------------------

RESP = {
    "id": "resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654",
    "object": "response",
    "created_at": 1741290958,
    "model": "gpt-4.1-2025-04-14",
    "output": [],
    "usage": None,
    "error": None,
}


def ev(event_type: str, **fields: Any) -> tuple[str, dict[str, Any]]:
    return event_type, {"type": event_type, "sequence_number": 0, **fields}


def test_responses_text_stream() -> None:
    completed = {
        **RESP,
        "status": "completed",
        "usage": {
            "input_tokens": 37,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 11,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 48,
        },
    }
    body = sse(
        ev("response.created", response={**RESP, "status": "in_progress"}),
        ev("response.in_progress", response={**RESP, "status": "in_progress"}),
        ev(
            "response.output_item.added",
            output_index=0,
            item={
                "id": "msg_1",
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            },
        ),
        ev(
            "response.content_part.added",
            item_id="msg_1",
            output_index=0,
            content_index=0,
            part={"type": "output_text", "text": "", "annotations": []},
        ),
        ev("response.output_text.delta", item_id="msg_1", output_index=0, content_index=0, delta="Hi"),
        ev("response.output_text.delta", item_id="msg_1", output_index=0, content_index=0, delta=""),
        ev("response.output_text.delta", item_id="msg_1", output_index=0, content_index=0, delta=" there"),
        ev("response.output_text.done", item_id="msg_1", output_index=0, content_index=0, text="Hi there"),
        ev("response.output_item.done", output_index=0, item={"id": "msg_1", "type": "message"}),
        ev("response.completed", response=completed),
    )
    assert parse_stream(body) == [
        ResponseInfo("gpt-4.1-2025-04-14", RESP["id"]),
        ContentDelta("Hi", TEXT),
        ContentDelta(" there", TEXT),
        UsageReport(input_tokens=37, output_tokens=11, cache_read_input_tokens=0, reasoning_output_tokens=0),
        Finish("stop"),
    ]


def test_responses_tool_call_and_reasoning_stream() -> None:
    body = sse(
        ev("response.created", response={**RESP, "status": "in_progress"}),
        ev(
            "response.output_item.added",
            output_index=0,
            item={"id": "rs_1", "type": "reasoning", "summary": []},
        ),
        ev("response.reasoning_summary_text.delta", item_id="rs_1", summary_index=0, delta="Thinking"),
        ev("response.reasoning_text.delta", item_id="rs_1", content_index=0, delta="raw"),
        ev(
            "response.output_item.added",
            output_index=1,
            item={
                "id": "fc_1",
                "type": "function_call",
                "status": "in_progress",
                "arguments": "",
                "call_id": "call_1",
                "name": "get_weather",
            },
        ),
        ev("response.function_call_arguments.delta", item_id="fc_1", output_index=1, delta='{"city":'),
        ev("response.function_call_arguments.delta", item_id="fc_1", output_index=1, delta='"Oslo"}'),
        ev(
            "response.function_call_arguments.done",
            item_id="fc_1",
            output_index=1,
            arguments='{"city":"Oslo"}',
        ),
    )
    assert content(parse_stream(body)) == [
        (REASONING, "Thinking"),
        (REASONING, "raw"),
        (TOOL_CALL, "get_weather"),
        (TOOL_CALL, '{"city":'),
        (TOOL_CALL, '"Oslo"}'),
    ]


def test_responses_terminal_events() -> None:
    incomplete = {**RESP, "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}
    assert parse_stream(sse(ev("response.incomplete", response=incomplete)))[-1] == Finish(
        "max_output_tokens"
    )
    incomplete = {**RESP, "status": "incomplete", "incomplete_details": None}
    assert parse_stream(sse(ev("response.incomplete", response=incomplete)))[-1] == Finish("incomplete")
    failed = {**RESP, "status": "failed", "error": {"code": "server_error", "message": "oops"}}
    assert parse_stream(sse(ev("response.failed", response=failed)))[-1] == StreamError(
        "server_error", "oops"
    )
    failed = {**RESP, "status": "failed", "error": None}
    assert parse_stream(sse(ev("response.failed", response=failed)))[-1] == StreamError("response_failed", "")
    error = ev("error", code="ERR_SOMETHING", message="Something went wrong", param=None)
    assert parse_stream(sse(error)) == [StreamError("ERR_SOMETHING", "Something went wrong")]
    nested = ev("error", error={"type": "invalid_request_error", "code": None, "message": "bad"})
    assert parse_stream(sse(nested)) == [StreamError("invalid_request_error", "bad")]


def test_responses_event_name_from_sse_event_line() -> None:
    parser = API.stream_parser(FACTS)
    items = parser.on_event(SSEEvent(b'{"delta": "x"}', "response.output_text.delta"))
    assert list(items) == [ContentDelta("x", TEXT)]
    assert parser.on_event(SSEEvent(b'{"delta": "x"}', "response.unknown_event")) is NO_ITEMS


# --- non-streamed bodies ------------------------------------------------------------------------


def items_of(body: Any) -> list[StreamItem]:
    return API.response_items(FACTS, body if isinstance(body, bytes) else orjson.dumps(body))


def test_chat_completion_body() -> None:
    body = {
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "gpt-4.1-2025-04-14",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello!",
                    "refusal": None,
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 19,
            "completion_tokens": 10,
            "total_tokens": 29,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 4},
        },
    }
    assert items_of(body) == [
        ResponseInfo("gpt-4.1-2025-04-14", "chatcmpl-123"),
        ContentDelta("Hello!", TEXT),
        ContentDelta("f", TOOL_CALL),
        ContentDelta("{}", TOOL_CALL),
        Finish("tool_calls"),
        UsageReport(input_tokens=19, output_tokens=10, cache_read_input_tokens=0, reasoning_output_tokens=4),
    ]


def test_completion_and_embeddings_bodies() -> None:
    body = {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": "gpt-3.5-turbo-instruct",
        "choices": [{"text": "\n\nThis is a test", "index": 0, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }
    assert items_of(body) == [
        ResponseInfo("gpt-3.5-turbo-instruct", "cmpl-1"),
        ContentDelta("\n\nThis is a test", TEXT),
        Finish("length"),
        UsageReport(input_tokens=5, output_tokens=7),
    ]
    body = {
        "object": "list",
        "data": [{"object": "embedding", "embedding": [0.1, -0.2], "index": 0}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }
    assert items_of(body) == [ResponseInfo("text-embedding-3-small", None), UsageReport(input_tokens=8)]


def test_responses_body() -> None:
    body = {
        **RESP,
        "status": "completed",
        "output": [
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Plan"}]},
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": "Hi", "annotations": []},
                    {"type": "refusal", "refusal": "No"},
                ],
            },
            {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f", "arguments": "{}"},
        ],
        "usage": {
            "input_tokens": 36,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 87,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 123,
        },
    }
    assert items_of(body) == [
        ResponseInfo("gpt-4.1-2025-04-14", RESP["id"]),
        ContentDelta("Plan", REASONING),
        ContentDelta("Hi", TEXT),
        ContentDelta("No", TEXT),
        ContentDelta("f", TOOL_CALL),
        ContentDelta("{}", TOOL_CALL),
        UsageReport(input_tokens=36, output_tokens=87, cache_read_input_tokens=0, reasoning_output_tokens=0),
        Finish("stop"),
    ]
    failed = {**RESP, "status": "failed", "error": {"code": "rate_limit_exceeded", "message": "slow down"}}
    assert items_of(failed)[-1] == StreamError("rate_limit_exceeded", "slow down")


def test_error_and_malformed_bodies() -> None:
    body = {
        "error": {
            "message": "Incorrect API key provided",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert items_of(body) == [StreamError("invalid_request_error", "Incorrect API key provided")]
    assert items_of({"error": {"code": "429", "message": "Too many"}}) == [StreamError("429", "Too many")]
    for bad in (b"", b"not json", b"[]", b"null", b'{"choices": 3}', b'{"output": {"a": 1}}'):
        assert items_of(bad) == []


# --- fuzz: nothing ever raises ------------------------------------------------------------------

_KEYS = st.sampled_from(
    [
        "type",
        "id",
        "model",
        "choices",
        "delta",
        "content",
        "text",
        "reasoning",
        "reasoning_content",
        "tool_calls",
        "function",
        "name",
        "arguments",
        "finish_reason",
        "usage",
        "prompt_tokens",
        "completion_tokens",
        "input_tokens",
        "output_tokens",
        "prompt_tokens_details",
        "input_tokens_details",
        "cached_tokens",
        "error",
        "code",
        "message",
        "object",
        "response",
        "status",
        "incomplete_details",
        "reason",
        "item",
        "output",
        "summary",
        "refusal",
        "messages",
        "role",
        "input",
        "instructions",
        "prompt",
        "stop",
        "temperature",
        "max_tokens",
        "stream",
        "call_id",
        "output_tokens_details",
    ]
)
_STRINGS = st.sampled_from(
    [
        "response.output_text.delta",
        "response.created",
        "response.completed",
        "response.failed",
        "response.incomplete",
        "response.output_item.added",
        "function_call",
        "function_call_output",
        "message",
        "output_text",
        "input_text",
        "text",
        "error",
        "response",
        "reasoning",
        "tool",
        "completed",
        "failed",
        "incomplete",
        "",
    ]
) | st.text(max_size=8)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | _STRINGS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(_KEYS | st.text(max_size=4), children, max_size=6)
    ),
    max_leaves=30,
)
_ITEM_TYPES = (ContentDelta, UsageReport, ResponseInfo, Finish, StreamError)


def _check_items(items: Any) -> None:
    assert isinstance(items, (list, tuple))
    for item in items:
        assert isinstance(item, _ITEM_TYPES)
        if isinstance(item, ContentDelta):
            assert isinstance(item.text, str) and item.text and item.kind in (TEXT, TOOL_CALL, REASONING)


@given(st.binary(max_size=200) | JSON.map(orjson.dumps), st.text(max_size=30))
def test_fuzz_never_raises(data: bytes, event_name: str) -> None:
    parser = API.stream_parser(FACTS)
    _check_items(parser.on_event(SSEEvent(data, event_name or "message")))
    _check_items(parser.on_event(SSEEvent(data)))
    _check_items(API.response_items(FACTS, data))
    for operation in (CHAT, TEXT_COMPLETION, EMBEDDINGS):
        assert isinstance(API.request_facts(operation, data), RequestFacts)


@given(JSON)
def test_fuzz_stream_parser_has_no_hidden_exception_guard(value: Any) -> None:
    """on_event reads any JSON shape by type checks alone (it has no catch-all to hide bugs)."""
    parser = API.stream_parser(FACTS)
    wrapped = {
        "choices": [{"delta": value, "text": value, "finish_reason": value}],
        "usage": value,
        "model": value,
    }
    for obj in (value, wrapped, {"type": "response.completed", "response": value}, {"error": value}):
        _check_items(parser.on_event(SSEEvent(orjson.dumps(obj))))


@given(JSON)
def test_fuzz_body_readers_need_no_exception_guard(value: Any) -> None:
    """The catch-alls in request_facts/response_items are a safety net only: shapes are type-checked."""
    from llmtap.providers.openai import _request_facts, _response_items

    for obj in (
        value,
        {"messages": value},
        {"input": value, "instructions": value},
        {"choices": value},
        {"output": value, "object": "response"},
        {"messages": [value], "input": [value]},
    ):
        raw = orjson.dumps(obj)
        for operation in (CHAT, TEXT_COMPLETION, EMBEDDINGS):
            assert isinstance(_request_facts(operation, raw), RequestFacts)
        _check_items(_response_items(raw))
