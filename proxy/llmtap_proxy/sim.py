"""A simulated LLM backend that speaks the wire formats llmtap reads, with exact timing.

Used by the tests, by `llmtap demo`, by the latency benchmarks and by the accuracy suite. Each
generation request produces deterministic words (" alpha", " bravo", ...), one "token" per word.
Streams send their preamble (headers, role chunk / message_start / response.created ...) on
arrival, then content chunk i at the absolute time ``arrival + ttft + i * itl`` (+ optional seeded
jitter), so timing errors never accumulate. Every stream event is one write, hence one HTTP chunk.

Named models (docs/simulator.md): a request whose model is one of the named models
(`sim_model.BUILTIN_MODELS`: sim-fast, sim-medium, sim-large, sim-chunky, sim-local, extended or
overridden by $LLMTAP_SIM_MODELS for `llmtap sim`) is timed by that model's performance model:
TTFT = model load when cold + wait for a batch slot + base + input tokens / prefill rate; each gap
= the model's ITL slowed by the number of streams decoding (continuous batching); its usage
reports words x the model's tokenizer ratio. Any other model name gets the SimProfile below, as
before. Explicit knobs (headers or body "sim") always win over the model: x-sim-ttft-ms replaces
the whole modelled TTFT (load, queue and prefill), x-sim-itl-ms the modelled ITL, and so on.

APIs and framings:

    POST /v1/chat/completions, /v1/completions, /v1/responses   OpenAI (SSE)
    POST /v1/messages                                           Anthropic Messages (SSE)
    POST /v1/embeddings                                         OpenAI embeddings
    POST /openai/deployments/{deployment}/chat/completions      Azure OpenAI (SSE; /embeddings too)
    POST /v1beta/models/{model}:generateContent                 Gemini API (also /v1/models/...), and
         .../models/{model}:streamGenerateContent               Vertex AI under /v1[beta1]/projects/{p}/
                                                                locations/{l}/publishers/google/models/...;
                                                                SSE with ?alt=sse, else a streamed JSON array
    POST /model/{modelId}/converse, /converse-stream            Bedrock Converse (AWS event-stream)
    POST /model/{modelId}/invoke, /invoke-with-response-stream  Bedrock InvokeModel, Anthropic Claude body
    POST /api/chat, /api/generate                               Ollama (NDJSON)
    POST /generate, /generate_stream                            Hugging Face TGI (SSE)
    POST /v2/chat                                               Cohere v2 chat (SSE)

Per-request knobs, as headers (which win) or as the body field ``"sim": {...}``:

    header                    body key           meaning
    x-sim-ttft-ms             ttft_ms            arrival -> first content chunk
    x-sim-itl-ms              itl_ms             gap between content chunks
    x-sim-tokens              tokens             output tokens (capped by max_tokens)
    x-sim-tokens-per-chunk    tokens_per_chunk   tokens per content chunk
    x-sim-jitter-ms           jitter_ms          seeded delay in [0, jitter] added to each chunk
    x-sim-status              status             answer with this HTTP error status
    x-sim-fail-after          fail_after         close the connection after N content chunks
    x-sim-error-event         error_event        send an in-stream error event after N chunks
    x-sim-load-ms             load_ms            simulated model load before the first token (all APIs;
                                                 Ollama reports it as load_duration)

Ground truth: every model response carries ``x-sim-request-id``; ``GET /_sim/requests/{id}``
returns what the simulator actually did (``GET /_sim/requests?after=SEQ``: all kept records after
that sequence number), ``GET /_sim/stats`` the request counts and each named model's live state,
and ``GET /_sim/models`` the named models' profiles. A record holds the send time of every content
chunk (seconds after arrival, taken just before the write) and the model's intent beside it
(expected_chunk_times_s, expected_ttft_s, cold_start, load_s, queue_s, prefill_s, the concurrency
it saw), the token counts it reported, and arrival_monotonic_s, its arrival on time.perf_counter(),
which other processes on the same host read too. It also holds SHA-256 digests of the request
body, of the Authorization header and of the response body as written, so a test can prove
byte-exact pass-through (and untouched SigV4 signatures) without the simulator keeping secrets.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import math
import random
import secrets
import signal
import struct
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

import orjson
from aiohttp import web

from llmtap.wire.aws_eventstream import encode_message
from llmtap_proxy.sim_model import (
    BUILTIN_MODELS,
    ModelSpec,
    ModelState,
    load_models,
    reported_tokens,
    words_for_limit,
)

__all__ = ["SimProfile", "SimServer", "create_app", "run_sim", "start_sim"]

_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
    "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu amber cobalt "
    "crimson indigo ivory jade lemon maroon olive pearl ruby saffron teal violet river stone "
    "cloud field forest meadow valley harbor island canyon desert glacier summit prairie "
    "lantern compass anchor beacon signal vector"
)
VOCAB: tuple[str, ...] = tuple(" " + w for w in _WORDS.split())
EMBEDDING_DIM = 8
MAX_RECORDS = 10_000


@dataclass
class SimProfile:
    """Default behaviour of the simulated model; each request may override it (see module doc)."""

    ttft_ms: float = 50.0
    itl_ms: float = 20.0
    output_tokens: int = 64
    tokens_per_chunk: int = 1
    jitter_ms: float = 0.0
    seed: int = 0
    model: str = "sim-small"


@dataclass(slots=True)
class _Knobs:
    ttft_ms: float
    itl_ms: float
    tokens: int
    tokens_per_chunk: int
    jitter_ms: float
    status: int | None = None
    fail_after: int | None = None
    error_event: int | None = None
    load_ms: float = 0.0
    explicit: frozenset[str] = frozenset()  # the knobs the request set (they override a named model)


_KNOB_TYPES: dict[str, type] = {f.name: (float if f.name.endswith("_ms") else int) for f in fields(_Knobs)
                                if f.name != "explicit"}
_HEADER_KNOBS: dict[str, str] = {"x-sim-" + name.replace("_", "-"): name for name in _KNOB_TYPES}
_MAX_KNOB = 1_000_000  # ms, tokens or chunks: bounds memory and sleeps
_KNOB_RANGES: dict[str, tuple[int, int]] = {"tokens_per_chunk": (1, _MAX_KNOB), "status": (400, 599)}


def _knobs(profile: SimProfile, headers: Mapping[str, str], sim: Any) -> _Knobs:
    """Profile defaults, overridden by body["sim"], overridden by x-sim-* headers."""
    knobs = _Knobs(profile.ttft_ms, profile.itl_ms, profile.output_tokens, profile.tokens_per_chunk,
                   profile.jitter_ms)
    overrides: dict[str, Any] = {}
    if isinstance(sim, dict):
        overrides.update({k: v for k, v in sim.items() if k in _KNOB_TYPES and v is not None})
    for header, name in _HEADER_KNOBS.items():
        value = headers.get(header)
        if value is not None:
            overrides[name] = value
    for name, value in overrides.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        low, high = _KNOB_RANGES.get(name, (0, _MAX_KNOB))
        if not low <= number <= high:  # also rejects nan
            raise ValueError(f"invalid simulator knob {name}={value!r} (allowed: {low}..{high})")
        setattr(knobs, name, _KNOB_TYPES[name](number))
    knobs.explicit = frozenset(overrides)
    return knobs


class _Record:
    """Ground truth for one request: what the simulator did, and when (seconds since arrival)."""

    __slots__ = ("arrival_monotonic_s", "authorization_sha256", "cancelled_at_s", "chunk_times_s", "cold_start",
                 "concurrency_at_arrival", "decoding_at_first_token", "decoding_max", "end_s", "endpoint",
                 "expected_chunk_times_s", "first_byte_s", "http_status", "id", "input_tokens", "input_words",
                 "load_s", "model", "output_tokens", "output_words", "prefill_s", "queue_s", "request_sha256",
                 "response_bytes", "response_hash", "response_id", "seq", "sim_model", "status", "stream",
                 "tokens_per_chunk", "tokens_per_word")

    def __init__(self, request_id: str, seq: int, endpoint: str) -> None:
        self.id = request_id
        self.seq = seq
        self.endpoint = endpoint
        self.model: str | None = None
        self.stream = False
        self.http_status = 200
        self.status = "active"
        self.first_byte_s: float | None = None
        self.chunk_times_s: list[float] = []
        self.input_tokens = 0
        self.output_tokens = 0
        self.cancelled_at_s: float | None = None
        self.end_s: float | None = None
        # Digests, so tests can prove byte-exact pass-through without the simulator keeping secrets:
        self.request_sha256: str | None = None  # the request body as received
        self.authorization_sha256: str | None = None  # the Authorization header as received
        self.response_hash = hashlib.sha256()  # the response body bytes as written
        self.response_bytes = 0
        # The performance model's side (see sim_model): what it intended, and the state it saw.
        self.arrival_monotonic_s = 0.0  # time.perf_counter() at arrival: the same clock as other processes here
        self.response_id: str | None = None  # the id in the response body (chatcmpl-..., msg_...)
        self.sim_model: str | None = None  # the named model whose profile applied; None: the SimProfile defaults
        self.cold_start = False  # this request triggered a simulated model load
        self.load_s = 0.0  # waited for a model load (its own or one in progress)
        self.queue_s = 0.0  # waited for a batch slot
        self.prefill_s = 0.0  # fixed cost + prefill, as modelled
        self.expected_chunk_times_s: list[float] = []  # when each content chunk was due (chunk_times_s: sent)
        self.concurrency_at_arrival = 0  # requests in flight to this model at arrival, itself included
        self.decoding_at_first_token = 0  # streams of this model decoding when the first chunk was due
        self.decoding_max = 0  # the most streams decoding at any chunk of this request
        self.input_words = 0
        self.output_words = 0
        self.tokens_per_word = 1.0
        self.tokens_per_chunk = 1

    def wrote(self, data: bytes) -> None:
        self.response_hash.update(data)
        self.response_bytes += len(data)

    def to_json(self) -> dict[str, Any]:
        times, expected = self.chunk_times_s, self.expected_chunk_times_s
        return {
            "id": self.id, "endpoint": self.endpoint, "model": self.model, "stream": self.stream,
            "http_status": self.http_status, "status": self.status,
            "ttft_s": times[0] if times else None, "first_byte_s": self.first_byte_s,
            "chunk_times_s": times, "content_chunks": len(times),
            "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
            "cancelled_at_s": self.cancelled_at_s, "end_s": self.end_s,
            "request_sha256": self.request_sha256, "authorization_sha256": self.authorization_sha256,
            "response_sha256": self.response_hash.hexdigest(), "response_bytes": self.response_bytes,
            "seq": self.seq, "response_id": self.response_id, "arrival_monotonic_s": self.arrival_monotonic_s,
            "sim_model": self.sim_model, "cold_start": self.cold_start, "load_s": self.load_s,
            "queue_s": self.queue_s, "prefill_s": self.prefill_s,
            "expected_ttft_s": expected[0] if expected else None, "expected_chunk_times_s": expected,
            "concurrency_at_arrival": self.concurrency_at_arrival,
            "decoding_at_first_token": self.decoding_at_first_token, "decoding_max": self.decoding_max,
            "input_words": self.input_words, "output_words": self.output_words,
            "tokens_per_word": self.tokens_per_word, "tokens_per_chunk": self.tokens_per_chunk,
        }


class _ModelRuntime:
    """A named model's live state plus its FIFO of requests waiting for a batch slot."""

    __slots__ = ("state", "waiters")

    def __init__(self, spec: ModelSpec) -> None:
        self.state = ModelState(spec)
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> bool:
        """Take a batch slot, waiting in arrival order when all are held. True if it had to wait."""
        if not self.waiters and self.state.admit():
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter  # release() hands its slot over: `admitted` already counts this request
            return True
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as the client went away: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
            raise

    def release(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.state.release()


class _State:
    def __init__(self, profile: SimProfile, models: Mapping[str, ModelSpec]) -> None:
        self.profile = profile
        self.models = dict(models)
        self.runtimes: dict[str, _ModelRuntime] = {}
        self.tag = secrets.token_hex(3)
        self.count = 0
        self.active = 0
        self.records: OrderedDict[str, _Record] = OrderedDict()

    def runtime(self, model: str) -> _ModelRuntime | None:
        """The live state of a named model; None for a name that is not one (the SimProfile applies)."""
        runtime = self.runtimes.get(model)
        if runtime is None:
            spec = self.models.get(model)
            if spec is None:
                return None
            runtime = self.runtimes[model] = _ModelRuntime(spec)
        return runtime

    def open(self, endpoint: str) -> _Record:
        self.count += 1
        self.active += 1
        rec = _Record(f"{self.tag}-{self.count}", self.count, endpoint)
        self.records[rec.id] = rec
        if len(self.records) > MAX_RECORDS:
            self.records.popitem(last=False)
        return rec


_STATE = web.AppKey("llmtap_sim_state", _State)


@dataclass(slots=True)
class _Call:
    """One generation request, parsed: facts plus the pre-cut output chunks."""

    id: str
    model: str
    created: int
    input_tokens: int
    max_tokens: int | None
    include_usage: bool = False
    output_tokens: int = 0
    limited: bool = False
    chunks: list[bytes] = field(default_factory=list)  # JSON-safe ASCII text of each content chunk
    stream: bool = False
    seed: int | None = None  # the request's sampling seed, where the API keeps it (else body["seed"])
    variant: str = ""  # the API's own sub-format (Gemini: "sse" or "json"; Ollama: "chat" or "generate")
    load_s: float = 0.0  # simulated model load time (the load_ms knob)
    times: list[float] = field(default_factory=list)  # content chunk times so far (ground truth)
    elapsed_s: float = 0.0  # time since arrival when the epilogue or body is rendered

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode()


def _words(value: Any) -> int:
    """Whitespace-separated words in prompt text: strings, token arrays, content parts, messages."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, int) and not isinstance(value, bool):
        return 1  # one token id of a pre-tokenised prompt
    if isinstance(value, list):
        return sum(_words(v) for v in value)
    if isinstance(value, dict):
        return _words(value.get("content")) + _words(value.get("text"))
    return 0


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _event(name: str, obj: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def _rev(kind: str, seq: int, **data: Any) -> bytes:
    """One Responses API event: `event: kind`, with "type" and "sequence_number" in the data."""
    return _event(kind, {"type": kind, "sequence_number": seq, **data})


def _q(text: bytes) -> bytes:
    """JSON string literal for ASCII text that needs no escaping (vocabulary words)."""
    return b'"' + text + b'"'


# --- API families -----------------------------------------------------------------------------------

class _Api:
    """One API family: parse the request, render stream events and the non-streaming body."""

    id_prefix = ""
    anthropic = False
    content_type = "text/event-stream"  # of a streamed response

    def setup(self, request: web.Request, body: dict[str, Any], call: _Call) -> None:
        """Read what the path, query or body say beyond the generation parameters (model, stream)."""
        call.stream = body.get("stream") is True

    def parse(self, body: dict[str, Any], call: _Call) -> None:
        raise NotImplementedError

    def stream_headers(self, c: _Call) -> dict[str, str]:
        return {"Content-Type": self.content_type, "Cache-Control": "no-cache"}

    def response_headers(self, c: _Call) -> dict[str, str]:
        return {("request-id" if self.anthropic else "x-request-id"): c.id}

    def error_headers(self, status: int) -> dict[str, str]:
        return {}

    def preamble(self, c: _Call) -> list[bytes]:
        raise NotImplementedError

    def chunk_maker(self, c: _Call) -> Callable[[int, bytes], bytes]:
        raise NotImplementedError

    def epilogue(self, c: _Call) -> list[bytes]:
        raise NotImplementedError

    def error_event(self, c: _Call, sent: int) -> bytes:
        return _sse({"error": _openai_error(500, "The simulated server had an error mid-stream.")["error"]})

    def body(self, c: _Call) -> dict[str, Any]:
        raise NotImplementedError

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return _openai_error(status, message)


_OPENAI_ERRORS = {
    400: ("invalid_request_error", None), 401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_denied", None), 404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"), 500: ("server_error", None), 503: ("server_error", None),
}
_ANTHROPIC_ERRORS = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
    529: "overloaded_error",
}


def _openai_error(status: int, message: str) -> dict[str, Any]:
    default = ("server_error" if status >= 500 else "invalid_request_error", None)
    kind, code = _OPENAI_ERRORS.get(status, default)
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _anthropic_error(status: int, message: str) -> dict[str, Any]:
    kind = _ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def _openai_usage(c: _Call) -> dict[str, int]:
    return {"prompt_tokens": c.input_tokens, "completion_tokens": c.output_tokens,
            "total_tokens": c.input_tokens + c.output_tokens}


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


class _OpenAIChunks(_Api):
    """Shared shape of chat and legacy completion chunks: a JSON head, one choice, a tail."""

    object_name = ""

    def _frame(self, c: _Call) -> tuple[bytes, bytes]:
        head = (b'data: {"id":' + orjson.dumps(c.id) + b',"object":"' + self.object_name.encode()
                + b'","created":' + str(c.created).encode() + b',"model":' + orjson.dumps(c.model)
                + b',"system_fingerprint":null,"choices":[')
        tail = b"]" + (b',"usage":null' if c.include_usage else b"") + b"}\n\n"
        return head, tail

    def _choice(self, c: _Call, choice: bytes) -> bytes:
        head, tail = self._frame(c)
        return head + choice + tail

    def epilogue(self, c: _Call) -> list[bytes]:
        reason = b'"length"' if c.limited else b'"stop"'
        events = [self._choice(c, self._finish_choice(reason))]
        if c.include_usage:
            usage_chunk = {"id": c.id, "object": self.object_name, "created": c.created, "model": c.model,
                           "system_fingerprint": None, "choices": [], "usage": _openai_usage(c)}
            events.append(_sse(usage_chunk))
        events.append(b"data: [DONE]\n\n")
        return events

    def _finish_choice(self, reason: bytes) -> bytes:
        raise NotImplementedError


class _Chat(_OpenAIChunks):
    id_prefix = "chatcmpl-"
    object_name = "chat.completion.chunk"

    def parse(self, body: dict[str, Any], call: _Call) -> None:
        call.input_tokens = _words(body.get("messages"))
        limit = _int_or_none(body.get("max_completion_tokens"))
        call.max_tokens = limit if limit is not None else _int_or_none(body.get("max_tokens"))
        call.include_usage = _include_usage(body)

    def preamble(self, c: _Call) -> list[bytes]:
        role = b'{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}'
        return [self._choice(c, role)]

    def chunk_maker(self, c: _Call) -> Callable[[int, bytes], bytes]:
        head, tail = self._frame(c)
        head += b'{"index":0,"delta":{"content":'
        tail = b'},"logprobs":null,"finish_reason":null}' + tail
        return lambda _i, text: head + _q(text) + tail

    def _finish_choice(self, reason: bytes) -> bytes:
        return b'{"index":0,"delta":{},"logprobs":null,"finish_reason":' + reason + b"}"

    def body(self, c: _Call) -> dict[str, Any]:
        message = {"role": "assistant", "content": c.text, "refusal": None, "annotations": []}
        return {
            "id": c.id, "object": "chat.completion", "created": c.created, "model": c.model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "length" if c.limited else "stop"}],
            "usage": _openai_usage(c), "system_fingerprint": None,
        }


class _Completions(_OpenAIChunks):
    id_prefix = "cmpl-"
    object_name = "text_completion"

    def parse(self, body: dict[str, Any], call: _Call) -> None:
        call.input_tokens = _words(body.get("prompt"))
        call.max_tokens = _int_or_none(body.get("max_tokens"))
        call.include_usage = _include_usage(body)

    def preamble(self, c: _Call) -> list[bytes]:
        return []

    def chunk_maker(self, c: _Call) -> Callable[[int, bytes], bytes]:
        head, tail = self._frame(c)
        head += b'{"text":'
        tail = b',"index":0,"logprobs":null,"finish_reason":null}' + tail
        return lambda _i, text: head + _q(text) + tail

    def _finish_choice(self, reason: bytes) -> bytes:
        return b'{"text":"","index":0,"logprobs":null,"finish_reason":' + reason + b"}"

    def body(self, c: _Call) -> dict[str, Any]:
        return {
            "id": c.id, "object": "text_completion", "created": c.created, "model": c.model,
            "choices": [{"text": c.text, "index": 0, "logprobs": None,
                         "finish_reason": "length" if c.limited else "stop"}],
            "usage": _openai_usage(c), "system_fingerprint": None,
        }


class _Responses(_Api):
    """OpenAI Responses API. A capped output ends as status "incomplete", as OpenAI does."""

    id_prefix = "resp_"

    def parse(self, body: dict[str, Any], call: _Call) -> None:
        call.input_tokens = _words(body.get("instructions")) + _words(body.get("input"))
        call.max_tokens = _int_or_none(body.get("max_output_tokens"))

    @staticmethod
    def _item_id(c: _Call) -> str:
        return "msg_" + c.id.removeprefix("resp_")

    def _item(self, c: _Call, done: bool) -> dict[str, Any]:
        content = [self._part(c.text)] if done else []
        status = ("incomplete" if c.limited else "completed") if done else "in_progress"
        return {"id": self._item_id(c), "type": "message", "status": status, "role": "assistant",
                "content": content}

    @staticmethod
    def _part(text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def _response(self, c: _Call, done: bool) -> dict[str, Any]:
        status = ("incomplete" if c.limited else "completed") if done else "in_progress"
        usage = {
            "input_tokens": c.input_tokens, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": c.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": c.input_tokens + c.output_tokens,
        }
        return {
            "id": c.id, "object": "response", "created_at": c.created, "status": status, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if done and c.limited else None,
            "instructions": None, "max_output_tokens": c.max_tokens, "model": c.model,
            "output": [self._item(c, True)] if done else [], "parallel_tool_calls": True,
            "previous_response_id": None, "reasoning": {"effort": None, "summary": None}, "store": False,
            "temperature": 1.0, "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
            "top_p": 1.0, "truncation": "disabled", "usage": usage if done else None, "user": None,
            "metadata": {},
        }

    def _ids(self, c: _Call) -> dict[str, Any]:
        return {"item_id": self._item_id(c), "output_index": 0, "content_index": 0}

    def preamble(self, c: _Call) -> list[bytes]:
        resp = self._response(c, False)
        return [
            _rev("response.created", 0, response=resp),
            _rev("response.in_progress", 1, response=resp),
            _rev("response.output_item.added", 2, output_index=0, item=self._item(c, False)),
            _rev("response.content_part.added", 3, **self._ids(c), part=self._part("")),
        ]

    def chunk_maker(self, c: _Call) -> Callable[[int, bytes], bytes]:
        head = (b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","item_id":'
                + orjson.dumps(self._item_id(c)) + b',"output_index":0,"content_index":0,"delta":')
        mid = b',"logprobs":[],"sequence_number":'
        return lambda i, text: head + _q(text) + mid + str(4 + i).encode() + b"}\n\n"

    def epilogue(self, c: _Call) -> list[bytes]:
        seq = 4 + len(c.chunks)
        text = c.text
        final = "response.incomplete" if c.limited else "response.completed"
        return [
            _rev("response.output_text.done", seq, **self._ids(c), text=text, logprobs=[]),
            _rev("response.content_part.done", seq + 1, **self._ids(c), part=self._part(text)),
            _rev("response.output_item.done", seq + 2, output_index=0, item=self._item(c, True)),
            _rev(final, seq + 3, response=self._response(c, True)),
        ]

    def error_event(self, c: _Call, sent: int) -> bytes:
        return _rev("error", 4 + sent, code="server_error", param=None,
                    message="The simulated server had an error mid-stream.")

    def body(self, c: _Call) -> dict[str, Any]:
        return self._response(c, True)


class _Messages(_Api):
    """Anthropic Messages API."""

    id_prefix = "msg_"
    anthropic = True

    def parse(self, body: dict[str, Any], call: _Call) -> None:
        call.input_tokens = _words(body.get("system")) + _words(body.get("messages"))
        call.max_tokens = _int_or_none(body.get("max_tokens"))

    @staticmethod
    def _stop_reason(c: _Call) -> str:
        return "max_tokens" if c.limited else "end_turn"

    @staticmethod
    def _start_message(c: _Call) -> dict[str, Any]:
        return {
            "id": c.id, "type": "message", "role": "assistant", "model": c.model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": c.input_tokens, "output_tokens": 1,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        }

    def preamble(self, c: _Call) -> list[bytes]:
        message = self._start_message(c)
        return [
            _event("message_start", {"type": "message_start", "message": message}),
            _event("content_block_start", {"type": "content_block_start", "index": 0,
                                           "content_block": {"type": "text", "text": ""}}),
            _event("ping", {"type": "ping"}),
        ]

    def chunk_maker(self, c: _Call) -> Callable[[int, bytes], bytes]:
        head = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                b'"delta":{"type":"text_delta","text":')
        return lambda _i, text: head + _q(text) + b"}}\n\n"

    def epilogue(self, c: _Call) -> list[bytes]:
        return [
            _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            _event("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": self._stop_reason(c), "stop_sequence": None},
                                     "usage": {"output_tokens": c.output_tokens}}),
            _event("message_stop", {"type": "message_stop"}),
        ]

    def error_event(self, c: _Call, sent: int) -> bytes:
        return _event("error", _anthropic_error(529, "Overloaded"))

    def body(self, c: _Call) -> dict[str, Any]:
        return {
            "id": c.id, "type": "message", "role": "assistant", "model": c.model,
            "content": [{"type": "text", "text": c.text}],
            "stop_reason": self._stop_reason(c), "stop_sequence": None,
            "usage": {"input_tokens": c.input_tokens, "output_tokens": c.output_tokens,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        }

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return _anthropic_error(status, message)


# --- Azure OpenAI -----------------------------------------------------------------------------------

_AZURE_FILTER = {"hate": {"filtered": False, "severity": "safe"}, "self_harm": {"filtered": False, "severity": "safe"},
                 "sexual": {"filtered": False, "severity": "safe"}, "violence": {"filtered": False, "severity": "safe"}}


class _AzureChat(_Chat):
    """Azure OpenAI chat on a deployment path: the deployment names the model when the body doesn't, and
    the stream opens with Azure's prompt-filter chunk (empty choices, empty id and model)."""

    def setup(self, request: web.Request, body: dict[str, Any], call: _Call) -> None:
        super().setup(request, body, call)
        if not isinstance(body.get("model"), str):
            call.model = request.match_info.get("deployment") or call.model

    def preamble(self, c: _Call) -> list[bytes]:
        filters = {"choices": [], "created": 0, "id": "", "model": "", "object": "",
                   "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": _AZURE_FILTER}]}
        return [_sse(filters), *super().preamble(c)]

    def body(self, c: _Call) -> dict[str, Any]:
        reply = super().body(c)
        reply["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": _AZURE_FILTER}]
        return reply


