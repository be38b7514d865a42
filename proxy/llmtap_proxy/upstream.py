"""The one shared aiohttp session that carries every upstream request."""

from __future__ import annotations

from types import SimpleNamespace

import aiohttp
from yarl import URL

from llmtap.observer import CallObserver
from llmtap_proxy.config import Route


async def _mark_sent(
    _session: aiohttp.ClientSession, context: SimpleNamespace, _params: aiohttp.TraceRequestHeadersSentParams
) -> None:
    """TTFT counts from here: the request is on the wire (a connection was taken or opened, the headers
    written), not from when the proxy asked for it, which under a burst can be tens of ms earlier."""
    call = context.trace_request_ctx
    if call is not None:
        call.mark_sent()


class UpstreamPool:
    """Keeps a single ClientSession (connection reuse) and a timeout per route.

    Bodies are forwarded as raw bytes: no automatic decompression, no added default headers.
    """

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[int, aiohttp.ClientTimeout] = {}

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
            sent = aiohttp.TraceConfig()
            sent.on_request_headers_sent.append(_mark_sent)
            self._session = aiohttp.ClientSession(
                trace_configs=[sent],
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                timeout=aiohttp.ClientTimeout(total=None),
                cookie_jar=aiohttp.DummyCookieJar(),
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def ready(self) -> bool:
        return self._session is not None and not self._session.closed

    def _timeout(self, route: Route) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(id(route))
        if timeout is None:
            timeout = aiohttp.ClientTimeout(
                total=None,
                connect=route.connect_timeout,
                sock_connect=route.connect_timeout,
                sock_read=route.read_timeout,
            )
            self._timeouts[id(route)] = timeout
        return timeout

    async def request(
        self, route: Route, method: str, url: URL, headers: dict[str, str], body: bytes,
        call: CallObserver | None = None,
    ) -> aiohttp.ClientResponse:
        if self._session is None:
            await self.start()
        assert self._session is not None
        return await self._session.request(
            method,
            url,
            headers=headers,
            data=body if body else None,
            allow_redirects=False,
            timeout=self._timeout(route),
            compress=None,
            auto_decompress=False,
            trace_request_ctx=call,
        )
