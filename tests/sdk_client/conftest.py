"""Fixtures for the client SDK: real openai/anthropic SDKs, instrumented, against the simulated backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anthropic
import openai
import pytest

import llmtap
from llmtap_proxy.sim import SimServer
from tests.conftest import Captured, ThreadLoop, make_captured
from tests.sdk_client.sdk_helpers import PROMPT, FlakyUpstream


@pytest.fixture(scope="session", autouse=True)
async def warm_sdks(sim: SimServer) -> None:
    """The SDKs build their response models on first use (tens of milliseconds); pay it once, uninstrumented."""
    client = openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="x")
    async for _ in await client.chat.completions.create(
        model="warm", messages=PROMPT, stream=True, stream_options={"include_usage": True}
    ):
        pass
    await client.chat.completions.create(model="warm", messages=PROMPT)
    claude = anthropic.AsyncAnthropic(base_url=sim.url, api_key="x", open_telemetry=False)
    async with claude.messages.stream(model="warm", max_tokens=3, messages=PROMPT) as stream:
        await stream.get_final_message()
    await claude.messages.create(model="warm", max_tokens=3, messages=PROMPT)


@pytest.fixture
def sdk() -> Iterator[Captured]:
    """Telemetry of the client SDK (observer "sdk"), into in-memory exporters. No telemetry fault allowed."""
    captured = make_captured(observer_name="sdk")
    yield captured
    llmtap.flush(2.0, captured.telemetry)
    assert sum(point.value for point in captured.metrics().get("llmtap.internal.errors", [])) == 0


@pytest.fixture
def instrumented(sdk: Captured) -> Iterator[Captured]:
    """llmtap.instrument() in effect for the test, uninstrumented after it."""
    llmtap.instrument(telemetry=sdk.telemetry)
    try:
        yield sdk
    finally:
        llmtap.uninstrument()


@pytest.fixture(scope="session")
async def flaky_server(sim: SimServer) -> AsyncIterator[FlakyUpstream]:
    loop = ThreadLoop("flaky")
    server = FlakyUpstream(sim.url)
    await loop.run(server.start())
    yield server
    await loop.run(server.close())
    await loop.stop()


@pytest.fixture
def flaky(flaky_server: FlakyUpstream) -> FlakyUpstream:
    flaky_server.fail = 1
    flaky_server.seen.clear()
    return flaky_server
