"""The project's standard performance run: what llmtap costs, against a direct connection, nginx and a plain relay.

    python benchmarks/overhead.py --rt 10              # full run (about 9 min), writes docs/benchmarks.md
    python benchmarks/overhead.py --quick              # smoke run (about 1.5 min), prints only
    python benchmarks/overhead.py --targets llmtap --workloads c64 --proxy-cmd '...'   # quick A/B of llmtap builds
    python benchmarks/overhead.py --repetitions 7 --workloads c1,c16,c64 --out /tmp/b.md

Targets, all measured in one run with the same workloads, interleaved (each repetition runs every target,
in an order rotated from one repetition to the next):
  * direct   client -> sim                       `llmtap sim --port P --ttft-ms 50 --itl-ms 20 --tokens 100`
  * nginx    client -> nginx -> sim             Debian nginx, one worker, SSE pass-through (no buffering either
                                                way, upstream keep-alive), see benchmarks/nginx_target.py;
                                                installed with apt-get if it is missing
  * relay    client -> plain relay -> sim       benchmarks/plain_relay.py: raw ASGI on uvicorn + uvloop +
                                                httptools, one aiohttp session, NO telemetry ("what Python costs")
  * llmtap   client -> `llmtap serve` -> sim    telemetry ON: OTLP/HTTP to a local sink (benchmarks/otlp_sink.py,
                                                200 + empty protobuf), OTEL_METRIC_EXPORT_INTERVAL=5000,
                                                OTEL_BSP_SCHEDULE_DELAY=1000
Layout: the three proxies on CPU 0 (only one carries traffic at a time); sim, sink and load generator on CPU 1
(`taskset -c`, verified from /proc/<pid>/task/*/status after start-up). On a shared machine, other processes'
load lands on the same two CPUs; it is measured (/proc/stat) and reported. Two ways to shield the benchmark
from it (root): --rt PRIO runs every benchmark process SCHED_FIFO (they preempt other work at once; they use
well under the 95 % RT throttling cap), --nice N lowers their nice level and that of this session's autogroup
(autogroup scheduling shares CPU between sessions first), restored at the end; nice only reduces it.

Workloads (--workloads, default all):
  * cN       N streams of the sim's default timing (TTFT 50 ms, ITL 20 ms, 100 tokens): c1 is sequential
             requests, cN > 1 is waves of N simultaneous streams. The load generator (uvloop + one aiohttp
             session, connector limit=0, OpenAI chat completions with stream + include_usage) records per
             request, with time.perf_counter_ns: TTFT (request start -> first chunk carrying a non-empty
             "content" delta), ITL (gaps between content chunks) and chunk lag (arrival of content chunk i minus
             its scheduled time, request start + ttft + i * itl).
  * peak     256 simultaneous streams (--peak-streams) with the same timing, one wave: the target's VmRSS is
             sampled every 50 ms during the phase (the peak is reported, and VmHWM at the end). The client only
             counts events here (the rig cannot deliver 256 paced streams on one core with full parsing).
  * max      maximum throughput: streams of 200 tokens with TTFT 0 and ITL 0, closed loop at several
             concurrencies (8, 32, 128) for a fixed window each; SSE events/s the client received, the target's
             CPU share and the rig's (sim + load generator on CPU 1). The client counts events by their b"\\n\\n"
             ends only.
  * prompts  large request bodies: ~100-, 8k- and 100k-token prompts (~4 characters per token, the largest
             body ~400 KB), one request at a time, 10-token answers, TTFT 0: the added TTFT per prompt size.
Every phase starts after a short unrecorded warm-up that leaves keep-alive connections open on both legs.
"added" is, for each proxy target, the median over repetitions of (target - direct) for each percentile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:  # benchmarks/ is not a package: nginx_target.py sits beside this file
    sys.path.insert(0, str(HERE))

import nginx_target  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
TARGETS = ("direct", "nginx", "relay", "llmtap")
PROXIES = TARGETS[1:]
LABELS = {"direct": "direct", "nginx": "nginx", "relay": "relay (no telemetry)", "llmtap": "llmtap (telemetry on)"}
WORKLOADS = ("c1", "c64", "peak", "max", "prompts")
FOREIGN_CPU_WARN = 0.15  # warn when other processes take more than this share of a benchmark CPU
SATURATED = 0.90  # a CPU busy this share of the wall time counts as saturated
WARMUP_SETTLE_S = 0.3
SLOW_GAP_MS = 10.0  # an ITL sample counts as slow when it exceeds the backend's itl by this much
RSS_SAMPLE_S = 0.05
VERSIONED = ("aiohttp", "uvicorn", "starlette", "opentelemetry-sdk", "uvloop", "httptools", "orjson", "llmtap")
# llmtap's budgets (issue #6), in the summary table
BUDGET_TTFT_P50_MS = 1.0
BUDGET_TTFT_P99_MS = 2.0
BUDGET_ITL_P99_MS = 0.5
BUDGET_CPU_US_PER_CHUNK = 100.0
BUDGET_CHUNKS_PER_S = 20_000
BUDGET_RSS_MB = 100.0
BUDGET_PROMPT_MS = 1.0
_perf_ns = time.perf_counter_ns
T = TypeVar("T")
REQUESTS: Counter[str] = Counter()  # completed (HTTP 200, body read) requests per URL, warm-ups included


# --- processes ---------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child_setup(nice: int, rt: int) -> Any:
    def setup() -> None:
        """preexec_fn: SIGTERM if this process dies, even by SIGKILL (Linux prctl); then the priority."""
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        set_priority(nice, rt)

    return setup


def set_priority(nice: int, rt: int) -> None:
    """Nice level and/or SCHED_FIFO for the calling thread; threads it creates later inherit both."""
    if nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    if rt:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(rt))


def sched_policies(pid: int) -> set[str]:
    """Scheduling policy of every thread of a process (field 41 of /proc/<pid>/task/<tid>/stat)."""
    names = {0: "normal", 1: "fifo", 2: "rr", 3: "batch", 5: "idle", 6: "deadline"}
    found: set[str] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            policy = int((task / "stat").read_text().rsplit(")", 1)[1].split()[38])
            found.add(names.get(policy, str(policy)))
    return found


@dataclass
class Proc:
    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (the proxy then drains and flushes telemetry), SIGKILL after `timeout`."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


def start_proc(name: str, argv: list[str], cpu: int | None, env: dict[str, str], logdir: Path, nice: int = 0,
               rt: int = 0) -> Proc:
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]  # taskset execs the command: same pid
    log = logdir / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=env, cwd=ROOT, preexec_fn=_child_setup(nice, rt))
    return Proc(name, argv, popen, log)


def set_autogroup_nice(nice: int) -> int | None:
    """With autogroup scheduling (CONFIG_SCHED_AUTOGROUP, sched_autogroup_enabled=1) CPU time is first shared
    between sessions, so a process's own nice level only counts against its own session. Setting the
    autogroup's nice too makes --nice effective against other sessions' load. Returns the previous value."""
    path = Path("/proc/self/autogroup")
    try:
        previous = int(path.read_text().split("nice")[1])
        path.write_text(str(nice))
        return previous
    except (OSError, IndexError, ValueError):
        return None


_PROBE = ("import time\nt = time.perf_counter()\nx = 0\nfor i in range(2_000_000):\n    x += i\n"
          "print((time.perf_counter() - t) * 1e3)")


def cpu_probe(cpu: int | None, nice: int, rt: int, runs: int = 3) -> float:
    """Speed of one CPU right now: the fastest of `runs` timings of a fixed pure-Python loop, in ms.
    On shared virtual machines the same loop can take 50 % longer from one minute to the next."""
    argv = ["taskset", "-c", str(cpu)] if cpu is not None else []
    timings = []
    for _ in range(runs):
        out = subprocess.run([*argv, sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60,
                             preexec_fn=_child_setup(nice, rt), check=True)
        timings.append(float(out.stdout))
    return min(timings)


def llmtap_argv() -> list[str]:
    exe = shutil.which("llmtap")
    return [exe] if exe else [sys.executable, "-m", "llmtap_proxy.cli"]


# --- /proc readings ----------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds; 1/CLK_TCK resolution."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def thread_affinities(pid: int) -> set[str]:
    """The distinct Cpus_allowed_list of all threads of a process."""
    found: set[str] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    found.add(line.split(":", 1)[1].strip())
    return found


def nice_level(pid: int) -> str:
    """The process's nice level, plus its autogroup's when autogroup scheduling is on."""
    with open(f"/proc/{pid}/stat") as f:
        nice = f.read().rsplit(")", 1)[1].split()[16]
    with contextlib.suppress(OSError, IndexError):
        if Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1":
            nice += " (autogroup " + Path(f"/proc/{pid}/autogroup").read_text().split("nice")[1].strip() + ")"
    return nice


def cpu_busy_seconds() -> dict[int, float]:
    """Busy time per CPU from /proc/stat (everything but idle and iowait; steal counts as busy)."""
    busy: dict[int, float] = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *values = line.split()
                ticks = [int(v) for v in values]
                busy[int(name[3:])] = (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLK_TCK
    return busy


def realtime_processes(exclude: set[int]) -> list[str]:
    """Other processes (not kernel threads) that run SCHED_FIFO or SCHED_RR: under --rt they compete with ours
    on equal or higher terms, so the benchmark's shield does not hold against them."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat.rsplit(")", 1)[1].split()
            ppid, prio, policy = int(rest[1]), int(rest[37]), int(rest[38])
            if policy in (1, 2) and ppid != 2 and entry.name != "2":
                found.append(f"{comm} (pid {entry.name}, {'FIFO' if policy == 1 else 'RR'} {prio})")
    return found


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