# --- Google Gemini API and Vertex AI ----------------------------------------------------------------

_GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                  409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL",
                  501: "NOT_IMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def _google_error(status: int, message: str) -> dict[str, Any]:
    """google.rpc.Status, as the Gemini API and Vertex AI answer errors."""
    name = _GOOGLE_STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
    return {"error": {"code": status, "message": message, "status": name}}


def _gemini_words(body: dict[str, Any]) -> int:
    contents = body.get("contents")
    total = 0
    system = body.get("systemInstruction") or body.get("system_instruction")
    for content in [system, *(contents if isinstance(contents, list) else [contents])]:
        if isinstance(content, str):
            total += _words(content)
        elif isinstance(content, dict):
            total += sum(_words(p.get("text")) for p in content.get("parts") or [] if isinstance(p, dict))
    return total


class _Gemini(_Api):
    """generateContent and streamGenerateContent (`{model}:action` in the path). A stream is SSE with
    ``?alt=sse`` (`data: ...\\r\\n\\r\\n`), else one JSON array streamed element by element, as Google
    serves it. The last element carries finishReason and the full usageMetadata."""

    def setup(self, request: web.Request, body: dict[str, Any], call: _Call) -> None:
        call.model = request.match_info.get("model") or call.model
        call.stream = request.path.endswith(":streamGenerateContent")
        call.variant = "sse" if request.query.get("alt") == "sse" else "json"

    def parse(self, body: dict[str, Any], call: _Call) -> None:
        call.input_tokens = _gemini_words(body)
        config = body.get("generationConfig") or body.get("generation_config")
        if isinstance(config, dict):
            call.max_tokens = _int_or_none(config.get("maxOutputTokens", config.get("max_output_tokens")))
            call.seed = _int_or_none(config.get("seed"))

    def stream_headers(self, c: _Call) -> dict[str, str]:
        if c.variant == "sse":
            return {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        return {"Content-Type": "application/json; charset=UTF-8"}

    def response_headers(self, c: _Call) -> dict[str, str]:
        return {}

    def _usage(self, c: _Call, final: bool) -> dict[str, int]:
        if not final:
            return {"promptTokenCount": c.input_tokens, "totalTokenCount": c.input_tokens}
        return {"promptTokenCount": c.input_tokens, "candidatesTokenCount": c.output_tokens,
                "totalTokenCount": c.input_tokens + c.output_tokens}

    def _response(self, c: _Call, text: str, final: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
        if final:
            candidate["finishReason"] = "MAX_TOKENS" if c.limited else "STOP"
        candidate["index"] = 0
        return {"candidates": [candidate], "usageMetadata": self._usage(c, final), "modelVersion": c.model,
                "responseId": c.id}

    @staticmethod
    def _frame(c: _Call, index: int, data: bytes, last: bool = False) -> bytes:
        if c.variant == "sse":
            return b"data: " + data + b"\r\n\r\n"
        return (b"[" if index == 0 else b",\r\n") + data + (b"]" if last else b"")

    def preamble(self, c: _Call) -> list[bytes]:
        return []

    def chunk_maker(self, c: _Call) -> Callable[[int, bytes], bytes]:
        head = b'{"candidates":[{"content":{"parts":[{"text":'
        tail = (b'}],"role":"model"},"index":0}],"usageMetadata":' + orjson.dumps(self._usage(c, False))
                + b',"modelVersion":' + orjson.dumps(c.model) + b',"responseId":' + orjson.dumps(c.id) + b"}")
        return lambda i, text: self._frame(c, i, head + _q(text) + tail)

    def epilogue(self, c: _Call) -> list[bytes]:
        return [self._frame(c, len(c.chunks), orjson.dumps(self._response(c, "", True)), last=True)]

    def error_event(self, c: _Call, sent: int) -> bytes:
        error = _google_error(500, "An internal error has occurred. Please retry or report in "
                                   "https://developers.generativeai.google/guide/troubleshooting")
        return self._frame(c, sent, orjson.dumps(error), last=True)

    def body(self, c: _Call) -> dict[str, Any]:
        return self._response(c, c.text, True)

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return _google_error(status, message)


# --- Amazon Bedrock ---------------------------------------------------------------------------------

_BEDROCK_ERRORS = {400: "ValidationException", 403: "AccessDeniedException", 404: "ResourceNotFoundException",
                   408: "ModelTimeoutException", 424: "ModelErrorException", 429: "ThrottlingException",
                   500: "InternalServerException", 503: "ServiceUnavailableException"}
_BEDROCK_PAD = "abcdefghijkl"  # Bedrock pads event payloads with a "p" field; a fixed one keeps bytes stable


def _es_event(kind: str, payload: bytes) -> bytes:
    return encode_message({":event-type": kind, ":content-type": "application/json", ":message-type": "event"},
                          payload)


def _bedrock_words(body: dict[str, Any]) -> int:
    total = 0
    for block in body.get("system") or []:
        if isinstance(block, dict):
            total += _words(block.get("text"))
    for msg in body.get("messages") or []:
        if isinstance(msg, dict):
            content = msg.get("content")
            if isinstance(content, list):
                total += sum(_words(b.get("text")) for b in content if isinstance(b, dict))
            else:
                total += _words(content)
    return total


class _Bedrock(_Api):
    """Shared by the Bedrock runtime operations: the model id from the path, AWS-shaped errors, and
    the binary event-stream framing (application/vnd.amazon.eventstream) for the streaming calls."""

    content_type = "application/vnd.amazon.eventstream"

    def setup(self, request: web.Request, body: dict[str, Any], call: _Call) -> None:
        call.model = request.match_info.get("model_id") or call.model
        call.stream = request.path.endswith("-stream")

    def stream_headers(self, c: _Call) -> dict[str, str]:
        return {"Content-Type": self.content_type}

    def response_headers(self, c: _Call) -> dict[str, str]:
        return {"x-amzn-RequestId": c.id}

    def error_headers(self, status: int) -> dict[str, str]:
        name = _BEDROCK_ERRORS.get(status, "InternalServerException" if status >= 500 else "ValidationException")
        return {"x-amzn-ErrorType": f"{name}:http://internal.amazon.com/coral/com.amazon.bedrock/"}

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"message": message}

    def error_event(self, c: _Call, sent: int) -> bytes:
        headers = {":exception-type": "modelStreamErrorException", ":content-type": "application/json",
                   ":message-type": "exception"}
        payload = {"message": "The model stream had an error.", "originalStatusCode": 500}
        return encode_message(headers, orjson.dumps(payload))


class _BedrockConverse(_Bedrock):
    """Converse and ConverseStream."""

    def parse(self, body: dict[str, Any], call: _Call) -> None:
        call.input_tokens = _bedrock_words(body)
        config = body.get("inferenceConfig")
        if isinstance(config, dict):
            call.max_tokens = _int_or_none(config.get("maxTokens"))

    @staticmethod
    def _stop_reason(c: _Call) -> str:
        return "max_tokens" if c.limited else "end_turn"

    def _usage(self, c: _Call) -> dict[str, int]:
        return {"inputTokens": c.input_tokens, "outputTokens": c.output_tokens,
                "totalTokens": c.input_tokens + c.output_tokens}

    def preamble(self, c: _Call) -> list[bytes]:
        return [_es_event("messageStart", orjson.dumps({"p": _BEDROCK_PAD, "role": "assistant"}))]

    def chunk_maker(self, c: _Call) -> Callable[[int, bytes], bytes]:
        head, tail = b'{"contentBlockIndex":0,"delta":{"text":', b'},"p":"' + _BEDROCK_PAD.encode() + b'"}'
        return lambda _i, text: _es_event("contentBlockDelta", head + _q(text) + tail)

    def epilogue(self, c: _Call) -> list[bytes]:
        metadata = {"metrics": {"latencyMs": int(c.elapsed_s * 1000)}, "p": _BEDROCK_PAD, "usage": self._usage(c)}
        return [
            _es_event("contentBlockStop", orjson.dumps({"contentBlockIndex": 0, "p": _BEDROCK_PAD})),
            _es_event("messageStop", orjson.dumps({"p": _BEDROCK_PAD, "stopReason": self._stop_reason(c)})),
            _es_event("metadata", orjson.dumps(metadata)),
        ]

    def body(self, c: _Call) -> dict[str, Any]:
        return {
            "output": {"message": {"role": "assistant", "content": [{"text": c.text}]}},
            "stopReason": self._stop_reason(c), "usage": self._usage(c),
            "metrics": {"latencyMs": int(c.elapsed_s * 1000)},
        }


class _BedrockInvoke(_Bedrock, _Messages):
    """InvokeModel and InvokeModelWithResponseStream with Anthropic Claude's native body: the Messages
    API, each stream event wrapped as a `chunk` event whose payload is {"bytes": base64(event)}. The
    last chunk carries Bedrock's amazon-bedrock-invocationMetrics."""

    id_prefix = "msg_bdrk_"

    @staticmethod
    def _chunk(event: bytes) -> bytes:
        payload = b'{"bytes":"' + base64.b64encode(event) + b'","p":"' + _BEDROCK_PAD.encode() + b'"}'
        return _es_event("chunk", payload)

    def response_headers(self, c: _Call) -> dict[str, str]:
        return {**super().response_headers(c), "X-Amzn-Bedrock-Input-Token-Count": str(c.input_tokens),
                "X-Amzn-Bedrock-Output-Token-Count": str(c.output_tokens)}

    def preamble(self, c: _Call) -> list[bytes]:
        start = {"type": "message_start", "message": self._start_message(c)}
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        return [self._chunk(orjson.dumps(start)), self._chunk(orjson.dumps(block))]

    def chunk_maker(self, c: _Call) -> Callable[[int, bytes], bytes]:
        head = b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":'
        return lambda _i, text: self._chunk(head + _q(text) + b"}}")

    def epilogue(self, c: _Call) -> list[bytes]:
        latency = int(c.elapsed_s * 1000)
        first = int((c.times[0] if c.times else c.elapsed_s) * 1000)
        metrics = {"inputTokenCount": c.input_tokens, "outputTokenCount": c.output_tokens,
                   "invocationLatency": latency, "firstByteLatency": first}
        delta = {"type": "message_delta", "delta": {"stop_reason": self._stop_reason(c), "stop_sequence": None},
                 "usage": {"output_tokens": c.output_tokens}}
        return [
            self._chunk(orjson.dumps({"type": "content_block_stop", "index": 0})),
            self._chunk(orjson.dumps(delta)),
            self._chunk(orjson.dumps({"type": "message_stop", "amazon-bedrock-invocationMetrics": metrics})),
        ]


# --- Ollama -----------------------------------------------------------------------------------------

def _ollama_time() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


class _Ollama(_Api):
    """Ollama's native /api/chat and /api/generate: NDJSON lines (application/x-ndjson), streaming unless
    the body says "stream": false. The last line has done: true and the server's timings in
    nanoseconds; load_duration is the simulated model load (the load_ms knob)."""

    content_type = "application/x-ndjson"

    def __init__(self, kind: str) -> None:
        self.kind = kind  # "chat" or "generate"

    def setup(self, request: web.Request, body: dict[str, Any], call: _Call) -> None:
        call.stream = body.get("stream") is not False
        call.variant = self.kind

    def parse(self, body: dict[str, Any], call: _Call) -> None:
        if self.kind == "chat":
            call.input_tokens = _words(body.get("messages"))
        else:
            call.input_tokens = _words(body.get("system")) + _words(body.get("prompt"))
        options = body.get("options")
        if isinstance(options, dict):
            call.max_tokens = _int_or_none(options.get("num_predict"))
            call.seed = _int_or_none(options.get("seed"))

    def stream_headers(self, c: _Call) -> dict[str, str]:
        return {"Content-Type": self.content_type}

    def response_headers(self, c: _Call) -> dict[str, str]:
        return {}

    def _object(self, c: _Call, text: str, done: bool) -> dict[str, Any]:
        obj: dict[str, Any] = {"model": c.model, "created_at": _ollama_time()}
        if self.kind == "chat":
            obj["message"] = {"role": "assistant", "content": text}
        else:
            obj["response"] = text
        obj["done"] = done
        return obj

    def preamble(self, c: _Call) -> list[bytes]:
        return []

    def chunk_maker(self, c: _Call) -> Callable[[int, bytes], bytes]:
        return lambda _i, text: orjson.dumps(self._object(c, text.decode(), False)) + b"\n"

    def _done(self, c: _Call, text: str) -> dict[str, Any]:
        obj = self._object(c, text, True)
        first = c.times[0] if c.times else c.elapsed_s
        last = c.times[-1] if c.times else c.elapsed_s
        obj.update(
            done_reason="length" if c.limited else "stop",
            total_duration=_ns(c.elapsed_s), load_duration=_ns(c.load_s),
            prompt_eval_count=c.input_tokens, prompt_eval_duration=_ns(first - c.load_s),
            eval_count=c.output_tokens, eval_duration=_ns(last - first),
        )
        return obj

    def epilogue(self, c: _Call) -> list[bytes]:
        return [orjson.dumps(self._done(c, "")) + b"\n"]

    def error_event(self, c: _Call, sent: int) -> bytes:
        return orjson.dumps({"error": "an error was encountered while running the model: unexpected EOF"}) + b"\n"

    def body(self, c: _Call) -> dict[str, Any]:
        return self._done(c, c.text)

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"error": message}


