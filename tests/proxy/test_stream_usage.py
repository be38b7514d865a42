"""The usage-event remover: exactly one event goes, every other byte passes unchanged, at any split."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from llmtap_proxy.stream_usage import UsageEventRemover, with_stream_usage

CONTENT = b'data: {"id":"1","choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}\n\n'
USAGE = b'data: {"id":"1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n'
DONE = b"data: [DONE]\n\n"


def run(stream: bytes, cuts: list[int]) -> bytes:
    remover = UsageEventRemover()
    out, last = [], 0
    for cut in sorted(set(cuts)):
        out.append(remover.feed(stream[last:cut]))
        last = cut
    out.append(remover.feed(stream[last:]))
    out.append(remover.flush())
    return b"".join(out)


@given(st.lists(st.integers(min_value=0, max_value=len(CONTENT * 3 + USAGE + DONE)), max_size=12))
def test_any_split_removes_only_the_usage_event(cuts: list[int]) -> None:
    stream = CONTENT * 3 + USAGE + DONE
    assert run(stream, cuts) == CONTENT * 3 + DONE


def test_crlf_framing_and_streams_without_usage() -> None:
    crlf = CONTENT.replace(b"\n", b"\r\n") + USAGE.replace(b"\n", b"\r\n") + DONE
    assert run(crlf, [5, 90]) == CONTENT.replace(b"\n", b"\r\n") + DONE
    assert run(CONTENT + DONE, [10]) == CONTENT + DONE


def test_a_truncated_stream_is_released_as_is() -> None:
    assert run(CONTENT + b'data: {"choi', [3]) == CONTENT + b'data: {"choi'


def test_request_rewrite_only_when_needed() -> None:
    body = orjson.dumps({"model": "m", "stream": True})
    assert orjson.loads(with_stream_usage("/v1/chat/completions", body))["stream_options"] == {"include_usage": True}
    assert with_stream_usage("/v1/responses", body) is None
    assert with_stream_usage("/v1/chat/completions", orjson.dumps({"model": "m"})) is None
    explicit = orjson.dumps({"stream": True, "stream_options": {"include_usage": False}})
    assert with_stream_usage("/v1/chat/completions", explicit) is None
    assert with_stream_usage("/v1/chat/completions", b"{not json") is None
