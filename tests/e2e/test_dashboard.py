"""docs/dashboards/llmtap.json against the real thing.

What this proves:
- the dashboard is well-formed Grafana JSON: one Prometheus datasource variable (${DS_PROMETHEUS}) on every
  panel and query, provider/model/cold-start variables, unique ids, panels that don't overlap, and the
  required views (TTFT, ITL and TPOT at p50/p95/p99 per model, tokens/s, errors by type, cold starts,
  in-flight calls, proxy overhead);
- every series name in every PromQL expression (and in the variables' label_values queries) is one that a
  live `llmtap serve --metrics-port` exports after real traffic (streams from OpenAI and Anthropic clients,
  a cold start, an upstream 500), named as the OTel Prometheus exporter renders it, and every label the
  expressions filter or group on is a label of those series;
- with real Prometheus scraping that proxy, every expression parses and returns data (with the Grafana
  variables set to "All", and with one model chosen), and the variables' label_values find our models.

The Prometheus part skips without `prometheus` on PATH, except under CI=true, where it fails.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmtap_proxy.sim import SimServer
from tests.processes import free_port, process

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "dashboards" / "llmtap.json"
OPENAI_MODEL = "dash-gpt"
ANTHROPIC_MODEL = "dash-claude"
# What Grafana substitutes, for running the expressions on Prometheus.
VARIABLES_ALL = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "5m", "$provider": ".*",
                 "$model": ".*", "$cold_start": ".*"}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or",
                   "unless", "inf", "nan", "atan2"}


# --- the dashboard ----------------------------------------------------------------------------------------

def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard: dict) -> list[dict]:
    """Every panel, also those nested in collapsed rows."""
    found: list[dict] = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query target."""
    return [(p["title"], t["expr"]) for p in all_panels(dashboard) for t in p.get("targets", []) if t.get("expr")]


def variable_queries(dashboard: dict) -> list[tuple[str, str, str]]:
    """(variable, series selector, label) of every label_values(...) variable."""
    found = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.fullmatch(r"\s*label_values\((.+),\s*([a-zA-Z_]\w*)\)\s*", query)
        assert match, f"variable {variable['name']}: unexpected query {query!r}"
        found.append((variable["name"], match[1], match[2]))
    return found


