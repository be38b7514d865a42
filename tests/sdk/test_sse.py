"""SSEDecoder: the WHATWG event-stream rules, and chunking that never changes the result."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from llmtap.wire.sse import SSEDecoder, SSEEvent


def decode(*chunks: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events + decoder.close()


def test_lf_crlf_and_cr_line_endings() -> None:
    expected = [SSEEvent(b"a"), SSEEvent(b"b")]
    assert decode(b"data: a\n\ndata: b\n\n") == expected
    assert decode(b"data: a\r\n\r\ndata: b\r\n\r\n") == expected
    assert decode(b"data: a\r\rdata: b\r\r") == expected
    assert decode(b"data: a\r\n\rdata: b\n\r\n") == expected


def test_multi_line_data_is_joined_with_lf() -> None:
    assert decode(b"data: one\ndata: two\ndata:\n\n") == [SSEEvent(b"one\ntwo\n")]


def test_event_and_id_fields() -> None:
    events = decode(b"event: message_start\nid: 7\ndata: {}\n\ndata: x\n\n")
    # the event type resets after each event; the last event id persists (per spec)
    assert events == [SSEEvent(b"{}", "message_start", "7"), SSEEvent(b"x", "message", "7")]


def test_id_with_nul_is_ignored_and_empty_id_resets() -> None:
    assert decode(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\nid\ndata: c\n\n") == [
        SSEEvent(b"a", id="1"),
        SSEEvent(b"b", id="1"),
        SSEEvent(b"c", id=""),
    ]


def test_comments_and_unknown_fields_are_ignored() -> None:
    assert decode(b": ping\nfoo: bar\ndata: x\n: another\n\n:\n\n") == [SSEEvent(b"x")]


def test_only_one_leading_space_is_stripped_and_colons_stay_in_the_value() -> None:
    assert decode(b'data:  two spaces\n\ndata:none\n\ndata: {"a": 1}\n\n') == [
        SSEEvent(b" two spaces"),
        SSEEvent(b"none"),
        SSEEvent(b'{"a": 1}'),
    ]


def test_field_without_colon_and_event_without_data() -> None:
    # "data" alone is an empty data line, which dispatches an empty event; an event with no data
    # line dispatches nothing and its type does not leak into the next event
    assert decode(b"data\n\nevent: ping\n\ndata: x\n\n") == [SSEEvent(b""), SSEEvent(b"x")]


def test_leading_bom_is_stripped_once_even_when_split() -> None:
    assert decode(b"\xef\xbb\xbfdata: a\n\n") == [SSEEvent(b"a")]
    assert decode(b"\xef", b"\xbb", b"\xbfdata: a\n\n") == [SSEEvent(b"a")]
    assert decode(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n") == []  # a second BOM is part of a field name
    assert decode(b"data: \xef\xbb\xbfa\n\n") == [SSEEvent(b"\xef\xbb\xbfa")]


def test_retry_field() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"retry: 1500\n\nretry: soon\n\n")
    assert decoder.retry == 1500


def test_trailing_unterminated_event_is_dropped() -> None:
    assert decode(b"data: a\n\ndata: b\n") == [SSEEvent(b"a")]
    assert decode(b"data: a\n\ndata: b") == [SSEEvent(b"a")]


def test_cr_and_lf_split_across_chunks_count_once() -> None:
    assert decode(b"data: a\r", b"\n", b"\r", b"\ndata: b\r\n\r\n") == [SSEEvent(b"a"), SSEEvent(b"b")]
    assert decode(b"data: a\r", b"\rdata: b\r", b"\r") == [SSEEvent(b"a"), SSEEvent(b"b")]


def test_events_are_returned_by_the_chunk_that_completes_them() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"\ndata: b\n\nda") == [SSEEvent(b"a"), SSEEvent(b"b")]
    assert decoder.feed(b"") == []
    assert decoder.feed(b"ta: c\n\n") == [SSEEvent(b"c")]


def test_oversized_event_is_dropped() -> None:
    decoder = SSEDecoder(max_event_bytes=8)
    assert decoder.feed(b"data: 0123456789abcdef") == []
    assert decoder.overflowed
    assert decoder.feed(b"\n\ndata: ok\n\n") == [SSEEvent(b"ok")]


# --- property: any chunking of a valid stream decodes to the events it was built from ---------

_VALUE = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=12)
_ENDINGS = ("\n", "\r\n", "\r")
_FIELDS = ("data", "data", "data:", "event", "id", "comment", "retry", "other")


@st.composite
def sse_streams(draw: st.DrawFn) -> tuple[bytes, list[SSEEvent], int | None]:
    """A stream with random fields and a random line ending per line, and the events it holds."""
    lines: list[str] = []
    expected: list[SSEEvent] = []
    last_id: str | None = None
    retry: int | None = None
    retry_after: list[int | None] = []  # the retry value once each line is read
    count = draw(st.integers(1, 6))
    for n in range(count):
        terminated = n < count - 1 or draw(st.booleans())
        data: list[str] = []
        event_type = ""
        for _ in range(draw(st.integers(0, 5))):
            field = draw(st.sampled_from(_FIELDS))
            value = draw(_VALUE)
            if field == "data":
                lines.append(f"data: {value}")
                data.append(value)
            elif field == "data:":  # no space after the colon: at most one leading space is dropped
                lines.append(f"data:{value}")
                data.append(value[1:] if value.startswith(" ") else value)
            elif field == "event":
                lines.append(f"event: {value}")
                event_type = value
            elif field == "id":
                lines.append(f"id: {value}")
                if "\x00" not in value:
                    last_id = value
            elif field == "comment":
                lines.append(f":{value}")
            elif field == "retry":
                number = draw(st.integers(0, 10**6))
                lines.append(f"retry: {number}")
                retry = number
            else:
                lines.append(f"x-{value.replace(':', '')}: {value}")
            retry_after.append(retry)
        if not terminated:  # the stream ends inside this event: it is never dispatched
            break
        lines.append("")
        retry_after.append(retry)
        if data:
            expected.append(SSEEvent("\n".join(data).encode(), event_type or "message", last_id))
    parts: list[str] = []
    previous = ""
    for line in lines:
        # CR followed by an empty LF-terminated line would read as one CRLF: avoid that ambiguity
        choices = _ENDINGS[1:] if previous == "\r" and line == "" else _ENDINGS
        previous = draw(st.sampled_from(choices))
        parts.append(line + previous)
    if lines and lines[-1] != "" and draw(st.booleans()):
        parts[-1] = lines[-1]  # the unterminated last line of an unfinished event is never read
        retry = retry_after[-2] if len(lines) > 1 else None
    prefix = "\ufeff" if draw(st.booleans()) else ""
    return (prefix + "".join(parts)).encode(), expected, retry


def _decode_split(stream: bytes, cuts: list[int]) -> tuple[list[SSEEvent], int | None]:
    decoder = SSEDecoder()
    bounds = [0, *sorted(set(cuts)), len(stream)]
    events: list[SSEEvent] = []
    for start, end in itertools.pairwise(bounds):
        events += decoder.feed(stream[start:end])
    return events + decoder.close(), decoder.retry


@settings(max_examples=300)
@given(sse_streams(), st.data())
def test_any_chunking_yields_the_generated_events(
    generated: tuple[bytes, list[SSEEvent], int | None], data: st.DataObject
) -> None:
    stream, expected, retry = generated
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    assert _decode_split(stream, []) == (expected, retry)
    assert _decode_split(stream, cuts) == (expected, retry)
    assert _decode_split(stream, list(range(1, len(stream)))) == (expected, retry)  # 1-byte chunks