# --- statistics --------------------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); `values` must be sorted."""
    if not values:
        return math.nan
    k = (len(values) - 1) * q / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def median(values: Iterable[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan



def group_cpu_seconds(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += cpu_seconds(pid)
    return total


def group_kb(pids: Sequence[int], key: str) -> int | None:
    """Sum of a /proc/<pid>/status field (VmRSS, VmHWM) over processes; None if none could be read."""
    values = [v for v in (status_kb(p, key) for p in pids) if v is not None]
    return sum(values) if values else None


def rotate(items: Sequence[T], k: int) -> list[T]:
    k %= max(1, len(items))
    return [*items[k:], *items[:k]]


# --- load generator ----------------------------------------------------------------------------------

@dataclass
class Workload:
    ttft_ms: float
    itl_ms: float
    tokens: int


@dataclass
class Sample:
    """One streamed request, seen by the client."""

    status: int = 0
    error: str | None = None
    ttft_ns: int | None = None
    itl_ns: list[int] = field(default_factory=list)
    lag_ns: list[int] = field(default_factory=list)
    events: int = 0
    content_chunks: int = 0
    body_bytes: int = 0
    reads: int = 0


_FILLER = ("The quick brown fox jumps over the lazy dog while the weather report calls for rain in the valley, "
           "sun on the hills and a light wind from the west. ")


def prompt_text(tokens: int) -> str:
    """About `tokens` tokens of English text (about 4 characters per token)."""
    chars = 4 * tokens
    return (_FILLER * (chars // len(_FILLER) + 1))[:chars].rstrip()


def chat_body(tokens: int, seed: int, prompt: str = "Tell me about the weather in five words.") -> bytes:
    return orjson.dumps({
        "model": "sim-small",
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": tokens,
        "seed": seed,
    })


def sim_headers(tokens: int, ttft_ms: float, itl_ms: float) -> dict[str, str]:
    """Per-request simulator knobs (x-sim-* headers win over the sim's command-line defaults)."""
    return {"Content-Type": "application/json", "x-sim-tokens": str(tokens), "x-sim-ttft-ms": f"{ttft_ms:g}",
            "x-sim-itl-ms": f"{itl_ms:g}"}


def _short_stream_headers(tokens: int) -> dict[str, str]:
    return sim_headers(tokens, 1, 5)  # 5 ms apart: the two chunks are not coalesced into one read


def _is_content(data: bytes) -> bool:
    if not data.startswith(b"{"):
        return False  # [DONE]
    choices = orjson.loads(data).get("choices")
    if not choices:
        return False
    delta = choices[0].get("delta") or {}
    return bool(delta.get("content"))


async def stream_one(session: aiohttp.ClientSession, url: str, body: bytes, work: Workload,
                     headers: dict[str, str] | None = None) -> Sample:
    """One streamed request with full parsing: TTFT, ITL and chunk lag of the content chunks."""
    sample = Sample()
    ttft_ns = int(work.ttft_ms * 1e6)
    itl_ns = int(work.itl_ms * 1e6)
    t0 = _perf_ns()
    try:
        async with session.post(url, data=body, headers=headers or {"Content-Type": "application/json"}) as resp:
            sample.status = resp.status
            if resp.status != 200:
                sample.error = f"HTTP {resp.status}: {(await resp.read())[:200]!r}"
                return sample
            read = resp.content.readany
            buf = b""
            last = 0
            while True:
                data = await read()
                if not data:
                    break
                t = _perf_ns()
                sample.reads += 1
                sample.body_bytes += len(data)
                buf += data
                while (end := buf.find(b"\n\n")) >= 0:
                    event, buf = buf[:end], buf[end + 2:]
                    sample.events += 1
                    for line in event.split(b"\n"):
                        if line.startswith(b"data:") and _is_content(line[5:].lstrip()):
                            i = sample.content_chunks
                            if i == 0:
                                sample.ttft_ns = t - t0
                            else:
                                sample.itl_ns.append(t - last)
                            sample.lag_ns.append(t - t0 - (ttft_ns + i * itl_ns))
                            sample.content_chunks += 1
                            last = t
            if buf.strip():
                sample.events += 1
        REQUESTS[url] += 1
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"
    return sample


async def stream_count(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str],
                       totals: list[int] | None = None) -> Sample:
    """One streamed request, light: counts SSE events by their b"\\n\\n" ends, reads and bytes (no parsing),
    so that the load generator spends as little CPU per event as it can. `totals` ([events, reads]) is
    updated as the bytes arrive, for rates over a time window."""
    sample = Sample()
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            sample.status = resp.status
            if resp.status != 200:
                sample.error = f"HTTP {resp.status}: {(await resp.read())[:200]!r}"
                return sample
            read = resp.content.readany
            newline = False  # the previous read ended with b"\n": an event end may straddle two reads
            events = reads = size = 0
            while data := await read():
                n = data.count(b"\n\n") + (newline and data[0] == 10)
                newline = data[-1] == 10
                events += n
                reads += 1
                size += len(data)
                if totals is not None:
                    totals[0] += n
                    totals[1] += 1
            sample.events, sample.reads, sample.body_bytes = events, reads, size
        REQUESTS[url] += 1
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"
    return sample


async def run_waves(session: aiohttp.ClientSession, url: str, work: Workload, concurrency: int, waves: int,
                    seed0: int = 0, headers: dict[str, str] | None = None, light: bool = False) -> list[Sample]:
    """`waves` rounds of `concurrency` simultaneous streams; a round starts when the previous one ended."""
    samples: list[Sample] = []
    for wave in range(waves):
        bodies = [chat_body(work.tokens, seed0 + wave * concurrency + i) for i in range(concurrency)]
        if light:
            calls = (stream_count(session, url, b, headers or {"Content-Type": "application/json"}) for b in bodies)
        else:
            calls = (stream_one(session, url, b, work, headers) for b in bodies)
        samples.extend(await asyncio.gather(*calls))
    return samples


# --- one measured phase ------------------------------------------------------------------------------

@dataclass
class Phase:
    workload: str  # "c64", "peak", "max" or "prompts"
    level: int  # concurrency; for "prompts" the prompt size in tokens
    target: str
    rep: int
    wall_s: float
    samples: list[Sample]
    cpu_s: dict[str, float]  # per process group (nginx, relay, llmtap, sim, sink, loadgen) during the phase
    cpu_busy_s: dict[int, float]  # per CPU, from /proc/stat (everything, ours and others')
    events: int = 0
    reads: int = 0
    rss_peak_kb: int | None = None  # the target's VmRSS (master + worker for nginx), sampled during the phase

    @property
    def errors(self) -> list[str]:
        return [s.error for s in self.samples if s.error]

    def sorted_ms(self, name: str) -> list[float]:
        if name.startswith("ttft"):
            # ttft: all; ttft_w1: the first wave (starts on an idle proxy); ttft_wn: the waves after it
            samples = {"ttft": self.samples, "ttft_w1": self.samples[:self.level],
                       "ttft_wn": self.samples[self.level:]}[name]
            values = [s.ttft_ns for s in samples if s.ttft_ns is not None]
        else:
            values = [v for s in self.samples for v in getattr(s, name + "_ns")]
        return sorted(v / 1e6 for v in values)

    def share(self, group: str) -> float:
        return self.cpu_s.get(group, 0.0) / self.wall_s if self.wall_s else math.nan


@dataclass
class Context:
    args: argparse.Namespace
    work: Workload
    targets: list[str]
    urls: dict[str, str]  # target -> chat completions URL
    bases: dict[str, str]  # target -> base URL (health checks)
    procs: dict[str, Proc]  # sim, sink, nginx, relay, llmtap (those started)
    groups: dict[str, list[int]]  # process group -> pids (nginx: master + worker)
    proxy_cpu: int | None
    client_cpu: int | None
    nginx_version: str | None = None
    events_per_stream: int = 0  # SSE events in one default stream (from the byte check)


@dataclass
class Snapshot:
    cpu: dict[str, float]
    busy: dict[int, float]
    t: float


def snapshot(ctx: Context) -> Snapshot:
    cpu = {name: group_cpu_seconds(pids) for name, pids in ctx.groups.items()}
    cpu["loadgen"] = self_cpu_seconds()
    return Snapshot(cpu, cpu_busy_seconds(), time.perf_counter())


def phase_from(ctx: Context, workload: str, level: int, target: str, rep: int, before: Snapshot, after: Snapshot,
               samples: list[Sample], rss_peak: list[int] | None = None, events: int | None = None,
               reads: int | None = None) -> Phase:
    return Phase(
        workload=workload, level=level, target=target, rep=rep, wall_s=after.t - before.t, samples=samples,
        cpu_s={k: after.cpu[k] - before.cpu.get(k, 0.0) for k in after.cpu},
        cpu_busy_s={cpu: after.busy[cpu] - before.busy.get(cpu, 0.0) for cpu in after.busy},
        events=sum(s.events for s in samples) if events is None else events,
        reads=sum(s.reads for s in samples) if reads is None else reads,
        rss_peak_kb=rss_peak[0] if rss_peak and rss_peak[0] else None,
    )


@contextlib.asynccontextmanager
async def rss_watch(ctx: Context, target: str) -> Any:
    """Samples the target's VmRSS every RSS_SAMPLE_S while the block runs; yields [peak kB]."""
    pids = ctx.groups.get(target, [])
    peak = [0]

    async def sample() -> None:
        while True:
            peak[0] = max(peak[0], group_kb(pids, "VmRSS") or 0)
            await asyncio.sleep(RSS_SAMPLE_S)

    task = asyncio.create_task(sample()) if pids else None
    try:
        yield peak
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            peak[0] = max(peak[0], group_kb(pids, "VmRSS") or 0)


async def warm_up(session: aiohttp.ClientSession, url: str, concurrency: int) -> None:
    # Open (or re-open) keep-alive connections on every leg with short streams, unrecorded. uvicorn drops idle
    # client connections after 5 s, so without it a proxy's phase would pay connects.
    await run_waves(session, url, Workload(1, 5, 2), concurrency, 1, headers=_short_stream_headers(2))
    await asyncio.sleep(WARMUP_SETTLE_S)  # llmtap finishes the warm-up calls' telemetry before we measure


async def measure_streams(ctx: Context, session: aiohttp.ClientSession, workload: str, target: str,
                          concurrency: int, rep: int) -> Phase:
    """cN (latency: waves of N streams, full parsing) and peak (one wave, light client, RSS watched)."""
    url = ctx.urls[target]
    await warm_up(session, url, concurrency)
    light = workload == "peak"
    waves = 1 if light else ctx.args.sequential if concurrency == 1 else ctx.args.waves
    work = ctx.work
    # enough for the rig to fall behind the schedule (at least 2000 events/s)
    timeout = waves * (work.ttft_ms + work.tokens * work.itl_ms) / 1000 * 3 + waves * concurrency * work.tokens / 2000
    async with rss_watch(ctx, target) as peak:
        before = snapshot(ctx)
        samples = await asyncio.wait_for(
            run_waves(session, url, work, concurrency, waves, seed0=rep * 100_000, light=light), timeout + 30
        )
        after = snapshot(ctx)
    return phase_from(ctx, workload, concurrency, target, rep, before, after, samples, peak)


async def measure_max(ctx: Context, session: aiohttp.ClientSession, target: str, concurrency: int,
                      rep: int) -> Phase:
    """Closed loop of `concurrency` workers, each streaming 200-token ITL-0 responses back to back; the rate is
    taken over a window that starts after a ramp-up, and no new request starts after it."""
    args = ctx.args
    url = ctx.urls[target]
    await warm_up(session, url, concurrency)
    headers = sim_headers(args.max_stream_tokens, 0, args.max_itl_ms)
    body = chat_body(args.max_stream_tokens, seed=7)
    totals = [0, 0]  # events, reads
    samples: list[Sample] = []
    stop = False

    async def worker() -> None:
        while not stop:
            sample = await stream_count(session, url, body, headers, totals)
            samples.append(sample)
            if sample.error:
                await asyncio.sleep(0.05)

    async with rss_watch(ctx, target) as peak:
        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        try:
            await asyncio.sleep(args.max_ramp_s)
            start, before = totals[:], snapshot(ctx)
            await asyncio.sleep(args.max_window_s)
            end, after = totals[:], snapshot(ctx)
        finally:
            stop = True
            await asyncio.wait_for(asyncio.gather(*tasks), 120)
    return phase_from(ctx, "max", concurrency, target, rep, before, after, samples, peak,
                      events=end[0] - start[0], reads=end[1] - start[1])


async def measure_prompts(ctx: Context, session: aiohttp.ClientSession, target: str, rep: int) -> list[Phase]:
    """One request at a time: prompt sizes interleaved within the block, args.prompt_requests of each."""
    args = ctx.args
    url = ctx.urls[target]
    await warm_up(session, url, 1)
    work = Workload(0, 1, args.prompt_answer_tokens)
    headers = sim_headers(work.tokens, work.ttft_ms, work.itl_ms)
    bodies = {size: chat_body(work.tokens, seed=size, prompt=prompt_text(size)) for size in args.prompt_sizes}
    samples: dict[int, list[Sample]] = {size: [] for size in args.prompt_sizes}
    before = snapshot(ctx)
    for i in range(args.prompt_requests):
        for size in rotate(args.prompt_sizes, i):
            samples[size].append(await stream_one(session, url, bodies[size], work, headers))
    after = snapshot(ctx)
    return [phase_from(ctx, "prompts", size, target, rep, before, after, s) for size, s in samples.items()]


# --- output integrity --------------------------------------------------------------------------------

_ID = re.compile(rb'"id":"[^"]*"')
_CREATED = re.compile(rb'"created":\d+')


def normalise(body: bytes) -> bytes:
    return _CREATED.sub(b'"created":0', _ID.sub(b'"id":"<id>"', body))


async def fetch_raw(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> bytes:
    async with session.post(url, data=body, headers=headers) as resp:
        resp.raise_for_status()
        data = await resp.read()
    REQUESTS[url] += 1
    return data


async def compare_bytes(session: aiohttp.ClientSession, ctx: Context, tokens: int) -> dict[str, Any]:
    """One deterministic request (same body, same seed) direct twice and once through each proxy target."""
    body = chat_body(tokens, seed=424242)
    headers = {"Content-Type": "application/json", "x-sim-ttft-ms": "5", "x-sim-itl-ms": "5"}
    direct_a = await fetch_raw(session, ctx.urls["direct"], body, headers)
    direct_b = await fetch_raw(session, ctx.urls["direct"], body, headers)
    out: dict[str, Any] = {
        "direct_bytes": len(direct_a),
        "events": direct_a.count(b"\n\n"),
        "control_direct_vs_direct_raw_equal": direct_a == direct_b,
        "control_direct_vs_direct_normalised_equal": normalise(direct_a) == normalise(direct_b),
        "fields_normalised": ['"id"', '"created"'],
        "targets": {},
    }
    for target in ctx.targets:
        if target == "direct":
            continue
        got = await fetch_raw(session, ctx.urls[target], body, headers)
        out["targets"][target] = {"bytes": len(got), "raw_equal": got == direct_a,
                                  "normalised_equal": normalise(got) == normalise(direct_a)}
    return out


# --- orchestration -----------------------------------------------------------------------------------

async def wait_healthy(session: aiohttp.ClientSession, proc: Proc, url: str, deadline_s: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < deadline_s:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                if resp.status == 200:
                    return time.perf_counter() - t0
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{proc.name} not healthy at {url} after {deadline_s:.0f} s:\n{proc.tail()}")


def check_layout(ctx: Context) -> dict[str, Any]:
    layout: dict[str, Any] = {}
    wants = {"nginx": ctx.proxy_cpu, "relay": ctx.proxy_cpu, "llmtap": ctx.proxy_cpu, "sim": ctx.client_cpu,
             "sink": ctx.client_cpu}
    entries = [(name if i == 0 else f"{name} worker", pid, wants[name])
               for name, pids in ctx.groups.items() for i, pid in enumerate(pids)]
    entries.append(("loadgen", os.getpid(), ctx.client_cpu))
    for name, pid, want in entries:
        seen = thread_affinities(pid)
        layout[name] = {"pid": pid, "cpus": sorted(seen), "nice": nice_level(pid), "sched": sorted(sched_policies(pid)),
                        "ok": want is None or seen == {str(want)}}
    return layout


def _progress(phase: Phase, client_cpu: int | None) -> str:
    head = f"{phase.workload:<7} {phase.level:>6} rep={phase.rep} {phase.target:<6}"
    own = phase.cpu_s.get(phase.target)
    cpu = f"target cpu {own / phase.wall_s:4.0%}" if own is not None and phase.wall_s else "target cpu    -"
    busy = phase.cpu_busy_s.get(client_cpu, 0.0) / phase.wall_s if client_cpu is not None and phase.wall_s else 0.0
    tail = f"{cpu}  cpu{client_cpu} {busy:4.0%}  errors {len(phase.errors)}"
    if phase.workload in ("max", "peak"):
        rss = f"  rss {phase.rss_peak_kb / 1024:6.1f} MiB" if phase.rss_peak_kb else ""
        return (f"{head} {phase.events / phase.wall_s:8.0f} events/s  {phase.events / max(1, phase.reads):6.1f} "
                f"events/read  {tail}{rss}")
    ttft, itl = phase.sorted_ms("ttft"), phase.sorted_ms("itl")
    return (f"{head} {len(phase.samples):>4} req TTFT p50 {percentile(ttft, 50):8.3f} ms  ITL p50 "
            f"{percentile(itl, 50):7.3f} p99 {percentile(itl, 99):7.3f} ms  {tail}")


async def run(ctx: Context) -> dict[str, Any]:
    args = ctx.args
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
    result: dict[str, Any] = {"phases": []}
    phases: list[Phase] = result["phases"]

    def record(phase: Phase) -> None:
        phases.append(phase)
        print(_progress(phase, ctx.client_cpu), flush=True)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        startup = {}
        health = {"sink": (ctx.procs["sink"], ctx.bases["sink"]), "sim": (ctx.procs["sim"], ctx.bases["direct"])}
        health.update({t: (ctx.procs[t], ctx.bases[t]) for t in ctx.targets if t != "direct"})
        for name, (proc, base) in health.items():
            startup[name] = await wait_healthy(session, proc, base + "/healthz", 30)
        result["startup_s"] = startup
        for name in PROXIES:  # nginx's worker exists now (and a multi-process llmtap's workers would)
            if name in ctx.groups:
                ctx.groups[name] = nginx_target.process_tree(ctx.procs[name].pid)
        ours = {os.getpid(), *(pid for pids in ctx.groups.values() for pid in pids)}
        result["foreign_rt_start"] = realtime_processes(ours)
        result["layout"] = check_layout(ctx)
        if not all(v["ok"] for v in result["layout"].values()):
            print(f"WARNING: CPU layout not as intended: {result['layout']}", file=sys.stderr)
        proxies = [t for t in ctx.targets if t != "direct"]
        rss: dict[str, dict[str, int | None]] = {t: {"idle": group_kb(ctx.groups[t], "VmRSS")} for t in proxies}
        result["bytes"] = await compare_bytes(session, ctx, ctx.work.tokens)
        ctx.events_per_stream = result["bytes"]["events"]
        print(f"bytes: {result['bytes']}", flush=True)

        for workload in args.workloads:
            if workload.startswith("c") or workload == "peak":
                concurrency = args.peak_streams if workload == "peak" else int(workload[1:])
                for rep in range(args.peak_repetitions if workload == "peak" else args.repetitions):
                    for target in rotate(ctx.targets, rep):
                        record(await measure_streams(ctx, session, workload, target, concurrency, rep))
            elif workload == "max":
                for rep in range(args.max_repetitions):
                    for i, concurrency in enumerate(args.max_levels):
                        for target in rotate(ctx.targets, rep * len(args.max_levels) + i):
                            record(await measure_max(ctx, session, target, concurrency, rep))
            elif workload == "prompts":
                for rep in range(args.repetitions):
                    for target in rotate(ctx.targets, rep):
                        for phase in await measure_prompts(ctx, session, target, rep):
                            record_prompt(phase, phases)
        result["foreign_rt_end"] = realtime_processes(ours)
        for t in proxies:
            rss[t]["end"] = group_kb(ctx.groups[t], "VmRSS")
            rss[t]["hwm"] = group_kb(ctx.groups[t], "VmHWM")
        result["rss_kb"] = rss

        if "llmtap" in ctx.procs:
            # Let the batch span processor export the last spans, then stop llmtap (it flushes on SIGTERM).
            await asyncio.sleep(args.bsp_delay_ms / 1000 + 0.5)
            result["llmtap_total_cpu_s"] = cpu_seconds(ctx.procs["llmtap"].pid)
            result["sink_total_cpu_s"] = cpu_seconds(ctx.procs["sink"].pid)
            result["llmtap_exit"] = await asyncio.to_thread(ctx.procs["llmtap"].stop, 15.0)
            async with session.get(ctx.bases["sink"] + "/stats", timeout=aiohttp.ClientTimeout(total=60)) as resp:
                result["telemetry"] = await resp.json()
        result["requests"] = {t: REQUESTS[ctx.urls[t]] for t in ctx.targets}
    return result


def record_prompt(phase: Phase, phases: list[Phase]) -> None:
    phases.append(phase)
    ttft = phase.sorted_ms("ttft")
    print(f"prompts {phase.level:>6} rep={phase.rep} {phase.target:<6} {len(phase.samples):>4} req TTFT p50 "
          f"{percentile(ttft, 50):8.3f} ms  max {max(ttft, default=math.nan):8.3f} ms  errors {len(phase.errors)}",
          flush=True)


# --- summaries ---------------------------------------------------------------------------------------

FIGURES = (("ttft", "TTFT"), ("itl", "ITL"), ("lag", "chunk lag"))
WAVE_FIGURES = (("ttft_w1", "TTFT, 1st wave"), ("ttft_wn", "TTFT, later waves"))


def _by_rep(phases: Iterable[Phase]) -> dict[int, dict[str, Phase]]:
    reps: dict[int, dict[str, Phase]] = {}
    for phase in phases:
        reps.setdefault(phase.rep, {})[phase.target] = phase
    return reps


def _added(reps: dict[int, dict[str, Phase]], target: str, value: Any) -> dict[str, Any]:
    """Median over repetitions of value(direct phase) and value(target phase), and of their difference."""
    per_rep = [(value(pair["direct"]), value(pair[target])) for pair in reps.values()
               if "direct" in pair and target in pair]
    diffs = [t - d for d, t in per_rep]
    finite = [x for x in diffs if not math.isnan(x)]
    return {"direct": median(d for d, _ in per_rep), "value": median(t for _, t in per_rep),
            "added": median(diffs), "added_min": min(finite, default=math.nan),
            "added_max": max(finite, default=math.nan), "per_rep": per_rep}


def _foreign(items: Sequence[Phase], cpu: int | None, ours: Sequence[str]) -> float:
    """Share of a CPU that processes other than ours used during the phases (busy time minus ours)."""
    wall = sum(p.wall_s for p in items)
    if cpu is None or not wall:
        return math.nan
    busy = sum(p.cpu_busy_s.get(cpu, 0.0) - sum(p.cpu_s.get(g, 0.0) for g in ours) for p in items)
    return max(busy, 0.0) / wall


def _share(items: Sequence[Phase], group: str) -> float:
    wall = sum(p.wall_s for p in items)
    return sum(p.cpu_s.get(group, 0.0) for p in items) / wall if wall else math.nan


def _busy(items: Sequence[Phase], cpu: int | None) -> float:
    wall = sum(p.wall_s for p in items)
    return sum(p.cpu_busy_s.get(cpu, 0.0) for p in items) / wall if wall and cpu is not None else math.nan


def summarise_streams(ctx: Context, phases: list[Phase], workload: str) -> dict[str, Any]:
    """cN and peak: latency (cN only) and resources per target."""
    mine = [p for p in phases if p.workload == workload]
    reps = _by_rep(mine)
    concurrency = mine[0].level
    light = workload == "peak"
    waves = max((len(p.samples) // concurrency for p in mine), default=1)
    figures = () if light else FIGURES + (WAVE_FIGURES if concurrency > 1 and waves > 1 else ())
    out: dict[str, Any] = {"workload": workload, "concurrency": concurrency, "reps": len(reps), "figures": figures,
                           "targets": [t for t in ctx.targets if any(p.target == t for p in mine)]}
    for key, _label in figures:
        for q in (50, 99):
            out[f"{key}_p{q}"] = {t: _added(reps, t, lambda p, k=key, q=q: percentile(p.sorted_ms(k), q))
                                  for t in out["targets"] if t != "direct"}
            out[f"{key}_p{q}"]["direct"] = median(percentile(pair["direct"].sorted_ms(key), q)
                                                  for pair in reps.values() if "direct" in pair)
    proxy_groups = [g for g in PROXIES if g in ctx.groups]
    slow_ns = int((ctx.work.itl_ms + SLOW_GAP_MS) * 1e6)

    def slow_gaps(items: list[Phase]) -> dict[str, Any]:
        gaps = [(i >= len(s.itl_ns) - 3, g) for p in items for s in p.samples for i, g in enumerate(s.itl_ns)]
        return {"gaps": len(gaps), "slow": sum(g > slow_ns for _, g in gaps),
                "slow_in_last_3": sum(last and g > slow_ns for last, g in gaps),
                "max_ms": max((g for _, g in gaps), default=0) / 1e6}

    per_target: dict[str, Any] = {}
    for target in out["targets"]:
        items = [p for p in mine if p.target == target]
        others = [p for p in mine if p.target != target]
        events = sum(p.events for p in items)
        wall = sum(p.wall_s for p in items)
        own_cpu = sum(p.cpu_s.get(target, 0.0) for p in items) if target in ctx.groups else math.nan
        per_target[target] = {
            "requests": sum(len(p.samples) for p in items),
            "events": events,
            "events_per_s": events / wall if wall else math.nan,
            "events_per_read": events / max(1, sum(p.reads for p in items)),
            "errors": sum(len(p.errors) for p in items),
            "first_errors": [e for p in items for e in p.errors][:3],
            "content_chunks_ok": light or all(s.content_chunks == ctx.work.tokens for p in items for s in p.samples),
            "events_ok": not light or all(s.events == ctx.events_per_stream for p in items for s in p.samples),
            "cpu_s": own_cpu,
            "cpu_us_per_event": own_cpu / events * 1e6 if events else math.nan,
            "cpu_share": own_cpu / wall if wall else math.nan,
            "cpu_in_other_phases_s": (sum(p.cpu_s.get(target, 0.0) for p in others) if target in ctx.groups
                                      else math.nan),
            "loadgen_share": _share(items, "loadgen"),
            "sim_share": _share(items, "sim"),
            "client_cpu_busy": _busy(items, ctx.client_cpu),
            "foreign_proxy_cpu": _foreign(items, ctx.proxy_cpu, proxy_groups),
            "foreign_client_cpu": _foreign(items, ctx.client_cpu, ("sim", "sink", "loadgen")),
            "rss_peak_kb": max((p.rss_peak_kb or 0 for p in items), default=0) or None,
            "slow_gaps": slow_gaps(items),
        }
    out["per_target"] = per_target
    return out


def summarise_max(ctx: Context, phases: list[Phase]) -> dict[str, Any]:
    mine = [p for p in phases if p.workload == "max"]
    levels = sorted({p.level for p in mine})
    proxy_groups = [g for g in PROXIES if g in ctx.groups]
    out: dict[str, Any] = {"levels": levels, "per_target": {}}
    for target in ctx.targets:
        rows = {}
        for level in levels:
            items = [p for p in mine if p.target == target and p.level == level]
            if not items:
                continue
            rows[level] = {
                "events_per_s": median(p.events / p.wall_s for p in items),
                "reads_per_s": median(p.reads / p.wall_s for p in items),
                "events_per_read": sum(p.events for p in items) / max(1, sum(p.reads for p in items)),
                "target_share": _share(items, target) if target in ctx.groups else math.nan,
                "sim_share": _share(items, "sim"),
                "loadgen_share": _share(items, "loadgen"),
                "client_cpu_busy": _busy(items, ctx.client_cpu),
                "foreign_proxy_cpu": _foreign(items, ctx.proxy_cpu, proxy_groups),
                "foreign_client_cpu": _foreign(items, ctx.client_cpu, ("sim", "sink", "loadgen")),
                "requests": sum(len(p.samples) for p in items),
                "errors": sum(len(p.errors) for p in items),
                "first_errors": [e for p in items for e in p.errors][:3],
            }
        if not rows:
            continue
        best = max(rows, key=lambda lv: rows[lv]["events_per_s"])
        row = rows[best]
        if target == "direct":
            bound = "rig (no proxy)"
        elif row["target_share"] >= SATURATED:
            bound = f"target ({row['target_share']:.0%} of its core)"
        elif row["client_cpu_busy"] >= SATURATED and row["foreign_client_cpu"] <= FOREIGN_CPU_WARN:
            bound = (f"rig-bound: CPU {ctx.client_cpu} (sim + load generator) {row['client_cpu_busy']:.0%} busy, "
                     f"{target} at {row['target_share']:.0%}")
        elif row["client_cpu_busy"] >= SATURATED:
            bound = (f"rig-bound and disturbed: CPU {ctx.client_cpu} {row['client_cpu_busy']:.0%} busy, "
                     f"{row['foreign_client_cpu']:.0%} of it other processes; {target} at {row['target_share']:.0%}")
        elif row["foreign_proxy_cpu"] > FOREIGN_CPU_WARN:
            bound = (f"disturbed: other processes took {row['foreign_proxy_cpu']:.0%} of CPU {ctx.proxy_cpu}, "
                     f"{target} got {row['target_share']:.0%}")
        else:
            bound = "neither CPU saturated"
        out["per_target"][target] = {
            "rows": rows, "best_level": best, "best": row["events_per_s"], "best_row": row, "bound": bound,
            "rss_peak_kb": max((p.rss_peak_kb or 0 for p in mine if p.target == target), default=0) or None,
        }
    return out


def summarise_prompts(ctx: Context, phases: list[Phase]) -> dict[str, Any]:
    mine = [p for p in phases if p.workload == "prompts"]
    sizes = sorted({p.level for p in mine})
    out: dict[str, Any] = {"sizes": sizes, "per_size": {}, "body_bytes": {}}
    for size in sizes:
        reps = _by_rep(p for p in mine if p.level == size)
        row: dict[str, Any] = {"direct": median(percentile(pair["direct"].sorted_ms("ttft"), 50)
                                                for pair in reps.values() if "direct" in pair)}
        for target in ctx.targets:
            if target != "direct":
                row[target] = _added(reps, target, lambda p: percentile(p.sorted_ms("ttft"), 50))
        out["per_size"][size] = row
        out["body_bytes"][size] = len(chat_body(ctx.args.prompt_answer_tokens, seed=size, prompt=prompt_text(size)))
    out["errors"] = sum(len(p.errors) for p in mine)
    out["first_errors"] = [e for p in mine for e in p.errors][:3]
    out["content_chunks_ok"] = all(s.content_chunks == ctx.args.prompt_answer_tokens for p in mine for s in p.samples)
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        out["growth"] = {}
        for target in ctx.targets:
            if target == "direct":
                continue
            a, b = out["per_size"][small][target]["per_rep"], out["per_size"][large][target]["per_rep"]
            per_rep = [(tl - dl) - (ts - ds) for (ds, ts), (dl, tl) in zip(a, b, strict=False)]
            out["growth"][target] = {"value": median(per_rep), "per_rep": per_rep}
    return out


def summarise(ctx: Context, result: dict[str, Any]) -> dict[str, Any]:
    phases = result["phases"]
    workloads = [w for w in ctx.args.workloads if any(p.workload == w for p in phases)]
    out: dict[str, Any] = {"streams": [summarise_streams(ctx, phases, w) for w in workloads
                                       if w.startswith("c") or w == "peak"]}
    if "max" in workloads:
        out["max"] = summarise_max(ctx, phases)
    if "prompts" in workloads:
        out["prompts"] = summarise_prompts(ctx, phases)
    return out


def problems(summary: dict[str, Any]) -> list[str]:
    """Errors and missing chunks, one line per workload and target that had any."""
    found = []
    for s in summary["streams"]:
        for target, t in s["per_target"].items():
            if t["errors"] or not t["content_chunks_ok"] or not t["events_ok"]:
                found.append(f"{s['workload']} {target}: {t['errors']} errors, all chunks received "
                             f"{t['content_chunks_ok'] and t['events_ok']}, first errors {t['first_errors']}")
    for target, t in summary.get("max", {}).get("per_target", {}).items():
        for level, row in t["rows"].items():
            if row["errors"]:
                found.append(f"max c={level} {target}: {row['errors']} errors, first {row['first_errors']}")
    prompts = summary.get("prompts")
    if prompts and (prompts["errors"] or not prompts["content_chunks_ok"]):
        found.append(f"prompts: {prompts['errors']} errors, all chunks received {prompts['content_chunks_ok']}, "
                     f"first errors {prompts['first_errors']}")
    return found


# --- report ------------------------------------------------------------------------------------------

def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _signed(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.3f}"


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.0f}%"


def _mb(kb: int | None) -> str:
    return "n/a" if not kb else f"{kb * 1024 / 1e6:.1f}"


def summary_rows(ctx: Context, result: dict[str, Any], summary: dict[str, Any]) -> list[tuple[str, dict[str, str],
                                                                                                 str, str]]:
    """(figure, value per proxy target, llmtap budget, met?) for the table at the top."""
    rows: list[tuple[str, dict[str, str], str, str]] = []
    proxies = [t for t in PROXIES if t in ctx.targets]
    not_run = {t: "not run" for t in proxies}
    c64 = next((s for s in summary["streams"] if s["workload"] == "c64"), None)
    llm = "llmtap" in proxies

    def met(*checks: bool) -> str:
        return ("yes" if all(checks) else "**no**") if llm else "n/a"

    if c64 and c64["figures"]:
        p50, p99 = c64["ttft_p50"], c64["ttft_p99"]
        vals = {t: f"{_signed(p50[t]['added'])} / {_signed(p99[t]['added'])} ms" for t in proxies}
        ok = llm and (p50["llmtap"]["added"] <= BUDGET_TTFT_P50_MS, p99["llmtap"]["added"] <= BUDGET_TTFT_P99_MS)
        verdict = "n/a" if not llm else ("yes" if all(ok) else "p50 only" if ok[0] else "p99 only" if ok[1]
                                         else "**no**")
        rows.append(("added TTFT p50 / p99, 64 streams", vals,
                     f"≤ {BUDGET_TTFT_P50_MS:.1f} / ≤ {BUDGET_TTFT_P99_MS:.1f} ms", verdict))
        itl = c64["itl_p99"]
        rows.append(("added ITL p99, 64 streams", {t: f"{_signed(itl[t]['added'])} ms" for t in proxies},
                     f"≤ {BUDGET_ITL_P99_MS:.1f} ms", met(llm and itl["llmtap"]["added"] <= BUDGET_ITL_P99_MS)))
        per = c64["per_target"]
        rows.append(("CPU per forwarded chunk, 64 streams",
                     {t: f"{per[t]['cpu_us_per_event']:.0f} µs" for t in proxies},
                     f"≤ {BUDGET_CPU_US_PER_CHUNK:g} µs",
                     met(llm and per["llmtap"]["cpu_us_per_event"] <= BUDGET_CPU_US_PER_CHUNK)))
    else:
        rows += [("added TTFT p50 / p99, 64 streams", not_run, f"≤ {BUDGET_TTFT_P50_MS:.1f} / ≤ "
                  f"{BUDGET_TTFT_P99_MS:.1f} ms", "n/a"),
                 ("added ITL p99, 64 streams", not_run, f"≤ {BUDGET_ITL_P99_MS:.1f} ms", "n/a"),
                 ("CPU per forwarded chunk, 64 streams", not_run, f"≤ {BUDGET_CPU_US_PER_CHUNK:g} µs", "n/a")]
    mx = summary.get("max")
    if mx:
        vals = {}
        for t in proxies:
            row = mx["per_target"][t]
            bound, note = row["bound"], f"{row['best_row']['target_share']:.0%} CPU"
            if bound.startswith("rig-bound and"):
                note = f"rig-bound, disturbed; {note}"
            elif bound.startswith("rig"):
                note = f"rig-bound; {note}"
            elif bound.startswith("disturbed"):
                note = f"disturbed; {note}"
            vals[t] = f"{row['best']:,.0f} ({note})"
        rows.append(("max chunks/s on one core (SSE events/s)", vals, f"≥ {BUDGET_CHUNKS_PER_S:,}",
                     met(llm and mx["per_target"]["llmtap"]["best"] >= BUDGET_CHUNKS_PER_S)))
    else:
        rows.append(("max chunks/s on one core (SSE events/s)", not_run, f"≥ {BUDGET_CHUNKS_PER_S:,}", "n/a"))
    peak = next((s for s in summary["streams"] if s["workload"] == "peak"), None)
    rss = result["rss_kb"]
    label = f"RSS idle / at {ctx.args.peak_streams} streams (MB)"
    if peak:
        vals = {t: f"{_mb(rss[t]['idle'])} / {_mb(peak['per_target'][t]['rss_peak_kb'])}" for t in proxies}
        at_peak = peak["per_target"].get("llmtap", {}).get("rss_peak_kb") or math.inf
        rows.append((label, vals, f"≤ {BUDGET_RSS_MB:g} at {ctx.args.peak_streams}",
                     met(llm and at_peak * 1024 / 1e6 <= BUDGET_RSS_MB)))
    else:
        rows.append((label, {t: f"{_mb(rss[t]['idle'])} / not run" for t in proxies},
                     f"≤ {BUDGET_RSS_MB:g} at {ctx.args.peak_streams}", "n/a"))
    b = result["bytes"]["targets"]
    rows.append(("stream bytes vs direct (id/created normalised)",
                 {t: "identical" if b[t]["normalised_equal"] else "**differ**" for t in proxies}, "identical",
                 met(llm and b["llmtap"]["normalised_equal"])))
    pr = summary.get("prompts")
    if pr and "growth" in pr:
        small, large = pr["sizes"][0], pr["sizes"][-1]
        rows.append((f"added TTFT, {large:,}-token prompt minus {small:,}-token prompt",
                     {t: f"{_signed(pr['growth'][t]['value'])} ms" for t in proxies}, f"≤ {BUDGET_PROMPT_MS:.1f} ms",
                     met(llm and pr["growth"]["llmtap"]["value"] <= BUDGET_PROMPT_MS)))
    else:
        rows.append(("added TTFT, 100k-token prompt minus 100-token prompt", not_run, f"≤ {BUDGET_PROMPT_MS:.1f} ms",
                     "n/a"))
    return rows


def summary_table(ctx: Context, result: dict[str, Any], summary: dict[str, Any]) -> str:
    proxies = [t for t in PROXIES if t in ctx.targets]
    lines = ["| figure | " + " | ".join(LABELS[t] for t in proxies) + " | llmtap budget | met? |",
             "|---|" + "---:|" * len(proxies) + "---:|---|"]
    for figure, vals, budget, met in summary_rows(ctx, result, summary):
        lines.append(f"| {figure} | " + " | ".join(vals[t] for t in proxies) + f" | {budget} | {met} |")
    return "\n".join(lines)


def latency_table(s: dict[str, Any]) -> str:
    proxies = [t for t in s["targets"] if t != "direct"]
    head = ("| figure | direct p50 | " + " | ".join(f"{t} added p50" for t in proxies) + " | direct p99 | "
            + " | ".join(f"{t} added p99" for t in proxies) + " | " + " | ".join(f"{t} added p50, range over reps"
                                                                                 for t in proxies) + " |")
    lines = [head, "|---|" + "---:|" * (2 + 3 * len(proxies))]
    for key, label in s["figures"]:
        p50, p99 = s[f"{key}_p50"], s[f"{key}_p99"]
        lines.append(
            f"| {label} | {_ms(p50['direct'])} | " + " | ".join(f"**{_signed(p50[t]['added'])}**" for t in proxies)
            + f" | {_ms(p99['direct'])} | " + " | ".join(f"**{_signed(p99[t]['added'])}**" for t in proxies) + " | "
            + " | ".join(f"{_signed(p50[t]['added_min'])} .. {_signed(p50[t]['added_max'])}" for t in proxies) + " |"
        )
    return "\n".join(lines)


def resource_table(s: dict[str, Any], ctx: Context) -> str:
    pc, cc = ctx.proxy_cpu, ctx.client_cpu
    lines = [
        f"| target | requests | SSE events | events/s | events per client read | target CPU µs / event "
        f"| target CPU busy (CPU {pc}) | target CPU in other targets' phases | load gen CPU (CPU {cc}) "
        f"| sim CPU (CPU {cc}) | CPU {cc} busy (all) | other processes on CPU {pc} / CPU {cc} | target RSS peak (MB) "
        "| errors |",
        "|---|" + "---:|" * 13,
    ]
    for target, t in s["per_target"].items():
        mine = target in ctx.groups
        row = (
            f"| {target} | {t['requests']} | {t['events']} | {t['events_per_s']:.0f} | {t['events_per_read']:.2f} | "
            f"{t['cpu_us_per_event']:.1f} | {_pct(t['cpu_share'])} | "
            + (f"{t['cpu_in_other_phases_s']:.2f} s" if mine else "-")
            + f" | {_pct(t['loadgen_share'])} | {_pct(t['sim_share'])} | {_pct(t['client_cpu_busy'])} | "
            f"{_pct(t['foreign_proxy_cpu'])} / {_pct(t['foreign_client_cpu'])} | {_mb(t['rss_peak_kb'])} | "
            f"{t['errors']} |"
        )
        lines.append(row.replace("| nan |", "| - |").replace("| n/a |", "| - |"))
    if s["figures"]:
        lines += [
            "",
            f"Slow gaps (ITL samples more than {SLOW_GAP_MS:g} ms above the backend's ITL):",
            "",
            "| target | gaps | slow gaps | of which among the last 3 gaps of a stream | largest gap (ms) |",
            "|---|---:|---:|---:|---:|",
        ]
        for target, t in s["per_target"].items():
            g = t["slow_gaps"]
            lines.append(f"| {target} | {g['gaps']} | {g['slow']} | {g['slow_in_last_3']} | {g['max_ms']:.1f} |")
    return "\n".join(lines)


def max_table(mx: dict[str, Any], ctx: Context) -> str:
    pc, cc = ctx.proxy_cpu, ctx.client_cpu
    lines = [
        f"| target | concurrency | SSE events/s | client reads/s | events per client read | target CPU (CPU {pc}) "
        f"| sim CPU | load gen CPU | CPU {cc} busy (all) | other processes on CPU {pc} / CPU {cc} | requests "
        "| errors |",
        "|---|" + "---:|" * 11,
    ]
    for target, t in mx["per_target"].items():
        for level, r in t["rows"].items():
            best = "**" if level == t["best_level"] else ""
            lines.append(
                f"| {target} | {level} | {best}{r['events_per_s']:,.0f}{best} | {r['reads_per_s']:,.0f} | "
                f"{r['events_per_read']:.1f} | {_pct(r['target_share']) if target in ctx.groups else '-'} | "
                f"{_pct(r['sim_share'])} | {_pct(r['loadgen_share'])} | {_pct(r['client_cpu_busy'])} | "
                f"{_pct(r['foreign_proxy_cpu'])} / {_pct(r['foreign_client_cpu'])} | {r['requests']} | {r['errors']} |"
            )
    lines += ["", "| target | best SSE events/s | at concurrency | what limited it |", "|---|---:|---:|---|"]
    for target, t in mx["per_target"].items():
        lines.append(f"| {target} | {t['best']:,.0f} | {t['best_level']} | {t['bound']} |")
    return "\n".join(lines)


def prompt_table(pr: dict[str, Any], ctx: Context) -> str:
    proxies = [t for t in ctx.targets if t != "direct"]
    lines = ["| prompt (tokens) | request body (bytes) | direct TTFT p50 | "
             + " | ".join(f"{t} added TTFT p50" for t in proxies) + " |",
             "|---:|---:|---:|" + "---:|" * len(proxies)]
    for size in pr["sizes"]:
        row = pr["per_size"][size]
        lines.append(f"| {size:,} | {pr['body_bytes'][size]:,} | {_ms(row['direct'])} | "
                     + " | ".join(f"**{_signed(row[t]['added'])}**" for t in proxies) + " |")
    if "growth" in pr:
        small, large = pr["sizes"][0], pr["sizes"][-1]
        lines.append(f"| {large:,} minus {small:,} | | | "
                     + " | ".join(f"**{_signed(pr['growth'][t]['value'])}**" for t in proxies) + " |")
    return "\n".join(lines)


def memory_table(ctx: Context, result: dict[str, Any], summary: dict[str, Any]) -> str:
    peaks: dict[str, dict[str, int | None]] = {}
    for s in summary["streams"]:
        for target, t in s["per_target"].items():
            peaks.setdefault(target, {})[s["workload"]] = t["rss_peak_kb"]
    for target, t in summary.get("max", {}).get("per_target", {}).items():
        peaks.setdefault(target, {})["max"] = t["rss_peak_kb"]
    workloads = [s["workload"] for s in summary["streams"]] + (["max"] if "max" in summary else [])
    lines = ["| target | idle, after start-up | " + "".join(f"peak during {w} | " for w in workloads)
             + "at the end | VmHWM (peak over the run) |",
             "|---|" + "---:|" * (3 + len(workloads))]
    for target, rss in result["rss_kb"].items():
        lines.append(f"| {target} | {_mb(rss['idle'])} | "
                     + "".join(f"{_mb(peaks.get(target, {}).get(w))} | " for w in workloads)
                     + f"{_mb(rss.get('end'))} | {_mb(rss.get('hwm'))} |")
    return "\n".join(lines)


def versions() -> dict[str, str]:
    found = {}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def interference(summary: dict[str, Any], nice: int, rt: int) -> str | None:
    """A warning when other processes used much of either CPU while the proxies' latency phases ran."""
    worst = (0.0, "")
    for s in summary["streams"]:
        for target, t in s["per_target"].items():
            for share in (t["foreign_proxy_cpu"], t["foreign_client_cpu"]):
                if not math.isnan(share) and share > worst[0]:
                    worst = (share, f"{s['workload']}, {target}")
    if worst[0] <= FOREIGN_CPU_WARN:
        return None
    used = f"other processes used up to {100 * worst[0]:.0f}% of a benchmark CPU during a phase ({worst[1]})"
    if rt:
        return (f"Note: {used}. The benchmark ran SCHED_FIFO, so they ran only when ours did not need the CPU; "
                "what is left of their effect is indirect (caches, memory bandwidth, the hypervisor).")
    if nice < 0:
        return f"Caution: {used}; the figures include their interference, reduced (not removed) by nice {nice}."
    return f"Caution: {used}; the figures include their interference. Rerun on a quiet machine, or with --rt 10."


def findings(ctx: Context, result: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """Plain-language notes on what limited what: rig-bound figures, saturation, the load generator."""
    notes = []
    foreign = sorted(set(result.get("foreign_rt_start", [])) | set(result.get("foreign_rt_end", [])))
    if foreign:
        notes.append(f"Other real-time (SCHED_FIFO/RR) processes were running at the start or end of the run: "
                     f"{', '.join(foreign[:8])}{' ...' if len(foreign) > 8 else ''}. At an equal or higher priority "
                     "they are not kept off the benchmark's CPUs by --rt: figures from this run can include their "
                     "interference (see the other-processes columns).")
    mx = summary.get("max")
    c64 = next((s for s in summary["streams"] if s["workload"] == "c64"), None)
    if mx and c64:
        ceilings = [f"{t} ~{1e6 / c64['per_target'][t]['cpu_us_per_event']:,.0f}"
                    for t in c64["per_target"] if t in ctx.groups and c64["per_target"][t]["cpu_us_per_event"] > 0]
        if ceilings:
            notes.append("At ITL 0 a proxy receives a whole stream in a few reads, so its per-read costs are shared by "
                         "up to 200 events. With one event per network chunk (the 64-stream workload) each target's "
                         "CPU per event would saturate one core at about: " + ", ".join(ceilings) + " chunks/s.")
    if mx:
        for target, t in mx["per_target"].items():
            r = t["best_row"]
            notes.append(f"Max throughput, {target}: {t['best']:,.0f} SSE events/s at concurrency {t['best_level']} "
                         f"({r['events_per_read']:.0f} events per client read); limited by: {t['bound']}. "
                         f"Load generator {r['loadgen_share']:.0%} and sim {r['sim_share']:.0%} of CPU "
                         f"{ctx.client_cpu}.")
        loadgen = max((t["best_row"]["loadgen_share"] for t in mx["per_target"].values()), default=0.0)
        if loadgen >= 0.5:
            notes.append(f"The load generator alone used up to {loadgen:.0%} of CPU {ctx.client_cpu} in the max "
                         "workload: it is part of the rig's limit there.")
    for s in summary["streams"]:
        for target, t in s["per_target"].items():
            if t["client_cpu_busy"] >= SATURATED:
                notes.append(f"{s['workload']}, {target}: CPU {ctx.client_cpu} (sim + load generator) was "
                             f"{t['client_cpu_busy']:.0%} busy: that phase is rig-bound (the streams fell behind the "
                             "sim's schedule on the client side).")
            if target in ctx.groups and t["cpu_share"] >= SATURATED:
                notes.append(f"{s['workload']}, {target}: the target used {t['cpu_share']:.0%} of its core "
                             "(saturated).")
    return notes


def telemetry_line(ctx: Context, result: dict[str, Any]) -> str:
    """What reached the OTLP sink, checked against the llmtap traffic the client saw."""
    tel = result.get("telemetry")
    if not tel:
        return "- llmtap was not among the targets: no telemetry."
    requests = result["requests"]["llmtap"]
    line = (f"- OTLP sink: traces {tel['traces']['requests']} requests / {tel['traces']['bytes']} bytes, "
            f"metrics {tel['metrics']['requests']} requests / {tel['metrics']['bytes']} bytes. LLM calls through "
            f"llmtap that the client completed in the run (measured, warm-up and byte check): {requests}")
    if tel.get("decoded"):
        hist = tel.get("histograms", {})
        duration = hist.get("gen_ai.client.operation.duration", {})
        chunk = hist.get("gen_ai.client.operation.time_per_output_chunk", {})
        overhead = hist.get("llmtap.proxy.overhead", {})
        line += (f"; spans received: {tel['spans']}; duration histogram count: {duration.get('count', 'n/a')}; "
                 f"ITL histogram count: {chunk.get('count', 'n/a')} (the proxy counts one sample per received "
                 "network chunk, so events that arrive together count once)")
        if overhead.get("count"):
            line += (f"; llmtap's own `llmtap.proxy.overhead` (body received -> sent upstream) averaged "
                     f"{overhead['sum'] / overhead['count'] * 1e3:.3f} ms")
    return line + f". llmtap exit status after SIGTERM: {result['llmtap_exit']}."


def render(ctx: Context, result: dict[str, Any], summary: dict[str, Any], command: str) -> str:
    args, work = ctx.args, ctx.work
    b, layout = result["bytes"], result["layout"]
    pinning = ", ".join(f"{name} (pid {v['pid']}): CPU {'/'.join(v['cpus'])}, nice {v['nice']}, "
                        f"scheduling {'/'.join(v['sched'])}"
                        f"{'' if v['ok'] else ' (NOT as intended)'}" for name, v in layout.items())
    vers = ", ".join(f"{k} {v}" for k, v in versions().items())
    streams = {s["workload"]: s for s in summary["streams"]}
    notes = findings(ctx, result, summary)
    rows = summary_rows(ctx, result, summary)
    met = [r[3] for r in rows if r[3] != "n/a"]
    out = [
        "# Benchmarks: what llmtap costs, against direct, nginx and a plain relay",
        "",
        f"Generated by `{command}` on {result['started']} (took {result['duration_s']:.0f} s), measuring llmtap "
        f"at commit `{result['commit']}`. Rerun it to refresh this page; the figures below are from that run only.",
        "",
        summary_table(ctx, result, summary),
        "",
        (f"llmtap met {sum(m == 'yes' for m in met)} of its {len(met)} budgets in this run. " if met else "")
        + "Added figures are the target minus direct (median over repetitions of the per-repetition differences); "
        "MB = 10^6 bytes; nginx's CPU and RSS are those of its master and worker together. "
        "The max chunks/s row is SSE events/s delivered to the client with ITL 0 (see Max throughput for what "
        "limited each target). Where the hot path spends its time, each budget missed so far with its profile, "
        "and the plan: [performance.md](performance.md).",
        "",
        *([f"**{warning}**", ""] if (warning := interference(summary, args.nice, args.rt)) else []),
        *(["Notes:", "", *[f"- {n}" for n in notes], ""] if notes else []),
        "## Machine",
        f"- {os.cpu_count()} CPUs ({cpu_model()}), Linux {platform.release()}",
        f"- Python {platform.python_version()}; {vers}; nginx {ctx.nginx_version or 'not run'}",
        f"- Load average at start / end: {result['loadavg_start']} / {result['loadavg_end']}",
        f"- Speed of the proxies' CPU (a fixed 2M-iteration Python loop, best of 3) at start / end: "
        f"{result['cpu_probe_ms'][0]:.0f} / {result['cpu_probe_ms'][1]:.0f} ms. On a shared virtual machine "
        "it can vary from one run to the next, even within minutes, and so do the CPU-bound figures "
        "(CPU per event, max throughput, TTFT at 64 streams); compare runs with this in mind.",
        "",
        "## Layout",
        f"- The proxies (nginx, relay, llmtap) on CPU {ctx.proxy_cpu}, only one of them carrying traffic at a time; "
        f"simulated backend, OTLP sink and load generator on CPU {ctx.client_cpu} (`taskset -c`; the load generator "
        f"pins itself with `os.sched_setaffinity`). Nice level of all of them: {args.nice}; "
        + (f"SCHED_FIFO priority {args.rt}." if args.rt else "normal (CFS) scheduling."),
        f"- Checked from `/proc/<pid>/task/*/status` after start-up: {pinning}.",
        "- llmtap runs with telemetry on: it exports OTLP/HTTP (protobuf) traces and metrics to a local sink that "
        "answers 200 with an empty body (`benchmarks/otlp_sink.py`), with `OTEL_BSP_SCHEDULE_DELAY="
        f"{args.bsp_delay_ms}` and `OTEL_METRIC_EXPORT_INTERVAL={args.metric_interval_ms}`. Its default request "
        "body limit (32 MiB, `max_body_bytes` in proxy/llmtap_proxy/config.py) is above the largest prompt body, "
        "so the benchmark passes no body setting; nginx has `client_max_body_size 16m`, the simulator (aiohttp) "
        "accepts 1 MiB.",
        "- nginx (`benchmarks/nginx_target.py`): one worker, `proxy_buffering off`, `proxy_request_buffering off`, "
        "`proxy_http_version 1.1`, `Connection \"\"` and an upstream block with `keepalive 1024`, "
        "`keepalive_requests 1000000` on both legs, access log off. relay (`benchmarks/plain_relay.py`): raw ASGI "
        "on uvicorn + uvloop + httptools, one aiohttp session, no telemetry.",
        "- The machine may be shared: other processes can run on both CPUs. Their share of each CPU during the "
        "phases is in the resource tables (`/proc/stat` busy time minus ours)."
        + (" Under SCHED_FIFO the benchmark's processes preempt them as soon as they have work, so that share "
           "is CPU time ours left unused, not time they waited for." if args.rt else ""),
        "",
        "## Workloads",
        f"- Backend: `llmtap sim --ttft-ms {work.ttft_ms:g} --itl-ms {work.itl_ms:g} --tokens {work.tokens}`: "
        f"OpenAI chat completions, one content chunk per token, {work.tokens} content chunks per stream "
        f"(plus role, finish, usage and `[DONE]` events), content chunk i sent at arrival + ttft + i x itl. The "
        "max and prompts workloads set their own timing per request with `x-sim-*` headers.",
        "- Client: uvloop + one aiohttp session (`TCPConnector(limit=0)`), `stream: true`, "
        "`stream_options.include_usage: true`; timings with `time.perf_counter_ns` at each read of the body.",
        f"- Targets: {', '.join(f'**{LABELS[t]}**' for t in ctx.targets)}, same workloads, same run. Every "
        "repetition runs each target once, in an order rotated from one repetition to the next.",
        f"- **c1 / cN**: {args.repetitions} repetitions. Concurrency 1: {args.sequential} sequential requests per "
        f"target per repetition. Concurrency > 1: {args.waves} wave(s) of N simultaneous streams (a wave starts when "
        "the previous one has ended).",
        f"- **peak**: {args.peak_streams} simultaneous streams with the same timing, one wave, "
        f"{args.peak_repetitions} repetition(s); the client only counts events (`b\"\\n\\n\"`), and the target's VmRSS "
        f"is sampled every {RSS_SAMPLE_S * 1000:.0f} ms during the phase.",
        f"- **max**: closed loop, each worker streaming {args.max_stream_tokens}-token responses with TTFT 0 and "
        f"ITL 0 back to back, at concurrency {', '.join(map(str, args.max_levels))}; after a {args.max_ramp_s:g} s "
        f"ramp-up, events are counted over a {args.max_window_s:g} s window; {args.max_repetitions} repetition(s) "
        "(the figure is the median). The client counts events by their `\\n\\n` ends only. With ITL 0 the sim "
        "writes every event with its own `send()`, but back to back, so receivers read many at once (see events "
        "per client read): the rate is SSE events/s, not network writes/s.",
        f"- **prompts**: prompts of {', '.join(f'{s:,}' for s in args.prompt_sizes)} tokens (~4 characters per "
        f"token), {args.prompt_answer_tokens}-token answers with TTFT 0 and ITL 1 ms (`x-sim-*` headers), one "
        f"request at a time, {args.prompt_requests} per size per target per repetition (sizes interleaved), "
        f"{args.repetitions} repetitions. TTFT here includes sending the body: with TTFT 0 the sim answers as "
        "soon as it has read and parsed it.",
        "- Before each measured phase, one unrecorded wave of 2-token streams opens the keep-alive connections "
        f"on every leg, so every target is measured with warm connections (uvicorn closes idle client "
        f"connections after 5 s), followed by a {WARMUP_SETTLE_S:g} s pause.",
        "",
    ]
    for name, s in streams.items():
        if not s["figures"]:
            continue
        out += [f"## Latency, {s['concurrency']} stream{'s' if s['concurrency'] > 1 else ''} ({name}), ms", "",
                latency_table(s), "", f"Resources ({name}):", "", resource_table(s, ctx), ""]
    if "peak" in streams:
        out += [f"## {args.peak_streams} streams (peak): resources", "", resource_table(streams["peak"], ctx), ""]
    if "max" in summary:
        out += ["## Max throughput (ITL 0, one core per proxy)", "", max_table(summary["max"], ctx), ""]
    if "prompts" in summary:
        out += ["## Large prompts: added TTFT (ms, p50)", "", prompt_table(summary["prompts"], ctx), ""]
    out += ["## Memory (MB, VmRSS)", "", memory_table(ctx, result, summary), "",
            "## Output integrity and telemetry",
            f"- Same request (same body and `seed`) direct and through each proxy, {b['direct_bytes']} bytes and "
            f"{b['events']} SSE events direct: "
            + "; ".join(f"{t}: {v['bytes']} bytes, raw equal {v['raw_equal']}, equal after normalising the "
                        f"per-request `\"id\"` and `\"created\"` fields **{v['normalised_equal']}**"
                        for t, v in b["targets"].items())
            + ". (The simulator puts a per-request id and a wall-clock `created` second in each chunk, so two "
            f"direct requests differ too: raw equal {b['control_direct_vs_direct_raw_equal']}, normalised equal "
            f"{b['control_direct_vs_direct_normalised_equal']}.)",
            telemetry_line(ctx, result),
            "",
            "## How to read this",
            "- **added** is the median over repetitions of (target - direct) for that percentile, each repetition "
            "measuring all targets back to back. The direct column is the median over repetitions of direct's own "
            "percentile. The range columns show the spread of the per-repetition differences.",
            "- **TTFT**: request start -> first chunk with non-empty `content`. Added TTFT is a proxy's cost on the "
            "request path plus the first chunk's forwarding.",
            "- **ITL**: gaps between consecutive content chunks, one sample per gap, as the client sees them. A "
            "constant per-chunk forwarding delay cancels out of ITL; what shows is the variation of that delay "
            "(queueing behind other streams' chunks, event loop stalls, telemetry export, GC).",
            "- **chunk lag**: arrival of content chunk i minus its scheduled time (request start + ttft + i x itl). "
            "Its added value is the per-chunk delay a proxy adds (including the request path), which ITL cannot "
            "show.",
            f"- At concurrency 1 the TTFT p99 rests on {args.sequential} samples per repetition (about the maximum); "
            "at 64 all streams start together, so every 20 ms 64 chunks arrive at once (a burst, the hard case for "
            "a single-threaded proxy: the last chunk of a burst waits for the 63 before it).",
            "- **target CPU µs / event** divides the target's utime+stime (all threads, and for nginx master + "
            "worker; `/proc/<pid>/stat`, 10 ms resolution) during its own phases by the SSE events the client "
            "received through it (at ITL 20 ms one upstream write = one event = one forwarded chunk). For llmtap it "
            "includes the request path and the telemetry export that ran during those phases; **target CPU in other "
            "targets' phases** is what it used while it forwarded nothing (llmtap: mostly exporting the previous "
            "phase's spans and metrics).",
            "- **Max throughput**: a proxy at about 100 % of its core is saturated, and its figure is its own limit. "
            f"When CPU {ctx.client_cpu} (sim + load generator) is saturated first, the figure is the rig's limit "
            "(rig-bound), and the proxy could forward more. direct shows the rig's own limit.",
            "- **Large prompts**: direct, the client writes the body and the sim reads it on the same CPU; through a "
            "proxy on the other CPU, receiving and forwarding overlap with the client's writing, so a proxy can come "
            "out slightly faster than direct at 100k tokens (a negative added TTFT). What the figure can show is a "
            "cost that grows with the body (copies, parsing, per-chunk reads): the 100k minus 100-token row.",
            "- **RSS**: VmRSS from `/proc/<pid>/status`, sampled during each phase (the peak is kept) and at idle "
            "after start-up; VmHWM is the kernel's peak over the whole run. For nginx it is master + worker, which "
            "counts their shared pages twice.",
            "- **Slow gaps**: when llmtap's slow gaps sit among the last gaps of their streams, it stalls when "
            "streams end: the work done once per call at its end (token count, span, one histogram record per gap) "
            "competes with the streams still flowing, on the event loop or, from a finisher thread, for the GIL.",
            "- **TTFT, 1st wave / later waves** (concurrency > 1): a later wave starts the moment the previous one "
            "ends, so its requests meet the proxy while it is still ending the previous wave's calls; the 1st wave "
            "starts on an idle proxy.",
            "",
            "## Reproduce",
            "```bash",
            command,
            "python benchmarks/overhead.py --quick      # smoke run (about 1.5 min), prints the tables only",
            "python benchmarks/overhead.py --targets llmtap --workloads c64 --proxy-cmd 'llmtap serve --upstream "
            "{upstream} --port {port}'   # quick A/B of an llmtap build",
            "```",
            "Processes it starts (ports picked free at run time):",
            "```",
            *[shlex.join(p.argv) for p in ctx.procs.values()],
            "```"]
    return "\n".join(out) + "\n"


# --- main --------------------------------------------------------------------------------------------

def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="What llmtap costs, against a direct connection, nginx and a "
                                     "plain relay.")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (about 1.5 min: 2 reps, 50 tokens, fewer requests, shorter windows)")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help=f"comma-separated, from {','.join(TARGETS)} (direct is always run); default all")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help="comma-separated: cN (N streams of the default timing, e.g. c1, c16, c64), peak, max, "
                        f"prompts; default {','.join(WORKLOADS)}")
    parser.add_argument("--concurrency", help="the cN workloads' levels, e.g. 1,16,64 (replaces the cN entries of "
                        "--workloads)")
    parser.add_argument("--repetitions", type=int, help="repetitions of cN and prompts; default 5 (quick 2)")
    parser.add_argument("--tokens", type=int, help="content chunks per stream; default 100 (quick 50)")
    parser.add_argument("--ttft-ms", type=float, default=50.0)
    parser.add_argument("--itl-ms", type=float, default=20.0)
    parser.add_argument("--sequential", type=int, help="requests per rep at concurrency 1; default 5 (quick 2)")
    parser.add_argument("--waves", type=int, help="waves per rep at concurrency > 1; default 2 (quick 1)")
    parser.add_argument("--peak-streams", type=int, default=256, help="streams in the peak workload (default 256)")
    parser.add_argument("--peak-repetitions", type=int, help="default 3 (quick 1)")
    parser.add_argument("--max-levels", help="concurrencies of the max workload; default 8,32,128 (quick 8,64)")
    parser.add_argument("--max-window-s", type=float, help="measured window per level; default 2 (quick 1)")
    parser.add_argument("--max-ramp-s", type=float, default=0.5)
    parser.add_argument("--max-repetitions", type=int, help="default 2 (quick 1)")
    parser.add_argument("--max-stream-tokens", type=int, default=200)
    parser.add_argument("--max-itl-ms", type=float, default=0.0, help="ITL of the max workload's streams (default 0)")
    parser.add_argument("--prompt-sizes", default="100,8000,100000", help="prompt sizes in tokens")
    parser.add_argument("--prompt-requests", type=int, help="requests per size per target per rep; default 10 "
                        "(quick 2)")
    parser.add_argument("--prompt-answer-tokens", type=int, default=10)
    parser.add_argument("--out", help="Markdown file to write (default docs/benchmarks.md; none with --quick)")
    parser.add_argument("--json", help="also write the raw per-repetition figures as JSON here")
    parser.add_argument("--proxy-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--nice", type=int, default=0,
                        help="nice level of all benchmark processes, e.g. -10 on a shared machine (needs root)")
    parser.add_argument("--rt", type=int, default=0, metavar="PRIO",
                        help="run all benchmark processes SCHED_FIFO at this priority (1-99, needs root): "
                        "other processes' load can no longer delay them")
    parser.add_argument("--proxy-cmd", help="run this instead of `llmtap serve ...` for the llmtap target (A/B of "
                        "builds or settings); {upstream} and {port} are filled in, e.g. 'llmtap serve --upstream "
                        "{upstream} --port {port}'")
    parser.add_argument("--metric-interval-ms", type=int, default=5000)
    parser.add_argument("--bsp-delay-ms", type=int, default=1000)
    parser.add_argument("--keep-logs", action="store_true", help="keep the subprocess logs and print where")
    args = parser.parse_args(argv)
    quick = args.quick
    args.repetitions = args.repetitions or (2 if quick else 5)
    args.tokens = args.tokens or (50 if quick else 100)
    args.sequential = args.sequential or (2 if quick else 5)
    args.waves = args.waves or (1 if quick else 2)
    args.peak_repetitions = args.peak_repetitions or (1 if quick else 3)
    args.max_levels = _ints(args.max_levels or ("8,64" if quick else "8,32,128"))
    args.max_window_s = args.max_window_s or (1.0 if quick else 2.0)
    args.max_repetitions = args.max_repetitions or (1 if quick else 2)
    args.prompt_sizes = _ints(args.prompt_sizes)
    args.prompt_requests = args.prompt_requests or (2 if quick else 10)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if unknown := set(targets) - set(TARGETS):
        parser.error(f"unknown targets {sorted(unknown)}; known: {', '.join(TARGETS)}")
    args.targets = [t for t in TARGETS if t == "direct" or t in targets]
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if args.concurrency:
        workloads = [f"c{n}" for n in _ints(args.concurrency)] + [w for w in workloads if not w.startswith("c")]
    for w in workloads:
        if w not in WORKLOADS and not re.fullmatch(r"c[1-9]\d*", w):
            parser.error(f"unknown workload {w!r}: use cN (e.g. c1, c64), peak, max or prompts")
    args.workloads = list(dict.fromkeys(workloads))
    if args.out is None and not quick:
        args.out = str(ROOT / "docs" / "benchmarks.md")
    if args.repetitions < 1 or args.tokens < 2 or not args.max_levels or min(args.max_levels) < 1:
        parser.error("need repetitions >= 1, tokens >= 2, max levels >= 1")
    allowed = os.sched_getaffinity(0)
    if not args.no_pin and len(allowed) >= 2 and not {args.proxy_cpu, args.client_cpu} <= allowed:
        parser.error(f"--proxy-cpu/--client-cpu must be among the usable CPUs {sorted(allowed)}")
    if args.proxy_cpu == args.client_cpu and not args.no_pin:
        parser.error("--proxy-cpu and --client-cpu must differ")
    return args


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "sdk", "proxy"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout
        files = [line[3:] for line in dirty.splitlines() if line.strip()]
        return out + (f" + uncommitted changes in {', '.join(files)}" if files else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python benchmarks/overhead.py " + " ".join(sys.argv[1:] if argv is None else argv)
    command = command.strip()
    ncpu = len(os.sched_getaffinity(0))
    pin = not args.no_pin and ncpu >= 2 and shutil.which("taskset") is not None
    if not pin and not args.no_pin:
        print("WARNING: not pinning (needs 2 CPUs and taskset)", file=sys.stderr)
    proxy_cpu = args.proxy_cpu if pin else None
    client_cpu = args.client_cpu if pin else None
    nginx_exe = nginx_target.ensure_nginx() if "nginx" in args.targets else None  # before pinning: apt is slow
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})  # before any thread or loop exists: the load generator
    autogroup_before = set_autogroup_nice(args.nice) if args.nice else None
    set_priority(args.nice, args.rt)  # per thread on Linux: before any thread exists

    work = Workload(args.ttft_ms, args.itl_ms, args.tokens)
    ports = {name: _free_port() for name in ("sink", "sim", "nginx", "relay", "llmtap")}
    logdir = Path(tempfile.mkdtemp(prefix="llmtap-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONUNBUFFERED"] = "1"
    proxy_env = {
        **env,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{ports['sink']}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_METRIC_EXPORT_INTERVAL": str(args.metric_interval_ms),
        "OTEL_BSP_SCHEDULE_DELAY": str(args.bsp_delay_ms),
    }
    procs: dict[str, Proc] = {}
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t_start = time.perf_counter()
    loadavg_start = Path("/proc/loadavg").read_text().split()[:3]
    try:
        probe_start = cpu_probe(proxy_cpu, args.nice, args.rt)

        def start(name: str, argv: list[str], cpu: int | None, environ: dict[str, str]) -> None:
            procs[name] = start_proc(name, argv, cpu, environ, logdir, args.nice, args.rt)

        start("sink", [sys.executable, str(HERE / "otlp_sink.py"), "--port", str(ports["sink"])], client_cpu, env)
        start("sim", [*llmtap_argv(), "sim", "--port", str(ports["sim"]), "--ttft-ms", f"{work.ttft_ms:g}",
                      "--itl-ms", f"{work.itl_ms:g}", "--tokens", str(work.tokens)], client_cpu, env)
        upstream = f"http://127.0.0.1:{ports['sim']}"
        if nginx_exe:
            (logdir / "nginx").mkdir()
            conf = nginx_target.write_config(logdir / "nginx", ports["nginx"], upstream)
            start("nginx", nginx_target.nginx_argv(nginx_exe, conf), proxy_cpu, env)
        if "relay" in args.targets:
            start("relay", [sys.executable, str(HERE / "plain_relay.py"), "--upstream", upstream, "--port",
                            str(ports["relay"])], proxy_cpu, env)
        if "llmtap" in args.targets:
            if args.proxy_cmd:
                argv_ = [part.format(upstream=upstream, port=ports["llmtap"]) for part in shlex.split(args.proxy_cmd)]
            else:
                argv_ = [*llmtap_argv(), "serve", "--upstream", upstream, "--port", str(ports["llmtap"]),
                         "--log-level", "warning"]
            start("llmtap", argv_, proxy_cpu, proxy_env)
        bases = {"direct": upstream, "sink": f"http://127.0.0.1:{ports['sink']}",
                 **{t: f"http://127.0.0.1:{ports[t]}" for t in args.targets if t != "direct"}}
        urls = {t: bases[t] + "/v1/chat/completions" for t in args.targets}
        groups = {name: [proc.pid] for name, proc in procs.items()}
        ctx = Context(args, work, args.targets, urls, bases, procs, groups, proxy_cpu, client_cpu,
                      nginx_version=nginx_target.nginx_version(nginx_exe) if nginx_exe else None)
        try:
            import uvloop

            result = uvloop.run(run(ctx))
            result["loop"] = "uvloop"
        except ImportError:
            result = asyncio.run(run(ctx))
            result["loop"] = "asyncio"
        result["cpu_probe_ms"] = (probe_start, cpu_probe(proxy_cpu, args.nice, args.rt))
        result["started"] = started
        result["commit"] = git_commit()
        result["duration_s"] = time.perf_counter() - t_start
        result["loadavg_start"] = " ".join(loadavg_start)
        result["loadavg_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        summary = summarise(ctx, result)
        print()
        print(summary_table(ctx, result, summary))
        for s in summary["streams"]:
            print(f"\n{s['workload']}:")
            if s["figures"]:
                print(latency_table(s))
                print()
            print(resource_table(s, ctx))
        if "max" in summary:
            print("\nmax:\n" + max_table(summary["max"], ctx))
        if "prompts" in summary:
            print("\nprompts:\n" + prompt_table(summary["prompts"], ctx))
        print("\nmemory:\n" + memory_table(ctx, result, summary))
        print()
        for note in findings(ctx, result, summary):
            print(f"- {note}")
        print(f"CPU speed probe (ms, lower is faster) at start / end: "
              f"{result['cpu_probe_ms'][0]:.0f} / {result['cpu_probe_ms'][1]:.0f}; took {result['duration_s']:.0f} s")
        if warning := interference(summary, args.nice, args.rt):
            print(warning, file=sys.stderr)
        bad = problems(summary)
        for line in bad:
            print(f"WARNING: {line}", file=sys.stderr)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(render(ctx, result, summary, command))
            print(f"wrote {args.out}")
        if args.json:
            raw = {k: v for k, v in result.items() if k != "phases"}
            raw["summary"] = summary
            raw["phases"] = [{**{k: v for k, v in asdict(p).items() if k != "samples"}, "requests": len(p.samples)}
                             for p in result["phases"]]
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(raw, indent=1, default=str))
            print(f"wrote {args.json}")
        return 1 if bad else 0
    except BaseException:
        for proc in procs.values():
            if proc.popen.poll() is not None and proc.popen.returncode not in (0, -signal.SIGTERM):
                print(f"--- {proc.name} log (exit {proc.popen.returncode}) ---\n{proc.tail()}", file=sys.stderr)
        raise
    finally:
        for proc in reversed(procs.values()):
            with contextlib.suppress(Exception):
                proc.stop(10.0)
        if autogroup_before is not None:
            set_autogroup_nice(autogroup_before)
        if args.keep_logs:
            print(f"logs in {logdir}")
        else:
            shutil.rmtree(logdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
