"""Helpers shared by the client-SDK tests."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan

import llmtap
from tests.conftest import Captured

PROMPT = [{"role": "user", "content": "Count some words for me please"}]


def genai_spans(captured: Captured, timeout: float = 3.0, count: int = 1) -> list[ReadableSpan]:
    """GenAI spans once `count` of them ended (a dropped body is ended on llmtap's finisher thread)."""
    deadline = time.perf_counter() + timeout
    while len(captured.genai_spans()) < count and time.perf_counter() < deadline:
        time.sleep(0.005)
    llmtap.flush(1.0, captured.telemetry)
    return captured.genai_spans()


async def agenai_spans(captured: Captured, timeout: float = 3.0, count: int = 1) -> list[ReadableSpan]:
    return await asyncio.to_thread(genai_spans, captured, timeout, count)


def points(captured: Captured, name: str) -> list:
    return captured.metrics().get(name, [])


class FlakyUpstream:
    """A real HTTP upstream that answers 429 to the next `fail` requests, then forwards to the simulator.

    It records the headers of every request, to check the trace context that each attempt carried.
    """

    def __init__(self, sim_url: str) -> None:
        self.sim_url = sim_url
        self.fail = 0
        self.seen: list[dict[str, str]] = []
        self.url = ""
        self._session: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append({k.lower(): v for k, v in request.headers.items()})
        body = await request.read()
        if self.fail > 0:
            self.fail -= 1
            return web.json_response(
                {"error": {"type": "rate_limit_error", "message": "slow down"}, "type": "error"},
                status=429, headers={"retry-after-ms": "1"},
            )
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self._session.post(self.sim_url + request.path_qs, data=body, headers=headers) as upstream:
            response = web.StreamResponse(status=upstream.status)
            response.content_type = upstream.content_type
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        await self._runner.cleanup()
        assert self._session is not None
        await self._session.close()
