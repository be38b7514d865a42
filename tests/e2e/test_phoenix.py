"""A real trace store: `llmtap serve` exports OTLP/HTTP to Arize Phoenix, and Phoenix's REST API returns the spans.

What this proves:
- the spans of a real `llmtap serve` process are accepted by a real OTLP/HTTP trace store (Phoenix, offline,
  on sqlite), land in the project named by the standard OTEL_RESOURCE_ATTRIBUTES
  (`openinference.project.name`), one span per call, OpenAI chat and Anthropic messages alike;
- each span carries the GenAI attributes with the simulator's ground truth: model, provider, output tokens,
  response id, and an `llmtap.ttft` between the simulator's TTFT (less) and the client's (more);
- Phoenix itself reads them as LLM spans (it maps the GenAI conventions to its own `llm.*` attributes);
- an upstream error yields an ERROR span with `error.type`; a client's `traceparent` makes the proxy's span
  its child, in the same trace.

Phoenix (pip `arize-phoenix`, about 850 MB) pins `anthropic<2`, which the tests' own environment must not get,
so it lives in its own virtual environment: LLMTAP_PHOENIX_PYTHON names that interpreter, else
~/.cache/llmtap/phoenix-venv/bin/python, else this interpreter when it can import Phoenix. Without one, the test
skips, except under CI=true, where it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

from llmtap_proxy.sim import SimServer
from tests.processes import free_port

pytestmark = pytest.mark.slow

DEFAULT_VENV_PYTHON = Path.home() / ".cache" / "llmtap" / "phoenix-venv" / "bin" / "python"
OPENAI_MODEL = "phx-gpt"
ANTHROPIC_MODEL = "phx-claude"
TTFT_MS = 40
TOKENS = 7


def phoenix_python() -> str:
    """An interpreter that can run `phoenix.server.main`; a missing one fails under CI and skips elsewhere."""
    named = os.environ.get("LLMTAP_PHOENIX_PYTHON")
    candidates = [named] if named else []
    candidates.append(str(DEFAULT_VENV_PYTHON))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    spec = importlib.util.find_spec("phoenix")
    if spec is not None and any(
        (Path(location) / "server" / "main.py").exists() for location in spec.submodule_search_locations or ()
    ):
        return sys.executable
    message = (
        "Arize Phoenix is not installed: python -m venv ~/.cache/llmtap/phoenix-venv && "
        "~/.cache/llmtap/phoenix-venv/bin/pip install arize-phoenix (or set LLMTAP_PHOENIX_PYTHON)"
    )
    if named:
        message = f"LLMTAP_PHOENIX_PYTHON={named} is not an executable"
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(message + "; CI must run this test")
    pytest.skip(message)


def log_tail(log: Path, limit: int = 4000) -> str:
    return log.read_bytes()[-limit:].decode(errors="replace") if log.exists() else ""


def stop(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(10)


@dataclass
class Child:
    process: subprocess.Popen
    url: str
    what: str
    log: Path

    async def ready(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AssertionError(f"{self.what} exited with {self.process.returncode}:\n{log_tail(self.log)}")
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with session.get(self.url + path, timeout=aiohttp.ClientTimeout(total=2)) as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise AssertionError(f"{self.what} was not ready within {timeout} s:\n{log_tail(self.log)}")


@contextlib.contextmanager
def spawn(args: list[str], url: str, what: str, log: Path, env: dict[str, str], cwd: Path | None = None):
    """A real process, logging to a file (a pipe could fill up and block it), stopped at the end."""
    with log.open("wb") as out:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        yield Child(process, url, what, log)
    finally:
        stop(process)


@contextlib.contextmanager
def phoenix(tmp_path: Path):
    """Arize Phoenix, offline, on sqlite under tmp_path, on free loopback ports (HTTP and gRPC)."""
    python = phoenix_python()
    work = tmp_path / "phoenix"
    work.mkdir()
    port = free_port()
    # Phoenix must not see the tests' telemetry settings (it would instrument itself when asked to)
    env = {name: value for name, value in os.environ.items() if not name.startswith(("OTEL_", "PHOENIX_"))}
    env |= {
        "PHOENIX_TELEMETRY_ENABLED": "false",
        "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
        "PHOENIX_SQL_DATABASE_URL": f"sqlite:///{work / 'phoenix.db'}",
        "PHOENIX_WORKING_DIR": str(work),
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(free_port()),
        "PHOENIX_ENABLE_AUTH": "false",
        "PHOENIX_LOGGING_LEVEL": "warning",
        "PHOENIX_LOG_MIGRATIONS": "false",
    }
    with spawn([python, "-m", "phoenix.server.main", "serve"], f"http://127.0.0.1:{port}", "phoenix",
               tmp_path / "phoenix.log", env, cwd=work) as child:
        yield child


@dataclass
class Call:
    provider: str
    model: str
    sim_id: str
    response_id: str | None
    status: int
    client_ttft: float | None  # client send -> first content chunk read: >= the proxy's TTFT
    truth: dict


async def call(session: aiohttp.ClientSession, proxy: str, sim_url: str, provider: str, *,
               status: int | None = None, traceparent: str | None = None) -> Call:
    headers = {"x-sim-ttft-ms": str(TTFT_MS), "x-sim-itl-ms": "10", "x-sim-tokens": str(TOKENS)}
    if status is not None:
        headers["x-sim-status"] = str(status)
    if traceparent is not None:
        headers["traceparent"] = traceparent
    messages = [{"role": "user", "content": "say something short"}]
    if provider == "openai":
        path, model = "/v1/chat/completions", OPENAI_MODEL
        body = {"model": model, "stream": True, "stream_options": {"include_usage": True}, "messages": messages}
    else:
        path, model = "/v1/messages", ANTHROPIC_MODEL
        body = {"model": model, "stream": True, "max_tokens": 64, "messages": messages}
        headers["anthropic-version"] = "2023-06-01"
    first = None
    started = time.perf_counter()
    async with session.post(proxy + path, json=body, headers=headers) as response:
        sim_id = response.headers["x-sim-request-id"]
        response_id = response.headers.get("x-request-id") or response.headers.get("request-id")
        async for line in response.content:
            if first is None and line.startswith(b"data: {") and _has_content(orjson.loads(line[6:])):
                first = time.perf_counter() - started
        code = response.status
    async with session.get(f"{sim_url}/_sim/requests/{sim_id}") as answer:
        truth = await answer.json()
    return Call(provider, model, sim_id, response_id, code, first, truth)


def _has_content(event: dict) -> bool:
    if event.get("type") == "content_block_delta":
        return bool(event.get("delta", {}).get("text"))
    choices = event.get("choices") or [{}]
    return bool(choices[0].get("delta", {}).get("content"))


async def phoenix_spans(session: aiohttp.ClientSession, phoenix_url: str, project: str, expected: int,
                        timeout: float = 30.0) -> list[dict]:
    """Poll Phoenix's REST API until `expected` spans are stored (and a little longer, to catch extras)."""
    deadline = time.monotonic() + timeout
    spans: list[dict] = []
    while time.monotonic() < deadline:
        async with session.get(f"{phoenix_url}/v1/projects/{project}/spans", params={"limit": "100"}) as response:
            if response.status == 200:
                spans = (await response.json())["data"]
        if len(spans) >= expected:
            await asyncio.sleep(0.5)
            async with session.get(f"{phoenix_url}/v1/projects/{project}/spans", params={"limit": "100"}) as again:
                return (await again.json())["data"]
        await asyncio.sleep(0.25)
    raise AssertionError(f"Phoenix holds {len(spans)} spans in project {project}, expected {expected}")