# --- Hugging Face TGI -------------------------------------------------------------------------------

_TGI_ERRORS = {422: "validation", 424: "generation", 429: "overloaded", 500: "incomplete_generation"}
_TGI_EOS = {"id": 2, "text": "</s>", "logprob": -0.01, "special": True}


class _TGI(_Api):
    """TGI's native /generate and /generate_stream (SSE, `data:` without a space, one token per event).
    The last content token carries generated_text and details when max_new_tokens cut the output;
    otherwise a special EOS token follows with finish_reason eos_token (and counts as generated)."""

    def setup(self, request: web.Request, body: dict[str, Any], call: _Call) -> None:
        call.stream = request.path.endswith("/generate_stream")

    def parse(self, body: dict[str, Any], call: _Call) -> None:
        call.input_tokens = _words(body.get("inputs"))
        params = body.get("parameters")
        if isinstance(params, dict):
            call.max_tokens = _int_or_none(params.get("max_new_tokens"))
            call.seed = _int_or_none(params.get("seed"))
            call.variant = "details" if params.get("details") is True else ""

    def response_headers(self, c: _Call) -> dict[str, str]:
        return {}

    @staticmethod
    def _token(i: int, text: str) -> dict[str, Any]:
        return {"id": 100 + i, "text": text, "logprob": -0.25, "special": False}

    def _details(self, c: _Call) -> dict[str, Any]:
        eos = not c.limited
        return {"finish_reason": "eos_token" if eos else "length", "generated_tokens": c.output_tokens + eos,
                "seed": c.seed, "input_length": c.input_tokens}

    @staticmethod
    def _data(obj: Any) -> bytes:
        return b"data:" + orjson.dumps(obj) + b"\n\n"

    def preamble(self, c: _Call) -> list[bytes]:
        return []

    def chunk_maker(self, c: _Call) -> Callable[[int, bytes], bytes]:
        last = len(c.chunks) - 1 if c.limited else -1

        def make(i: int, text: bytes) -> bytes:
            final = i == last
            return self._data({"index": i + 1, "token": self._token(i, text.decode()), "top_tokens": None,
                               "generated_text": c.text if final else None,
                               "details": self._details(c) if final else None})

        return make

    def epilogue(self, c: _Call) -> list[bytes]:
        if c.limited and c.chunks:
            return []  # the last content token already closed the stream
        return [self._data({"index": len(c.chunks) + 1, "token": _TGI_EOS, "top_tokens": None,
                            "generated_text": c.text, "details": self._details(c)})]

    def error_event(self, c: _Call, sent: int) -> bytes:
        return self._data({"error": "Request failed during generation: Server error: CUDA out of memory",
                           "error_type": "generation"})

    def body(self, c: _Call) -> dict[str, Any]:
        reply: dict[str, Any] = {"generated_text": c.text}
        if c.variant == "details":
            tokens = [self._token(i, t.decode()) for i, t in enumerate(c.chunks)]
            if not c.limited:
                tokens.append(_TGI_EOS)
            details = self._details(c)
            reply["details"] = {"finish_reason": details["finish_reason"],
                                "generated_tokens": details["generated_tokens"], "seed": c.seed, "prefill": [],
                                "tokens": tokens}
        return reply

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"error": message, "error_type": _TGI_ERRORS.get(status, "validation" if status < 500 else "generation")}


