"""collector-config/*.yaml: real component names, complete wiring, and OTLP ports that match what the proxy sends.

No otelcol binary installs offline here (no Debian package, none on PyPI or npm with the components these
configs use), so the configs are checked structurally against the contrib distribution's component list.
test_collector_hop.py runs the proxy through a real OTLP collector (rotel) on the same ports.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "collector-config"
EXPECTED = ["gateway.yaml", "otlp-to-jaeger.yaml", "otlp-to-tempo.yaml", "prometheus.yaml"]
KINDS = ("receivers", "processors", "exporters", "connectors", "extensions")

# Component type names (the part of an id before "/") that the otelcol-contrib distribution ships.
# Source: open-telemetry/opentelemetry-collector-releases, distributions/otelcol-contrib/manifest.yaml
# (otelcol-contrib 0.135.0, modules v0.136.0), which lists each module; the type name of each module is the
# `type:` (or `deprecated_type:`, an alias still accepted) field of that module's metadata.yaml in
# open-telemetry/opentelemetry-collector (core) or open-telemetry/opentelemetry-collector-contrib:
#   receiver/otlpreceiver                         type: otlp
#   processor/batchprocessor                      type: batch
#   processor/memorylimiterprocessor              type: memory_limiter
#   processor/tailsamplingprocessor               type: tail_sampling
#   processor/k8sattributesprocessor              type: k8sattributes
#   exporter/otlpexporter                         type: otlp (renamed otlp_grpc in 0.144, otlp kept as an alias)
#   exporter/otlphttpexporter                     type: otlp_http, deprecated_type: otlphttp
#   exporter/debugexporter                        type: debug
#   exporter/prometheusexporter                   type: prometheus
#   exporter/prometheusremotewriteexporter        type: prometheusremotewrite
#   exporter/loadbalancingexporter                type: loadbalancing
#   connector/spanmetricsconnector                type: span_metrics, deprecated_type: spanmetrics
#   extension/healthcheckextension                type: health_check
# Only names checked this way are listed; add a name here only after checking it the same way.
OTELCOL_CONTRIB_COMPONENTS: dict[str, frozenset[str]] = {
    "receivers": frozenset({"otlp"}),
    "processors": frozenset({"batch", "memory_limiter", "tail_sampling", "k8sattributes"}),
    "exporters": frozenset({
        "otlp", "otlp_grpc", "otlphttp", "otlp_http", "debug", "prometheus", "prometheusremotewrite", "loadbalancing",
    }),
    "connectors": frozenset({"spanmetrics", "span_metrics"}),
    "extensions": frozenset({"health_check"}),
}

# Which signals each component handles (from the same metadata.yaml files' `stability:` sections).
# Connectors: (signal it consumes as an exporter, signal it produces as a receiver).
SIGNALS: dict[str, set[str]] = {
    "otlp": {"traces", "metrics", "logs"},
    "batch": {"traces", "metrics", "logs"},
    "memory_limiter": {"traces", "metrics", "logs"},
    "tail_sampling": {"traces"},
    "k8sattributes": {"traces", "metrics", "logs"},
    "debug": {"traces", "metrics", "logs"},
    "prometheus": {"metrics"},
    "prometheusremotewrite": {"metrics"},
    "loadbalancing": {"traces", "logs"},
}
CONNECTOR_SIGNALS = {"spanmetrics": ("traces", "metrics"), "span_metrics": ("traces", "metrics")}

# What the proxy sends to by default (OTLP/HTTP protobuf) and with OTEL_EXPORTER_OTLP_PROTOCOL=grpc.
PROXY_DEFAULT_HTTP_PORT = 4318
PROXY_DEFAULT_GRPC_PORT = 4317


def component_type(component_id: str) -> str:
    return component_id.split("/", 1)[0]


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((CONFIG_DIR / name).read_text(encoding="utf-8"))


def pipelines(config: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    return config["service"]["pipelines"]


def test_the_four_configs_and_their_readme_sections_exist() -> None:
    assert sorted(p.name for p in CONFIG_DIR.glob("*.yaml")) == EXPECTED
    readme = (CONFIG_DIR / "README.md").read_text(encoding="utf-8")
    for name in EXPECTED:
        assert re.search(rf"^## {re.escape(name)}$", readme, re.MULTILINE), f"README.md has no section '## {name}'"


@pytest.mark.parametrize("name", EXPECTED)
def test_every_component_name_is_a_real_otelcol_contrib_component(name: str) -> None:
    config = load(name)
    assert set(config) <= {*KINDS, "service"}, f"{name}: unknown top-level keys {set(config) - {*KINDS, 'service'}}"
    for kind in KINDS:
        for component_id in config.get(kind) or {}:
            assert component_type(component_id) in OTELCOL_CONTRIB_COMPONENTS[kind], (
                f"{name}: {kind[:-1]} {component_id!r} is not an otelcol-contrib {kind[:-1]} type"
            )


@pytest.mark.parametrize("name", EXPECTED)
def test_every_component_is_defined_and_wired_into_a_pipeline(name: str) -> None:
    config = load(name)
    defined = {kind: set(config.get(kind) or {}) for kind in KINDS}
    used: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for pipeline_id, pipeline in pipelines(config).items():
        assert component_type(pipeline_id) in {"traces", "metrics", "logs"}, f"{name}: pipeline {pipeline_id!r}"
        assert pipeline.get("receivers") and pipeline.get("exporters"), f"{name}: {pipeline_id} needs both ends"
        for role in ("receivers", "processors", "exporters"):
            for component_id in pipeline.get(role) or []:
                kind = "connectors" if component_id in defined["connectors"] else role
                assert component_id in defined[kind], f"{name}: {pipeline_id} uses undefined {role[:-1]} {component_id}"
                used[kind].add(component_id)
    used["extensions"] = set(config["service"].get("extensions") or [])
    assert used["extensions"] <= defined["extensions"], f"{name}: undefined extensions in service.extensions"
    for kind in KINDS:
        assert defined[kind] == used[kind], f"{name}: {kind} defined but not used: {defined[kind] - used[kind]}"


@pytest.mark.parametrize("name", EXPECTED)
def test_components_fit_their_pipeline_signal_and_processor_order(name: str) -> None:
    config = load(name)
    connectors = set(config.get("connectors") or {})
    for pipeline_id, pipeline in pipelines(config).items():
        signal = component_type(pipeline_id)
        for role in ("receivers", "processors", "exporters"):
            for component_id in pipeline.get(role) or []:
                kind = component_type(component_id)
                if component_id in connectors:
                    consumes, produces = CONNECTOR_SIGNALS[kind]
                    expected = consumes if role == "exporters" else produces
                    assert signal == expected, f"{name}: connector {component_id} as {role[:-1]} in {pipeline_id}"
                else:
                    assert signal in SIGNALS[kind], f"{name}: {component_id} does not handle {signal} ({pipeline_id})"
        processors = pipeline.get("processors") or []
        if processors:
            assert processors[0] == "memory_limiter", f"{name}: {pipeline_id} must start with memory_limiter"
        if "batch" in processors:
            assert processors[-1] == "batch", f"{name}: {pipeline_id}: batch goes last"


@pytest.mark.parametrize("name", EXPECTED)
def test_connectors_are_an_exporter_in_one_pipeline_and_a_receiver_in_another(name: str) -> None:
    config = load(name)
    for connector in config.get("connectors") or {}:
        as_exporter = {p for p, spec in pipelines(config).items() if connector in (spec.get("exporters") or [])}
        as_receiver = {p for p, spec in pipelines(config).items() if connector in (spec.get("receivers") or [])}
        assert as_exporter and as_receiver, f"{name}: connector {connector} must bridge two pipelines"
        assert not as_exporter & as_receiver, f"{name}: connector {connector} loops within one pipeline"


@pytest.mark.parametrize("name", EXPECTED)
def test_otlp_receiver_listens_where_the_proxy_sends_by_default(name: str) -> None:
    protocols = load(name)["receivers"]["otlp"]["protocols"]
    assert set(protocols) == {"grpc", "http"}
    host, _, port = protocols["http"]["endpoint"].rpartition(":")
    assert (host, int(port)) == ("0.0.0.0", PROXY_DEFAULT_HTTP_PORT), "OTLP/HTTP must be reachable from other pods"
    host, _, port = protocols["grpc"]["endpoint"].rpartition(":")
    assert (host, int(port)) == ("0.0.0.0", PROXY_DEFAULT_GRPC_PORT)


@pytest.mark.parametrize(
    ("protocol", "port"), [(None, PROXY_DEFAULT_HTTP_PORT), ("grpc", PROXY_DEFAULT_GRPC_PORT)]
)
def test_the_proxy_defaults_are_the_ports_the_configs_receive(
    monkeypatch: pytest.MonkeyPatch, protocol: str | None, port: int
) -> None:
    """The proxy's own telemetry set-up, with no OTEL_EXPORTER_OTLP_ENDPOINT, names these protocol/port pairs."""
    from llmtap.telemetry import configure_from_env

    for variable in [v for v in os.environ if v.startswith("OTEL_")]:
        monkeypatch.delenv(variable)
    if protocol:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    tracer_provider, meter_provider, targets = configure_from_env()
    try:
        expected = f"otlp ({protocol or 'http/protobuf'}) -> http://localhost:{port}"
        assert targets.traces == expected
        assert targets.metrics == expected
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()


