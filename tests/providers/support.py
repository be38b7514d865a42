"""Shared checks for the provider tests: ground truth, timing, byte-exact pass-through, and fuzzing."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
import pytest
from hypothesis import strategies as st

from llmtap.observer import CallObserver
from llmtap.providers import detect
from llmtap.providers.base import ProviderAPI, StreamItem
from llmtap.wire import decoder_for
from llmtap_proxy.sim import SimServer
from tests.conftest import Captured

# Timing tolerances against the simulator's ground truth. The proxy, the simulator and the client run
# in three threads of one process; a busy machine can delay a chunk by a few milliseconds.
TTFT_SLACK_S = 0.05
ITL_SLACK_S = 0.03


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def truth(sim: SimServer, request_id: str) -> dict[str, Any]:
    record = sim.request_record(request_id)
    assert record is not None, f"no ground truth for {request_id}"
    return record


def latest_truth(sim: SimServer, endpoint_suffix: str) -> dict[str, Any]:
    """The newest ground-truth record for an endpoint (when a client hides the response headers)."""
    app = sim._runner.app
    assert app is not None
    from llmtap_proxy.sim import _STATE

    records = [r for r in app[_STATE].records.values() if r.endpoint.endswith(endpoint_suffix)]
    assert records, f"no request to {endpoint_suffix}"
    return records[-1].to_json()


async def only_span(captured: Captured):
    spans = await captured.wait_for_genai_spans(1)
    await asyncio.sleep(0.05)  # and no second one
    spans = captured.genai_spans()
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def points(captured: Captured, name: str) -> list[Any]:
    return captured.metrics().get(name, [])


def check_stream_timing(captured: Captured, attributes: Any, record: dict[str, Any]) -> None:
    """TTFT, content chunks and ITL agree with what the simulator did."""
    chunks = record["content_chunks"]
    assert attributes["llmtap.content_chunks"] == chunks
    ttft = attributes["llmtap.ttft"]
    assert record["ttft_s"] <= ttft < record["ttft_s"] + TTFT_SLACK_S, (ttft, record["ttft_s"])
    assert 0 < attributes["gen_ai.response.time_to_first_chunk"] <= ttft
    gaps = points(captured, "gen_ai.client.operation.time_per_output_chunk")
    assert sum(p.count for p in gaps) == chunks - 1  # n content chunks -> n - 1 gaps
    times = record["chunk_times_s"]
    if chunks > 1:
        measured = sum(p.sum for p in gaps)
        assert abs(measured - (times[-1] - times[0])) < ITL_SLACK_S, (measured, times)
    [ttft_point] = points(captured, "gen_ai.server.time_to_first_token")
    assert ttft_point.sum == pytest.approx(ttft)


def check_not_streamed(captured: Captured, attributes: Any) -> None:
    assert attributes["gen_ai.request.stream"] is False
    assert "llmtap.ttft" not in attributes
    assert points(captured, "gen_ai.server.time_to_first_token") == []
    assert len(points(captured, "gen_ai.client.operation.duration")) == 1


async def post_raw(url: str, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None,
                   ) -> tuple[int, dict[str, str], bytes]:
    """POST and read the whole body as bytes (no decoding of any kind)."""
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.post(url, headers=headers or {}, **kwargs) as response:
            return response.status, dict(response.headers), await response.read()


async def check_byte_exact(proxy_url: str, sim: SimServer, path: str, body: dict[str, Any],
                           headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes, dict[str, Any]]:
    """POST through the proxy; the bytes received are exactly the bytes the simulator wrote."""
    status, response_headers, raw = await post_raw(proxy_url + path, body, headers)
    record = truth(sim, response_headers["x-sim-request-id"])
    assert record["response_bytes"] == len(raw) and record["response_sha256"] == sha256(raw)
    return status, response_headers, raw, record


# --- fuzzing ----------------------------------------------------------------------------------------

class FaultSink:
    """A CallSink that records faults: the observer turns any exception from a decoder or parser into one."""

    def __init__(self) -> None:
        self.faults: list[str] = []
        self.ended = 0

    def trace_headers(self, call: CallObserver) -> dict[str, str]:
        return {}

    def on_facts(self, call: CallObserver) -> None:
        pass

    def end(self, call: CallObserver) -> None:
        self.ended += 1

    def fault(self, where: str) -> None:
        self.faults.append(where)


def observe_bytes(method: str, path: str, headers: dict[str, str], request: bytes, content_type: str,
                  chunks: Iterable[bytes], status: int = 200) -> CallObserver:
    """Run one call's bytes through the real observer, as the proxy does; assert nothing raised inside."""
    found = detect(method, path, headers)
    assert found is not None, path
    api, operation = found
    sink = FaultSink()
    call = CallObserver(api, operation, sink, None, path=path)
    call.mark_sent(1)
    call.set_request_body(request)
    call.on_response(status, {"content-type": content_type}, 2)
    t = 3
    for chunk in chunks:
        call.on_chunk(chunk, t)
        t += 1
    call.finish(t_ns=t)
    assert sink.faults == [] and sink.ended == 1
    return call


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points_ = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points_:
        pieces.append(data[last:point])
        last = point
    pieces.append(data[last:])
    return [p for p in pieces if p]


def corrupt(data: bytes, seed: int) -> bytes:
    """Flip, drop or duplicate a few bytes, deterministically."""
    if not data:
        return data
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(out)) if out else 0
        action = rng.randrange(3)
        if action == 0 and out:
            out[i] ^= 1 << rng.randrange(8)
        elif action == 1 and out:
            del out[i]
        else:
            out[i:i] = out[i:i + rng.randint(1, 8)]
    return bytes(out)


def json_values(keys: Iterable[str]) -> st.SearchStrategy[Any]:
    """JSON values whose object keys are mostly the provider's own, so fuzzing reaches its parser's depths."""
    key = st.sampled_from(sorted(set(keys))) | st.text(max_size=6)
    scalar = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False)
              | st.text(max_size=12))
    return st.recursive(
        scalar,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(key, children, max_size=5),
        max_leaves=24,
    )


def assert_items(items: Any) -> None:
    assert isinstance(items, (list, tuple))
    for item in items:
        assert isinstance(item, StreamItem.__args__)  # type: ignore[attr-defined]


def parse_all(api: ProviderAPI, stream_format: str, data: bytes, cuts: list[int]) -> list[Any]:
    """Decode and parse a whole stream directly (no observer), in the given pieces."""
    decoder = decoder_for(stream_format)
    assert decoder is not None
    parser = api.stream_parser(api.request_facts("chat", b"{}"))
    items: list[Any] = []
    for piece in split(data, cuts):
        for event in decoder.feed(piece):
            result = parser.on_event(event)
            assert_items(result)
            items.extend(result)
    for event in decoder.close():
        items.extend(parser.on_event(event))
    return items


def kinds(items: Iterable[Any], kind: type) -> list[Any]:
    return [item for item in items if type(item) is kind]


Fuzzer = Callable[..., None]