# --- Cohere v2 chat ---------------------------------------------------------------------------------

class _Cohere(_Api):
    """Cohere's /v2/chat: typed SSE events (event name = the data's "type"), usage in message-end."""

    def parse(self, body: dict[str, Any], call: _Call) -> None:
        call.input_tokens = _words(body.get("messages"))
        call.max_tokens = _int_or_none(body.get("max_tokens"))

    @staticmethod
    def _finish(c: _Call) -> str:
        return "MAX_TOKENS" if c.limited else "COMPLETE"

    @staticmethod
    def _usage(c: _Call) -> dict[str, Any]:
        counts = {"input_tokens": c.input_tokens, "output_tokens": c.output_tokens}
        return {"billed_units": dict(counts), "tokens": counts}

    @staticmethod
    def _typed(obj: dict[str, Any]) -> bytes:
        return _event(obj["type"], obj)

    def preamble(self, c: _Call) -> list[bytes]:
        message = {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}
        return [
            self._typed({"id": c.id, "type": "message-start", "delta": {"message": message}}),
            self._typed({"type": "content-start", "index": 0,
                         "delta": {"message": {"content": {"type": "text", "text": ""}}}}),
        ]

    def chunk_maker(self, c: _Call) -> Callable[[int, bytes], bytes]:
        head = b'event: content-delta\ndata: {"type":"content-delta","index":0,"delta":{"message":{"content":{"text":'
        return lambda _i, text: head + _q(text) + b"}}}}\n\n"

    def epilogue(self, c: _Call) -> list[bytes]:
        return [
            self._typed({"type": "content-end", "index": 0}),
            self._typed({"type": "message-end", "delta": {"finish_reason": self._finish(c), "usage": self._usage(c)}}),
        ]

    def error_event(self, c: _Call, sent: int) -> bytes:
        delta = {"finish_reason": "ERROR", "error": "internal server error, this has been reported"}
        return self._typed({"type": "message-end", "delta": delta})

    def body(self, c: _Call) -> dict[str, Any]:
        return {"id": c.id, "finish_reason": self._finish(c),
                "message": {"role": "assistant", "content": [{"type": "text", "text": c.text}]},
                "usage": self._usage(c)}

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"id": secrets.token_hex(16), "message": message}


