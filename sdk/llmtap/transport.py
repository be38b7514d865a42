"""Instrumented httpx / httpx2 transports: the SDK's source of bytes for the measurement core.

An instrumented transport wraps any transport (sync or async) of `httpx` or `httpx2` (the `openai` 3.x
and `anthropic` 2.x SDKs are built on `httpx2`). For a request that a provider module recognises
(`llmtap.providers.detect`), one *attempt* is observed:

1. the span opens as a child of the application's current span (or another instrumentation's GenAI
   span is adopted, see `llmtap.coexist`) and its W3C `traceparent` is injected into the request, so a
   proxy on the way makes its span a child of this one;
2. `mark_sent` just before the request goes to the wrapped transport, the response headers as soon as
   it returns; the request body is parsed then, while the server works on the first token;
3. each body chunk is timestamped as the application reads it, handed over, and only then (when the
   application asks for the next one) given to the parser;
4. the call ends exactly once: at the end of the body, on an error (timeout, broken stream,
   cancellation), or when the body is closed or dropped early (error.type "cancelled"; a stream that
   was closed after its final event, as the openai SDK does after `[DONE]`, is complete, not cancelled).

Requests that are not LLM calls pass through untouched. A telemetry fault never changes what the
application receives: it is counted in llmtap.internal.errors.
"""

from __future__ import annotations

import collections.abc
import logging
import sys
import threading
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from llmtap import semconv
from llmtap.coexist import AdoptedSpan, adoptable_span
from llmtap.finisher import FINISHER
from llmtap.observer import CallObserver
from llmtap.providers import detect
from llmtap.telemetry import Telemetry

logger = logging.getLogger("llmtap.sdk")

_perf_ns = time.perf_counter_ns
RETRY_COUNT_HEADER = "x-stainless-retry-count"  # sent by the openai and anthropic SDKs on every attempt


@dataclass(frozen=True, slots=True)
class TransportOptions:
    telemetry: Telemetry | None = None  # None: the SDK's default Telemetry, looked up per call
    adopt_spans: bool = True  # record into another instrumentation's GenAI span instead of opening one
    propagate: bool = True  # inject W3C trace context into LLM requests
    # End calls (token counting, span, histogram records) on llmtap's finisher thread, off the application's
    # path; an adopted span is always ended in line, before its owner ends it.
    finish_in_background: bool = True


# --- ending calls off the application's path: see llmtap.finisher ---
_finisher = FINISHER


def flush_pending(timeout: float = 5.0) -> bool:
    """Wait until the calls already handed to the finisher thread have ended."""
    return _finisher.flush(timeout)