async def test_phoenix_stores_the_proxys_genai_spans(sim: SimServer, tmp_path: Path) -> None:
    project = f"llmtap-e2e-{secrets.token_hex(3)}"
    with phoenix(tmp_path) as store:
        port = free_port()
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": store.url,  # OTLP/HTTP: Phoenix takes /v1/traces on its web port
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "none",  # Phoenix stores traces only
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_RESOURCE_ATTRIBUTES": f"openinference.project.name={project}",
            "OTEL_SERVICE_NAME": "llmtap-phoenix-e2e",
            "LLMTAP_LOG_LEVEL": "warning",
        }
        args = [sys.executable, "-m", "llmtap_proxy.cli", "serve", "--upstream", sim.url, "--port", str(port)]
        with spawn(args, f"http://127.0.0.1:{port}", "llmtap serve", tmp_path / "serve.log", env) as proxy:
            await proxy.ready("/readyz", 30)
            await store.ready("/healthz", 120)  # about 15-20 s when the machine is not busy
            trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
            async with aiohttp.ClientSession() as session:
                calls = [
                    await call(session, proxy.url, sim.url, "openai", traceparent=f"00-{trace_id}-{parent_id}-01"),
                    *await asyncio.gather(
                        call(session, proxy.url, sim.url, "openai"),
                        call(session, proxy.url, sim.url, "anthropic"),
                        call(session, proxy.url, sim.url, "anthropic"),
                    ),
                    await call(session, proxy.url, sim.url, "openai", status=500),
                ]
                spans = await phoenix_spans(session, store.url, project, expected=len(calls))

    assert [c.status for c in calls] == [200, 200, 200, 200, 500]
    assert len(spans) == len(calls), [s["name"] for s in spans]  # exactly one span per call
    by_response_id = {s["attributes"].get("gen_ai.response.id"): s for s in spans}
    for done in calls[:-1]:
        span = by_response_id[done.response_id]
        attributes = span["attributes"]
        assert span["name"] == f"chat {done.model}"
        assert span["status_code"] != "ERROR"
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.provider.name"] == done.provider
        assert attributes["gen_ai.request.model"] == done.model
        assert attributes["gen_ai.response.model"] == done.model
        assert attributes["gen_ai.request.stream"] is True
        assert attributes["gen_ai.usage.output_tokens"] == done.truth["output_tokens"] == TOKENS
        assert attributes["gen_ai.usage.input_tokens"] == done.truth["input_tokens"]
        assert attributes["llmtap.observer"] == "proxy"
        assert attributes["llmtap.content_chunks"] <= done.truth["content_chunks"]
        assert done.client_ttft is not None
        assert done.truth["ttft_s"] - 0.001 <= attributes["llmtap.ttft"] <= done.client_ttft
        assert attributes["llmtap.usage.normalized_output_tokens"] > 0
        assert "llmtap.first_token" in [event["name"] for event in span["events"]]
        # Phoenix read the GenAI conventions itself: an LLM span with its own token count
        assert span["span_kind"] == "LLM"
        assert attributes.get("llm.token_count.completion") == TOKENS
    # the first model seen on this upstream was a cold start, each of them once
    cold = sorted(s["attributes"]["gen_ai.request.model"] for s in spans if s["attributes"].get("llmtap.cold_start"))
    assert cold == [ANTHROPIC_MODEL, OPENAI_MODEL]
    # the client's trace context: the proxy's span is its child
    traced = by_response_id[calls[0].response_id]
    assert traced["context"]["trace_id"] == trace_id
    assert traced["parent_id"] == parent_id
    # an upstream error is a span too, marked as an error
    failed = [s for s in spans if s["status_code"] == "ERROR"]
    assert len(failed) == 1, failed
    assert failed[0]["attributes"]["error.type"] == "500"
    assert failed[0]["attributes"]["gen_ai.request.model"] == OPENAI_MODEL
    assert failed[0]["attributes"]["http.response.status_code"] == 500