# --- handlers ---------------------------------------------------------------------------------------

def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None,
          rec: _Record | None = None) -> web.Response:
    body = orjson.dumps(obj)
    if rec is not None:
        rec.wrote(body)
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")


def _error_response(api: _Api, status: int, message: str, rec: _Record) -> web.Response:
    rec.http_status = status
    rec.status = "error_status"
    headers = {"x-sim-request-id": rec.id, **api.error_headers(status)}
    if status == 429:
        headers["retry-after"] = "0"
    return _json(api.error_body(status, message), status, headers, rec)


class _Clock:
    """Time since the request arrived, on perf_counter (the ground-truth clock)."""

    __slots__ = ("t0",)

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def since(self) -> float:
        return time.perf_counter() - self.t0

    async def sleep_until(self, offset_s: float) -> None:
        """Sleep until `offset_s` after arrival, never less (uvloop's ms timers can fire early)."""
        deadline = self.t0 + offset_s
        while (delay := deadline - time.perf_counter()) > 0:
            await asyncio.sleep(delay)


def _abort(request: web.Request) -> None:
    """Close the connection after flushing what was written: the client sees a truncated body."""
    if request.transport is not None:
        request.transport.close()


class _Ctx:
    """One request in flight: its clock, its ground-truth record, and the response once created."""

    __slots__ = ("clock", "rec", "request", "response", "state")

    def __init__(self, request: web.Request) -> None:
        self.clock = _Clock()
        self.request = request
        self.state = request.app[_STATE]
        self.rec = self.state.open(request.path)
        self.rec.arrival_monotonic_s = self.clock.t0
        self.response: web.StreamResponse | None = None

    def cancelled(self) -> None:
        self.rec.status = "cancelled"
        self.rec.cancelled_at_s = self.clock.since()

    async def send_json(self, obj: Any, headers: dict[str, str]) -> web.Response:
        response = self.response = _json(obj, headers=headers, rec=self.rec)
        await response.prepare(self.request)
        await response.write_eof()
        self.rec.first_byte_s = self.clock.since()
        self.rec.chunk_times_s.append(self.rec.first_byte_s)
        self.rec.status = "ok"
        return response