def parse_promql(expr: str) -> tuple[set[str], set[str]]:
    """(series names, label names) that an expression refers to. Enough PromQL for dashboards: selectors,
    functions, aggregations with by/without, binary operators, ranges and numbers."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (regexes, Grafana variables)
    labels: set[str] = set()
    for block in re.findall(r"\{([^}]*)\}", text):
        labels.update(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", block))
    grouping = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
    for group in grouping.findall(text):
        labels.update(name.strip() for name in group.split(",") if name.strip())
    text = grouping.sub(" ", text)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][\w:]*", text):
        name = match.group()
        if name.lower() in PROMQL_KEYWORDS or re.match(r"\s*\(", text[match.end():]):
            continue  # a keyword or a function call
        names.add(name)
    return names, labels


def substitute(expr: str, variables: dict[str, str]) -> str:
    for name in sorted(variables, key=len, reverse=True):  # $__rate_interval before $__range ...
        expr = expr.replace(name, variables[name])
    assert "$" not in expr, f"unsubstituted Grafana variable in {expr}"
    return expr


def test_parse_promql_finds_series_and_labels() -> None:
    names, labels = parse_promql(
        'histogram_quantile(0.99, sum by (le, gen_ai_request_model) (rate(a_seconds_bucket{x=~"$m", y!=""}'
        '[$__rate_interval]))) / on (z) (sum(b_total) or vector(0)) > bool 1e3'
    )
    assert names == {"a_seconds_bucket", "b_total"}
    assert labels == {"le", "gen_ai_request_model", "x", "y", "z"}


def test_dashboard_is_well_formed() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"]
    assert dashboard["id"] is None  # importable into any Grafana
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for name in ("provider", "model"):
        assert variables[name]["type"] == "query"
        assert variables[name]["includeAll"] and variables[name]["multi"] and variables[name]["allValue"] == ".*"
    assert {label for _, _, label in variable_queries(dashboard)} == {"gen_ai_provider_name", "gen_ai_request_model"}

    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]

    everything = [expr for _, expr in exprs(dashboard)]

    def quantiles_of(series: str) -> set[str]:
        pattern = re.compile(
            rf"histogram_quantile\((0\.\d+), sum by \(le, gen_ai_request_model\) \(rate\({series}_bucket"
        )
        return {m[1] for expr in everything for m in [pattern.match(expr)] if m}

    for series in ("gen_ai_server_time_to_first_token_seconds", "gen_ai_client_operation_time_per_output_chunk_seconds",
                   "gen_ai_server_time_per_output_token_seconds"):
        assert quantiles_of(series) >= {"0.5", "0.95", "0.99"}, f"{series}: p50/p95/p99 per model"
    joined = "\n".join(everything)
    for needed in ("gen_ai_client_token_usage_sum{", 'gen_ai_token_type="output"',
                   "llmtap_usage_normalized_tokens_sum{", "by (error_type", "llmtap_cold_starts_total",
                   "llmtap_requests_active", "llmtap_proxy_overhead_seconds"):
        assert needed in joined, needed
    for _title, expr in exprs(dashboard):
        assert "$__rate_interval" in expr or "rate(" not in expr, f"use $__rate_interval: {expr}"


# --- a live proxy -----------------------------------------------------------------------------------------

@dataclass
class LiveProxy:
    url: str
    sim_url: str
    metrics_url: str
    metrics_port: int
    calls: int = 0


async def traffic(proxy: LiveProxy) -> None:
    """Streams from both API families, a cold start per model (on the first round), and an upstream 500."""
    chat = {"model": OPENAI_MODEL, "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "hello there"}]}
    messages = {"model": ANTHROPIC_MODEL, "stream": True, "max_tokens": 32,
                "messages": [{"role": "user", "content": "hello there"}]}
    # chunks 25 ms apart, so that even a busy proxy reads them apart and every call has ITL samples
    headers = {"x-sim-ttft-ms": "20", "x-sim-itl-ms": "25", "x-sim-tokens": "5"}
    calls = [("/v1/chat/completions", chat, {}), ("/v1/chat/completions", chat, {}),
             ("/v1/messages", messages, {"anthropic-version": "2023-06-01"}),
             ("/v1/messages", messages, {"anthropic-version": "2023-06-01"}),
             ("/v1/chat/completions", chat, {"x-sim-status": "500"})]
    async with aiohttp.ClientSession() as session:
        for path, body, extra in calls:
            async with session.post(proxy.url + path, json=body, headers={**headers, **extra}) as response:
                await response.read()
                assert response.status == int(extra.get("x-sim-status", 200)), path
            proxy.calls += 1


@pytest.fixture(scope="module")
async def live(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveProxy]:
    """`llmtap serve --metrics-port` as a real process, after one round of traffic."""
    logs = tmp_path_factory.mktemp("dashboard")
    port, metrics_port = free_port(), free_port()
    args = [sys.executable, "-m", "llmtap_proxy.cli", "serve", "--upstream", sim.url, "--port", str(port),
            "--metrics-port", str(metrics_port)]
    url = f"http://127.0.0.1:{port}"
    async with process(args, url + "/readyz", "llmtap serve", logs / "serve.log", OTEL_TRACES_EXPORTER="none",
                       OTEL_METRICS_EXPORTER="none", LLMTAP_LOG_LEVEL="warning"):
        proxy = LiveProxy(url, sim.url, f"http://127.0.0.1:{metrics_port}/metrics", metrics_port)
        await traffic(proxy)
        yield proxy


async def recorded_calls(proxy: LiveProxy) -> float:
    async with aiohttp.ClientSession() as session, session.get(proxy.metrics_url) as response:
        text = await response.text()
    return sum(
        sample.value for family in text_string_to_metric_families(text) for sample in family.samples
        if sample.name == "gen_ai_client_operation_duration_seconds_count"
    )


async def wait_recorded(proxy: LiveProxy, timeout: float = 10.0) -> None:
    """The proxy records a call when its upstream body ends, which can be after the client has its answer."""
    deadline = time.monotonic() + timeout
    while (count := await recorded_calls(proxy)) < proxy.calls:
        assert time.monotonic() < deadline, f"the proxy recorded {count} calls of {proxy.calls}"
        await asyncio.sleep(0.05)


async def scrape(proxy: LiveProxy) -> dict[str, set[str]]:
    """Series name -> its label names, from the proxy's Prometheus endpoint."""
    async with aiohttp.ClientSession() as session, session.get(proxy.metrics_url) as response:
        assert response.status == 200
        text = await response.text()
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


