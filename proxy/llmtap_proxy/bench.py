"""`llmtap bench`: a closed-loop load generator for OpenAI-compatible chat and Anthropic Messages streams.

For every model and every concurrency level, `c` workers send streamed requests back to back until
the level's request count (or duration) is reached. Every request's timeline is taken on the client
with `time.perf_counter_ns()`: sent, response headers, first body chunk, each content-bearing chunk,
last byte. Chunks are classified by the same stream parsers the proxy uses (`llmtap.providers`), so a
"content-bearing chunk" means the same thing here as in the proxy's spans (docs/metrics.md).

What it holds constant, so that runs compare:
- the prompts: a built-in varied set or a JSONL file, sent in the same seeded order at every level;
- the output length: `max_tokens` on every request, plus `"ignore_eos": true` with `--ignore-eos` for
  servers that accept it (vLLM, SGLang), so that every answer runs to max_tokens;
- warm-up: `--warmup N` requests per model, sent one at a time before the first level; they are
  recorded with `"phase": "warmup"` and reported separately as cold starts, never in the statistics;
- tokens: every prompt and every output is also counted with one reference tokenizer
  (`llmtap.tokens.ReferenceTokenizer`, cl100k_base by default), so throughput compares across models
  whose own tokenizers differ. Provider-reported usage is kept beside it (OpenAI streams are asked for
  it with `stream_options.include_usage`).

The raw results are JSON lines: one `{"type": "run", ...}` header, then one `{"type": "request", ...}`
line per request (fields in `RequestRecord`; times in seconds, relative to the request's own send time,
except `start`, which is a Unix timestamp). `llmtap report` turns them into tables and plots.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

__all__ = [
    "BUILTIN_PROMPTS",
    "BenchConfig",
    "Prompt",
    "RequestRecord",
    "add_arguments",
    "builtin_prompts",
    "load_prompts",
    "main",
    "run_bench",
]

RECORD_VERSION = 1
ANTHROPIC_VERSION = "2023-06-01"
MAX_ERROR_BODY = 4096

# --- prompts -------------------------------------------------------------------------------------

_PASSAGE = (
    "The harbour town woke slowly. Fishing boats came in with the tide, their crews calling prices "
    "across the water while gulls circled the cranes. By eight the market hall was full: ice, crates, "
    "the smell of diesel and salt. Merchants argued over the weight of the catch and the cost of fuel, "
    "which had doubled in two years. The harbour master kept a ledger of every arrival, and on the wall "
    "of his office hung a chart of the bay drawn by his grandfather, with depths in fathoms and the old "
    "names of the rocks. Young crews used satellite plotters now, but they still stopped to look at the "
    "chart before a storm. In the afternoon the wind turned east and the boats stayed in. Children ran "
    "along the sea wall, the cafes filled, and the talk turned to the new wind farm planned beyond the "
    "point: jobs for some, lost grounds for others, and a long argument at the council that nobody "
    "expected to end soon. "
)
_CODE = (
    "def merge_intervals(intervals):\n"
    "    intervals.sort()\n"
    "    merged = []\n"
    "    for start, end in intervals:\n"
    "        if merged and start <= merged[-1][1]:\n"
    "            merged[-1][1] = max(merged[-1][1], end)\n"
    "        else:\n"
    "            merged.append([start, end])\n"
    "    return merged\n"
)

BUILTIN_PROMPTS: tuple[str, ...] = (
    "What is the capital of Australia?",
    "Give three tips for writing clear error messages.",
    "Explain the difference between latency and throughput in one paragraph.",
    "Write a haiku about a lighthouse in winter.",
    "List five common causes of slow database queries and one fix for each.",
    "Translate into French: 'The meeting is moved to Thursday at ten; please bring the signed contract.'",
    "Describe how a hash map works to a first-year student, with one small example.",
    "Review this Python function and suggest improvements:\n\n" + _CODE,
    "Summarise the following text in three sentences:\n\n" + _PASSAGE,
    "Write a short story (about 200 words) that begins: 'The last train left without its driver.'",
    "Compare TCP and UDP for a multiplayer game. Which would you choose for player positions, and why?",
    "Extract every place, date and number from this text as a JSON object:\n\n" + _PASSAGE * 2,
    "Explain what this code does, then write three unit tests for it:\n\n" + _CODE * 2,
    "Write a formal email asking a supplier to move a delivery from Monday to Wednesday.",
    "Summarise the arguments for and against the wind farm in this account, in bullet points:\n\n" + _PASSAGE * 4,
    "You are a careful editor. Rewrite the following text in plain English for a ten-year-old, keeping "
    "every fact:\n\n" + _PASSAGE * 6,
)


@dataclass(slots=True)
class Prompt:
    id: str
    messages: list[dict[str, Any]]

    @property
    def text(self) -> str:
        """The prompt text as the reference tokenizer counts it (message contents, in order)."""
        parts: list[str] = []
        for message in self.messages:
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        return "\n".join(parts)


def builtin_prompts() -> list[Prompt]:
    return [Prompt(f"builtin-{i}", [{"role": "user", "content": text}]) for i, text in enumerate(BUILTIN_PROMPTS)]


def load_prompts(spec: str) -> list[Prompt]:
    """`builtin`, or a JSONL file: one JSON object per line with "prompt" (a string) or "messages"
    (OpenAI-style [{"role", "content"}]), optionally "system" and "id"; a bare JSON string is a prompt."""
    if spec == "builtin":
        return builtin_prompts()
    prompts: list[Prompt] = []
    with open(spec, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{spec}:{number}: not JSON: {exc}") from exc
            if isinstance(item, str):
                item = {"prompt": item}
            if not isinstance(item, dict):
                raise ValueError(f"{spec}:{number}: expected an object with 'prompt' or 'messages'")
            messages: list[dict[str, Any]]
            if isinstance(item.get("messages"), list):
                messages = [m for m in item["messages"] if isinstance(m, dict)]
            elif isinstance(item.get("prompt"), str):
                messages = [{"role": "user", "content": item["prompt"]}]
            else:
                raise ValueError(f"{spec}:{number}: expected 'prompt' (a string) or 'messages' (a list)")
            if isinstance(item.get("system"), str):
                messages.insert(0, {"role": "system", "content": item["system"]})
            prompts.append(Prompt(str(item.get("id", f"line-{number}")), messages))
    if not prompts:
        raise ValueError(f"{spec}: no prompts")
    return prompts


# --- configuration and records ----------------------------------------------------------------------

@dataclass
class BenchConfig:
    url: str
    models: list[str]
    concurrency: list[int] = field(default_factory=lambda: [1])
    requests: int | None = None  # per level; None with no duration: max(16, 4 * concurrency)
    duration: float | None = None  # seconds per level: no new request starts after it
    max_tokens: int = 128
    prompts: list[Prompt] = field(default_factory=builtin_prompts)
    prompts_source: str = "builtin"
    seed: int | None = None  # None: prompt order seeded with 0 and no "seed" sent
    api: str = "openai"  # or "anthropic"
    warmup: int = 1
    ignore_eos: bool = False
    temperature: float | None = None
    api_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 600.0
    tokenizer: str | None = None  # reference tokenizer name; None: LLMTAP_REFERENCE_TOKENIZER or cl100k_base
    out: str | None = None

    def level_requests(self, concurrency: int) -> int | None:
        if self.requests is not None:
            return self.requests
        if self.duration is not None:
            return None
        return max(16, 4 * concurrency)

    def endpoint(self) -> str:
        base = self.url.rstrip("/")
        if base.endswith("/v1"):
            base = base[:-3]
        return base + ("/v1/messages" if self.api == "anthropic" else "/v1/chat/completions")


@dataclass(slots=True)
class RequestRecord:
    """One request as `llmtap bench` saw it. Times in seconds since `start` (the send), rounded to 1 µs."""

    run_id: str
    model: str
    api: str
    concurrency: int
    phase: str  # "warmup" or "measure"
    index: int
    prompt_id: str
    start: float  # Unix time of the send
    status: int | None = None
    error: str | None = None  # HTTP status ("429"), in-stream error type, "timeout", "connection_error", ...
    error_message: str | None = None
    headers_at: float | None = None  # response headers
    ttfc: float | None = None  # first body chunk of any kind
    ttft: float | None = None  # first content-bearing chunk
    content_times: list[float] = field(default_factory=list)  # every content-bearing chunk
    end: float | None = None  # last byte (or failure): the duration
    usage: dict[str, int] | None = None  # provider-reported: input_tokens, output_tokens
    normalized_input_tokens: int | None = None
    normalized_output_tokens: int | None = None
    tokenizer: str | None = None
    response_model: str | None = None
    finish_reason: str | None = None
    output_text: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"type": "request", **asdict(self)}


# --- one request ------------------------------------------------------------------------------------

def _body(config: BenchConfig, model: str, prompt: Prompt) -> dict[str, Any]:
    if config.api == "anthropic":
        system = [m["content"] for m in prompt.messages
                  if m.get("role") == "system" and isinstance(m.get("content"), str)]
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": config.max_tokens,
            "messages": [m for m in prompt.messages if m.get("role") != "system"],
            "stream": True,
        }
        if system:
            body["system"] = "\n".join(system)
    else:
        body = {
            "model": model,
            "messages": prompt.messages,
            "max_tokens": config.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if config.seed is not None:
            body["seed"] = config.seed
        if config.ignore_eos:
            body["ignore_eos"] = True
    if config.temperature is not None:
        body["temperature"] = config.temperature
    return body


def _headers(config: BenchConfig) -> dict[str, str]:
    headers = {"content-type": "application/json", "accept": "text/event-stream"}
    if config.api == "anthropic":
        headers["anthropic-version"] = ANTHROPIC_VERSION
        key = config.api_key or os.environ.get("ANTHROPIC_API_KEY")
        if key:
            headers["x-api-key"] = key
    else:
        key = config.api_key or os.environ.get("OPENAI_API_KEY")
        if key:
            headers["authorization"] = f"Bearer {key}"
    headers.update({k.lower(): v for k, v in config.headers.items()})
    return headers


class _Clock:
    """perf_counter_ns for intervals, anchored once to the wall clock for `start`."""

    def __init__(self) -> None:
        self.unix0 = time.time()
        self.perf0 = time.perf_counter_ns()

    def unix(self, t_ns: int) -> float:
        return round(self.unix0 + (t_ns - self.perf0) * 1e-9, 6)


def _seconds(t_ns: int | None, origin: int) -> float | None:
    return None if t_ns is None else round((t_ns - origin) * 1e-9, 6)


class _Requester:
    """Sends one streamed request and records its timeline."""

    def __init__(self, config: BenchConfig, session: Any, run_id: str, clock: _Clock) -> None:
        from llmtap.providers import get_provider

        self.config = config
        self.session = session
        self.run_id = run_id
        self.clock = clock
        self.url = config.endpoint()
        self.headers = _headers(config)
        api = get_provider("anthropic" if config.api == "anthropic" else "openai")
        assert api is not None
        self.api = api

    async def send(self, model: str, prompt: Prompt, concurrency: int, phase: str, index: int) -> RequestRecord:
        import aiohttp

        from llmtap.providers.base import ContentDelta, Finish, ResponseInfo, StreamError, UsageReport
        from llmtap.wire.sse import SSEDecoder

        payload = json.dumps(_body(self.config, model, prompt)).encode()
        facts = self.api.request_facts("chat", payload)
        parser = self.api.stream_parser(facts)
        decoder = SSEDecoder()
        texts: list[str] = []
        content_ns: list[int] = []
        usage: dict[str, int] = {}
        rec = RequestRecord(self.run_id, model, self.config.api, concurrency, phase, index, prompt.id, 0.0)
        t_headers = t_first = None

        def take(events: Iterable[Any]) -> bool:
            content = False
            for event in events:
                for item in parser.on_event(event):
                    if isinstance(item, ContentDelta):
                        if item.text:
                            texts.append(item.text)
                            content = True
                    elif isinstance(item, UsageReport):
                        if item.input_tokens is not None:
                            usage["input_tokens"] = item.input_tokens
                        if item.output_tokens is not None:
                            usage["output_tokens"] = item.output_tokens
                    elif isinstance(item, StreamError):
                        rec.error = item.type or "stream_error"
                        rec.error_message = item.message[:500] or None
                    elif isinstance(item, ResponseInfo):
                        rec.response_model = item.model or rec.response_model
                    elif isinstance(item, Finish):
                        rec.finish_reason = item.reason
            return content

        t_send = time.perf_counter_ns()
        try:
            async with self.session.post(self.url, data=payload, headers=self.headers) as response:
                t_headers = time.perf_counter_ns()
                rec.status = response.status
                if response.status >= 400:
                    body = await response.content.read(MAX_ERROR_BODY)
                    t_first = time.perf_counter_ns()
                    rec.error = str(response.status)
                    rec.error_message = body.decode("utf-8", "replace")[:500]
                else:
                    async for chunk in response.content.iter_any():
                        t = time.perf_counter_ns()
                        if t_first is None:
                            t_first = t
                        if take(decoder.feed(chunk)):
                            content_ns.append(t)
                    if take(decoder.close()):
                        content_ns.append(time.perf_counter_ns())
        except asyncio.TimeoutError:
            rec.error = "timeout"
        except aiohttp.ClientConnectorError as exc:
            rec.error, rec.error_message = "connection_error", str(exc)[:500]
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
            rec.error, rec.error_message = "connection_closed", str(exc)[:500]
        except aiohttp.ClientError as exc:
            rec.error, rec.error_message = type(exc).__name__, str(exc)[:500]
        t_end = time.perf_counter_ns()
        rec.start = self.clock.unix(t_send)
        rec.headers_at = _seconds(t_headers, t_send)
        rec.ttfc = _seconds(t_first, t_send)
        rec.content_times = [round((t - t_send) * 1e-9, 6) for t in content_ns]
        rec.ttft = rec.content_times[0] if rec.content_times else None
        rec.end = _seconds(t_end, t_send)
        rec.usage = usage or None
        rec.output_text = "".join(texts)
        return rec


# --- live progress --------------------------------------------------------------------------------

def _median(values: Iterable[float]) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


class _LiveStats:
    """Running figures for the progress line (recent TTFT/ITL medians, tokens/s over the level)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.ttft: deque[float] = deque(maxlen=512)
        self.itl: deque[float] = deque(maxlen=4096)
        self.tokens = 0
        self.done = 0
        self.errors = 0

    def add(self, rec: RequestRecord) -> None:
        self.done += 1
        if rec.error:
            self.errors += 1
            return
        if rec.ttft is not None:
            self.ttft.append(rec.ttft)
        times = rec.content_times
        self.itl.extend(b - a for a, b in itertools.pairwise(times))
        reported = (rec.usage or {}).get("output_tokens")
        self.tokens += reported if reported is not None else len(times)

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        ttft, itl = _median(self.ttft), _median(self.itl)

        def show(value: float | None) -> str:
            return "-" if value is None else f"{value * 1000:.1f} ms"

        return (f"TTFT p50 {show(ttft)} · ITL p50 {show(itl)} · {self.tokens / elapsed:.0f} tok/s · "
                f"{self.done / elapsed:.2f} req/s · {self.errors} err")


