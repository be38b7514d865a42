"""The catch-all forwarding endpoint: the proxy's hot path, written against ASGI directly.

Per chunk it does three things: take a monotonic timestamp, hand the chunk to the client, then give
it to the call's observer. Everything else (parsing the request, counting tokens, emitting
telemetry) happens before the first byte or after the last one.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from llmtap.observer import CallObserver
from llmtap.providers import detect, get_provider, specialize
from llmtap.providers.base import ProviderAPI
from llmtap.providers.openai import OpenAIAPI
from llmtap.telemetry import Telemetry
from llmtap_proxy import errors
from llmtap_proxy.config import Route, Settings
from llmtap_proxy.headers import AUTH_HEADER, client_response_headers, upstream_request_headers
from llmtap_proxy.http1 import UpstreamDisconnected, UpstreamError, UpstreamResponse
from llmtap_proxy.stream_usage import UsageEventRemover, with_stream_usage
from llmtap_proxy.upstream import UpstreamPool

logger = logging.getLogger("llmtap.proxy")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_perf_ns = time.perf_counter_ns


class BodyTooLarge(Exception):
    pass


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError("client disconnected while sending the body")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _request_host(raw_headers: list[tuple[bytes, bytes]]) -> str | None:
    """The Host header's name, lower-cased, without a port (for host-based routes only: the request
    still goes to the route's configured upstream, never to this host)."""
    for name, value in raw_headers:
        if name.lower() == b"host":
            host = value.decode("latin-1").strip().lower()
            if host.startswith("["):  # [ipv6]:port
                return host[1 : host.find("]")] if "]" in host else host
            return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return None


