"""llmtap: OpenTelemetry measurement of LLM calls (TTFT, ITL, TPOT, tokens, cold starts).

The client SDK, in one line::

    import llmtap
    llmtap.instrument()                                   # every openai / anthropic client from now on
    client = OpenAI(http_client=llmtap.httpx_client())    # or explicitly, one client

Names are imported on first use, so that `import llmtap` stays cheap (no OpenTelemetry, no httpx).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "instrument": "llmtap.instrumentation",
    "uninstrument": "llmtap.instrumentation",
    "instrument_client": "llmtap.instrumentation",
    "httpx_client": "llmtap.instrumentation",
    "async_httpx_client": "llmtap.instrumentation",
    "flush": "llmtap.instrumentation",
    "configure": "llmtap.sdk_telemetry",
    "get_telemetry": "llmtap.sdk_telemetry",
    "set_telemetry": "llmtap.sdk_telemetry",
    "wrap_transport": "llmtap.transport",
    "transport_classes": "llmtap.transport",
    "Telemetry": "llmtap.telemetry",
}

if TYPE_CHECKING:
    from llmtap.instrumentation import (
        async_httpx_client,
        flush,
        httpx_client,
        instrument,
        instrument_client,
        uninstrument,
    )
    from llmtap.sdk_telemetry import configure, get_telemetry, set_telemetry
    from llmtap.telemetry import Telemetry
    from llmtap.transport import transport_classes, wrap_transport


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'llmtap' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "Telemetry",
    "__version__",
    "async_httpx_client",
    "configure",
    "flush",
    "get_telemetry",
    "httpx_client",
    "instrument",
    "instrument_client",
    "set_telemetry",
    "transport_classes",
    "uninstrument",
    "wrap_transport",
]