class _Progress:
    """A rich progress bar on stderr, or nothing when disabled or rich is missing."""

    def __init__(self, enabled: bool) -> None:
        self.bar: Any = None
        if not enabled:
            return
        try:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        except ImportError:
            return
        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[stats]}"), console=Console(stderr=True), transient=False,
        )

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def task(self, description: str, total: int | None) -> Callable[[_LiveStats], None]:
        if self.bar is None:
            return lambda _stats: None
        task_id = self.bar.add_task(description, total=total, stats="")
        bar = self.bar

        def update(stats: _LiveStats) -> None:
            bar.update(task_id, completed=stats.done, stats=stats.line())

        return update


# --- the run ---------------------------------------------------------------------------------------

def _count_tokens(records: list[RequestRecord], prompts: dict[str, Prompt], tokenizer: Any,
                  prompt_counts: dict[str, int]) -> None:
    """Reference-tokenizer counts, after a level ends (never while requests are in flight)."""
    for rec in records:
        if rec.prompt_id not in prompt_counts:
            prompt_counts[rec.prompt_id] = tokenizer.count(prompts[rec.prompt_id].text)[0]
        rec.normalized_input_tokens = prompt_counts[rec.prompt_id]
        rec.normalized_output_tokens = tokenizer.count(rec.output_text)[0]
        rec.tokenizer = tokenizer.name


