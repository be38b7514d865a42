"""The `workers` setting (flag > LLMTAP_WORKERS > config file > 1) and the instance id each worker exports under."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmtap.telemetry import configure_from_env
from llmtap_proxy.config import ConfigError, load_settings

UPSTREAM = "http://127.0.0.1:9"


def test_one_worker_by_default() -> None:
    assert load_settings(upstream=UPSTREAM, env={}).workers == 1


def test_flag_over_environment_over_file(tmp_path: Path) -> None:
    config = tmp_path / "llmtap.yaml"
    config.write_text("workers: 3\n")
    assert load_settings(upstream=UPSTREAM, config_file=str(config), env={}).workers == 3
    env = {"LLMTAP_WORKERS": "2"}
    assert load_settings(upstream=UPSTREAM, config_file=str(config), env=env).workers == 2
    assert load_settings(upstream=UPSTREAM, config_file=str(config), env=env, workers=4).workers == 4


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "two", ""])
def test_bad_worker_counts_are_refused(value: str) -> None:
    if value == "":  # an empty variable counts as unset
        assert load_settings(upstream=UPSTREAM, env={"LLMTAP_WORKERS": value}).workers == 1
        return
    with pytest.raises(ConfigError, match=r"^workers: "):
        load_settings(upstream=UPSTREAM, env={"LLMTAP_WORKERS": value})


@pytest.mark.parametrize(
    ("options", "env", "source"),
    [
        ({"metrics_port": 9464}, {}, "metrics_port"),
        ({}, {"LLMTAP_METRICS_PORT": "9464"}, "metrics_port"),
        ({}, {"OTEL_METRICS_EXPORTER": "otlp, Prometheus"}, "OTEL_METRICS_EXPORTER=prometheus"),
    ],
)
def test_several_workers_refuse_a_prometheus_endpoint(options: dict, env: dict, source: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(upstream=UPSTREAM, workers=2, env=env, **options)
    message = str(raised.value)
    assert message.startswith("workers: 2 workers cannot share one Prometheus endpoint")
    assert source in message and "OpenTelemetry Collector" in message


def test_one_worker_keeps_its_prometheus_endpoint() -> None:
    settings = load_settings(upstream=UPSTREAM, metrics_port=9464, env={"LLMTAP_WORKERS": "1"})
    assert settings.metrics_port == 9464 and settings.workers == 1
    assert load_settings(upstream=UPSTREAM, workers=2, env={"OTEL_METRICS_EXPORTER": "otlp"}).workers == 2


def _instance_id(**options: str) -> str:
    tracer_provider, _meter_provider, _targets = configure_from_env("llmtap-test", **options)
    return str(tracer_provider.resource.attributes["service.instance.id"])


def test_instance_id_is_random_per_process_unless_the_user_sets_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    first, second = _instance_id(), _instance_id(instance_suffix="-w1")
    assert first != second and len(first) == 36 and not second.endswith("-w1")  # a fresh UUID each
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=pod-a,deployment.environment.name=x")
    assert _instance_id() == "pod-a"
    assert [_instance_id(instance_suffix=f"-w{i}") for i in range(2)] == ["pod-a-w0", "pod-a-w1"]