# --- one observed attempt ---
class _Attempt:
    """One HTTP attempt of an LLM call: the observer plus what the transport knows of the response."""

    __slots__ = (
        "adopted", "background", "body", "call", "chunk", "chunk_t", "flavor", "once", "status", "telemetry",
    )

    def __init__(
        self, call: CallObserver, adopted: AdoptedSpan | None, flavor: _Flavor, body: bytes | None,
        telemetry: Telemetry, background: bool,
    ) -> None:
        self.call = call
        self.adopted = adopted
        self.background = background and adopted is None
        self.flavor = flavor
        self.body = body
        self.telemetry = telemetry
        self.status = 0
        self.chunk: bytes | None = None  # handed to the application, not yet parsed
        self.chunk_t = 0
        self.once = [True]  # list.pop() is atomic: whoever pops it ends the call

    def respond(self, response: Any, t_ns: int, body_cls: type) -> Any:
        """The response headers are in: note them, and wrap the body. Never raises."""
        call = self.call
        try:
            if self.body is not None:
                call.set_request_body(self.body)
                self.body = None
            status = self.status = response.status_code
            call.on_response(status, response.headers, t_ns)
            if status >= 400 and self.adopted is not None:
                self.adopted.silence()
            content = getattr(response, "_content", None)
            if content is not None:  # the body was read already (a mock transport, for one)
                if content:
                    call.on_chunk(content, t_ns)
                self.end_at_eof(t_ns)
                return response
            stream = body_cls(response.stream, self)
            if self.adopted is not None and type(response) is self.flavor.module.Response:
                # Our call must end before the owner's wrapper ends its span: see _body_classes.
                wrapped = self.flavor.Response(
                    status_code=status, headers=response.headers, stream=stream, extensions=response.extensions
                )
                wrapped._llmtap_attempt = self
                return wrapped
            response.stream = stream
            return response
        except Exception:
            self.telemetry.fault("sdk_response")
            if self._claim():
                self._finish(None, t_ns)
            return response

    # --- the ways a call ends; each claims `once` first ---
    def _claim(self) -> bool:
        try:
            self.once.pop()
            return True
        except IndexError:
            return False

    def _flush_chunk(self) -> None:
        chunk = self.chunk
        if chunk is not None:
            self.chunk = None
            self.call.on_chunk(chunk, self.chunk_t)

    def _finish(self, error_type: str | None, t_ns: int) -> None:
        if self.background:
            _finisher.finish(self.call, error_type, t_ns)
        else:
            self.call.finish(error_type, t_ns)

    def end_at_eof(self, t_ns: int) -> None:
        if self._claim():
            self._flush_chunk()
            self._finish(None, t_ns)

    def end_failed(self, exc: BaseException, t_ns: int) -> None:
        if self._claim():
            error_type = self.flavor.error_type(exc)
            if self.adopted is not None and error_type != semconv.ERROR_CANCELLED:
                self.adopted.silence()  # the owner records the failure of the logical call
            self._flush_chunk()
            self._finish(error_type, t_ns)

    def end_closed(self, t_ns: int) -> None:
        """The body was closed before its end was read."""
        if self._claim():
            self._close(t_ns)

    def abandon(self) -> None:
        """The body was dropped (garbage collection). Safe in a finaliser: only queues the call."""
        if self.once and self._claim():
            _finisher.queue.put((_Attempt.end_abandoned, self, _perf_ns()))

    def end_abandoned(self, t_ns: int) -> None:
        self.background = False  # on the finisher thread already
        self._close(t_ns)

    def _close(self, t_ns: int) -> None:
        self._flush_chunk()
        exchange = self.call.exchange
        if self.status >= 400:
            self._finish(None, t_ns)  # error.type is the status
        elif exchange.finish_reasons or exchange.error_type:
            # The final event was read: the SDK stopped at it (openai's Stream does, after [DONE]).
            self._finish(None, self.chunk_t or t_ns)
        else:
            self._finish(semconv.ERROR_CANCELLED, t_ns)


def _begin(request: Any, options: TransportOptions, flavor: _Flavor) -> _Attempt | None:
    """Observe this request if it is an LLM call. Never raises."""
    telemetry = options.telemetry
    try:
        if telemetry is None:
            from llmtap.sdk_telemetry import get_telemetry

            telemetry = get_telemetry()
        url = request.url
        headers = request.headers
        path = url.path
        found = detect(request.method, path, dict(headers.items()))
        if found is None:
            return None
        _finisher.ensure_started()
        api, operation = found
        adopted = None
        if options.adopt_spans:
            owner = adoptable_span()
            if owner is not None:
                adopted = AdoptedSpan(owner)
        attributes = None
        retry = headers.get(RETRY_COUNT_HEADER)
        if adopted is None and retry and retry != "0" and retry.isdigit():
            attributes = {semconv.HTTP_REQUEST_RESEND_COUNT: int(retry)}
        port = url.port or (443 if url.scheme == "https" else 80)
        call = telemetry.observe(
            api, operation, server_address=url.host, server_port=port, observer_name=semconv.OBSERVER_SDK,
            path=path, span=adopted, attributes=attributes,
        )
    except Exception:
        if telemetry is not None:
            telemetry.fault("sdk_observe")
        else:
            logger.debug("llmtap: could not observe a request", exc_info=True)
        return None
    body: bytes | None = None
    try:
        if options.propagate:
            for key, value in call.trace_headers().items():
                headers[key] = value
        body = request.content
    except Exception:  # a streamed upload has no content to read: the call goes on without its facts
        pass
    return _Attempt(call, adopted, flavor, body, telemetry, options.finish_in_background)