async def run_bench(config: BenchConfig, *, progress: bool = False, out: IO[str] | None = None) -> list[RequestRecord]:
    """Run every model at every concurrency level; return the records and write them as JSON lines to
    `out` (or to `config.out`, a path), a level at a time."""
    import aiohttp

    from llmtap.tokens import ReferenceTokenizer

    if config.api not in ("openai", "anthropic"):
        raise ValueError(f"api must be 'openai' or 'anthropic', got {config.api!r}")
    if not config.models or not config.concurrency or min(config.concurrency) < 1:
        raise ValueError("need at least one model and concurrency levels >= 1")
    tokenizer = ReferenceTokenizer(config.tokenizer)
    tokenizer.load()
    run_id = uuid.uuid4().hex[:12]
    clock = _Clock()
    prompts = {p.id: p for p in config.prompts}
    order = list(config.prompts)
    random.Random(config.seed if config.seed is not None else 0).shuffle(order)
    prompt_counts: dict[str, int] = {}
    records: list[RequestRecord] = []

    close_out = False
    if out is None and config.out:
        Path(config.out).parent.mkdir(parents=True, exist_ok=True)
        out = open(config.out, "w", encoding="utf-8")  # noqa: SIM115, ASYNC230 - once per run; closed below
        close_out = True

    def write(items: list[dict[str, Any]]) -> None:
        if out is not None:
            for item in items:
                out.write(json.dumps(item, separators=(",", ":")) + "\n")
            out.flush()

    write([{
        "type": "run", "version": RECORD_VERSION, "run_id": run_id, "tool": "llmtap bench",
        "started": datetime.now(timezone.utc).isoformat(), "url": config.url, "endpoint": config.endpoint(),
        "api": config.api, "models": config.models, "concurrency": config.concurrency,
        "requests": config.requests, "duration": config.duration, "max_tokens": config.max_tokens,
        "ignore_eos": config.ignore_eos, "temperature": config.temperature, "seed": config.seed,
        "warmup": config.warmup, "prompts": config.prompts_source, "prompt_count": len(config.prompts),
        "tokenizer": tokenizer.name,
    }])

    connector = aiohttp.TCPConnector(limit=max(config.concurrency) + 1, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=config.timeout, sock_connect=min(config.timeout, 30.0))
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=True) as session:
            requester = _Requester(config, session, run_id, clock)
            with _Progress(progress) as bar:
                for model in config.models:
                    level_records: list[RequestRecord] = []
                    if config.warmup > 0:
                        stats = _LiveStats()
                        update = bar.task(f"{model} warm-up", config.warmup)
                        for i in range(config.warmup):
                            rec = await requester.send(model, order[i % len(order)], config.concurrency[0],
                                                       "warmup", i)
                            level_records.append(rec)
                            stats.add(rec)
                            update(stats)
                    for concurrency in config.concurrency:
                        level_records += await _level(requester, config, model, concurrency, order, bar)
                        _count_tokens(level_records, prompts, tokenizer, prompt_counts)
                        write([rec.to_json() for rec in level_records])
                        records += level_records
                        level_records = []
    finally:
        if close_out and out is not None:
            out.close()
    return records