def _declared_length(raw_headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in raw_headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class Forwarder:
    """ASGI app that forwards any request to its route's upstream and observes LLM calls."""

    def __init__(self, settings: Settings, pool: UpstreamPool, telemetry: Telemetry | None) -> None:
        self.settings = settings
        self.pool = pool
        self.telemetry = telemetry
        self.in_flight = 0
        self._auth_keys = [key.encode() for key in settings.auth_keys]
        self._host_routes = any(route.host is not None for route in settings.routes)

    def _authorized(self, raw_headers: list[tuple[bytes, bytes]]) -> bool:
        presented = next((value for name, value in raw_headers if name.lower() == AUTH_HEADER), None)
        if presented is None:
            return False
        # compare against every key, in constant time, so timing says nothing about which matched
        return sum(hmac.compare_digest(presented, key) for key in self._auth_keys) > 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if self._auth_keys and not self._authorized(scope["headers"]):
            await errors.send_error(send, 401, "missing or invalid x-llmtap-key", "unauthorized")
            return
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        path = raw_path.decode("latin-1")
        route = self.settings.route_for(path, _request_host(scope["headers"]) if self._host_routes else None)
        if route is None:
            await errors.send_error(send, 404, f"no route for path {scope['path']!r}", "route_not_found")
            return
        method: str = scope["method"]
        raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
        headers = upstream_request_headers(raw_headers)
        target = route.upstream_target(path)
        call = self._observe(route, method, target, headers)

        self.in_flight += 1
        try:
            await self._handle(scope, receive, send, route, method, target, headers, call)
        finally:
            self.in_flight -= 1
            if call is not None and not call.ending:
                call.finish_soon("internal_error")  # every LLM call yields its span, whatever happened

    def _observe(
        self, route: Route, method: str, target: str, headers: dict[str, str]
    ) -> CallObserver | None:
        if self.telemetry is None:
            return None
        try:
            found: tuple[ProviderAPI, str] | None
            if route.provider is not None:
                api = get_provider(route.provider)
                api = specialize(api, target) if api is not None else None
                operation = api.operation_for(method, target, headers) if api else None
                found = (api, operation) if api is not None and operation is not None else None
            else:
                found = detect(method, target, headers)
            if found is None:
                return None
            return self.telemetry.observe(
                found[0],
                found[1],
                server_address=route.upstream.host,
                server_port=route.upstream.port,
                parent_headers=headers,
                path=target,
            )
        except Exception:
            self.telemetry.fault("observe")
            return None

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: Route,
        method: str,
        target: str,
        headers: dict[str, str],
        call: CallObserver | None,
    ) -> None:
        limit = self.settings.max_body_bytes
        declared = _declared_length(scope["headers"])
        try:
            if declared is not None and declared > limit:
                raise BodyTooLarge
            body = await read_body(receive, limit)
        except BodyTooLarge:
            status, error_type, shape = errors.TOO_LARGE
            if call is not None:
                call.finish_soon(error_type)
            await errors.send_error(send, status, f"request body exceeds the limit of {limit} bytes", shape)
            return
        except asyncio.CancelledError:
            if call is not None:
                call.finish_soon("cancelled")
            raise
        remover: UsageEventRemover | None = None
        upstream_body = body
        if call is not None:
            call.mark_received(_perf_ns())
            headers.update(call.trace_headers())
            if self.settings.inject_stream_usage and isinstance(call.api, OpenAIAPI):
                injected = with_stream_usage(target, body)
                if injected is not None:
                    upstream_body, remover = injected, UsageEventRemover()
        headers.update(route.headers)
        query: bytes = scope.get("query_string", b"")
        url = target + "?" + query.decode("latin-1") if query else target

        task = asyncio.current_task()
        state = {"disconnected": False, "done": False}

        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not state["done"] and task is not None:
                        state["disconnected"] = True
                        task.cancel()
                    return

        watcher = asyncio.ensure_future(watch_disconnect())
        try:
            await self._relay(send, route, method, url, headers, upstream_body, call, remover)
        except asyncio.CancelledError:
            if call is not None:
                call.finish_soon("cancelled")
            if state["disconnected"] and task is not None:
                task.uncancel()
                return
            raise
        finally:
            state["done"] = True
            watcher.cancel()

    async def _relay(
        self,
        send: Send,
        route: Route,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes,
        call: CallObserver | None,
        remover: UsageEventRemover | None = None,
    ) -> None:
        if call is not None:
            call.mark_sent()  # provisional: the pool stamps the moment the request is written
            call.set_request_body(body)  # parsed on the finisher thread, off the path that sends it
        try:
            try:
                response = await self.pool.request(route, method, url, headers, body, call)
            except UpstreamDisconnected as exc:
                if not exc.retryable:
                    raise
                # The upstream closed a pooled keep-alive connection just as we reused it, before
                # sending any response (llama.cpp does this after every stream). Once, on a new one.
                response = await self.pool.request(route, method, url, headers, body, call)
        except TimeoutError:
            status, error_type, shape = errors.TIMEOUT
            if call is not None:
                call.finish_soon(error_type)
            await errors.send_error(
                send, status, f"upstream {route.upstream.origin} timed out before responding", shape
            )
            return
        except (UpstreamError, OSError) as exc:
            status, error_type, shape = errors.UNREACHABLE
            if call is not None:
                call.finish_soon(error_type)
            await errors.send_error(
                send, status, f"upstream {route.upstream.origin} unreachable: {type(exc).__name__}", shape
            )
            return
        except ValueError:  # e.g. a header value the HTTP client refuses to send (control bytes)
            if call is not None:
                call.finish_soon("invalid_request")
            # no detail: the exception text may quote the header value, which may be a secret
            await errors.send_error(
                send, 400, "request cannot be forwarded: a header contains forbidden characters", "invalid_request"
            )
            return

        try:
            if call is not None:
                call.on_response(response.status, response.headers, _perf_ns())
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": client_response_headers(response.raw_headers),
                }
            )
            if response.status >= 400:
                remover = None  # an error body has no usage event to hide
            await self._stream_body(send, response, call, remover)
        finally:
            response.release()

    async def _stream_body(
        self,
        send: Send,
        response: UpstreamResponse,
        call: CallObserver | None,
        remover: UsageEventRemover | None = None,
    ) -> None:
        """Relay the body chunk by chunk. The observer sees every upstream byte, after the client got it;
        with injected usage, the client gets all but the usage event."""
        read = response.read
        tail = b""
        try:
            if call is None:
                while chunk := await read():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            elif remover is None:
                on_chunk = call.on_chunk
                while chunk := await read():
                    t_ns = _perf_ns()
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    on_chunk(chunk, t_ns)
            else:
                on_chunk = call.on_chunk
                while chunk := await read():
                    t_ns = _perf_ns()
                    forward = remover.feed(chunk)
                    if forward:
                        await send({"type": "http.response.body", "body": forward, "more_body": True})
                    on_chunk(chunk, t_ns)
                tail = remover.flush()
        except TimeoutError as exc:
            if call is not None:
                call.finish_soon("timeout")
            raise errors.UpstreamStreamAborted("upstream stalled mid-stream (read timeout)") from exc
        except (UpstreamError, OSError) as exc:
            if call is not None:
                call.finish_soon("upstream_closed")
            raise errors.UpstreamStreamAborted(f"upstream stream broke: {type(exc).__name__}") from exc
        t_end_ns = _perf_ns()
        await send({"type": "http.response.body", "body": tail, "more_body": False})
        if call is not None:
            call.finish_soon(t_ns=t_end_ns)
