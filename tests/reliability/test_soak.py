"""The soak benchmark at its reduced CI size: 2,000 streamed calls (normal, error 500, cancelled) at concurrency
128 through `llmtap serve` against `llmtap sim`, OTLP to a counting receiver. See benchmarks/soak.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_soak_2000_requests_no_leaks_no_lost_spans(tmp_path: Path) -> None:
    summary_path = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--requests", "2000", "--concurrency", "128",
         "--tokens", "20", "--itl-ms", "2", "--rss-interval", "1", "--json", str(summary_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert summary_path.exists(), result.stdout + result.stderr
    summary = json.loads(summary_path.read_text())
    failed = [name for name, ok in summary["checks"].items() if not ok]
    assert not failed, f"{failed}\n{result.stdout}\n{result.stderr[-3000:]}"
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary["spans"] == summary["requests"] == 2000
    mix = summary["mix"]
    assert mix["error"] > 0 and mix["cancelled"] > 0 and mix["normal"] > 0
    assert summary["spans_by_error_type"] == {"none": mix["normal"], "500": mix["error"], "cancelled": mix["cancelled"]}
    assert summary["requests_active_end"] == 0
    assert summary["rss_growth_from_quarter"] < 0.10