def test_gateway_tail_sampling_keeps_errors_slow_calls_cold_starts_and_samples_the_rest() -> None:
    config = load("gateway.yaml")
    policies = {p["name"]: p for p in config["processors"]["tail_sampling"]["policies"]}
    by_type = {p["type"]: p for p in policies.values()}
    assert set(by_type) == {"status_code", "ottl_condition", "boolean_attribute", "probabilistic"}
    assert by_type["status_code"]["status_code"]["status_codes"] == ["ERROR"]
    [condition] = by_type["ottl_condition"]["ottl_condition"]["span"]
    match = re.fullmatch(r'attributes\["llmtap\.ttft"\] > (\d+(?:\.\d+)?)', condition)
    assert match and 0 < float(match.group(1)) <= 10, condition
    assert by_type["boolean_attribute"]["boolean_attribute"] == {"key": "llmtap.cold_start", "value": True}
    assert 0 < by_type["probabilistic"]["probabilistic"]["sampling_percentage"] < 100
    # the span metrics see every span, before sampling
    traces_pipelines = {p: spec for p, spec in pipelines(config).items() if p.startswith("traces")}
    unsampled = [p for p, spec in traces_pipelines.items() if "spanmetrics" in spec["exporters"]]
    assert unsampled and all("tail_sampling" not in (traces_pipelines[p].get("processors") or []) for p in unsampled)
    dimensions = {d["name"] for d in config["connectors"]["spanmetrics"]["dimensions"]}
    assert {"gen_ai.request.model", "gen_ai.provider.name", "error.type", "llmtap.cold_start"} <= dimensions


def test_prometheus_config_has_both_the_scrape_exporter_and_remote_write() -> None:
    config = load("prometheus.yaml")
    [metrics] = [spec for p, spec in pipelines(config).items() if p.startswith("metrics")]
    assert {component_type(e) for e in metrics["exporters"]} == {"prometheus", "prometheusremotewrite"}
    assert config["exporters"]["prometheusremotewrite"]["endpoint"].endswith("/api/v1/write}")