_Responder = Callable[["_Ctx", _Api, dict[str, Any], _Knobs], Awaitable[web.StreamResponse]]


def _make_handler(api: _Api, respond: _Responder) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Shared request handling: body, knobs, status errors, ground truth, disconnects."""

    async def handler(request: web.Request) -> web.StreamResponse:
        ctx = _Ctx(request)
        try:
            try:
                raw = await request.read()
                ctx.rec.request_sha256 = hashlib.sha256(raw).hexdigest()
                authorization = request.headers.get("Authorization")
                if authorization is not None:
                    ctx.rec.authorization_sha256 = hashlib.sha256(authorization.encode("latin-1")).hexdigest()
                body = orjson.loads(raw)
                if not isinstance(body, dict):
                    raise ValueError("request body must be a JSON object")
                knobs = _knobs(ctx.state.profile, request.headers, body.get("sim"))
            except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
                return _error_response(api, 400, str(exc), ctx.rec)
            if knobs.status is not None:
                return _error_response(api, knobs.status, f"Simulated error {knobs.status}.", ctx.rec)
            return await respond(ctx, api, body, knobs)
        except asyncio.CancelledError:  # client disconnect under handler_cancellation (start_sim)
            ctx.cancelled()
            raise
        except ConnectionResetError:  # client disconnect seen by a write (other runners): end quietly
            ctx.cancelled()
            return ctx.response or web.Response()
        finally:
            ctx.rec.end_s = ctx.clock.since()
            ctx.state.active -= 1

    return handler


def _apply_model(spec: ModelSpec, knobs: _Knobs) -> None:
    """A named model's defaults for the knobs the request did not set itself."""
    explicit = knobs.explicit
    if "itl_ms" not in explicit:
        knobs.itl_ms = spec.itl_ms
    if "tokens" not in explicit:
        knobs.tokens = spec.output_tokens
    if "tokens_per_chunk" not in explicit:
        knobs.tokens_per_chunk = spec.tokens_per_chunk
    if "jitter_ms" not in explicit:
        knobs.jitter_ms = spec.jitter_ms


