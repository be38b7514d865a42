"""Running the proxy under uvicorn: fast loop and parser when installed, graceful shutdown, clean logs."""

from __future__ import annotations

import importlib.util
import logging
import signal
import socket

import uvicorn

from llmtap.telemetry import Telemetry, TelemetryTargets, configure_from_env
from llmtap.tokens import ReferenceTokenizer
from llmtap_proxy.app import ProxyApp
from llmtap_proxy.config import Settings
from llmtap_proxy.errors import UpstreamStreamAborted

logger = logging.getLogger("llmtap.proxy")


class _AbortedStreamFilter(logging.Filter):
    """A broken upstream stream is reported once as a warning, not as an ASGI traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, UpstreamStreamAborted):
            logger.warning("aborted client stream: %s", exc)
            return False
        return True


def uvicorn_config(app: ProxyApp, settings: Settings, **overrides: object) -> uvicorn.Config:
    options: dict[str, object] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
        "lifespan": "on",
        "interface": "asgi3",
        "timeout_graceful_shutdown": settings.drain_timeout,
        "server_header": False,
        "date_header": False,
        "access_log": False,
        "log_level": "info",
        # uvicorn's X-Forwarded-* middleware wraps every request; the proxy never reads the client address
        "proxy_headers": False,
    }
    options.update(overrides)
    logging.getLogger("uvicorn.error").addFilter(_AbortedStreamFilter())
    return uvicorn.Config(app.asgi, **options)  # type: ignore[arg-type]


def build_telemetry(
    settings: Settings, service_name: str = "llmtap-proxy", instance_suffix: str = ""
) -> tuple[Telemetry, TelemetryTargets]:
    tracer_provider, meter_provider, targets = configure_from_env(
        service_name, metrics_port=settings.metrics_port, metrics_host=settings.host,
        telemetry_file=settings.telemetry_file, instance_suffix=instance_suffix,
    )
    telemetry = Telemetry(
        tracer_provider,
        meter_provider,
        cold_start_idle_s=settings.cold_start_idle,
        tokenizer=ReferenceTokenizer(settings.reference_tokenizer),
        content_max_chars=settings.capture_max_chars,
        redact_patterns=settings.redact_patterns,
        finish_in_background=True,
    )
    return telemetry, targets


def serve(settings: Settings) -> int:
    """Blocking: run until SIGTERM/SIGINT, then drain and flush. Returns the exit status.

    With `settings.workers` > 1, this process only supervises: llmtap_proxy.supervisor binds the socket
    and runs `serve_worker` in that many child processes."""
    if settings.workers > 1:
        from llmtap_proxy.supervisor import supervise

        return supervise(settings)
    serve_worker(settings)
    return 0


def serve_worker(
    settings: Settings, sockets: list[socket.socket] | None = None, worker_index: int | None = None
) -> None:
    """One proxy process: its own telemetry, upstream pool and event loop. Alone, it binds host:port
    itself; as worker `worker_index` of a supervisor, it serves the listening `sockets` it was given."""
    suffix = "" if worker_index is None else f"-w{worker_index}"
    telemetry, targets = build_telemetry(settings, instance_suffix=suffix)
    app = ProxyApp(settings, telemetry)
    config = uvicorn_config(app, settings)
    if worker_index is None:  # a supervisor logs the routes once for all its workers
        for route in settings.routes:
            logger.info("route %s -> %s%s", route.prefix, route.upstream.origin, route.upstream.base_path)
        logger.info("telemetry: traces %s; metrics %s", targets.traces, targets.metrics)
    else:
        instance = telemetry.tracer_provider.resource.attributes.get("service.instance.id")
        logger.info("telemetry: traces %s; metrics %s; service.instance.id %s", targets.traces, targets.metrics,
                    instance)
    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal under the handlers that were in place
    # before it started. With these, that re-raise lands here and we flush and exit 0 ourselves.
    for handled in (signal.SIGTERM, signal.SIGINT):
        signal.signal(handled, lambda *_: None)
    try:
        uvicorn.Server(config).run(sockets=sockets)
    finally:
        telemetry.shutdown()
        targets.close()
