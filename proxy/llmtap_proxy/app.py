"""The ASGI application: health endpoints, the forwarding catch-all, and lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route as StarletteRoute

from llmtap.telemetry import Telemetry
from llmtap_proxy.config import Settings
from llmtap_proxy.forward import Forwarder, Receive, Scope, Send
from llmtap_proxy.upstream import UpstreamPool

logger = logging.getLogger("llmtap.proxy")


HEALTH_PATHS = frozenset({"/healthz", "/readyz"})


class ProxyApp:
    """Holds the proxy's parts; `asgi` is what the server runs.

    Starlette serves the health endpoints and the lifespan. Every other HTTP request goes straight
    to the forwarder: Starlette's middleware stack wraps each `send`, which costs several
    microseconds per streamed chunk for nothing the forwarder needs.
    """

    def __init__(self, settings: Settings, telemetry: Telemetry | None) -> None:
        self.settings = settings
        self.telemetry = telemetry
        self.pool = UpstreamPool()
        self.forwarder = Forwarder(settings, self.pool, telemetry)
        self.draining = False
        self.starlette = Starlette(
            routes=[
                StarletteRoute("/healthz", self.healthz, methods=["GET"]),
                StarletteRoute("/readyz", self.readyz, methods=["GET"]),
            ],
            lifespan=self.lifespan,
        )

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in HEALTH_PATHS:
            await self.forwarder(scope, receive, send)
        else:
            await self.starlette(scope, receive, send)

    async def healthz(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> JSONResponse:
        if self.draining or not self.pool.ready:
            return JSONResponse({"status": "draining" if self.draining else "starting"}, status_code=503)
        return JSONResponse({"status": "ready", "in_flight": self.forwarder.in_flight})

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        # Calls are parsed and ended on the finisher thread. A short GIL switch interval bounds how long
        # that thread can keep the event loop waiting: 0.5 ms instead of Python's 5 ms, longer than the
        # gap between two chunks of a fast stream.
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(float(os.environ.get("LLMTAP_GIL_SWITCH_INTERVAL", "0.0005")))
        try:
            async with self._serving():
                yield
        finally:
            sys.setswitchinterval(switch_interval)

    @contextlib.asynccontextmanager
    async def _serving(self) -> AsyncIterator[None]:
        await self.pool.start()
        if self.telemetry is not None:
            await asyncio.to_thread(self.telemetry.tokenizer.load)
        # Everything built so far lives as long as the process: move it out of the collector's sight,
        # so that full collections (which run on the event loop's thread) stay short.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Drain what is still in flight (up to the deadline), close upstreams, flush telemetry."""
        self.draining = True
        deadline = asyncio.get_running_loop().time() + self.settings.drain_timeout
        while self.forwarder.in_flight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        await self.pool.close()
        # Telemetry is flushed by whoever owns it (`serve` does it with a bounded, daemon-thread
        # shutdown): a flush here, in a worker thread, would hold the event loop's exit while a dead
        # collector's retries run out.


def create_app(settings: Settings, telemetry: Telemetry | None) -> ProxyApp:
    return ProxyApp(settings, telemetry)
