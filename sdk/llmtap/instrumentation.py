"""One-line instrumentation of the `openai` and `anthropic` SDKs, and instrumented httpx clients.

- `instrument()` patches the SDKs' client base classes (sync and async), so every client created
  afterwards sends its requests through an instrumented transport. An SDK that is not imported yet is
  patched when it is imported (an import hook), so instrumenting costs no import of either SDK.
- `instrument(client, ...)` instruments the given clients (SDK clients or httpx clients) only.
- `uninstrument()` removes the patches and restores the transports of the clients that
  `instrument()` instrumented; `uninstrument(client)` restores just that one.
- `httpx_client()` / `async_httpx_client()` build instrumented clients for the explicit form,
  `OpenAI(http_client=llmtap.httpx_client())`, of the httpx flavour that the installed SDKs use.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import re
import sys
import threading
import weakref
from collections.abc import Callable
from types import ModuleType
from typing import Any

from llmtap.telemetry import Telemetry
from llmtap.transport import (
    TransportOptions,
    flush_pending,
    httpx_modules,
    is_instrumented,
    unwrap_transport,
    wrap_transport,
)

logger = logging.getLogger("llmtap.sdk")

SDKS = ("openai", "anthropic")
_CLIENT_BASES = ("SyncAPIClient", "AsyncAPIClient")

_lock = threading.RLock()
_options: TransportOptions | None = None  # set while instrument() is in effect
_patched: list[tuple[type, Callable[..., None]]] = []  # (class, its original __init__)
_clients: weakref.WeakSet[Any] = weakref.WeakSet()  # httpx clients that instrument() instrumented
_hook: _PostImportHook | None = None


def _make_options(
    telemetry: Telemetry | None,
    tracer_provider: Any,
    meter_provider: Any,
    adopt_spans: bool,
    propagate: bool,
    finish_in_background: bool = True,
) -> TransportOptions:
    if telemetry is None and (tracer_provider is not None or meter_provider is not None):
        from llmtap.sdk_telemetry import sdk_telemetry

        telemetry = sdk_telemetry(tracer_provider, meter_provider)
    return TransportOptions(telemetry, adopt_spans, propagate, finish_in_background)


def instrument(
    *clients: Any,
    telemetry: Telemetry | None = None,
    tracer_provider: Any = None,
    meter_provider: Any = None,
    adopt_spans: bool = True,
    propagate: bool = True,
    finish_in_background: bool = True,
) -> None:
    """Measure every openai/anthropic call in this process (or only those of `clients`).

    telemetry: where spans and metrics go; default: the global OpenTelemetry providers (see configure()),
        or a Telemetry built on `tracer_provider` / `meter_provider` when they are given.
    adopt_spans: when the anthropic SDK (or another GenAI instrumentation) already opened a GenAI span for
        the call, add llmtap's figures to that span instead of opening a second one.
    propagate: inject W3C trace context into LLM requests (so a proxy joins the trace).
    finish_in_background: end calls (token counting, span end, histogram records) on llmtap's finisher
        thread rather than on the application's; `llmtap.flush()` waits for it.
    """
    options = _make_options(telemetry, tracer_provider, meter_provider, adopt_spans, propagate, finish_in_background)
    if clients:
        for client in clients:
            if not instrument_client(client, options=options):
                logger.warning("llmtap: %r is neither an openai/anthropic client nor an httpx client", client)
        return
    global _options, _hook
    with _lock:
        _options = options
        if _hook is not None:
            return  # already in effect: the new options apply to clients created from now on
        _hook = _PostImportHook({f"{sdk}._base_client": _patch_base_module for sdk in SDKS})
        for sdk in SDKS:
            module = sys.modules.get(f"{sdk}._base_client")
            if module is not None:
                _patch_base_module(module)
            elif importlib.util.find_spec(sdk) is None:
                logger.debug("llmtap: %s is not installed; nothing to instrument", sdk)
        sys.meta_path.insert(0, _hook)
    _log_other_instrumentation()


def uninstrument(*clients: Any) -> None:
    """Reverse instrument(): for all clients it instrumented, or for the given ones."""
    if clients:
        for client in clients:
            _restore_httpx_client(_httpx_client_of(client))
        return
    global _options, _hook
    with _lock:
        _options = None
        if _hook is not None:
            try:
                sys.meta_path.remove(_hook)
            except ValueError:
                pass
            _hook = None
        while _patched:
            cls, original = _patched.pop()
            cls.__init__ = original  # type: ignore[misc]
        for http_client in list(_clients):
            _restore_httpx_client(http_client)
        _clients.clear()


def is_active() -> bool:
    return _options is not None


# --- clients ---
def instrument_client(client: Any, *, options: TransportOptions | None = None, **kwargs: Any) -> bool:
    """Instrument one openai/anthropic client, or one httpx/httpx2 client, in place. True if it was one."""
    http_client = _httpx_client_of(client)
    if http_client is None:
        return False
    if options is None:
        options = _make_options(
            kwargs.pop("telemetry", None), kwargs.pop("tracer_provider", None), kwargs.pop("meter_provider", None),
            kwargs.pop("adopt_spans", True), kwargs.pop("propagate", True), kwargs.pop("finish_in_background", True),
        )
    if _wrap_httpx_client(http_client, options):
        _clients.add(http_client)  # an explicit llmtap.httpx_client() is not ours to restore
    return True


def _httpx_client_of(client: Any) -> Any:
    modules = httpx_modules()
    for candidate in (client, getattr(client, "_client", None)):
        for module in modules:
            if isinstance(candidate, (module.Client, module.AsyncClient)):
                return candidate
    return None


def _wrap_httpx_client(http_client: Any, options: TransportOptions) -> bool:
    """Wrap the client's transports in place. True if any was not instrumented yet."""
    wrapped = False

    def wrap(transport: Any) -> Any:
        nonlocal wrapped
        if transport is None or is_instrumented(transport):
            return transport
        wrapped = True
        return wrap_transport(
            transport, telemetry=options.telemetry, adopt_spans=options.adopt_spans, propagate=options.propagate,
            finish_in_background=options.finish_in_background,
        )

    http_client._transport = wrap(http_client._transport)
    mounts = getattr(http_client, "_mounts", None)
    if mounts:
        for pattern, transport in list(mounts.items()):
            mounts[pattern] = wrap(transport)
    return wrapped


