"""A closed-loop load generator for the accuracy suite, run as its own process.

The client runs outside the test process so that it does not share the proxy's GIL: with both in one
process, a busy client thread can hold the GIL for a whole switch interval (5 ms) while a chunk waits
at the proxy, and the measured error would be the test's, not the proxy's.

stdin: one JSON object {"url": ..., "concurrency": C, "requests": [{"body": {...}, "headers": {...}}, ...]}.
C workers take the requests in order, each sending its next one as soon as the previous has ended.
stdout: one JSON object {"results": [...]}, one result per request, in request order: the status, the
x-sim-request-id header, the content text and content events the client saw, the usage, and the
client's own perf_counter() times (send, first content, end), which share the clock of the other
processes on this host.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import aiohttp
import orjson


async def _one(session: aiohttp.ClientSession, url: str, request: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {"status": None, "sim_id": None, "text": "", "events": 0, "usage": None,
                              "error": None}
    parts: list[str] = []
    buffer = b""
    sent = time.perf_counter()
    first = None
    try:
        async with session.post(url, data=orjson.dumps(request["body"]),
                                headers={"content-type": "application/json", **request.get("headers", {})}) as resp:
            result["status"] = resp.status
            result["sim_id"] = resp.headers.get("x-sim-request-id")
            async for chunk in resp.content.iter_any():
                buffer += chunk
                *events, buffer = buffer.split(b"\n\n")
                for event in events:
                    if not event.startswith(b"data: ") or event == b"data: [DONE]":
                        continue
                    data = orjson.loads(event[6:])
                    if data.get("usage"):
                        result["usage"] = data["usage"]
                    for choice in data.get("choices") or ():
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            if first is None:
                                first = time.perf_counter()
                            parts.append(content)
                            result["events"] += 1
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    result.update(text="".join(parts), t_sent=sent, t_first=first, t_end=time.perf_counter())
    return result


async def run(spec: dict[str, Any]) -> list[dict[str, Any]]:
    url, requests = spec["url"], spec["requests"]
    results: list[dict[str, Any] | None] = [None] * len(requests)
    next_index = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def worker() -> None:
            nonlocal next_index
            while next_index < len(requests):
                index = next_index
                next_index += 1
                results[index] = await _one(session, url, requests[index])

        await asyncio.gather(*(worker() for _ in range(spec["concurrency"])))
    return [r for r in results if r is not None]


def main() -> None:
    spec = orjson.loads(sys.stdin.buffer.read())
    try:
        import uvloop

        results = uvloop.run(run(spec))
    except ImportError:
        results = asyncio.run(run(spec))
    sys.stdout.buffer.write(orjson.dumps({"results": results}))


if __name__ == "__main__":
    main()
