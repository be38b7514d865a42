"""Proxy settings: flags, LLMTAP_* environment variables and a YAML routes file, validated at start-up.

Precedence: command-line flag > environment variable > config file > default.

A route maps a path prefix to one upstream. The prefix is stripped before forwarding, so with
`prefix: /openai` and `upstream: https://api.openai.com`, `/openai/v1/chat/completions` goes to
`https://api.openai.com/v1/chat/completions`. The proxy forwards only to configured upstreams.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 600.0
DEFAULT_DRAIN_TIMEOUT_S = 30.0

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ROUTE_KEYS = {"prefix", "host", "upstream", "provider", "headers", "connect_timeout", "read_timeout"}
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_TOP_KEYS = {
    "host", "port", "upstream", "routes", "max_body_bytes", "connect_timeout", "read_timeout",
    "drain_timeout", "cold_start_idle", "reference_tokenizer", "metrics_port", "inject_stream_usage",
    "auth_keys", "capture_max_chars", "redact_patterns", "telemetry_file", "workers",
}


class ConfigError(ValueError):
    """A bad setting. The message names the offending key."""


@dataclass(slots=True)
class Upstream:
    scheme: str
    host: str
    port: int
    base_path: str  # no trailing slash

    @classmethod
    def parse(cls, url: str, where: str) -> Upstream:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{where}: upstream must be an http(s) URL with a host, got {url!r}")
        if parts.query or parts.fragment:
            raise ConfigError(f"{where}: upstream URL must not have a query or fragment: {url!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise ConfigError(f"{where}: bad port in upstream {url!r}") from exc
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(slots=True)
class Route:
    prefix: str
    upstream: Upstream
    provider: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S
    read_timeout: float = DEFAULT_READ_TIMEOUT_S
    host: str | None = None  # match only requests whose Host header names this host (any port)

    def upstream_target(self, raw_path: str) -> str:
        """The upstream origin-relative target for a request path that this route matched."""
        rest = raw_path[len(self.prefix):] if self.prefix != "/" else raw_path
        if rest and not rest.startswith("/"):
            rest = "/" + rest
        return self.upstream.base_path + (rest or "/")

    def matches(self, raw_path: str, request_host: str | None = None) -> bool:
        if self.host is not None and self.host != request_host:
            return False
        if self.prefix == "/":
            return True
        return raw_path == self.prefix or raw_path.startswith(self.prefix + "/")


@dataclass(slots=True)
class Settings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    routes: list[Route] = field(default_factory=list)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT_S
    cold_start_idle: float = 300.0
    reference_tokenizer: str | None = None
    metrics_port: int | None = None  # Prometheus scrape endpoint; None = off
    inject_stream_usage: bool = False  # ask OpenAI-style streams for usage; hide it from clients that didn't
    auth_keys: tuple[str, ...] = ()  # when set, clients must send one in x-llmtap-key
    capture_max_chars: int = 64 * 1024  # cap of captured prompt/completion JSON (opt-in capture only)
    redact_patterns: list[re.Pattern[str]] = field(default_factory=list)  # applied before export
    telemetry_file: str | None = None  # OTLP JSON-lines file for spans and metrics (llmtap report reads it)
    workers: int = 1  # processes sharing the listening socket (llmtap_proxy.supervisor when > 1)

    def route_for(self, raw_path: str, request_host: str | None = None) -> Route | None:
        """The route for a request: host-specific routes first, then the longest matching prefix.
        `request_host` is the Host header's name, lower-cased, without the port."""
        for route in self.routes:
            if route.matches(raw_path, request_host):
                return route
        return None


