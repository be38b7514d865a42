"""Fixtures for `llmtap bench` / `llmtap report` tests.

The simulator (llmtap_proxy.sim) has fixed per-request timings: TTFT does not depend on the prompt and
ITL does not depend on load. To test that `report` recovers a prefill slope and a saturation point, a
small test-local front (`PerfModel`) sits before a simulator and turns a performance model into the
simulator's per-request knobs:

    TTFT = base_ttft_ms + prefill_ms_per_token x input tokens        (prefill cost)
    ITL  = itl_ms x max(1, calls in flight / batch_limit)            (decode batch of batch_limit)

"input tokens" are the prompt's whitespace-separated words, exactly as the simulator counts them in
`usage.prompt_tokens`, and "calls in flight" is counted when the request arrives (itself included).
So with a closed-loop load of c <= batch_limit every call decodes at 1000 / itl_ms tokens/s, and
beyond it aggregate throughput stops growing: the saturation point is batch_limit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from llmtap_proxy.sim import SimProfile, SimServer, start_sim
from tests.conftest import ThreadLoop


@dataclass
class PerfModel:
    base_ttft_ms: float = 20.0
    prefill_ms_per_token: float = 0.25
    itl_ms: float = 10.0
    batch_limit: int = 4
    active: int = 0
    seen_active: list[int] = field(default_factory=list)

    def knobs(self, input_tokens: int) -> dict[str, str]:
        self.active += 1
        self.seen_active.append(self.active)
        ttft = self.base_ttft_ms + self.prefill_ms_per_token * input_tokens
        itl = self.itl_ms * max(1.0, self.active / self.batch_limit)
        return {"x-sim-ttft-ms": f"{ttft:.3f}", "x-sim-itl-ms": f"{itl:.3f}"}


def prompt_words(body: dict[str, Any]) -> int:
    """Prompt words as the simulator counts them (whitespace-split message contents)."""
    messages = body.get("messages") or []
    return max(sum(len(m["content"].split()) for m in messages if isinstance(m.get("content"), str)), 1)


@dataclass
class PerfModelServer:
    url: str
    model: PerfModel
    sim: SimServer


async def _start_front(model: PerfModel, sim_url: str) -> tuple[web.AppRunner, aiohttp.ClientSession, str]:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def forward(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        headers = {"content-type": "application/json",
                   **model.knobs(prompt_words(orjson.loads(raw)))}
        try:
            async with session.post(sim_url + request.path, data=raw, headers=headers) as upstream:
                response = web.StreamResponse(status=upstream.status, headers={
                    "content-type": upstream.headers.get("content-type", "application/json")})
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
        finally:
            model.active -= 1  # before the end of the body reaches the client, so it never overlaps the next call
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", forward)
    app.router.add_post("/v1/messages", forward)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, session, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture(scope="module")
async def perf_model() -> AsyncIterator[PerfModelServer]:
    """A simulator behind the PerfModel front, on their own thread and loop."""
    loop = ThreadLoop("perf-model")
    model = PerfModel()
    sim = await loop.run(start_sim(profile=SimProfile(ttft_ms=20, itl_ms=10, output_tokens=16, model="sim-batch4")))
    runner, session, url = await loop.run(_start_front(model, sim.url))
    yield PerfModelServer(url, model, sim)
    await loop.run(runner.cleanup())
    await loop.run(session.close())
    await loop.run(sim.close())
    await loop.stop()