def _schedule(first: float, itl: float, count: int, jitter: float, rng: random.Random) -> list[float]:
    """Absolute due times (seconds after arrival) of `count` chunks, non-decreasing with jitter."""
    schedule = [first + i * itl for i in range(count)]
    if jitter > 0:
        previous = 0.0
        for i, at in enumerate(schedule):
            previous = schedule[i] = max(previous, at + rng.uniform(0, jitter))
    return schedule


async def _generate(ctx: _Ctx, api: _Api, body: dict[str, Any], knobs: _Knobs) -> web.StreamResponse:
    rec, clock, state = ctx.rec, ctx.clock, ctx.state
    model = body.get("model") if isinstance(body.get("model"), str) else state.profile.model
    call = _Call(id=f"{api.id_prefix}sim{rec.id.replace('-', '')}", model=model, created=int(time.time()),
                 input_tokens=0, max_tokens=None)
    api.setup(ctx.request, body, call)  # may take the model from the path (Gemini, Bedrock, Azure)
    api.parse(body, call)
    rec.response_id = call.id
    # A named model (sim_model) supplies the knobs the request left unset, and times the request.
    runtime = state.runtime(call.model)
    spec = runtime.state.spec if runtime is not None else None
    ratio = 1.0
    if spec is not None:
        _apply_model(spec, knobs)
        ratio = spec.tokens_per_word
        rec.sim_model = spec.name
    words_in = max(call.input_tokens, 1)
    call.input_tokens = max(reported_tokens(words_in, ratio), 1)
    n = knobs.tokens if call.max_tokens is None else min(knobs.tokens, words_for_limit(call.max_tokens, ratio))
    if spec is not None:
        n = max(n, 0)
    call.output_tokens, call.limited = reported_tokens(n, ratio), n < knobs.tokens
    seed = call.seed if call.seed is not None else _int_or_none(body.get("seed"))
    rng = random.Random(seed if seed is not None else state.profile.seed * 1_000_003 + rec.seq)
    words = rng.choices(VOCAB, k=n)
    per = knobs.tokens_per_chunk
    call.chunks = ["".join(words[i:i + per]).encode() for i in range(0, n, per)]
    rec.model, rec.input_tokens, rec.output_tokens = call.model, call.input_tokens, call.output_tokens
    rec.input_words, rec.output_words, rec.tokens_per_word, rec.tokens_per_chunk = words_in, n, ratio, per
    rec.stream = call.stream
    call.times = rec.chunk_times_s

    # What times this request: the named model, or the knobs (explicit ones always win).
    explicit = knobs.explicit
    modelled_ttft = runtime is not None and "ttft_ms" not in explicit
    modelled_itl = runtime is not None and "itl_ms" not in explicit
    if runtime is not None and modelled_ttft and "load_ms" not in explicit:
        cold, ready_at = runtime.state.arrive(clock.t0)
        load_s = ready_at - clock.t0
    else:
        if runtime is not None:
            runtime.state.touch(clock.t0)
        cold, load_s = knobs.load_ms > 0, knobs.load_ms / 1000
    rec.concurrency_at_arrival = runtime.state.in_flight if runtime is not None else state.active
    rec.cold_start, rec.load_s = cold, load_s
    call.load_s = load_s
    mstate = runtime.state if runtime is not None else None
    admitted = decoding = False
    try:
        headers = {"x-sim-request-id": rec.id, **api.response_headers(call)}
        resp: web.StreamResponse | None = None
        if rec.stream:
            resp = ctx.response = web.StreamResponse(headers={**api.stream_headers(call), **headers})
            resp.enable_chunked_encoding()
            await resp.prepare(ctx.request)

        async def write(data: bytes) -> None:
            rec.wrote(data)
            await resp.write(data)  # type: ignore[union-attr]

        if resp is not None:
            for event in api.preamble(call):
                await write(event)
            rec.first_byte_s = clock.since()

        # Time of the first content chunk (seconds after arrival), before jitter.
        if modelled_ttft:
            assert runtime is not None and spec is not None
            start = load_s  # a simulated model load comes first, then the wait for a batch slot
            if load_s > 0:
                await clock.sleep_until(load_s)
            before = clock.since()
            waited = await runtime.acquire()
            admitted = True
            if waited:
                start = clock.since()
                rec.queue_s = start - before
            rec.prefill_s = spec.prefill_s(call.input_tokens)
            first = start + rec.prefill_s
        else:  # a simulated model load (load_ms) comes before everything else
            first = load_s + knobs.ttft_ms / 1000
        itl, jitter = knobs.itl_ms / 1000, knobs.jitter_ms / 1000
        count = len(call.chunks)

        if resp is None:  # not streamed: the whole answer at the end of its decode
            schedule = _schedule(first, itl, count, jitter, rng)
            if mstate is not None and count:
                await clock.sleep_until(schedule[0])
                mstate.decoding += 1
                decoding = True
                rec.decoding_at_first_token = rec.decoding_max = mstate.decoding
                if modelled_itl:  # decoded at the batch size seen at the first token
                    schedule = _schedule(schedule[0], spec.itl_s(mstate.decoding), count, 0.0, rng)  # type: ignore[union-attr]
            done_at = schedule[-1] if schedule else first
            rec.expected_chunk_times_s.append(done_at)
            await clock.sleep_until(done_at)
            if knobs.fail_after is not None:
                rec.status = "aborted"
                _abort(ctx.request)
                return web.Response()  # never sent: the connection is gone
            call.elapsed_s = clock.since()
            return await ctx.send_json(api.body(call), headers)

        stop_at = count
        for knob in (knobs.fail_after, knobs.error_event):
            if knob is not None:
                stop_at = min(stop_at, knob)
        make_chunk = api.chunk_maker(call)
        times, expected = rec.chunk_times_s, rec.expected_chunk_times_s
        if not modelled_itl:
            # Absolute schedule of each content chunk, non-decreasing with jitter: errors never accumulate.
            schedule = _schedule(first, itl, count, jitter, rng)
            for i in range(stop_at):
                payload = make_chunk(i, call.chunks[i])
                at = schedule[i]
                expected.append(at)
                await clock.sleep_until(at)
                # The time it goes out: taken just before the write, which hands it to the socket. Taken after,
                # it could include a wait for another thread to release the GIL (the tests run three threads).
                times.append(clock.since())
                await write(payload)
                if i == 0 and mstate is not None:
                    mstate.decoding += 1
                    decoding = True
                    rec.decoding_at_first_token = rec.decoding_max = mstate.decoding
        elif stop_at:
            # The named model's decode: each gap is the ITL at the batch size when the previous chunk went out.
            assert mstate is not None and spec is not None
            nominal = previous = first
            step_s = spec.itl_s
            uniform = rng.uniform
            for i in range(stop_at):
                payload = make_chunk(i, call.chunks[i])
                if i:
                    decoding_now = mstate.decoding
                    if decoding_now > rec.decoding_max:
                        rec.decoding_max = decoding_now
                    nominal += step_s(decoding_now)
                at = nominal + uniform(0, jitter) if jitter > 0 else nominal
                if at < previous:
                    at = previous
                previous = at
                expected.append(at)
                await clock.sleep_until(at)
                times.append(clock.since())  # see above: just before the write
                await write(payload)
                if not i:
                    mstate.decoding += 1
                    decoding = True
                    rec.decoding_at_first_token = rec.decoding_max = mstate.decoding

        if knobs.fail_after is not None and stop_at == knobs.fail_after:
            rec.status = "aborted"
            _abort(ctx.request)
            return resp
        if knobs.error_event is not None and stop_at == knobs.error_event:
            rec.status = "error_event"
            await write(api.error_event(call, stop_at))
        else:
            call.elapsed_s = clock.since()
            for event in api.epilogue(call):
                await write(event)
            rec.status = "ok"
        await resp.write_eof()
        return resp
    finally:
        if runtime is not None and mstate is not None:
            if decoding:
                mstate.decoding -= 1
            if admitted:
                runtime.release()
            mstate.end(time.perf_counter())


