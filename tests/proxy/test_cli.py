"""The `llmtap` command as users run it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time


def run_cli(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "llmtap_proxy.cli", *args], capture_output=True, text=True, timeout=timeout,
        env=environment,
    )


def test_demo_runs_offline_and_prints_a_table_per_model() -> None:
    started = time.perf_counter()
    result = run_cli("demo", "--requests", "8")
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 30
    out = result.stdout
    for column in ("TTFT p50", "TTFT p99", "ITL p50", "ITL p99", "TPOT", "out tok/s", "errors"):
        assert column in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("sim-")}
    assert set(rows) == {"sim-small", "sim-large"}
    assert rows["sim-small"][1] == "8" and rows["sim-small"][2] == "0"
    # the simulated profiles: sim-small TTFT 40 ms / ITL 15 ms, sim-large TTFT 120 ms / ITL 35 ms
    assert 40 <= float(rows["sim-small"][4]) < 120
    assert 120 <= float(rows["sim-large"][4]) < 250
    assert 14 <= float(rows["sim-small"][6]) < 30
    assert re.search(r"Telemetry: traces: console; metrics: console \(written to .+\)", out)


def test_serve_rejects_a_bad_config_with_a_clear_message(tmp_path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("routes:\n  - prefix: /openai\n    upstream: not-a-url\n")
    result = run_cli("serve", "--config", str(config), timeout=20)
    assert result.returncode == 2
    assert "configuration error: routes[0].upstream" in result.stderr


def test_serve_without_upstream_says_so() -> None:
    result = run_cli("serve", timeout=20)
    assert result.returncode == 2 and "no upstream configured" in result.stderr