def _restore_httpx_client(http_client: Any) -> None:
    if http_client is None:
        return
    http_client._transport = unwrap_transport(http_client._transport)
    mounts = getattr(http_client, "_mounts", None)
    if mounts:
        for pattern, transport in list(mounts.items()):
            mounts[pattern] = unwrap_transport(transport)
    _clients.discard(http_client)


# --- patching the SDKs' client base classes ---
def _patch_base_module(module: ModuleType) -> None:
    with _lock:
        for name in _CLIENT_BASES:
            cls = getattr(module, name, None)
            if cls is None:
                logger.debug("llmtap: %s has no %s; not instrumented", module.__name__, name)
                continue
            if any(patched is cls for patched, _ in _patched):
                continue
            original = cls.__init__
            cls.__init__ = _patched_init(original)
            _patched.append((cls, original))
        logger.debug("llmtap: instrumented the clients of %s", module.__name__.partition(".")[0])


def _patched_init(original: Callable[..., None]) -> Callable[..., None]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        options = _options
        if options is not None:
            try:
                instrument_client(self, options=options)
            except Exception:
                logger.debug("llmtap: could not instrument %r", self, exc_info=True)

    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    __init__.__doc__ = original.__doc__
    return __init__


class _PostImportHook(importlib.abc.MetaPathFinder):
    """Runs a callback when a watched module has been imported (patch an SDK only when it is imported)."""

    def __init__(self, callbacks: dict[str, Callable[[ModuleType], None]]) -> None:
        self.callbacks = callbacks

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        callback = self.callbacks.get(fullname)
        if callback is None:
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module") or "exec_module" in getattr(loader, "__dict__", ()):
            return spec
        exec_module = loader.exec_module

        def exec_and_patch(module: ModuleType) -> None:
            try:
                del loader.exec_module  # once: the loader may serve other modules (a zip importer does)
            except AttributeError:
                pass
            exec_module(module)
            if module.__name__ == fullname:
                try:
                    callback(module)
                except Exception:
                    logger.debug("llmtap: post-import patch of %s failed", fullname, exc_info=True)

        try:
            loader.exec_module = exec_and_patch
        except (AttributeError, TypeError):  # a loader without a __dict__: patch after import instead
            logger.debug("llmtap: cannot hook the import of %s", fullname)
        return spec