async def _embeddings(ctx: _Ctx, api: _Api, body: dict[str, Any], knobs: _Knobs) -> web.StreamResponse:
    raw = body.get("input")
    inputs: list[Any] = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
    model = body.get("model") if isinstance(body.get("model"), str) else ctx.state.profile.model
    use_base64 = body.get("encoding_format") == "base64"  # the openai SDK asks for base64 by default
    data = []
    for index, item in enumerate(inputs):
        vector = _embed(item, ctx.state.profile.seed)
        value: Any = vector
        if use_base64:
            value = base64.b64encode(struct.pack(f"<{EMBEDDING_DIM}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": value})
    tokens = max(_words(inputs), 1)
    ctx.rec.model, ctx.rec.input_tokens = model, tokens
    await ctx.clock.sleep_until(knobs.ttft_ms / 1000)
    reply = {"object": "list", "data": data, "model": model,
             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    return await ctx.send_json(reply, {"x-sim-request-id": ctx.rec.id})


def _embed(item: Any, seed: int) -> list[float]:
    """A deterministic unit vector for one input."""
    rng = random.Random(zlib.crc32(orjson.dumps(item)) ^ seed)
    vector = [rng.uniform(-1.0, 1.0) for _ in range(EMBEDDING_DIM)]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


async def _models(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    names = [state.profile.model, *(name for name in state.models if name != state.profile.model)]
    return _json({"object": "list", "data": [{"id": name, "object": "model", "created": 0,
                                              "owned_by": "llmtap-sim"} for name in names]})


async def _sim_models(request: web.Request) -> web.Response:
    """The named models' performance profiles and their live state."""
    state = request.app[_STATE]
    models = []
    for name, spec in state.models.items():
        runtime = state.runtimes.get(name)
        live = runtime.state.to_json() if runtime is not None else ModelState(spec).to_json()
        queued = len(runtime.waiters) if runtime is not None else 0
        models.append({**spec.to_json(), "state": {**live, "queued": queued}})
    return _json({"default_profile": asdict(state.profile), "models": models})


async def _healthz(_request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def _ground_truth(request: web.Request) -> web.Response:
    rec = request.app[_STATE].records.get(request.match_info["id"])
    if rec is None:
        return _json({"error": "unknown request id"}, status=404)
    return _json(rec.to_json())


async def _all_records(request: web.Request) -> web.Response:
    """Ground truth of every request kept (the last MAX_RECORDS), oldest first; ?after=SEQ for later ones."""
    after = request.query.get("after", "0")
    if not after.isdigit():
        return _json({"error": "after must be a request sequence number"}, status=400)
    records = [rec.to_json() for rec in request.app[_STATE].records.values() if rec.seq > int(after)]
    return _json({"requests": records})


async def _stats(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    models = {name: {**runtime.state.to_json(), "queued": len(runtime.waiters)}
              for name, runtime in state.runtimes.items()}
    return _json({"requests": state.count, "active": state.active, "models": models})


def create_app(profile: SimProfile | None = None, models: Mapping[str, ModelSpec] | None = None) -> web.Application:
    """The simulator as an aiohttp application (run it with handler_cancellation=True, see start_sim).

    `models`: the named models (default: sim_model.BUILTIN_MODELS); any other model name gets `profile`."""
    app = web.Application()
    app[_STATE] = _State(profile or SimProfile(), BUILTIN_MODELS if models is None else models)
    app.router.add_post("/v1/chat/completions", _make_handler(_Chat(), _generate))
    app.router.add_post("/v1/completions", _make_handler(_Completions(), _generate))
    app.router.add_post("/v1/responses", _make_handler(_Responses(), _generate))
    app.router.add_post("/v1/messages", _make_handler(_Messages(), _generate))
    app.router.add_post("/v1/embeddings", _make_handler(_Api(), _embeddings))
    azure = "/openai/deployments/{deployment}"
    app.router.add_post(azure + "/chat/completions", _make_handler(_AzureChat(), _generate))
    app.router.add_post(azure + "/embeddings", _make_handler(_Api(), _embeddings))
    gemini = _make_handler(_Gemini(), _generate)
    vertex = ("/{version}/projects/{project}/locations/{location}/publishers/google/models",
              "/{version}/publishers/google/models")  # the second: Vertex AI express mode (API key)
    for base in ("/v1beta/models", "/v1/models", *vertex):
        for action in ("generateContent", "streamGenerateContent"):
            app.router.add_post(f"{base}/{{model}}:{action}", gemini)
    converse, invoke = _make_handler(_BedrockConverse(), _generate), _make_handler(_BedrockInvoke(), _generate)
    for action, handler in (("converse", converse), ("converse-stream", converse), ("invoke", invoke),
                            ("invoke-with-response-stream", invoke)):
        app.router.add_post(f"/model/{{model_id}}/{action}", handler)
    app.router.add_post("/api/chat", _make_handler(_Ollama("chat"), _generate))
    app.router.add_post("/api/generate", _make_handler(_Ollama("generate"), _generate))
    tgi = _make_handler(_TGI(), _generate)
    app.router.add_post("/generate", tgi)
    app.router.add_post("/generate_stream", tgi)
    app.router.add_post("/v2/chat", _make_handler(_Cohere(), _generate))
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/_sim/requests", _all_records)
    app.router.add_get("/_sim/requests/{id}", _ground_truth)
    app.router.add_get("/_sim/models", _sim_models)
    app.router.add_get("/_sim/stats", _stats)
    return app


@dataclass
class SimServer:
    """A running simulator. `url` has no trailing slash and no /v1."""

    host: str
    port: int
    profile: SimProfile
    _runner: web.AppRunner = field(repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def request_record(self, request_id: str) -> dict[str, Any] | None:
        """In-process access to the ground truth served at /_sim/requests/{id}."""
        app = self._runner.app
        rec = app[_STATE].records.get(request_id) if app is not None else None
        return rec.to_json() if rec is not None else None

    async def close(self) -> None:
        await self._runner.cleanup()

    async def __aenter__(self) -> SimServer:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()


async def start_sim(host: str = "127.0.0.1", port: int = 0, profile: SimProfile | None = None,
                    models: Mapping[str, ModelSpec] | None = None) -> SimServer:
    """Start the simulator on the running loop; port 0 picks a free port. `models`: see create_app."""
    profile = profile or SimProfile()
    # handler_cancellation: a client disconnect cancels the handler at once, even while it sleeps.
    runner = web.AppRunner(create_app(profile, models), handler_cancellation=True, access_log=None,
                           shutdown_timeout=1.0)
    await runner.setup()
    # A listen backlog above aiohttp's 128: a burst of 256 new connections (a benchmark's first wave) would
    # otherwise overflow it, and the dropped SYNs come back only after TCP's 1 s retransmission timeout.
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound_port = runner.addresses[0][1]  # the real port when port=0
    return SimServer(host=host, port=bound_port, profile=profile, _runner=runner)


def run_sim(host: str = "127.0.0.1", port: int = 8000, profile: SimProfile | None = None,
            models: Mapping[str, ModelSpec] | None = None) -> None:
    """Serve until Ctrl-C or SIGTERM (for `llmtap sim`). `models` None: the built-in named models plus
    those of $LLMTAP_SIM_MODELS (see sim_model.load_models)."""
    if models is None:
        models = load_models()

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        sim = await start_sim(host, port, profile, models)
        names = ", ".join(name for name in models if name != sim.profile.model)
        print(f"llmtap sim: serving {sim.profile.model} (and named models: {names}) on {sim.url}", flush=True)
        try:
            await stop.wait()
        finally:
            await sim.close()

    try:
        import uvloop  # lower per-timer overhead and tighter wake-ups than the default loop

        run: Callable[[Any], None] = uvloop.run
    except ImportError:
        run = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        run(serve())
