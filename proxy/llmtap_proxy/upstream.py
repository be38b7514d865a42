"""The pool of upstream connections that carries every forwarded request."""

from __future__ import annotations

from llmtap.observer import CallObserver
from llmtap_proxy.config import Route
from llmtap_proxy.http1 import Http1Pool, UpstreamResponse


class UpstreamPool:
    """Keep-alive connections to every route's upstream, with the route's timeouts.

    Bodies are forwarded as raw bytes: no decompression, no added default headers.
    """

    def __init__(self) -> None:
        self._pool: Http1Pool | None = None

    async def start(self) -> None:
        if self._pool is None:
            self._pool = Http1Pool()

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    @property
    def ready(self) -> bool:
        return self._pool is not None and not self._pool.closed

    async def request(
        self, route: Route, method: str, target: str, headers: dict[str, str], body: bytes,
        call: CallObserver | None = None,
    ) -> UpstreamResponse:
        """`target`: the origin-relative path and query. TTFT counts from the moment the request is
        written (a connection taken or opened), not from when the proxy asked: under a burst those
        differ by tens of ms."""
        if self._pool is None:
            await self.start()
        assert self._pool is not None
        upstream = route.upstream
        return await self._pool.request(
            upstream.scheme, upstream.host, upstream.port, method, target, headers, body,
            connect_timeout=route.connect_timeout, read_timeout=route.read_timeout,
            on_send=call.mark_sent if call is not None else None,
        )
