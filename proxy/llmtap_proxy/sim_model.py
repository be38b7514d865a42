"""The simulator's performance model: named models, what a request costs, and how load slows it.

Pure data and arithmetic, no I/O and no clock of its own (callers pass ``now``), so it can be
tested and documented on its own. `llmtap_proxy.sim` turns it into sleeps. docs/simulator.md has
the full description; in short, for a request to model M that arrives at time ``t``:

    cold       = M never served a request, or nothing was in flight for longer than M.idle_s
    load       = M.cold_start_ms                    if cold (later arrivals wait for the same load)
    queue      = time waiting for one of M.max_batch slots (FIFO), held from admission to the end
    TTFT       = load + queue + M.base_ms + input_tokens / M.prefill_tps
    ITL_k      = M.itl_ms * (1 + M.batch_alpha * max(0, decoding_k - M.batch_knee) / M.batch_knee)
    chunk_k    = max(chunk_{k-1}, nominal_k + U(0, M.jitter_ms)), nominal_k = nominal_{k-1} + ITL_k

``decoding_k`` is the number of streams of M past their first token when chunk k is scheduled
(this stream included): continuous batching shares one decode step among them, so each step gets
slower once the batch is past its knee. Jitter only ever delays, and the schedule is absolute, so
neither timer errors nor jitter accumulate. Each chunk carries ``M.tokens_per_chunk`` words.

Tokens: the simulator emits words; its provider-reported counts (``usage``) are words times the
model's tokenizer ratio ``M.tokens_per_word``, rounded (half up). A reference tokenizer (cl100k)
counts the same text differently again, which is what normalisation is for.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

__all__ = ["BUILTIN_MODELS", "ModelSpec", "ModelState", "load_models", "reported_tokens", "words_for_limit"]


@dataclass(frozen=True)
class ModelSpec:
    """The performance profile of one named simulated model."""

    name: str
    description: str = ""
    base_ms: float = 5.0  # fixed cost before prefill: scheduling, chat template, tokenisation
    prefill_tps: float = 5000.0  # prompt (input) tokens per second of prefill
    itl_ms: float = 20.0  # gap between content chunks for a stream decoding alone
    tokens_per_chunk: int = 1  # words per content chunk
    tokens_per_word: float = 1.0  # provider-reported tokens per emitted word (the model's tokenizer ratio)
    output_tokens: int = 64  # words per answer unless the request says otherwise (x-sim-tokens, max_tokens)
    jitter_ms: float = 0.0  # seeded delay in [0, jitter] added to each chunk, never early
    max_batch: int = 256  # requests admitted at once (prefilling or decoding); more wait in FIFO order
    batch_knee: int = 16  # decoding streams up to which the decode step does not slow down
    batch_alpha: float = 0.5  # relative ITL growth per `batch_knee` extra decoding streams
    cold_start_ms: float = 0.0  # model load on the first request and after an idle spell
    idle_s: float = 300.0  # nothing in flight for longer than this makes the next request cold

    def __post_init__(self) -> None:
        for name in ("base_ms", "itl_ms", "jitter_ms", "cold_start_ms", "idle_s", "batch_alpha"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"model {self.name!r}: {name} must be a finite number >= 0, not {value!r}")
        for name in ("prefill_tps", "tokens_per_word"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"model {self.name!r}: {name} must be a finite number > 0, not {value!r}")
        for name in ("tokens_per_chunk", "max_batch", "batch_knee"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"model {self.name!r}: {name} must be an integer >= 1, not {value!r}")
        if not (isinstance(self.output_tokens, int) and self.output_tokens >= 0):
            raise ValueError(f"model {self.name!r}: output_tokens must be an integer >= 0")

    # --- the model's figures ---
    def prefill_s(self, input_tokens: int) -> float:
        """Fixed cost plus prefill of `input_tokens` (provider tokens)."""
        return self.base_ms / 1000 + input_tokens / self.prefill_tps

    def itl_factor(self, decoding: int) -> float:
        """How much slower each decode step is with `decoding` streams in the batch (>= 1)."""
        extra = decoding - self.batch_knee
        return 1.0 + self.batch_alpha * extra / self.batch_knee if extra > 0 else 1.0

    def itl_s(self, decoding: int) -> float:
        return self.itl_ms / 1000 * self.itl_factor(decoding)

    def decode_tps(self, decoding: int = 1) -> float:
        """Provider-reported output tokens per second of one stream with `decoding` streams in the batch."""
        return self.tokens_per_chunk * self.tokens_per_word / self.itl_s(decoding)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["decode_tps_alone"] = round(self.decode_tps(1), 3)
        data["decode_tps_at_max_batch"] = round(self.decode_tps(self.max_batch), 3)
        return data


def reported_tokens(words: int, tokens_per_word: float) -> int:
    """Provider-reported tokens for `words` words: words x ratio, rounded half up (exact for ratio 1)."""
    if tokens_per_word == 1.0:
        return words
    return math.floor(words * tokens_per_word + 0.5)


def words_for_limit(max_tokens: int, tokens_per_word: float) -> int:
    """The most words whose reported token count stays within `max_tokens`."""
    if tokens_per_word == 1.0:
        return max_tokens
    words = int(max_tokens / tokens_per_word)
    while words > 0 and reported_tokens(words, tokens_per_word) > max_tokens:
        words -= 1
    while reported_tokens(words + 1, tokens_per_word) <= max_tokens:
        words += 1
    return words


# Several named models with different shapes, so that per-model figures and normalisation differ.
BUILTIN_MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("sim-fast", "a small model on a large accelerator: quick prefill, 8 ms per token, wide batch",
              base_ms=4, prefill_tps=10_000, itl_ms=8, tokens_per_word=1.0, output_tokens=48, jitter_ms=2,
              max_batch=128, batch_knee=32, batch_alpha=0.5, cold_start_ms=300, idle_s=300),
    ModelSpec("sim-medium", "an 8B-class model on a GPU: 15 ms per token alone, slowing steadily as the batch grows",
              base_ms=8, prefill_tps=6_000, itl_ms=15, tokens_per_word=1.1, output_tokens=64, jitter_ms=3,
              max_batch=256, batch_knee=16, batch_alpha=0.3, cold_start_ms=600, idle_s=300),
    ModelSpec("sim-large", "a 70B-class model: slow prefill and decode, 1.3 tokens per word, batch of 32",
              base_ms=12, prefill_tps=2_500, itl_ms=25, tokens_per_word=1.3, output_tokens=64, jitter_ms=5,
              max_batch=32, batch_knee=8, batch_alpha=0.4, cold_start_ms=1_500, idle_s=120),
    ModelSpec("sim-chunky", "a hosted API that sends 4 words per chunk after a long first-token delay",
              base_ms=60, prefill_tps=20_000, itl_ms=45, tokens_per_chunk=4, tokens_per_word=0.85,
              output_tokens=96, jitter_ms=12, max_batch=1024, batch_knee=256, batch_alpha=0.2),
    ModelSpec("sim-local", "a llama.cpp-like single-slot CPU server: one request at a time, slow prefill",
              base_ms=2, prefill_tps=400, itl_ms=16, tokens_per_word=1.15, output_tokens=32, jitter_ms=1,
              max_batch=1, batch_knee=1, batch_alpha=0.0, cold_start_ms=800, idle_s=30),
)}

MODELS_ENV = "LLMTAP_SIM_MODELS"


def load_models(source: str | None = None, *, base: dict[str, ModelSpec] | None = None) -> dict[str, ModelSpec]:
    """The built-in models, extended or overridden by `source`: a JSON object (inline, or the path of a
    file holding one) mapping model names to fields of ModelSpec. A name that is already defined keeps
    the fields not given; a new name starts from the ModelSpec defaults. `source` None reads
    $LLMTAP_SIM_MODELS; empty means the built-ins only."""
    models = dict(BUILTIN_MODELS if base is None else base)
    if source is None:
        source = os.environ.get(MODELS_ENV, "")
    source = source.strip()
    if not source:
        return models
    text = source if source[0] in "{[" else _read(source)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"simulated models: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("simulated models: expected a JSON object of {model name: {field: value}}")
    known = {f.name for f in fields(ModelSpec)} - {"name"}
    for name, overrides in data.items():
        if not isinstance(overrides, dict):
            raise ValueError(f"simulated model {name!r}: expected an object of fields")
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"simulated model {name!r}: unknown fields {sorted(unknown)} (known: {sorted(known)})")
        start = models.get(name) or ModelSpec(name)
        models[name] = replace(start, **overrides)
    return models


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise ValueError(f"simulated models: cannot read {path}: {exc}") from None


class ModelState:
    """The live state of one simulated model: requests in flight, batch slots, decoding streams, loads.

    Times are seconds on the caller's monotonic clock. Slot waiting is the caller's business: `admit`
    says whether a slot is free now, and `release` frees one (the caller wakes its next waiter)."""

    __slots__ = ("admitted", "decoding", "in_flight", "last_end", "ready_at", "spec")

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.in_flight = 0  # arrived and not yet ended (queued, loading, prefilling or decoding)
        self.admitted = 0  # holding a batch slot
        self.decoding = 0  # past the first token
        self.last_end: float | None = None  # when the last request ended; None: never served one
        self.ready_at = 0.0  # the model is loaded from this time on

    def arrive(self, now: float) -> tuple[bool, float]:
        """Count an arrival. Returns (cold, ready_at): whether this request triggers a (re)load, and
        when the model is loaded (it waits until then; later arrivals wait for the same load)."""
        spec = self.spec
        idle = self.in_flight == 0 and (self.last_end is None or now - self.last_end > spec.idle_s)
        cold = idle and now >= self.ready_at
        if cold:
            self.ready_at = now + spec.cold_start_ms / 1000
        self.in_flight += 1
        return cold, max(now, self.ready_at)

    def touch(self, now: float) -> None:
        """A request that bypasses the model's timing (explicit knobs) still keeps the model warm."""
        self.in_flight += 1
        if self.last_end is None:
            self.last_end = now

    def admit(self) -> bool:
        if self.admitted < self.spec.max_batch:
            self.admitted += 1
            return True
        return False

    def release(self) -> None:
        self.admitted -= 1

    def end(self, now: float) -> None:
        self.in_flight -= 1
        self.last_end = now

    def to_json(self) -> dict[str, Any]:
        return {"in_flight": self.in_flight, "admitted": self.admitted, "decoding": self.decoding,
                "loaded": self.last_end is not None}
