"""The Anthropic Messages API: recognition, request facts, stream parsing and non-streamed bodies."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmtap import semconv
from llmtap.providers import detect
from llmtap.providers.anthropic import AnthropicAPI, _request_facts, _response_items
from llmtap.providers.base import (
    CHAT,
    NO_ITEMS,
    REASONING,
    TEXT,
    TOOL_CALL,
    ContentDelta,
    Finish,
    RequestFacts,
    ResponseInfo,
    StreamError,
    StreamItem,
    UsageReport,
)
from llmtap.wire.sse import SSEDecoder, SSEEvent

API = AnthropicAPI()
FACTS = RequestFacts("anthropic", CHAT)
MSG_ID = "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY"
MODEL = "claude-sonnet-4-5-20250929"


def sse(*events: dict[str, Any]) -> bytes:
    """An SSE body as Anthropic sends it: an `event:` line naming each event's data type."""
    return b"".join(f"event: {e['type']}\ndata: ".encode() + orjson.dumps(e) + b"\n\n" for e in events)


def parse_stream(body: bytes, chunk_size: int = 5) -> list[StreamItem]:
    parser = API.stream_parser(FACTS)
    decoder = SSEDecoder()
    items: list[StreamItem] = []
    for i in range(0, len(body), chunk_size):
        for event in decoder.feed(body[i : i + chunk_size]):
            items += parser.on_event(event)
    return items


def content(items: list[StreamItem]) -> list[tuple[str, str]]:
    return [(i.kind, i.text) for i in items if isinstance(i, ContentDelta)]


def message_start(**usage: int) -> dict[str, Any]:
    return {
        "type": "message_start",
        "message": {
            "id": MSG_ID,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": MODEL,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage or {"input_tokens": 25, "output_tokens": 1},
        },
    }


def block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def block_delta(index: int, delta: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": delta}


def message_delta(stop_reason: str, **usage: int) -> dict[str, Any]:
    return {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": usage or {"output_tokens": 15},
    }


PING = {"type": "ping"}
STOP = {"type": "message_stop"}


# --- recognition --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "headers", "operation"),
    [
        ("POST", "/v1/messages", {}, CHAT),
        ("POST", "/v1/messages?beta=true", {}, CHAT),
        ("POST", "/anthropic/v1/messages/", {}, CHAT),
        ("POST", "/messages", {"anthropic-version": "2023-06-01"}, CHAT),
        ("POST", "/messages", {}, None),
        ("POST", "/v1/messages/count_tokens", {}, None),
        ("POST", "/v1/messages/batches", {"anthropic-version": "2023-06-01"}, None),
        ("GET", "/v1/messages", {}, None),
        ("POST", "/v1/chat/completions", {"anthropic-version": "2023-06-01"}, None),
    ],
)
def test_operation_for(method: str, path: str, headers: dict[str, str], operation: str | None) -> None:
    assert API.operation_for(method, path, headers) == operation


def test_detection_prefers_anthropic() -> None:
    found = detect("POST", "/v1/messages", {"anthropic-version": "2023-06-01", "x-api-key": "k"})
    assert found is not None and found[0].name == "anthropic" and found[1] == CHAT
    found = detect("POST", "/v1/messages/count_tokens", {"anthropic-version": "2023-06-01"})
    assert found is None


# --- request facts ------------------------------------------------------------------------------


