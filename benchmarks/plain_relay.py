"""A plain HTTP byte relay with no telemetry: what a Python proxy costs before llmtap adds anything.

    python benchmarks/plain_relay.py --upstream http://127.0.0.1:8000 --port 8788

A raw ASGI app on uvicorn (uvloop + httptools), one shared aiohttp ClientSession to the upstream, the
same stack as `llmtap serve` without Starlette, parsing or OpenTelemetry: read the request body, send it
upstream, hand every upstream body chunk to the client as it arrives. Hop-by-hop headers are dropped
both ways; bytes are never decoded (auto_decompress off). benchmarks/overhead.py uses it as the
"relay" target.
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import uvicorn

HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
       b"host", b"content-length"}


def make_app(upstream: str) -> Any:
    state: dict[str, aiohttp.ClientSession] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    state["session"] = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
                        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300))
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await state["session"].close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body, more = [], True
        while more:
            message = await receive()
            body.append(message.get("body", b""))
            more = message.get("more_body", False)
        url = upstream + scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode("latin-1")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k not in HOP]
        async with state["session"].request(scope["method"], url, data=b"".join(body), headers=headers) as resp:
            out = [(k, v) for k, v in resp.raw_headers if k.lower() not in HOP]
            await send({"type": "http.response.start", "status": resp.status, "headers": out})
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:8000 (no trailing slash)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8788)
    args = parser.parse_args()
    uvicorn.run(make_app(args.upstream.rstrip("/")), host=args.host, port=args.port, loop="uvloop",
                http="httptools", lifespan="on", log_level="warning", access_log=False, server_header=False,
                date_header=False, backlog=1024)


if __name__ == "__main__":
    main()
