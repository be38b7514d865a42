"""The new stream framings: NDJSON, streamed JSON arrays and AWS event-stream (checked against botocore)."""

from __future__ import annotations

import json
import struct
import time
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmtap.wire import DECODERS, decoder_for
from llmtap.wire.aws_eventstream import AWSEventStreamDecoder, encode_message
from llmtap.wire.json_array import JSONArrayDecoder
from llmtap.wire.ndjson import NDJSONDecoder
from tests.providers.support import split

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUND_TRIP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)


def feed_all(decoder, pieces):
    events = []
    for piece in pieces:
        events += decoder.feed(piece)
    return events + decoder.close()


def test_registered_formats() -> None:
    assert set(DECODERS) == {"sse", "ndjson", "json-array", "aws-eventstream"}
    assert isinstance(decoder_for("ndjson"), NDJSONDecoder)
    assert isinstance(decoder_for("json-array"), JSONArrayDecoder)
    assert isinstance(decoder_for("aws-eventstream"), AWSEventStreamDecoder)
    assert decoder_for("nope") is None


# --- NDJSON -----------------------------------------------------------------------------------------

# Lines as Ollama's API reference shows them (https://github.com/ollama/ollama/blob/main/docs/api.md, "Chat
# request (streaming)"), with a CRLF, a blank line and a last line without its newline.
OLLAMA_LINES = [
    b'{"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00","message":{"role":"assistant",'
    b'"content":"The"},"done":false}',
    b'{"model":"llama3.2","created_at":"2023-08-04T19:22:45.499127Z","message":{"role":"assistant","content":""},'
    b'"done":true,"total_duration":4883583458,"load_duration":1334875,"prompt_eval_count":26,'
    b'"prompt_eval_duration":342546000,"eval_count":282,"eval_duration":4535599000}',
]


def test_ndjson_lines_at_every_split_point() -> None:
    raw = OLLAMA_LINES[0] + b"\r\n\n" + OLLAMA_LINES[1]
    for cut in range(len(raw) + 1):
        events = feed_all(NDJSONDecoder(), [raw[:cut], raw[cut:]])
        assert [e.data for e in events] == OLLAMA_LINES


def test_ndjson_overlong_line_is_dropped_and_decoding_resumes() -> None:
    decoder = NDJSONDecoder(max_event_bytes=10)
    events = feed_all(decoder, [b'{"a":1}\n{"long":', b'"xxxxxxxxxxxxxxxx"}\n{"b":2}\n'])
    assert [e.data for e in events] == [b'{"a":1}', b'{"b":2}'] and decoder.overflowed
    decoder = NDJSONDecoder(max_event_bytes=10)
    assert feed_all(decoder, [b"x" * 25 + b"\n", b'{"c":3}']) == feed_all(NDJSONDecoder(), [b'{"c":3}'])


@ROUND_TRIP
@given(st.lists(JSON, max_size=5), st.lists(st.integers(0, 10_000), max_size=8))
def test_ndjson_round_trip(values, cuts) -> None:
    raw = b"".join(json.dumps(v).encode() + b"\n" for v in values)
    assert [json.loads(e.data) for e in feed_all(NDJSONDecoder(), split(raw, cuts))] == values


@FUZZ
@given(st.binary(max_size=400), st.lists(st.integers(0, 500), max_size=8))
def test_ndjson_never_raises(data, cuts) -> None:
    decoder = NDJSONDecoder(max_event_bytes=64)
    for event in feed_all(decoder, split(data, cuts)):
        assert event.data and b"\n" not in event.data and len(event.data) <= 64


# --- streamed JSON array ----------------------------------------------------------------------------

def gemini_array(elements: list[dict]) -> bytes:
    """The framing of Gemini's streamGenerateContent without alt=sse: pretty-printed elements, ",\\r\\n"."""
    return b"[" + b"\n,\r\n".join(json.dumps(e, indent=2).encode() for e in elements) + b"\n]"