def _log_other_instrumentation() -> None:
    from llmtap.coexist import detect_instrumentations

    for found in detect_instrumentations():
        logger.info("llmtap: found %s (%s): %s", found.name, "active" if found.active else "inactive", found.note)


# --- explicit clients ---
_SDK_TIMEOUT = (600.0, 5.0)  # the SDKs' default: 600 s, 5 s to connect
_SDK_LIMITS = (1000, 100)  # max connections, keep-alive connections
_REQUIREMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def sdk_httpx_module() -> ModuleType:
    """The httpx-compatible module that the installed openai/anthropic SDKs are built on (httpx2 for
    openai 3.x and anthropic 2.x), found without importing the SDKs when they are not imported yet."""
    for sdk in SDKS:
        base = sys.modules.get(f"{sdk}._base_client")
        for name in ("httpx2", "httpx"):
            module = getattr(base, name, None) if base is not None else None
            if isinstance(module, ModuleType):
                return module
    import importlib.metadata

    for sdk in SDKS:
        try:
            requires = importlib.metadata.requires(sdk) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        names = {match.group(0).lower() for req in requires if (match := _REQUIREMENT_NAME.match(req))}
        for name in ("httpx2", "httpx"):
            if name in names:
                return importlib.import_module(name)
    try:
        return importlib.import_module("httpx2")
    except ImportError:
        return importlib.import_module("httpx")


def _client(asynchronous: bool, httpx_module: ModuleType | None, options: TransportOptions, kwargs: Any) -> Any:
    module = httpx_module or sdk_httpx_module()
    kwargs.setdefault("timeout", module.Timeout(_SDK_TIMEOUT[0], connect=_SDK_TIMEOUT[1]))
    kwargs.setdefault(
        "limits", module.Limits(max_connections=_SDK_LIMITS[0], max_keepalive_connections=_SDK_LIMITS[1])
    )
    kwargs.setdefault("follow_redirects", True)
    client = (module.AsyncClient if asynchronous else module.Client)(**kwargs)
    _wrap_httpx_client(client, options)
    return client


def httpx_client(
    *,
    telemetry: Telemetry | None = None,
    tracer_provider: Any = None,
    meter_provider: Any = None,
    adopt_spans: bool = True,
    propagate: bool = True,
    finish_in_background: bool = True,
    httpx_module: ModuleType | None = None,
    **client_kwargs: Any,
) -> Any:
    """An instrumented sync client for `OpenAI(http_client=...)` / `Anthropic(http_client=...)`.

    It is an `httpx2.Client` (or `httpx.Client`, whichever the installed SDKs use; `httpx_module`
    chooses) with the SDKs' default timeout, connection limits and redirects; `client_kwargs` go to the
    client (proxy, verify, limits, transport, ...) and its transports are wrapped.
    """
    options = _make_options(telemetry, tracer_provider, meter_provider, adopt_spans, propagate, finish_in_background)
    return _client(False, httpx_module, options, client_kwargs)


def async_httpx_client(
    *,
    telemetry: Telemetry | None = None,
    tracer_provider: Any = None,
    meter_provider: Any = None,
    adopt_spans: bool = True,
    propagate: bool = True,
    finish_in_background: bool = True,
    httpx_module: ModuleType | None = None,
    **client_kwargs: Any,
) -> Any:
    """The async counterpart of `httpx_client()`, for `AsyncOpenAI` / `AsyncAnthropic`."""
    options = _make_options(telemetry, tracer_provider, meter_provider, adopt_spans, propagate, finish_in_background)
    return _client(True, httpx_module, options, client_kwargs)


def flush(timeout: float = 5.0, telemetry: Telemetry | None = None) -> bool:
    """Wait for the calls that llmtap is still ending in the background, then flush the telemetry providers."""
    done = flush_pending(timeout)
    if telemetry is None:
        from llmtap.sdk_telemetry import get_telemetry

        telemetry = get_telemetry()
    telemetry.force_flush(int(timeout * 1000))
    return done


__all__ = [
    "async_httpx_client",
    "flush",
    "httpx_client",
    "instrument",
    "instrument_client",
    "is_active",
    "sdk_httpx_module",
    "uninstrument",
]