async def test_every_dashboard_series_is_exported_by_a_live_proxy(live: LiveProxy) -> None:
    dashboard = load_dashboard()
    await wait_recorded(live)
    exported = await scrape(live)
    queries = exprs(dashboard) + [(f"variable {name}", selector) for name, selector, _ in variable_queries(dashboard)]
    assert len(queries) > 20
    missing, bad_labels, used = [], [], set()
    for title, expr in queries:
        names, labels = parse_promql(expr)
        assert names, f"{title}: no series in {expr}"
        used |= names
        missing += [f"{title}: {name}" for name in sorted(names - exported.keys())]
        known = set().union(*(exported.get(name, set()) for name in names))
        bad_labels += [f"{title}: {label}" for label in sorted(labels - known) if names <= exported.keys()]
    assert not missing, "series the proxy does not export:\n" + "\n".join(missing)
    assert not bad_labels, "labels those series don't have:\n" + "\n".join(bad_labels)
    # and the dashboard covers what the proxy exports (the fault counter shows up only after a fault)
    families = {re.sub(r"_(bucket|count|sum|total)$", "", name) for name in used}
    for family in ("gen_ai_client_operation_duration_seconds", "gen_ai_server_time_to_first_token_seconds",
                   "gen_ai_client_operation_time_per_output_chunk_seconds",
                   "gen_ai_server_time_per_output_token_seconds", "gen_ai_client_token_usage",
                   "llmtap_usage_normalized_tokens", "llmtap_requests_active", "llmtap_cold_starts",
                   "llmtap_proxy_overhead_seconds"):
        assert family in families, family


# --- real Prometheus --------------------------------------------------------------------------------------

def prometheus_binary() -> str:
    path = shutil.which("prometheus") or ("/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None)
    if path:
        return path
    message = "prometheus is not installed (apt-get install prometheus)"
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(message + "; CI must run this test")
    pytest.skip(message)


async def test_every_dashboard_query_runs_on_real_prometheus(live: LiveProxy, tmp_path: Path) -> None:
    binary = prometheus_binary()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: llmtap\n    scrape_interval: 1s\n    scrape_timeout: 900ms\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{live.metrics_port}']\n"
    )
    url = f"http://127.0.0.1:{free_port()}"
    args = [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={url.removeprefix('http://')}", "--log.level=warn",
            f"--web.console.templates={tmp_path}", f"--web.console.libraries={tmp_path}"]
    dashboard = load_dashboard()
    async with process(args, url + "/-/ready", "prometheus", tmp_path / "prometheus.log"), \
            aiohttp.ClientSession() as session:

        async def query(promql: str) -> dict:
            async with session.get(url + "/api/v1/query", params={"query": promql}) as response:
                return await response.json()

        async def scalar(promql: str) -> float | None:
            result = (await query(promql))["data"]["result"]
            return float(result[0]["value"][1]) if result else None

        async def wait_for(promql: str, expected: float, timeout: float = 15.0) -> None:
            deadline = time.monotonic() + timeout
            while (value := await scalar(promql)) != expected:
                assert time.monotonic() < deadline, f"{promql} = {value}, expected {expected}"
                await asyncio.sleep(0.2)

        requests = "sum(gen_ai_client_operation_duration_seconds_count)"
        await wait_for(requests, live.calls)  # the first scrape (Prometheus hands out targets every 5 s)
        await traffic(live)  # rate() now sees an increase in every histogram
        await wait_for(requests, live.calls)

        failures = []
        chosen = {**VARIABLES_ALL, "$model": OPENAI_MODEL}
        for title, expr in exprs(dashboard):
            for variables in (VARIABLES_ALL, chosen):
                promql = substitute(expr, variables)
                body = await query(promql)
                if body.get("status") != "success":
                    failures.append(f"{title}: {promql}: {body.get('error')}")
                    continue
                result = body["data"]["result"]
                values = [float(r["value"][1]) for r in result]
                if not any(math.isfinite(v) for v in values):
                    failures.append(f"{title}: {promql}: no finite value in {result}")
                models = {r["metric"].get("gen_ai_request_model") for r in result} - {None}
                if variables is chosen and "$model" in expr and not models <= {OPENAI_MODEL}:
                    failures.append(f"{title}: $model={OPENAI_MODEL} still shows {models}")
        assert not failures, "\n".join(failures)

        for name, selector, label in variable_queries(dashboard):
            params = {"match[]": substitute(selector, VARIABLES_ALL)}
            async with session.get(f"{url}/api/v1/label/{label}/values", params=params) as response:
                body = await response.json()
            assert body["status"] == "success", body
            expected = {"provider": {"openai", "anthropic"}, "model": {OPENAI_MODEL, ANTHROPIC_MODEL}}[name]
            assert set(body["data"]) == expected, (name, body["data"])