def _number(value: Any, where: str, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: expected a number, got {value!r}") from exc
    if number < minimum:
        raise ConfigError(f"{where}: must be >= {minimum}, got {value!r}")
    return number


def _string_list(value: Any, where: str, separator: str) -> tuple[str, ...]:
    """A list from YAML, or a separated string from the environment."""
    if isinstance(value, str):
        value = value.split(separator)
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{where}: expected a list of strings")
    return tuple(item.strip() for item in value if item.strip())


def _regex(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{where}: invalid regular expression {pattern!r}: {exc}") from exc


def _boolean(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


def _expand_env(value: str, where: str, env: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return env[name]

    return _ENV_REFERENCE.sub(replace, value)


def _parse_route(raw: Any, index: int, defaults: dict[str, float], env: Mapping[str, str]) -> Route:
    where = f"routes[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with 'prefix' and 'upstream'")
    unknown = set(raw) - _ROUTE_KEYS
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key (allowed: {sorted(_ROUTE_KEYS)})")
    prefix = raw.get("prefix", "/")
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise ConfigError(f"{where}.prefix: must be a path starting with '/', got {prefix!r}")
    prefix = prefix.rstrip("/") or "/"
    if "upstream" not in raw or not isinstance(raw["upstream"], str):
        raise ConfigError(f"{where}.upstream: required, an http(s) URL")
    upstream = Upstream.parse(raw["upstream"], f"{where}.upstream")
    host = raw.get("host")
    if host is not None and (not isinstance(host, str) or not _HOSTNAME.match(host)):
        raise ConfigError(f"{where}.host: must be a host name such as api.example.com, got {host!r}")
    provider = raw.get("provider")
    if provider is not None:
        from llmtap.providers import get_provider

        if not isinstance(provider, str) or get_provider(provider) is None:
            raise ConfigError(f"{where}.provider: unknown provider {provider!r}")
    headers = raw.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(k, str) for k in headers):
        raise ConfigError(f"{where}.headers: expected a mapping of header name to value")
    clean_headers: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(value, (str, int, float)) or any(c in f"{name}{value}" for c in "\r\n\0"):
            raise ConfigError(f"{where}.headers.{name}: value must be a single-line string")
        clean_headers[name.lower()] = _expand_env(str(value), f"{where}.headers.{name}", env)
    return Route(
        prefix=prefix,
        host=host.lower() if host else None,
        upstream=upstream,
        provider=provider,
        headers=clean_headers,
        connect_timeout=_number(
            raw.get("connect_timeout", defaults["connect_timeout"]), f"{where}.connect_timeout", minimum=0.001
        ),
        read_timeout=_number(
            raw.get("read_timeout", defaults["read_timeout"]), f"{where}.read_timeout", minimum=0.001
        ),
    )


def _check_prometheus_single_worker(settings: Settings, env: Mapping[str, str]) -> None:
    """Each worker is a process with its own metric state: one Prometheus port cannot serve them all, and a
    scrape that reached one worker would show only that worker's counters, looking complete."""
    if settings.metrics_port is not None:
        source = "metrics_port (--metrics-port, LLMTAP_METRICS_PORT)"
    elif "prometheus" in [name.strip().lower() for name in env.get("OTEL_METRICS_EXPORTER", "").split(",")]:
        source = "OTEL_METRICS_EXPORTER=prometheus"
    else:
        return
    raise ConfigError(
        f"workers: {settings.workers} workers cannot share one Prometheus endpoint ({source}); each worker "
        "holds its own metrics. Export OTLP to an OpenTelemetry Collector and let Prometheus scrape the "
        "Collector, or run single-worker processes (more replicas), each with its own metrics port. "
        "See docs/deploy.md, 'Workers and sizing'."
    )


def load_settings(
    *,
    upstream: str | None = None,
    host: str | None = None,
    port: int | None = None,
    config_file: str | None = None,
    metrics_port: int | None = None,
    cold_start_idle: float | None = None,
    inject_stream_usage: bool | None = None,
    telemetry_file: str | None = None,
    workers: int | None = None,
    env: dict[str, str] | None = None,
) -> Settings:
    """Merge flags (the arguments), LLMTAP_* variables and the YAML file into validated Settings."""
    env = dict(os.environ) if env is None else env
    config_file = config_file or env.get("LLMTAP_CONFIG")
    raw: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"config file {config_file}: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {config_file}: invalid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {config_file}: the top level must be a mapping")
        unknown = set(loaded) - _TOP_KEYS
        if unknown:
            raise ConfigError(f"{sorted(unknown)[0]}: unknown key (allowed: {sorted(_TOP_KEYS)})")
        raw = loaded

    def pick(flag: Any, variable: str, key: str, default: Any) -> Any:
        if flag is not None:
            return flag
        if env.get(variable):
            return env[variable]
        return raw.get(key, default)

    settings = Settings()
    settings.host = str(pick(host, "LLMTAP_HOST", "host", DEFAULT_HOST))
    port_value = pick(port, "LLMTAP_PORT", "port", DEFAULT_PORT)
    settings.port = int(_number(port_value, "port"))
    if not 0 <= settings.port <= 65535:
        raise ConfigError(f"port: must be 0-65535, got {port_value!r}")
    settings.max_body_bytes = int(
        _number(pick(None, "LLMTAP_MAX_BODY_BYTES", "max_body_bytes", DEFAULT_MAX_BODY_BYTES), "max_body_bytes")
    )
    settings.drain_timeout = _number(
        pick(None, "LLMTAP_DRAIN_TIMEOUT", "drain_timeout", DEFAULT_DRAIN_TIMEOUT_S), "drain_timeout"
    )
    settings.cold_start_idle = _number(
        pick(cold_start_idle, "LLMTAP_COLD_START_IDLE", "cold_start_idle", 300.0), "cold_start_idle"
    )
    settings.inject_stream_usage = _boolean(
        pick(inject_stream_usage, "LLMTAP_INJECT_STREAM_USAGE", "inject_stream_usage", False), "inject_stream_usage"
    )
    settings.reference_tokenizer = pick(None, "LLMTAP_REFERENCE_TOKENIZER", "reference_tokenizer", None)
    telemetry_file_value = pick(telemetry_file, "LLMTAP_TELEMETRY_FILE", "telemetry_file", None)
    settings.telemetry_file = str(telemetry_file_value) if telemetry_file_value else None
    settings.auth_keys = _string_list(pick(None, "LLMTAP_AUTH_KEYS", "auth_keys", []), "auth_keys", ",")
    settings.capture_max_chars = int(
        _number(pick(None, "LLMTAP_CAPTURE_MAX_CHARS", "capture_max_chars", settings.capture_max_chars),
                "capture_max_chars", minimum=1)
    )
    patterns = _string_list(pick(None, "LLMTAP_REDACT_PATTERNS", "redact_patterns", []), "redact_patterns", "\n")
    settings.redact_patterns = [_regex(pattern, f"redact_patterns[{i}]") for i, pattern in enumerate(patterns)]
    metrics_value = pick(metrics_port, "LLMTAP_METRICS_PORT", "metrics_port", None)
    if metrics_value is not None:
        settings.metrics_port = int(_number(metrics_value, "metrics_port"))
        if not 0 <= settings.metrics_port <= 65535:
            raise ConfigError(f"metrics_port: must be 0-65535, got {metrics_value!r}")
    workers_value = pick(workers, "LLMTAP_WORKERS", "workers", 1)
    workers_number = _number(workers_value, "workers", minimum=1)
    if workers_number != int(workers_number):
        raise ConfigError(f"workers: expected a whole number, got {workers_value!r}")
    settings.workers = int(workers_number)
    if settings.workers > 1:
        _check_prometheus_single_worker(settings, env)
    defaults = {
        "connect_timeout": _number(
            pick(None, "LLMTAP_CONNECT_TIMEOUT", "connect_timeout", DEFAULT_CONNECT_TIMEOUT_S),
            "connect_timeout", minimum=0.001,
        ),
        "read_timeout": _number(
            pick(None, "LLMTAP_READ_TIMEOUT", "read_timeout", DEFAULT_READ_TIMEOUT_S),
            "read_timeout", minimum=0.001,
        ),
    }

    routes_raw = raw.get("routes") or []
    if not isinstance(routes_raw, list):
        raise ConfigError("routes: expected a list of {prefix, upstream, ...}")
    routes = [_parse_route(item, i, defaults, env) for i, item in enumerate(routes_raw)]
    default_upstream = pick(upstream, "LLMTAP_UPSTREAM", "upstream", None)
    if default_upstream:
        routes.append(_parse_route({"prefix": "/", "upstream": default_upstream}, len(routes), defaults, env))
    if not routes:
        raise ConfigError("upstream: no upstream configured (use --upstream URL, LLMTAP_UPSTREAM or a config file)")
    keys = [(route.host, route.prefix) for route in routes]
    duplicate = next((key for key in keys if keys.count(key) > 1), None)
    if duplicate is not None:
        where = f" for host {duplicate[0]!r}" if duplicate[0] else ""
        raise ConfigError(f"routes: prefix {duplicate[1]!r} is declared twice{where}")
    # host-specific routes first, then longest prefix first
    settings.routes = sorted(routes, key=lambda route: (route.host is None, -len(route.prefix)))
    return settings
