"""Latency that llmtap adds to a streamed LLM call, measured against a direct connection in the same run.

    python benchmarks/overhead.py                      # full run (about 4.5 min), writes docs/benchmarks.md
    python benchmarks/overhead.py --quick              # smoke run (< 60 s), prints only
    python benchmarks/overhead.py --repetitions 7 --concurrency 1,16,64 --tokens 100 --out /tmp/b.md
    python benchmarks/overhead.py --rt 10              # on a busy shared machine (root): SCHED_FIFO, see below

What runs (each a subprocess, except the load generator, which is this process):
  * the simulated backend   `llmtap sim --port P --ttft-ms 50 --itl-ms 20 --tokens 100`
  * the proxy               `llmtap serve --upstream http://127.0.0.1:P --port Q`, telemetry ON:
                            OTLP/HTTP to a local sink, OTEL_METRIC_EXPORT_INTERVAL=5000, OTEL_BSP_SCHEDULE_DELAY=1000
  * the OTLP sink           `python benchmarks/otlp_sink.py --port S` (200 + empty protobuf, counts requests/bytes)
Layout: the proxy alone on CPU 0; sim, sink and load generator on CPU 1 (`taskset -c`, verified from
/proc/<pid>/task/*/status after start-up). On a shared machine, other processes' load lands on the same
two CPUs; it is measured (/proc/stat) and reported. Two ways to shield the benchmark from it (root):
--rt PRIO runs every benchmark process SCHED_FIFO (they preempt other work at once; they use well under
the 95 % RT throttling cap), --nice N lowers their nice level and that of this session's autogroup
(autogroup scheduling shares CPU between sessions first), restored at the end; nice only reduces it.

The load generator (uvloop + one aiohttp session, connector limit=0) streams OpenAI chat completions
(stream + include_usage) and records per request, with time.perf_counter_ns: TTFT (request start ->
first chunk carrying a non-empty "content" delta), ITL (gaps between content chunks) and chunk lag
(arrival of content chunk i minus its scheduled time, request start + ttft + i * itl). Targets are
direct (client -> sim) and proxied (client -> proxy -> sim); every repetition runs both with the same
workload, in alternating order (ABBA), after a short warm-up that leaves keep-alive connections open
on both legs. "added" is the median over repetitions of (proxied - direct) for each percentile.
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
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
TARGETS = ("direct", "proxied")
ITL_P50_TARGET_MS = 0.5
FOREIGN_CPU_WARN = 0.15  # warn when other processes take more than this share of a benchmark CPU
WARMUP_SETTLE_S = 0.3
SLOW_GAP_MS = 10.0  # an ITL sample counts as slow when it exceeds the backend's itl by this much
VERSIONED = ("aiohttp", "uvicorn", "starlette", "opentelemetry-sdk", "uvloop", "httptools", "orjson", "llmtap")
_perf_ns = time.perf_counter_ns


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


def chat_body(tokens: int, seed: int) -> bytes:
    return orjson.dumps({
        "model": "sim-small",
        "messages": [{"role": "user", "content": "Tell me about the weather in five words."}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": tokens,
        "seed": seed,
    })


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
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"
    return sample


async def run_waves(session: aiohttp.ClientSession, url: str, work: Workload, concurrency: int, waves: int,
                    seed0: int = 0, headers: dict[str, str] | None = None) -> list[Sample]:
    """`waves` rounds of `concurrency` simultaneous streams; a round starts when the previous one ended."""
    samples: list[Sample] = []
    for wave in range(waves):
        bodies = [chat_body(work.tokens, seed0 + wave * concurrency + i) for i in range(concurrency)]
        samples.extend(await asyncio.gather(*(stream_one(session, url, b, work, headers) for b in bodies)))
    return samples


# --- one measured phase ------------------------------------------------------------------------------

@dataclass
class Phase:
    target: str
    concurrency: int
    rep: int
    wall_s: float
    samples: list[Sample]
    proxy_cpu_s: float
    sim_cpu_s: float
    sink_cpu_s: float
    loadgen_cpu_s: float
    cpu_busy_s: dict[int, float]

    @property
    def errors(self) -> list[str]:
        return [s.error for s in self.samples if s.error]

    def sorted_ms(self, name: str) -> list[float]:
        if name.startswith("ttft"):
            # ttft: all; ttft_w1: the first wave (starts on an idle proxy); ttft_wn: the waves after it
            samples = {"ttft": self.samples, "ttft_w1": self.samples[:self.concurrency],
                       "ttft_wn": self.samples[self.concurrency:]}[name]
            values = [s.ttft_ns for s in samples if s.ttft_ns is not None]
        else:
            values = [v for s in self.samples for v in getattr(s, name + "_ns")]
        return sorted(v / 1e6 for v in values)

    @property
    def events(self) -> int:
        return sum(s.events for s in self.samples)


@dataclass
class Context:
    args: argparse.Namespace
    work: Workload
    urls: dict[str, str]
    sim: Proc
    proxy: Proc
    sink: Proc
    proxy_cpu: int | None
    client_cpu: int | None


async def measure(ctx: Context, session: aiohttp.ClientSession, target: str, concurrency: int, rep: int) -> Phase:
    url = ctx.urls[target]
    # Warm-up: open (or re-open) keep-alive connections on every leg with short streams, unrecorded.
    # uvicorn drops idle client connections after 5 s, so without it proxied phases would pay connects.
    await run_waves(session, url, Workload(1, 5, 2), concurrency, 1, headers=_short_stream_headers(2))
    await asyncio.sleep(WARMUP_SETTLE_S)  # the proxy finishes the warm-up calls' telemetry before we measure
    waves = ctx.args.sequential if concurrency == 1 else ctx.args.waves
    timeout = waves * (ctx.work.ttft_ms + ctx.work.tokens * ctx.work.itl_ms) / 1000 * 3 + 30
    pids = (ctx.proxy.pid, ctx.sim.pid, ctx.sink.pid)
    before = [cpu_seconds(p) for p in pids], self_cpu_seconds(), cpu_busy_seconds(), time.perf_counter()
    samples = await asyncio.wait_for(
        run_waves(session, url, ctx.work, concurrency, waves, seed0=rep * 100_000), timeout
    )
    after = [cpu_seconds(p) for p in pids], self_cpu_seconds(), cpu_busy_seconds(), time.perf_counter()
    proxy_s, sim_s, sink_s = (a - b for a, b in zip(after[0], before[0], strict=True))
    return Phase(
        target=target, concurrency=concurrency, rep=rep, wall_s=after[3] - before[3], samples=samples,
        proxy_cpu_s=proxy_s, sim_cpu_s=sim_s, sink_cpu_s=sink_s, loadgen_cpu_s=after[1] - before[1],
        cpu_busy_s={cpu: after[2][cpu] - before[2].get(cpu, 0.0) for cpu in after[2]},
    )


def _short_stream_headers(tokens: int) -> dict[str, str]:
    return {"Content-Type": "application/json", "x-sim-tokens": str(tokens), "x-sim-ttft-ms": "1",
            "x-sim-itl-ms": "5"}  # 5 ms apart: the two chunks are not coalesced into one read


# --- output integrity --------------------------------------------------------------------------------

_ID = re.compile(rb'"id":"[^"]*"')
_CREATED = re.compile(rb'"created":\d+')


def normalise(body: bytes) -> bytes:
    return _CREATED.sub(b'"created":0', _ID.sub(b'"id":"<id>"', body))


async def fetch_raw(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> bytes:
    async with session.post(url, data=body, headers=headers) as resp:
        resp.raise_for_status()
        return await resp.read()


async def compare_bytes(session: aiohttp.ClientSession, urls: dict[str, str], tokens: int) -> dict[str, Any]:
    """One deterministic request (same body, same seed) direct twice and proxied once."""
    body = chat_body(tokens, seed=424242)
    headers = {"Content-Type": "application/json", "x-sim-ttft-ms": "5", "x-sim-itl-ms": "5"}
    direct_a = await fetch_raw(session, urls["direct"], body, headers)
    direct_b = await fetch_raw(session, urls["direct"], body, headers)
    proxied = await fetch_raw(session, urls["proxied"], body, headers)
    return {
        "direct_bytes": len(direct_a),
        "proxied_bytes": len(proxied),
        "raw_equal": direct_a == proxied,
        "normalised_equal": normalise(direct_a) == normalise(proxied),
        "control_direct_vs_direct_raw_equal": direct_a == direct_b,
        "control_direct_vs_direct_normalised_equal": normalise(direct_a) == normalise(direct_b),
        "fields_normalised": ['"id"', '"created"'],
        "events": direct_a.count(b"\n\n"),
    }


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
    for proc, want in ((ctx.proxy, ctx.proxy_cpu), (ctx.sim, ctx.client_cpu), (ctx.sink, ctx.client_cpu)):
        seen = thread_affinities(proc.pid)
        layout[proc.name] = {"pid": proc.pid, "cpus": sorted(seen), "nice": nice_level(proc.pid),
                             "sched": sorted(sched_policies(proc.pid)),
                             "ok": want is None or seen == {str(want)}}
    seen = thread_affinities(os.getpid())
    layout["loadgen"] = {"pid": os.getpid(), "cpus": sorted(seen), "nice": nice_level(os.getpid()),
                         "sched": sorted(sched_policies(os.getpid())),
                         "ok": ctx.client_cpu is None or seen == {str(ctx.client_cpu)}}
    return layout


async def run(ctx: Context) -> dict[str, Any]:
    args = ctx.args
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=30)
    result: dict[str, Any] = {"phases": []}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        sink_url = f"http://127.0.0.1:{ctx.args.sink_port}"
        startup = {
            "sink": await wait_healthy(session, ctx.sink, sink_url + "/healthz", 20),
            "sim": await wait_healthy(session, ctx.sim, ctx.urls["sim_base"] + "/healthz", 20),
            "proxy": await wait_healthy(session, ctx.proxy, ctx.urls["proxy_base"] + "/healthz", 30),
        }
        result["startup_s"] = startup
        result["layout"] = check_layout(ctx)
        if not all(v["ok"] for v in result["layout"].values()):
            print(f"WARNING: CPU layout not as intended: {result['layout']}", file=sys.stderr)
        rss: dict[str, int | None] = {"idle_after_start": status_kb(ctx.proxy.pid, "VmRSS")}
        result["bytes"] = await compare_bytes(session, ctx.urls, ctx.work.tokens)
        print(f"bytes: {result['bytes']}", flush=True)

        for concurrency in args.concurrency:
            for rep in range(args.repetitions):
                order = TARGETS if rep % 2 == 0 else TARGETS[::-1]
                for target in order:
                    phase = await measure(ctx, session, target, concurrency, rep)
                    result["phases"].append(phase)
                    ttft, itl = phase.sorted_ms("ttft"), phase.sorted_ms("itl")
                    print(f"c={concurrency:<3} rep={rep} {target:<8} {len(phase.samples):>4} req "
                          f"TTFT p50 {percentile(ttft, 50):8.3f} ms  ITL p50 {percentile(itl, 50):7.3f} "
                          f"p99 {percentile(itl, 99):7.3f} ms  proxy cpu {phase.proxy_cpu_s:5.2f} s  "
                          f"errors {len(phase.errors)}", flush=True)
            rss[f"after_c{concurrency}"] = status_kb(ctx.proxy.pid, "VmRSS")
        rss["peak_hwm"] = status_kb(ctx.proxy.pid, "VmHWM")
        result["rss_kb"] = rss

        # Let the batch span processor export the last spans, then stop the proxy (it flushes on SIGTERM).
        await asyncio.sleep(args.bsp_delay_ms / 1000 + 0.5)
        result["proxy_total_cpu_s"] = cpu_seconds(ctx.proxy.pid)
        result["sink_total_cpu_s"] = cpu_seconds(ctx.sink.pid)
        result["proxy_exit"] = await asyncio.to_thread(ctx.proxy.stop, 15.0)
        async with session.get(sink_url + "/stats", timeout=aiohttp.ClientTimeout(total=60)) as resp:
            result["telemetry"] = await resp.json()
    return result


# --- report ------------------------------------------------------------------------------------------

FIGURES = (("ttft", "TTFT"), ("itl", "ITL"), ("lag", "chunk lag"))
WAVE_FIGURES = (("ttft_w1", "TTFT, 1st wave"), ("ttft_wn", "TTFT, later waves"))


def summarise(phases: list[Phase], concurrency: int, tokens: int, itl_ms: float) -> dict[str, Any]:
    reps: dict[int, dict[str, Phase]] = {}
    for phase in phases:
        if phase.concurrency == concurrency:
            reps.setdefault(phase.rep, {})[phase.target] = phase
    waves = max((len(p.samples) // concurrency for p in phases if p.concurrency == concurrency), default=1)
    figures = FIGURES + (WAVE_FIGURES if concurrency > 1 and waves > 1 else ())
    out: dict[str, Any] = {"concurrency": concurrency, "reps": len(reps), "figures": figures}
    for key, _label in figures:
        for q in (50, 99):
            per_rep = []
            for pair in reps.values():
                d = percentile(pair["direct"].sorted_ms(key), q)
                p = percentile(pair["proxied"].sorted_ms(key), q)
                per_rep.append((d, p, p - d))
            out[f"{key}_p{q}"] = {
                "direct": median(x[0] for x in per_rep),
                "proxied": median(x[1] for x in per_rep),
                "added": median(x[2] for x in per_rep),
                "added_min": min(x[2] for x in per_rep),
                "added_max": max(x[2] for x in per_rep),
                "per_rep": per_rep,
            }
    proxied = [pair["proxied"] for pair in reps.values()]
    direct = [pair["direct"] for pair in reps.values()]
    events = sum(p.events for p in proxied)
    proxy_cpu = sum(p.proxy_cpu_s for p in proxied)
    proxy_cpu_in_direct = sum(p.proxy_cpu_s for p in direct)

    def share(items: list[Phase], attr: str) -> float:
        wall = sum(p.wall_s for p in items)
        return sum(getattr(p, attr) for p in items) / wall if wall else math.nan

    def foreign(items: list[Phase], cpu: int, ours: Sequence[str]) -> float:
        wall = sum(p.wall_s for p in items)
        busy = sum(p.cpu_busy_s.get(cpu, 0.0) - sum(getattr(p, a) for a in ours) for p in items)
        return max(busy, 0.0) / wall if wall else math.nan

    slow_ns = int((itl_ms + SLOW_GAP_MS) * 1e6)

    def slow_gaps(items: list[Phase]) -> dict[str, int]:
        gaps = [(i >= len(s.itl_ns) - 3, g) for p in items for s in p.samples for i, g in enumerate(s.itl_ns)]
        return {"gaps": len(gaps), "slow": sum(g > slow_ns for _, g in gaps),
                "slow_in_last_3": sum(last and g > slow_ns for last, g in gaps),
                "max_ms": max((g for _, g in gaps), default=0) / 1e6}

    out.update({
        "slow_gaps": {"direct": slow_gaps(direct), "proxied": slow_gaps(proxied)},
        "requests_per_target": sum(len(p.samples) for p in proxied),
        "errors": {t: sum(len(p.errors) for p in ph) for t, ph in (("direct", direct), ("proxied", proxied))},
        "first_errors": [e for p in direct + proxied for e in p.errors][:5],
        "events_proxied": events,
        "events_per_request": events / max(1, sum(len(p.samples) for p in proxied)),
        "content_chunks_ok": all(s.content_chunks == tokens for p in direct + proxied for s in p.samples),
        "proxy_cpu_s": proxy_cpu,
        "proxy_cpu_per_1000_chunks": proxy_cpu / events * 1000 if events else math.nan,
        "proxy_cpu_background_s": proxy_cpu_in_direct,
        "proxy_cpu_share": share(proxied, "proxy_cpu_s"),
        "chunks_per_s": events / sum(p.wall_s for p in proxied) if proxied else math.nan,
        "loadgen_cpu_share": {"direct": share(direct, "loadgen_cpu_s"), "proxied": share(proxied, "loadgen_cpu_s")},
        "sim_cpu_share": {"direct": share(direct, "sim_cpu_s"), "proxied": share(proxied, "sim_cpu_s")},
        "foreign_cpu0_share": {"direct": foreign(direct, 0, ("proxy_cpu_s",)),
                               "proxied": foreign(proxied, 0, ("proxy_cpu_s",))},
        "foreign_cpu1_share": {t: foreign(ph, 1, ("sim_cpu_s", "sink_cpu_s", "loadgen_cpu_s"))
                               for t, ph in (("direct", direct), ("proxied", proxied))},
    })
    return out


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _signed(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.3f}"


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.0f}%"


def latency_table(summaries: list[dict[str, Any]]) -> str:
    lines = [
        "| concurrency | figure | direct p50 | proxied p50 | **added p50** | direct p99 | proxied p99 | **added p99** "
        "| added p50, range over reps |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        for key, label in s["figures"]:
            p50, p99 = s[f"{key}_p50"], s[f"{key}_p99"]
            lines.append(
                f"| {s['concurrency']} | {label} | {_ms(p50['direct'])} | {_ms(p50['proxied'])} | "
                f"**{_signed(p50['added'])}** | {_ms(p99['direct'])} | {_ms(p99['proxied'])} | "
                f"**{_signed(p99['added'])}** | {_signed(p50['added_min'])} .. {_signed(p50['added_max'])} |"
            )
    return "\n".join(lines)


def resource_table(summaries: list[dict[str, Any]], rss: dict[str, int | None]) -> str:
    lines = [
        "| concurrency | requests per target | SSE events forwarded | events/s | proxy CPU s / 1000 events "
        "| proxy CPU busy (CPU 0) | proxy CPU in direct phases (no traffic) | load gen CPU (CPU 1) d / p "
        "| sim CPU (CPU 1) d / p | other processes on CPU 0 / CPU 1 | errors d / p |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        lines.append(
            f"| {s['concurrency']} | {s['requests_per_target']} | {s['events_proxied']} | {s['chunks_per_s']:.0f} | "
            f"{s['proxy_cpu_per_1000_chunks']:.4f} | {_pct(s['proxy_cpu_share'])} | "
            f"{s['proxy_cpu_background_s']:.2f} s | "
            f"{_pct(s['loadgen_cpu_share']['direct'])} / {_pct(s['loadgen_cpu_share']['proxied'])} | "
            f"{_pct(s['sim_cpu_share']['direct'])} / {_pct(s['sim_cpu_share']['proxied'])} | "
            f"{_pct(s['foreign_cpu0_share']['proxied'])} / {_pct(s['foreign_cpu1_share']['proxied'])} | "
            f"{s['errors']['direct']} / {s['errors']['proxied']} |"
        )
    lines += [
        "",
        f"Slow gaps (ITL samples more than {SLOW_GAP_MS:g} ms above the backend's ITL), direct / proxied:",
        "",
        "| concurrency | gaps per target | slow gaps d / p | of which among the last 3 gaps of a stream d / p "
        "| largest gap d / p (ms) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        d, p = s["slow_gaps"]["direct"], s["slow_gaps"]["proxied"]
        lines.append(f"| {s['concurrency']} | {p['gaps']} | {d['slow']} / {p['slow']} | "
                     f"{d['slow_in_last_3']} / {p['slow_in_last_3']} | {d['max_ms']:.1f} / {p['max_ms']:.1f} |")
    rss_line = ", ".join(f"{k.replace('_', ' ')}: {v / 1024:.1f} MiB" for k, v in rss.items() if v is not None)
    return "\n".join(lines) + f"\n\nProxy memory (VmRSS; peak is VmHWM): {rss_line}."


def versions() -> dict[str, str]:
    found = {}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def interference(summaries: list[dict[str, Any]], nice: int, rt: int) -> str | None:
    """A warning when other processes used much of either CPU while the proxied phases ran."""
    worst = max((max(s["foreign_cpu0_share"]["proxied"], s["foreign_cpu1_share"]["proxied"]), s["concurrency"])
                for s in summaries)
    if worst[0] <= FOREIGN_CPU_WARN:
        return None
    used = (f"other processes used up to {100 * worst[0]:.0f}% of a benchmark CPU during the proxied phases "
            f"(concurrency {worst[1]})")
    if rt:
        return (f"Note: {used}. The benchmark ran SCHED_FIFO, so they ran only when ours did not need the CPU; "
                "what is left of their effect is indirect (caches, memory bandwidth, the hypervisor).")
    if nice < 0:
        return f"Caution: {used}; the figures include their interference, reduced (not removed) by nice {nice}."
    return f"Caution: {used}; the figures include their interference. Rerun on a quiet machine, or with --rt 10."


def verdict(summaries: list[dict[str, Any]]) -> str:
    for s in summaries:
        if s["concurrency"] == 64:
            added = s["itl_p50"]["added"]
            met = added < ITL_P50_TARGET_MS
            return (f"Target: added ITL p50 < {ITL_P50_TARGET_MS} ms at concurrency 64. Measured: "
                    f"{added:+.3f} ms (median over {s['reps']} repetitions). **{'MET' if met else 'NOT MET'}.**")
    return f"Target (added ITL p50 < {ITL_P50_TARGET_MS} ms at concurrency 64) not evaluated: concurrency 64 not run."


def render(ctx: Context, result: dict[str, Any], summaries: list[dict[str, Any]], command: str) -> str:
    args, work = ctx.args, ctx.work
    b, layout = result["bytes"], result["layout"]
    started = result["started"]
    pinning = ", ".join(f"{name} (pid {v['pid']}): CPU {'/'.join(v['cpus'])}, nice {v['nice']}, "
                        f"scheduling {'/'.join(v['sched'])}"
                        f"{'' if v['ok'] else ' (NOT as intended)'}" for name, v in layout.items())
    vers = ", ".join(f"{k} {v}" for k, v in versions().items())
    seq = args.sequential
    out = [
        "# Benchmarks: latency added by the llmtap proxy",
        "",
        f"Generated by `{command}` on {started} (took {result['duration_s']:.0f} s).",
        "Rerun it to refresh this page; the figures below are from that run only.",
        "",
        f"{verdict(summaries)}",
        "",
        *([f"**{warning}**", ""] if (warning := interference(summaries, args.nice, args.rt)) else []),
        "## Machine",
        f"- {os.cpu_count()} CPUs ({cpu_model()}), Linux {platform.release()}",
        f"- Python {platform.python_version()}; {vers}",
        f"- Load average at start / end: {result['loadavg_start']} / {result['loadavg_end']}",
        f"- Speed of the proxy's CPU (a fixed 2M-iteration Python loop, best of 3) at start / end: "
        f"{result['cpu_probe_ms'][0]:.0f} / {result['cpu_probe_ms'][1]:.0f} ms. On a shared virtual machine "
        "it can vary from one run to the next, even within minutes, and so do the CPU-bound figures "
        "(proxy CPU per event, TTFT at concurrency 64); compare runs with this in mind.",
        "",
        "## Layout",
        f"- Proxy alone on CPU {ctx.proxy_cpu}; simulated backend, OTLP sink and load generator on CPU "
        f"{ctx.client_cpu} (`taskset -c`; the load generator pins itself with `os.sched_setaffinity`). "
        f"Nice level of all of them: {args.nice}; " + (f"SCHED_FIFO priority {args.rt}." if args.rt else
                                                         "normal (CFS) scheduling."),
        f"- Checked from `/proc/<pid>/task/*/status` after start-up: {pinning}.",
        "- Telemetry is on: the proxy exports OTLP/HTTP (protobuf) traces and metrics to a local sink that "
        "answers 200 with an empty body (`benchmarks/otlp_sink.py`), with `OTEL_BSP_SCHEDULE_DELAY="
        f"{args.bsp_delay_ms}` and `OTEL_METRIC_EXPORT_INTERVAL={args.metric_interval_ms}`.",
        "- The machine may be shared: other processes can run on both CPUs. Their share of each CPU during the "
        "proxied phases is in the resources table (`/proc/stat` busy time minus ours)."
        + (" Under SCHED_FIFO the benchmark's processes preempt them as soon as they have work, so that share "
           "is CPU time ours left unused, not time they waited for." if args.rt else ""),
        "",
        "## Workload",
        f"- Backend: `llmtap sim --ttft-ms {work.ttft_ms:g} --itl-ms {work.itl_ms:g} --tokens {work.tokens}`: "
        f"OpenAI chat completions, one content chunk per token, {work.tokens} content chunks per stream "
        f"(plus role, finish, usage and `[DONE]` events), content chunk i sent at arrival + ttft + i x itl.",
        "- Client: uvloop + one aiohttp session (`TCPConnector(limit=0)`), `stream: true`, "
        "`stream_options.include_usage: true`; timings with `time.perf_counter_ns` at each read of the body.",
        "- Targets: **direct** (client -> sim) and **proxied** (client -> proxy -> sim), same workload, same run.",
        f"- {args.repetitions} repetitions; each runs both targets, in alternating order (ABBA). Concurrency 1: "
        f"{seq} sequential requests per target per repetition. Concurrency > 1: {args.waves} waves of c "
        "simultaneous streams (a wave starts when the previous one has ended).",
        "- Before each measured phase, one unrecorded wave of 2-token streams opens the keep-alive connections "
        f"on every leg, so both targets are measured with warm connections (uvicorn closes idle client "
        f"connections after 5 s), followed by a {WARMUP_SETTLE_S:g} s pause.",
        "",
        "## Latency (milliseconds)",
        "",
        latency_table(summaries),
        "",
        "## Resources",
        "",
        resource_table(summaries, result["rss_kb"]),
        "",
        "## Output integrity and telemetry",
        f"- Same request (same body and `seed`) direct and proxied: {b['direct_bytes']} vs {b['proxied_bytes']} "
        f"bytes, {b['events']} SSE events. Byte-identical raw: {b['raw_equal']}; identical after normalising "
        f"the per-request `\"id\"` and `\"created\"` fields: **{b['normalised_equal']}**. (The simulator puts a "
        "per-request id and a wall-clock `created` second in each chunk, so two direct requests differ too: "
        f"raw equal {b['control_direct_vs_direct_raw_equal']}, normalised equal "
        f"{b['control_direct_vs_direct_normalised_equal']}.)",
        telemetry_line(result, ctx),
        "",
        "## How to read this",
        "- **added** is the median over repetitions of (proxied - direct) for that percentile, each repetition "
        "comparing the two targets measured back to back. The direct and proxied columns are the medians over "
        "repetitions of each target's own percentile, so added is not exactly their difference. The last "
        "column shows the spread of the per-repetition differences.",
        "- **TTFT**: request start -> first chunk with non-empty `content`. Added TTFT is the proxy's cost on "
        "the request path plus the first chunk's forwarding.",
        "- **ITL**: gaps between consecutive content chunks, one sample per gap, as the client sees them. A "
        "constant per-chunk forwarding delay cancels out of ITL; what shows is the variation of that delay "
        "(queueing behind other streams' chunks, event loop stalls, telemetry export, GC).",
        "- **chunk lag**: arrival of content chunk i minus its scheduled time (request start + ttft + i x itl). "
        "Its added value is the per-chunk delay the proxy adds (including the request path), which ITL "
        "cannot show.",
        f"- At concurrency 1 the TTFT p99 rests on {seq} samples per repetition (about the maximum); at 64 all "
        "streams start together, so every 20 ms 64 chunks arrive at once (a burst, the hard case for a "
        "single-threaded proxy: the last chunk of a burst waits for the 63 before it).",
        "- **proxy CPU s / 1000 events** divides the proxy's utime+stime (all threads, `/proc/<pid>/stat`, "
        "10 ms resolution) during the proxied phases by the SSE events the client received through it (one "
        "upstream write = one event = one forwarded chunk). It includes the request path and the telemetry "
        "export that ran during those phases; **proxy CPU in direct phases** is what it used while it forwarded "
        "nothing (mostly exporting the previous phase's spans and metrics).",
        "- **Slow gaps**: when the proxied slow gaps sit among the last gaps of their streams, the proxy stalls "
        "when streams end: the work done once per call at its end (token count, span, one histogram record per "
        "gap) competes with the streams still flowing, on the event loop or, from a finisher thread, for the GIL.",
        "- **TTFT, 1st wave / later waves** (concurrency > 1): a later wave starts the moment the previous one "
        "ends, so its requests meet the proxy while it is still ending the previous wave's calls; the 1st wave "
        "starts on an idle proxy. The difference between the two is the cost of that end-of-call work to new "
        "requests.",
        "- Load generator and sim CPU are shares of CPU 1 over the phase wall time (d = direct phases, p = "
        "proxied); well under 100 % together means the client side was not the bottleneck.",
        "",
        "## Reproduce",
        "```bash",
        command,
        "python benchmarks/overhead.py --quick      # < 60 s smoke run, prints the tables only",
        "```",
        "Processes it starts (ports picked free at run time):",
        "```",
        *[" ".join(p.argv) for p in (ctx.sink, ctx.sim, ctx.proxy)],
        "```",
    ]
    return "\n".join(out) + "\n"


def telemetry_line(result: dict[str, Any], ctx: Context) -> str:
    """What reached the OTLP sink, checked against the proxied traffic the client saw."""
    tel, args = result["telemetry"], ctx.args
    measured = [s for p in result["phases"] if p.target == "proxied" for s in p.samples]
    warmups = sum(args.concurrency) * args.repetitions  # one wave of c 2-token streams per proxied phase
    requests = len(measured) + warmups + 1  # + the byte check
    gaps = sum(len(s.itl_ns) for s in measured) + warmups + (ctx.work.tokens - 1)
    line = (f"- OTLP sink: traces {tel['traces']['requests']} requests / {tel['traces']['bytes']} bytes, "
            f"metrics {tel['metrics']['requests']} requests / {tel['metrics']['bytes']} bytes. "
            f"Proxied LLM calls in the run (measured + warm-up + byte check): {requests}")
    if tel.get("decoded"):
        hist = tel.get("histograms", {})
        duration = hist.get("gen_ai.client.operation.duration", {})
        chunk = hist.get("gen_ai.client.operation.time_per_output_chunk", {})
        overhead = hist.get("llmtap.proxy.overhead", {})
        line += (f"; spans received: {tel['spans']}; duration histogram count: {duration.get('count', 'n/a')}; "
                 f"ITL histogram count: {chunk.get('count', 'n/a')} (client saw {gaps} gaps; the proxy counts "
                 "one sample per received network chunk, so events that arrive together count once)")
        if overhead.get("count"):
            line += (f"; the proxy's own `llmtap.proxy.overhead` (body received -> sent upstream) averaged "
                     f"{overhead['sum'] / overhead['count'] * 1e3:.3f} ms")
    return line + f". Proxy exit status after SIGTERM: {result['proxy_exit']}."


# --- main --------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Latency added by the llmtap proxy, against a direct connection.")
    parser.add_argument("--quick", action="store_true", help="smoke run under 60 s (2 reps, 50 tokens, fewer requests)")
    parser.add_argument("--repetitions", type=int, help="repetitions of (direct, proxied); default 5 (quick 2)")
    parser.add_argument("--concurrency", default="1,64", help="comma-separated concurrency levels (default 1,64)")
    parser.add_argument("--tokens", type=int, help="content chunks per stream; default 100 (quick 50)")
    parser.add_argument("--ttft-ms", type=float, default=50.0)
    parser.add_argument("--itl-ms", type=float, default=20.0)
    parser.add_argument("--sequential", type=int, help="requests per rep at concurrency 1; default 10 (quick 4)")
    parser.add_argument("--waves", type=int, help="waves per rep at concurrency > 1; default 2 (quick 1)")
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
    parser.add_argument("--proxy-cmd", help="run this instead of `llmtap serve ...` (A/B of builds or settings); "
                        "{upstream} and {port} are filled in, e.g. 'llmtap serve --upstream {upstream} --port {port}'")
    parser.add_argument("--metric-interval-ms", type=int, default=5000)
    parser.add_argument("--bsp-delay-ms", type=int, default=1000)
    parser.add_argument("--keep-logs", action="store_true", help="keep the subprocess logs and print where")
    args = parser.parse_args(argv)
    quick = args.quick
    args.repetitions = args.repetitions or (2 if quick else 5)
    args.tokens = args.tokens or (50 if quick else 100)
    args.sequential = args.sequential or (4 if quick else 10)
    args.waves = args.waves or (1 if quick else 2)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if args.out is None and not quick:
        args.out = str(ROOT / "docs" / "benchmarks.md")
    if args.repetitions < 1 or args.tokens < 2 or any(c < 1 for c in args.concurrency):
        parser.error("need repetitions >= 1, tokens >= 2, concurrency >= 1")
    allowed = os.sched_getaffinity(0)
    if not args.no_pin and len(allowed) >= 2 and not {args.proxy_cpu, args.client_cpu} <= allowed:
        parser.error(f"--proxy-cpu/--client-cpu must be among the usable CPUs {sorted(allowed)}")
    if args.proxy_cpu == args.client_cpu and not args.no_pin:
        parser.error("--proxy-cpu and --client-cpu must differ")
    return args


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
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})  # before any thread or loop exists: the load generator
    autogroup_before = set_autogroup_nice(args.nice) if args.nice else None
    set_priority(args.nice, args.rt)  # per thread on Linux: before any thread exists

    work = Workload(args.ttft_ms, args.itl_ms, args.tokens)
    args.sink_port, sim_port, proxy_port = _free_port(), _free_port(), _free_port()
    logdir = Path(tempfile.mkdtemp(prefix="llmtap-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONUNBUFFERED"] = "1"
    proxy_env = {
        **env,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{args.sink_port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_METRIC_EXPORT_INTERVAL": str(args.metric_interval_ms),
        "OTEL_BSP_SCHEDULE_DELAY": str(args.bsp_delay_ms),
    }
    procs: list[Proc] = []
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t_start = time.perf_counter()
    loadavg_start = Path("/proc/loadavg").read_text().split()[:3]
    try:
        probe_start = cpu_probe(proxy_cpu, args.nice, args.rt)
        sink = start_proc("sink", [sys.executable, str(HERE / "otlp_sink.py"), "--port", str(args.sink_port)],
                          client_cpu, env, logdir, args.nice, args.rt)
        procs.append(sink)
        sim = start_proc("sim", [*llmtap_argv(), "sim", "--port", str(sim_port), "--ttft-ms", f"{work.ttft_ms:g}",
                                 "--itl-ms", f"{work.itl_ms:g}", "--tokens", str(work.tokens)],
                         client_cpu, env, logdir, args.nice, args.rt)
        procs.append(sim)
        upstream = f"http://127.0.0.1:{sim_port}"
        if args.proxy_cmd:
            proxy_argv = [part.format(upstream=upstream, port=proxy_port) for part in shlex.split(args.proxy_cmd)]
        else:
            proxy_argv = [*llmtap_argv(), "serve", "--upstream", upstream, "--port", str(proxy_port),
                          "--log-level", "warning"]
        proxy = start_proc("proxy", proxy_argv,
                           proxy_cpu, proxy_env, logdir, args.nice, args.rt)
        procs.append(proxy)
        urls = {
            "sim_base": f"http://127.0.0.1:{sim_port}",
            "proxy_base": f"http://127.0.0.1:{proxy_port}",
            "direct": f"http://127.0.0.1:{sim_port}/v1/chat/completions",
            "proxied": f"http://127.0.0.1:{proxy_port}/v1/chat/completions",
        }
        ctx = Context(args, work, urls, sim, proxy, sink, proxy_cpu, client_cpu)
        try:
            import uvloop

            result = uvloop.run(run(ctx))
            result["loop"] = "uvloop"
        except ImportError:
            result = asyncio.run(run(ctx))
            result["loop"] = "asyncio"
        result["cpu_probe_ms"] = (probe_start, cpu_probe(proxy_cpu, args.nice, args.rt))
        result["started"] = started
        result["duration_s"] = time.perf_counter() - t_start
        result["loadavg_start"] = " ".join(loadavg_start)
        result["loadavg_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        summaries = [summarise(result["phases"], c, args.tokens, args.itl_ms) for c in args.concurrency]
        print()
        print(latency_table(summaries))
        print()
        print(resource_table(summaries, result["rss_kb"]))
        print()
        print(f"Proxy CPU speed probe (ms, lower is faster) at start / end: "
              f"{result['cpu_probe_ms'][0]:.0f} / {result['cpu_probe_ms'][1]:.0f}")
        print(verdict(summaries))
        if warning := interference(summaries, args.nice, args.rt):
            print(warning, file=sys.stderr)
        bad = [s for s in summaries if any(s["errors"].values()) or not s["content_chunks_ok"]]
        for s in bad:
            print(f"WARNING: c={s['concurrency']}: errors {s['errors']}, all chunks received "
                  f"{s['content_chunks_ok']}, first errors {s['first_errors']}", file=sys.stderr)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(render(ctx, result, summaries, command))
            print(f"wrote {args.out}")
        if args.json:
            raw = {k: v for k, v in result.items() if k != "phases"}
            raw["summaries"] = summaries
            raw["phases"] = [{**{k: v for k, v in asdict(p).items() if k != "samples"},
                              "requests": len(p.samples), "events": p.events} for p in result["phases"]]
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(raw, indent=1, default=str))
            print(f"wrote {args.json}")
        return 1 if bad else 0
    except BaseException:
        for proc in procs:
            if proc.popen.poll() is not None and proc.popen.returncode not in (0, -signal.SIGTERM):
                print(f"--- {proc.name} log (exit {proc.popen.returncode}) ---\n{proc.tail()}", file=sys.stderr)
        raise
    finally:
        for proc in reversed(procs):
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
