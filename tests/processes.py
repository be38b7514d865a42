"""Real processes for tests: free loopback ports, readiness polling, clean stops."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(log: Path, limit: int = 4000) -> str:
    return log.read_bytes()[-limit:].decode(errors="replace") if log.exists() else ""


async def wait_http_ok(url: str, what: str, timeout: float, child: subprocess.Popen | None = None,
                       log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if child is not None and child.poll() is not None:
                raise AssertionError(f"{what} exited with {child.returncode}:\n{log_tail(log) if log else ''}")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise AssertionError(f"{what} was not ready at {url} within {timeout} s:\n{log_tail(log) if log else ''}")


def stop(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(10)


@contextlib.asynccontextmanager
async def process(args: list[str], ready_url: str, what: str, log: Path, **env: str) -> AsyncIterator[None]:
    """A real process, logging to `log` (a pipe could fill up and block it); ready when `ready_url` answers 200."""
    with log.open("wb") as out:
        child = subprocess.Popen(args, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    try:
        await wait_http_ok(ready_url, what, 30, child, log)
        yield
    finally:
        stop(child)


@contextlib.asynccontextmanager
async def local_http_server(
    routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]], method: str = "POST",
    **runner_options: Any,
) -> AsyncIterator[str]:
    """A real aiohttp server on 127.0.0.1 answering `method` at these paths (an OTLP/HTTP receiver, or an
    upstream with `{"/{tail:.*}": handler}` and method "*"); yields its base URL."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    for path, handler in routes.items():
        app.router.add_route(method, path, handler)
    runner = web.AppRunner(app, handle_signals=False, **runner_options)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def refuses_connections(session: aiohttp.ClientSession, url: str) -> bool:
    """True when a health probe to `url` cannot connect (a stopping server has closed its listener)."""
    try:
        async with session.get(url + "/healthz", timeout=aiohttp.ClientTimeout(total=1)) as probe:
            await probe.read()
    except (aiohttp.ClientError, TimeoutError):
        return True
    return False
