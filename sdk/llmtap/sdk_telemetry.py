"""The SDK's Telemetry: the application's own OpenTelemetry set-up when it has one, else `configure()`.

The default Telemetry is built on first use from the *global* tracer and meter providers. When the
application has not set them yet, these are OpenTelemetry's proxy providers, which forward to the real
ones as soon as the application sets them; so instrumenting before configuring OpenTelemetry works.
"""

from __future__ import annotations

import logging
import threading

from opentelemetry import metrics, trace

from llmtap import semconv
from llmtap.telemetry import Telemetry, configure_from_env

logger = logging.getLogger("llmtap.sdk")

_lock = threading.Lock()
_default: Telemetry | None = None


def sdk_telemetry(tracer_provider: object | None = None, meter_provider: object | None = None) -> Telemetry:
    """A Telemetry for in-process observation (spans marked llmtap.observer = "sdk")."""
    telemetry = Telemetry(tracer_provider, meter_provider, observer_name=semconv.OBSERVER_SDK)  # type: ignore[arg-type]
    _preload_tokenizer(telemetry)
    return telemetry


def get_telemetry() -> Telemetry:
    """The default Telemetry of the SDK, built on first use from the global providers."""
    global _default
    telemetry = _default
    if telemetry is None:
        with _lock:
            if _default is None:
                _default = sdk_telemetry()
            telemetry = _default
    return telemetry


def set_telemetry(telemetry: Telemetry | None) -> None:
    """Replace the default Telemetry (None: rebuild it from the global providers on next use)."""
    global _default
    with _lock:
        _default = telemetry


def has_tracer_provider() -> bool:
    """Whether the application (or anything) has set a global TracerProvider."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def has_meter_provider() -> bool:
    provider = metrics.get_meter_provider()
    return type(provider).__name__ not in ("_ProxyMeterProvider", "NoOpMeterProvider")


def configure(service_name: str = "llmtap-sdk") -> Telemetry:
    """Set up OpenTelemetry from the standard OTEL_* variables, where the application has not.

    A global TracerProvider or MeterProvider that the application already set is kept as it is; only a
    missing one is built (OTLP over http/protobuf by default; OTEL_TRACES_EXPORTER, OTEL_METRICS_EXPORTER,
    OTEL_EXPORTER_OTLP_*, OTEL_SERVICE_NAME, ... as usual) and set globally. Returns the default Telemetry.
    """
    need_traces, need_metrics = not has_tracer_provider(), not has_meter_provider()
    if need_traces or need_metrics:
        tracer_provider, meter_provider, targets = configure_from_env(service_name)
        if need_traces:
            trace.set_tracer_provider(tracer_provider)
        else:
            tracer_provider.shutdown()
        if need_metrics:
            metrics.set_meter_provider(meter_provider)
        else:
            meter_provider.shutdown()
        logger.info(
            "llmtap configured OpenTelemetry: traces %s, metrics %s",
            targets.traces if need_traces else "(the application's)",
            targets.metrics if need_metrics else "(the application's)",
        )
    return get_telemetry()


def _preload_tokenizer(telemetry: Telemetry) -> None:
    """Load the reference tokenizer off the application's thread, so that the first call doesn't pay it."""
    load = getattr(telemetry.tokenizer, "load", None)
    if load is not None:
        threading.Thread(target=load, name="llmtap-tokenizer", daemon=True).start()


__all__ = ["configure", "get_telemetry", "has_meter_provider", "has_tracer_provider", "sdk_telemetry", "set_telemetry"]