def test_request_facts() -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "stop_sequences": ["\n\nHuman:"],
        "stream": True,
        "system": [{"type": "text", "text": "You are a poet.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Use the tool.", "signature": "sig"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01",
                        "content": [{"type": "text", "text": "18C"}],
                    },
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "AA=="},
                    },
                ],
            },
        ],
    }
    f = API.request_facts(CHAT, orjson.dumps(body))
    assert f.parsed and f.provider == "anthropic" and f.operation == CHAT
    assert f.model == "claude-sonnet-4-5" and f.stream is True
    assert f.params == {
        semconv.REQUEST_MAX_TOKENS: 1024,
        semconv.REQUEST_TEMPERATURE: 0.7,
        semconv.REQUEST_TOP_P: 0.9,
        semconv.REQUEST_TOP_K: 40,
        semconv.REQUEST_STOP_SEQUENCES: ["\n\nHuman:"],
    }
    assert f.input_text == 'You are a poet.\nWeather in Paris?\nChecking.\n{"city":"Paris"}\n18C'
    assert f.input_messages == [
        {"role": "system", "parts": [{"type": "text", "content": "You are a poet."}]},
        {"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]},
        {
            "role": "assistant",
            "parts": [
                {"type": "reasoning", "content": "Use the tool."},
                {"type": "text", "content": "Checking."},
                {
                    "type": "tool_call",
                    "id": "toolu_01",
                    "name": "get_weather",
                    "arguments": {"city": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "parts": [
                {"type": "tool_call_response", "id": "toolu_01", "response": "18C"},
                {"type": "image"},
            ],
        },
    ]


def test_request_facts_plain_system_and_bad_params() -> None:
    body = {
        "model": "m",
        "system": "Be kind.",
        "max_tokens": 1.5,
        "temperature": False,
        "top_k": "3",
        "stop_sequences": "END",
        "messages": [{"role": "user", "content": "hi"}],
    }
    f = API.request_facts(CHAT, orjson.dumps(body))
    assert f.params == {} and f.stream is False
    assert f.input_text == "Be kind.\nhi"
    assert f.input_messages is not None and f.input_messages[0]["role"] == "system"


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b"1", b"\x00\x01"])
def test_malformed_request_bodies(body: bytes) -> None:
    f = API.request_facts(CHAT, body)
    assert not f.parsed and f.provider == "anthropic" and f.operation == CHAT


# --- stream -------------------------------------------------------------------------------------


def test_text_stream() -> None:
    body = sse(
        message_start(),
        block_start(0, {"type": "text", "text": ""}),
        PING,
        block_delta(0, {"type": "text_delta", "text": "Hello"}),
        block_delta(0, {"type": "text_delta", "text": ""}),
        block_delta(0, {"type": "text_delta", "text": "!"}),
        {"type": "content_block_stop", "index": 0},
        message_delta("end_turn"),
        STOP,
    )
    assert parse_stream(body) == [
        ResponseInfo(MODEL, MSG_ID),
        UsageReport(input_tokens=25),  # message_start output_tokens is a placeholder: dropped
        ContentDelta("Hello", TEXT),
        ContentDelta("!", TEXT),
        Finish("end_turn"),
        UsageReport(output_tokens=15),
    ]


def test_tool_use_and_thinking_stream() -> None:
    body = sse(
        message_start(),
        block_start(0, {"type": "thinking", "thinking": ""}),
        block_delta(0, {"type": "thinking_delta", "thinking": "I need the weather."}),
        block_delta(
            0, {"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pk"}
        ),
        {"type": "content_block_stop", "index": 0},
        block_start(1, {"type": "text", "text": ""}),
        block_delta(1, {"type": "text_delta", "text": "Let me check."}),
        {"type": "content_block_stop", "index": 1},
        block_start(
            2,
            {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather", "input": {}},
        ),
        block_delta(2, {"type": "input_json_delta", "partial_json": ""}),
        block_delta(2, {"type": "input_json_delta", "partial_json": '{"location": "San Fra'}),
        block_delta(2, {"type": "input_json_delta", "partial_json": 'ncisco, CA"}'}),
        {"type": "content_block_stop", "index": 2},
        message_delta("tool_use", output_tokens=89),
        STOP,
    )
    items = parse_stream(body, chunk_size=1)
    assert content(items) == [
        (REASONING, "I need the weather."),
        (TEXT, "Let me check."),
        (TOOL_CALL, "get_weather"),
        (TOOL_CALL, '{"location": "San Fra'),
        (TOOL_CALL, 'ncisco, CA"}'),
    ]
    assert items[-2:] == [Finish("tool_use"), UsageReport(output_tokens=89)]


def test_cached_input_is_included_in_input_tokens() -> None:
    usage = {"input_tokens": 10, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 2000}
    items = parse_stream(
        sse(message_start(**usage, output_tokens=1), message_delta("end_turn", **usage, output_tokens=50))
    )
    expected = {"input_tokens": 2110, "cache_read_input_tokens": 2000, "cache_creation_input_tokens": 100}
    assert items[1] == UsageReport(**expected)  # the message_start placeholder output count is dropped
    assert items[-1] == UsageReport(output_tokens=50, **expected)
    # cache fields without input_tokens: reported as they are, no total invented
    assert parse_stream(sse(message_delta("end_turn", cache_read_input_tokens=5)))[-1] == UsageReport(
        cache_read_input_tokens=5
    )


def test_stream_error_and_event_name_fallback() -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert parse_stream(sse(message_start(), error))[-1] == StreamError("overloaded_error", "Overloaded")
    parser = API.stream_parser(FACTS)
    untyped = orjson.dumps({"index": 0, "delta": {"type": "text_delta", "text": "x"}})
    assert list(parser.on_event(SSEEvent(untyped, "content_block_delta"))) == [ContentDelta("x", TEXT)]
    assert parser.on_event(SSEEvent(untyped)) is NO_ITEMS
    for quiet in (PING, STOP, {"type": "content_block_stop", "index": 0}, {"type": "new_event"}):
        assert parser.on_event(SSEEvent(orjson.dumps(quiet), quiet["type"])) is NO_ITEMS
    assert parser.on_event(SSEEvent(b"")) is NO_ITEMS
    assert parser.on_event(SSEEvent(b"{oops")) is NO_ITEMS


# --- non-streamed bodies ------------------------------------------------------------------------


def test_message_body() -> None:
    body = {
        "id": MSG_ID,
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [
            {"type": "thinking", "thinking": "Hmm.", "signature": "sig"},
            {"type": "redacted_thinking", "data": "xyz"},
            {"type": "text", "text": "Hi! I'll check."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 2095,
            "output_tokens": 503,
            "cache_read_input_tokens": 5,
            "cache_creation_input_tokens": 0,
        },
    }
    assert API.response_items(FACTS, orjson.dumps(body)) == [
        ResponseInfo(MODEL, MSG_ID),
        ContentDelta("Hmm.", REASONING),
        ContentDelta("Hi! I'll check.", TEXT),
        ContentDelta("get_weather", TOOL_CALL),
        ContentDelta('{"city":"Paris"}', TOOL_CALL),
        UsageReport(
            input_tokens=2100, output_tokens=503, cache_read_input_tokens=5, cache_creation_input_tokens=0
        ),
        Finish("tool_use"),
    ]


def test_error_and_malformed_bodies() -> None:
    body = {
        "type": "error",
        "error": {"type": "not_found_error", "message": "The requested resource could not be found."},
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
    }
    assert API.response_items(FACTS, orjson.dumps(body)) == [
        StreamError("not_found_error", "The requested resource could not be found.")
    ]
    assert API.response_items(FACTS, b'{"type": "error"}') == [StreamError("error", "")]
    for bad in (b"", b"{", b"[]", b'"x"', b'{"content": 1}'):
        assert API.response_items(FACTS, bad) == []


# --- fuzz: nothing ever raises ------------------------------------------------------------------

_KEYS = st.sampled_from(
    [
        "type",
        "id",
        "model",
        "message",
        "usage",
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "content_block",
        "delta",
        "text",
        "partial_json",
        "thinking",
        "name",
        "input",
        "stop_reason",
        "error",
        "content",
        "system",
        "messages",
        "role",
        "tool_use_id",
        "stop_sequences",
    ]
)
_STRINGS = st.sampled_from(
    [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "message_delta",
        "error",
        "text_delta",
        "input_json_delta",
        "thinking_delta",
        "text",
        "tool_use",
        "thinking",
        "tool_result",
        "server_tool_use",
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
    _check_items(API.response_items(FACTS, data))
    assert isinstance(API.request_facts(CHAT, data), RequestFacts)


@given(JSON)
def test_fuzz_readers_need_no_exception_guard(value: Any) -> None:
    """Any JSON shape is read by type checks alone; the catch-alls in the API are a safety net only."""
    parser = API.stream_parser(FACTS)
    shapes = (
        value,
        {"type": "message_start", "message": value},
        {"type": "content_block_start", "content_block": value},
        {"type": "content_block_delta", "delta": value},
        {"type": "message_delta", "delta": value, "usage": value},
        {"type": "error", "error": value},
        {"content": value, "usage": value, "system": value, "messages": value},
        {"content": [value], "messages": [{"role": "user", "content": [value]}]},
    )
    for obj in shapes:
        raw = orjson.dumps(obj)
        _check_items(parser.on_event(SSEEvent(raw)))
        _check_items(_response_items(raw))
        assert isinstance(_request_facts(CHAT, raw), RequestFacts)