async def _level(requester: _Requester, config: BenchConfig, model: str, concurrency: int, order: list[Prompt],
                 bar: _Progress) -> list[RequestRecord]:
    total = config.level_requests(concurrency)
    stats = _LiveStats()
    update = bar.task(f"{model} c={concurrency}", total)
    deadline = time.perf_counter() + config.duration if config.duration is not None else None
    records: list[RequestRecord] = []
    counter = iter(range(sys.maxsize))

    async def worker() -> None:
        while True:
            index = next(counter)
            if total is not None and index >= total:
                return
            if deadline is not None and time.perf_counter() >= deadline:
                return
            rec = await requester.send(model, order[index % len(order)], concurrency, "measure", index)
            records.append(rec)
            stats.add(rec)
            update(stats)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    records.sort(key=lambda r: r.index)
    return records


# --- command line ---------------------------------------------------------------------------------

def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be >= 1")
    return levels


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="server or proxy base URL, e.g. http://127.0.0.1:8787")
    parser.add_argument("--model", required=True, action="append",
                        help="model name; repeat or comma-separate to compare models under identical load")
    parser.add_argument("--concurrency", type=_levels, default=[1], help="levels, e.g. 1,8,32 (default 1)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--requests", type=int, help="requests per level (default: 4 x concurrency, at least 16)")
    group.add_argument("--duration", type=float, metavar="SECONDS", help="run each level this long instead")
    parser.add_argument("--max-tokens", type=int, default=128, help="max output tokens per request (default 128)")
    parser.add_argument("--ignore-eos", action="store_true",
                        help='send "ignore_eos": true (vLLM, SGLang) so every answer runs to --max-tokens')
    parser.add_argument("--prompts", default="builtin", help="'builtin' (default) or a JSONL file of prompts")
    parser.add_argument("--seed", type=int,
                        help="prompt order seed; also sent as the sampling seed (OpenAI API). Default: order seed 0")
    parser.add_argument("--temperature", type=float, help="sampling temperature (default: the server's)")
    parser.add_argument("--api", choices=("openai", "anthropic"), default="openai",
                        help="openai: POST /v1/chat/completions; anthropic: POST /v1/messages")
    parser.add_argument("--warmup", type=int, default=1,
                        help="warm-up requests per model, reported as cold starts (default 1)")
    parser.add_argument("--api-key", help="default: OPENAI_API_KEY or ANTHROPIC_API_KEY; never recorded")
    parser.add_argument("--header", type=_header, action="append", default=[], metavar="'NAME: VALUE'",
                        help="extra request header (repeatable)")
    parser.add_argument("--timeout", type=float, default=600.0, help="per-request timeout, seconds (default 600)")
    parser.add_argument("--tokenizer", help="reference tokenizer (default: LLMTAP_REFERENCE_TOKENIZER or cl100k_base)")
    parser.add_argument("--out", default="bench-results.jsonl", help="raw results, JSON lines (overwritten)")
    parser.add_argument("--no-progress", action="store_true", help="no live progress bar")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    models = [m.strip() for item in args.model for m in item.split(",") if m.strip()]
    return BenchConfig(
        url=args.url, models=models, concurrency=args.concurrency, requests=args.requests, duration=args.duration,
        max_tokens=args.max_tokens, prompts=load_prompts(args.prompts), prompts_source=args.prompts,
        seed=args.seed, api=args.api, warmup=args.warmup, ignore_eos=args.ignore_eos,
        temperature=args.temperature, api_key=args.api_key, headers=dict(args.header), timeout=args.timeout,
        tokenizer=args.tokenizer, out=args.out,
    )


def main(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except (OSError, ValueError) as exc:
        print(f"llmtap bench: {exc}", file=sys.stderr)
        return 2
    if config.requests is not None and config.requests < 1:
        print("llmtap bench: --requests must be >= 1", file=sys.stderr)
        return 2
    runner: Callable[[Any], Any] = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop  # tighter timers and less per-read overhead on the client side

        runner = uvloop.run
    try:
        records = runner(run_bench(config, progress=not (args.no_progress or args.quiet)))
    except KeyboardInterrupt:
        print("llmtap bench: interrupted; completed levels are in " + str(config.out), file=sys.stderr)
        return 130
    except ValueError as exc:
        print(f"llmtap bench: {exc}", file=sys.stderr)
        return 2
    errors = sum(1 for r in records if r.error and r.phase == "measure")
    if not args.quiet:
        from llmtap_proxy.report import analyze, calls_from_records, render, summarize

        calls = calls_from_records([r.to_json() for r in records])
        rows = summarize(calls)
        print(render(rows, "table", analyze(calls, rows)))
        print(f"raw results: {config.out} ({len(records)} requests, {errors} errors)")
    return 0