# --- the classes, built once for each of httpx and httpx2 ---
class _Flavor:
    """The transport, body and response classes for one httpx-compatible module."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.timeout_errors: tuple[type[BaseException], ...] = (module.TimeoutException,)
        self.connect_errors: tuple[type[BaseException], ...] = (module.ConnectError, module.ProxyError)
        self.stream_errors: tuple[type[BaseException], ...] = (module.NetworkError, module.ProtocolError)
        self.Response, self.SyncBody, self.AsyncBody = _body_classes(module)
        self.Transport, self.AsyncTransport = _transport_classes(module, self)

    def error_type(self, exc: BaseException) -> str:
        asyncio = sys.modules.get("asyncio")  # not imported for it: no asyncio, no CancelledError
        if isinstance(exc, (KeyboardInterrupt, GeneratorExit)) or (
            asyncio is not None and isinstance(exc, asyncio.CancelledError)
        ):
            return semconv.ERROR_CANCELLED
        if isinstance(exc, self.timeout_errors):
            return semconv.ERROR_TIMEOUT
        if isinstance(exc, self.connect_errors):
            return semconv.ERROR_UPSTREAM_UNREACHABLE
        if isinstance(exc, self.stream_errors):
            return semconv.ERROR_UPSTREAM_CLOSED
        return type(exc).__qualname__


def _body_classes(module: ModuleType) -> tuple[type, type, type]:
    class Response(module.Response):  # type: ignore[name-defined,misc]
        """A response that ends the llmtap call before the instrumentation that owns the adopted span ends it.

        Used only when llmtap adopted another instrumentation's span: that instrumentation wraps the body
        outside ours and ends its span when the body is closed (or, for the anthropic SDK, when its
        `stream_observer` hears of it), so ours must be done by then: on close()/aclose(), and through
        the observer of any body wrapper set on the response (see `_end_before_owner`).
        """

        _llmtap_attempt: _Attempt | None = None
        _llmtap_stream: Any = None

        @property  # type: ignore[override]
        def stream(self) -> Any:
            return self._llmtap_stream

        @stream.setter
        def stream(self, value: Any) -> None:
            self._llmtap_stream = value
            attempt = self._llmtap_attempt
            if attempt is not None:
                _end_before_owner(value, attempt)

        def close(self) -> None:
            attempt = self._llmtap_attempt
            if attempt is not None and not self.is_closed:
                attempt.end_closed(_perf_ns())
            super().close()

        async def aclose(self) -> None:
            attempt = self._llmtap_attempt
            if attempt is not None and not self.is_closed:
                attempt.end_closed(_perf_ns())
            await super().aclose()

    class SyncBody(module.SyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, stream: Any, attempt: _Attempt) -> None:
            self._stream = stream
            self._attempt = attempt

        @property
        def elapsed(self) -> Any:
            return getattr(self._stream, "elapsed", None)

        def __iter__(self) -> collections.abc.Iterator[bytes]:
            attempt = self._attempt
            on_chunk = attempt.call.on_chunk
            try:
                for chunk in self._stream:
                    t_ns = _perf_ns()
                    attempt.chunk = chunk
                    attempt.chunk_t = t_ns
                    yield chunk  # the application has it first ...
                    attempt.chunk = None
                    on_chunk(chunk, t_ns)  # ... and it is parsed when the application asks for the next
            except GeneratorExit:
                attempt.abandon()
                raise
            except BaseException as exc:
                attempt.end_failed(exc, _perf_ns())
                raise
            attempt.end_at_eof(_perf_ns())

        def close(self) -> None:
            t_ns = _perf_ns()
            try:
                self._stream.close()
            finally:
                self._attempt.end_closed(t_ns)

        def __del__(self) -> None:
            attempt = getattr(self, "_attempt", None)
            if attempt is not None:
                attempt.abandon()

    class AsyncBody(module.AsyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, stream: Any, attempt: _Attempt) -> None:
            self._stream = stream
            self._attempt = attempt

        @property
        def elapsed(self) -> Any:
            return getattr(self._stream, "elapsed", None)

        async def __aiter__(self) -> collections.abc.AsyncIterator[bytes]:
            attempt = self._attempt
            on_chunk = attempt.call.on_chunk
            chunks = self._stream.__aiter__()
            try:
                async for chunk in chunks:
                    t_ns = _perf_ns()
                    attempt.chunk = chunk
                    attempt.chunk_t = t_ns
                    yield chunk
                    attempt.chunk = None
                    on_chunk(chunk, t_ns)
            except GeneratorExit:
                attempt.abandon()
                raise
            except BaseException as exc:
                attempt.end_failed(exc, _perf_ns())
                raise
            else:
                attempt.end_at_eof(_perf_ns())
            finally:
                if isinstance(chunks, collections.abc.AsyncGenerator):
                    await chunks.aclose()

        async def aclose(self) -> None:
            t_ns = _perf_ns()
            try:
                await self._stream.aclose()
            finally:
                self._attempt.end_closed(t_ns)

        def __del__(self) -> None:
            attempt = getattr(self, "_attempt", None)
            if attempt is not None:
                attempt.abandon()

    return Response, SyncBody, AsyncBody


def _end_before_owner(body: Any, attempt: _Attempt) -> None:
    """Have the observer of an outer body wrapper end our call before it ends its own span.

    The anthropic SDK wraps the body in a stream that carries a `stream_observer`; its `Stream.close()`
    tells that observer (which ends the SDK's span) before it closes the response. Without this, an
    early close would end the adopted span before llmtap could mark it cancelled.
    """
    observer = getattr(body, "stream_observer", None)
    if observer is None or getattr(observer, "_llmtap_hooked", False):
        return
    try:
        original = observer.end

        def end(how: Any, error: BaseException | None = None) -> None:
            attempt.end_closed(_perf_ns())
            original(how, error)

        observer.end = end
        observer._llmtap_hooked = True
    except Exception:  # an observer that takes no attributes: the owner's span may end first
        logger.debug("llmtap: cannot order the end of an adopted span", exc_info=True)


def _transport_classes(module: ModuleType, flavor: _Flavor) -> tuple[type, type]:
    class InstrumentedTransport(module.BaseTransport):  # type: ignore[name-defined,misc]
        """Wraps a sync transport (default: a new HTTPTransport) and observes the LLM calls through it."""

        def __init__(
            self,
            transport: Any = None,
            *,
            telemetry: Telemetry | None = None,
            adopt_spans: bool = True,
            propagate: bool = True,
            finish_in_background: bool = True,
        ) -> None:
            self.transport = transport if transport is not None else module.HTTPTransport()
            self.options = TransportOptions(telemetry, adopt_spans, propagate, finish_in_background)

        def handle_request(self, request: Any) -> Any:
            attempt = _begin(request, self.options, flavor)
            if attempt is None:
                return self.transport.handle_request(request)
            attempt.call.mark_sent(_perf_ns())
            try:
                response = self.transport.handle_request(request)
            except BaseException as exc:
                attempt.end_failed(exc, _perf_ns())
                raise
            return attempt.respond(response, _perf_ns(), flavor.SyncBody)

        def close(self) -> None:
            self.transport.close()

        def __repr__(self) -> str:
            return f"<llmtap {module.__name__} InstrumentedTransport around {self.transport!r}>"

    class AsyncInstrumentedTransport(module.AsyncBaseTransport):  # type: ignore[name-defined,misc]
        """Wraps an async transport (default: a new AsyncHTTPTransport) and observes the LLM calls."""

        def __init__(
            self,
            transport: Any = None,
            *,
            telemetry: Telemetry | None = None,
            adopt_spans: bool = True,
            propagate: bool = True,
            finish_in_background: bool = True,
        ) -> None:
            self.transport = transport if transport is not None else module.AsyncHTTPTransport()
            self.options = TransportOptions(telemetry, adopt_spans, propagate, finish_in_background)

        async def handle_async_request(self, request: Any) -> Any:
            attempt = _begin(request, self.options, flavor)
            if attempt is None:
                return await self.transport.handle_async_request(request)
            attempt.call.mark_sent(_perf_ns())
            try:
                response = await self.transport.handle_async_request(request)
            except BaseException as exc:
                attempt.end_failed(exc, _perf_ns())
                raise
            return attempt.respond(response, _perf_ns(), flavor.AsyncBody)

        async def aclose(self) -> None:
            await self.transport.aclose()

        def __repr__(self) -> str:
            return f"<llmtap {module.__name__} AsyncInstrumentedTransport around {self.transport!r}>"

    return InstrumentedTransport, AsyncInstrumentedTransport


_FLAVORS: dict[str, _Flavor] = {}
_flavor_lock = threading.Lock()


def flavor_for(module: ModuleType) -> _Flavor:
    flavor = _FLAVORS.get(module.__name__)
    if flavor is None:
        with _flavor_lock:
            flavor = _FLAVORS.get(module.__name__)
            if flavor is None:
                flavor = _FLAVORS[module.__name__] = _Flavor(module)
    return flavor


def httpx_modules() -> list[ModuleType]:
    """The httpx-compatible modules already imported (httpx2 first)."""
    return [module for name in ("httpx2", "httpx") if (module := sys.modules.get(name)) is not None]


def transport_classes(module: ModuleType) -> tuple[type, type]:
    """(InstrumentedTransport, AsyncInstrumentedTransport) for `httpx` or `httpx2`."""
    flavor = flavor_for(module)
    return flavor.Transport, flavor.AsyncTransport


def is_instrumented(transport: Any) -> bool:
    return any(
        isinstance(transport, (flavor.Transport, flavor.AsyncTransport)) for flavor in list(_FLAVORS.values())
    )


def _module_of(transport: Any) -> tuple[ModuleType, bool] | None:
    """The httpx-compatible module and sync/async kind of a transport."""
    for module in httpx_modules():
        if isinstance(transport, module.AsyncBaseTransport):
            return module, True
        if isinstance(transport, module.BaseTransport):
            return module, False
    return None


def wrap_transport(
    transport: Any,
    *,
    telemetry: Telemetry | None = None,
    adopt_spans: bool = True,
    propagate: bool = True,
    finish_in_background: bool = True,
    module: ModuleType | None = None,
) -> Any:
    """An instrumented transport around `transport`, of the same module and kind (sync or async).

    A transport that is already instrumented is returned as it is.
    """
    if is_instrumented(transport):
        return transport
    found = _module_of(transport)
    if found is None:
        if module is None:
            raise TypeError(f"not an httpx or httpx2 transport: {transport!r}")
        found = (module, hasattr(transport, "handle_async_request"))
    flavor = flavor_for(found[0])
    cls = flavor.AsyncTransport if found[1] else flavor.Transport
    return cls(
        transport, telemetry=telemetry, adopt_spans=adopt_spans, propagate=propagate,
        finish_in_background=finish_in_background,
    )


def unwrap_transport(transport: Any) -> Any:
    return transport.transport if is_instrumented(transport) else transport


__all__ = [
    "TransportOptions",
    "flavor_for",
    "flush_pending",
    "httpx_modules",
    "is_instrumented",
    "transport_classes",
    "unwrap_transport",
    "wrap_transport",
]