def test_json_array_elements_at_every_split_point() -> None:
    elements = [
        {"candidates": [{"content": {"parts": [{"text": 'tricky "quotes" ] } [ { \\ '}], "role": "model"}}]},
        {"candidates": [{"finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 2}},
    ]
    raw = gemini_array(elements)
    for cut in range(len(raw) + 1):
        for second in (cut, min(cut + 3, len(raw))):
            events = feed_all(JSONArrayDecoder(), [raw[:cut], raw[cut:second], raw[second:]])
            assert [json.loads(e.data) for e in events] == elements


def test_json_array_escape_split_across_chunks() -> None:
    raw = b'[{"t":"a\\"]"},{"u":1}]'
    backslash = raw.index(b"\\")
    events = feed_all(JSONArrayDecoder(), [raw[:backslash + 1], raw[backslash + 1:]])
    assert [json.loads(e.data) for e in events] == [{"t": 'a"]'}, {"u": 1}]


def test_json_array_top_level_object_scalars_and_stray_closers() -> None:
    error = b'{"error": {"code": 500}}'
    assert [e.data for e in feed_all(JSONArrayDecoder(), [b" " + error])] == [error]
    assert [e.data for e in feed_all(JSONArrayDecoder(), [b']}[1, "x", {"a": [2]}, null]'])] == [b'{"a": [2]}']


def test_json_array_overlong_element_is_dropped() -> None:
    decoder = JSONArrayDecoder(max_event_bytes=20)
    big = json.dumps({"text": "x" * 100}).encode()
    events = feed_all(decoder, [b'[{"a":1},', big[:30], big[30:], b',{"b":2}]'])
    assert [json.loads(e.data) for e in events] == [{"a": 1}, {"b": 2}] and decoder.overflowed


def test_json_array_is_linear_in_its_input() -> None:
    """One large element fed in small chunks: the work must not grow with the square of its size."""
    element = json.dumps({"text": "y" * 400_000}).encode()
    raw = b"[" + element + b"]"
    started = time.perf_counter()
    events = feed_all(JSONArrayDecoder(), [raw[i:i + 64] for i in range(0, len(raw), 64)])
    assert [e.data for e in events] == [element]
    assert time.perf_counter() - started < 2.0


@ROUND_TRIP
@given(st.lists(st.dictionaries(st.text(max_size=6), JSON, max_size=3), max_size=4),
       st.lists(st.integers(0, 10_000), max_size=8))
def test_json_array_round_trip(elements, cuts) -> None:
    raw = gemini_array(elements)
    assert [json.loads(e.data) for e in feed_all(JSONArrayDecoder(), split(raw, cuts))] == elements


@FUZZ
@given(st.binary(max_size=400) | st.text(alphabet='[]{}",:\\ ab1', max_size=200).map(str.encode),
       st.lists(st.integers(0, 500), max_size=8))
def test_json_array_never_raises(data, cuts) -> None:
    decoder = JSONArrayDecoder(max_event_bytes=64)
    for event in feed_all(decoder, split(data, cuts)):
        assert event.data[:1] in (b"{", b"[") and len(event.data) <= 64


# --- AWS event-stream, against botocore -------------------------------------------------------------

botocore_eventstream = pytest.importorskip("botocore.eventstream")

# Header value encoders for every type the format defines (AWS "Event stream encoding").
HEADER_VALUES = st.one_of(
    st.tuples(st.just(0), st.just(b"")), st.tuples(st.just(1), st.just(b"")),
    st.tuples(st.just(2), st.binary(min_size=1, max_size=1)), st.tuples(st.just(3), st.binary(min_size=2, max_size=2)),
    st.tuples(st.just(4), st.binary(min_size=4, max_size=4)), st.tuples(st.just(5), st.binary(min_size=8, max_size=8)),
    st.tuples(st.just(6), st.binary(max_size=20).map(lambda b: struct.pack("!H", len(b)) + b)),
    st.tuples(st.just(7), st.text(max_size=20).map(lambda t: struct.pack("!H", len(t.encode())) + t.encode())),
    st.tuples(st.just(8), st.binary(min_size=8, max_size=8)),
    st.tuples(st.just(9), st.binary(min_size=16, max_size=16)),
)


def raw_message(headers: list[tuple[str, int, bytes]], payload: bytes) -> bytes:
    encoded = b"".join(bytes((len(n.encode()),)) + n.encode() + bytes((t,)) + v for n, t, v in headers)
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack("!II", total, len(encoded))
    prelude += struct.pack("!I", zlib.crc32(prelude))
    message = prelude + encoded + payload
    return message + struct.pack("!I", zlib.crc32(message))


def botocore_events(raw: bytes) -> list[tuple[str, bytes]]:
    buffer = botocore_eventstream.EventStreamBuffer()
    buffer.add_data(raw)
    out = []
    for message in buffer:
        headers = message.headers
        kind = headers.get(":message-type", "event")
        name = headers.get(":exception-type") if kind == "exception" else headers.get(":event-type")
        out.append((name, message.payload))
    return out


MESSAGE = st.tuples(
    st.sampled_from(["event", "exception"]),
    st.sampled_from(["contentBlockDelta", "chunk", "metadata", "throttlingException"]),
    st.lists(st.tuples(st.sampled_from(["x-a", "x-b", "x-c"]), HEADER_VALUES), max_size=3, unique_by=lambda h: h[0]),
    st.binary(max_size=300),
)


@settings(max_examples=80, deadline=None)
@given(st.lists(MESSAGE, min_size=1, max_size=4), st.lists(st.integers(0, 5000), max_size=10))
def test_event_stream_matches_botocore(messages, cuts) -> None:
    raw = b""
    for message_type, name, extra, payload in messages:
        key = ":exception-type" if message_type == "exception" else ":event-type"
        headers = [(":message-type", 7, struct.pack("!H", len(message_type)) + message_type.encode()),
                   (key, 7, struct.pack("!H", len(name)) + name.encode())]
        headers += [(n, t, v) for n, (t, v) in extra]
        raw += raw_message(headers, payload)
    decoder = AWSEventStreamDecoder()
    ours = [(e.event, e.data) for e in feed_all(decoder, split(raw, cuts))]
    assert ours == botocore_events(raw)
    assert not decoder.overflowed and not decoder.corrupted


def test_event_stream_bad_crcs_and_limits() -> None:
    good = encode_message({":event-type": "chunk", ":message-type": "event"}, b'{"bytes":"e30="}')
    flipped_payload = bytearray(good)
    flipped_payload[-6] ^= 1  # the message CRC no longer matches: botocore raises, we skip that message
    with pytest.raises(botocore_eventstream.ChecksumMismatch):
        botocore_events(bytes(flipped_payload))
    decoder = AWSEventStreamDecoder()
    assert [e.data for e in feed_all(decoder, [bytes(flipped_payload) + good])] == [b'{"bytes":"e30="}']
    assert decoder.overflowed and not decoder.corrupted

    flipped_prelude = bytearray(good)
    flipped_prelude[2] ^= 1  # the prelude CRC fails: lengths can't be trusted, decoding stops
    decoder = AWSEventStreamDecoder()
    assert feed_all(decoder, [bytes(flipped_prelude) + good]) == [] and decoder.corrupted

    decoder = AWSEventStreamDecoder(max_payload_bytes=8)  # over the limit: skipped without buffering it
    small = encode_message({":event-type": "x"}, b"{}")
    assert [e.data for e in feed_all(decoder, [good[:5], good[5:20], good[20:] + small])] == [b"{}"]
    assert decoder.overflowed


def test_event_stream_error_message_type() -> None:
    raw = encode_message({":message-type": "error", ":error-code": "InternalFailure",
                          ":error-message": "An internal error occurred"}, b"")
    [event] = feed_all(AWSEventStreamDecoder(), [raw])
    assert (event.event, event.data) == ("InternalFailure", b"An internal error occurred")


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(0, 700), max_size=8), st.integers(0, 2))
def test_event_stream_never_raises(data, cuts, prefix) -> None:
    if prefix:  # start from a valid message so the fuzz reaches past the prelude check
        data = encode_message({":event-type": "contentBlockDelta"}, b'{"delta":{"text":"x"}}') * prefix + data
    decoder = AWSEventStreamDecoder(max_payload_bytes=1024)
    for event in feed_all(decoder, split(data, cuts)):
        assert isinstance(event.event, str)
