"""benchmarks/overhead.py's reference targets and selectors: the plain relay passes stream bytes through, the light
event counter agrees with the full parser, the nginx config is one nginx accepts, --targets/--workloads parse."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import aiohttp
import pytest

from llmtap_proxy.sim import SimServer
from tests.processes import free_port, process

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _module(name: str) -> ModuleType:
    """benchmarks/ is not a package: load a script by path (overhead.py puts benchmarks/ on sys.path itself)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


async def test_plain_relay_passes_stream_bytes_through(sim: SimServer, tmp_path: Path) -> None:
    overhead = _module("overhead")
    port = free_port()
    relay = f"http://127.0.0.1:{port}"
    argv = [sys.executable, str(BENCH / "plain_relay.py"), "--upstream", sim.url, "--port", str(port)]
    async with process(argv, relay + "/healthz", "plain relay", tmp_path / "relay.log"):
        async with aiohttp.ClientSession() as session:
            body = overhead.chat_body(12, seed=7)
            headers = overhead.sim_headers(12, 5, 2)
            direct = await overhead.fetch_raw(session, sim.url + "/v1/chat/completions", body, headers)
            relayed = await overhead.fetch_raw(session, relay + "/v1/chat/completions", body, headers)
            assert overhead.normalise(relayed) == overhead.normalise(direct)
            # The light counter (max and peak workloads) counts what the full parser counts, on split reads too.
            work = overhead.Workload(5, 2, 12)
            full = await overhead.stream_one(session, relay + "/v1/chat/completions", body, work, headers)
            light = await overhead.stream_count(session, relay + "/v1/chat/completions", body, headers)
            assert full.error is None and light.error is None
            assert full.content_chunks == 12
            assert light.events == full.events == direct.count(b"\n\n")


def test_nginx_config_is_accepted_by_nginx(tmp_path: Path) -> None:
    nginx_target = _module("nginx_target")
    conf = nginx_target.write_config(tmp_path, 18999, "http://127.0.0.1:18998")
    text = conf.read_text()
    for directive in ("proxy_buffering off;", "proxy_request_buffering off;", "proxy_http_version 1.1;",
                      'proxy_set_header Connection "";', "keepalive 1024;", "worker_processes 1;",
                      "access_log off;", "client_max_body_size 16m;"):
        assert directive in text
    exe = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if exe is None:
        pytest.skip("nginx is not installed (overhead.py installs it when it runs)")
    argv = nginx_target.nginx_argv(exe, conf)
    test = [a for a in argv if a not in ("-g", "daemon off;")] + ["-t"]
    out = subprocess.run(test, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr


def test_target_and_workload_selectors() -> None:
    overhead = _module("overhead")
    args = overhead.parse_args(["--quick", "--targets", "llmtap", "--workloads", "c64"])
    assert args.targets == ["direct", "llmtap"]  # direct is always measured: "added" needs it
    assert args.workloads == ["c64"]
    assert args.out is None
    args = overhead.parse_args(["--quick", "--concurrency", "1,16"])
    assert args.workloads == ["c1", "c16", "peak", "max", "prompts"]
    assert overhead.parse_args([]).targets == ["direct", "nginx", "relay", "llmtap"]
    for bad in (["--targets", "envoy"], ["--workloads", "c0"], ["--workloads", "soak"]):
        with pytest.raises(SystemExit):
            overhead.parse_args(bad)


def test_prompt_bodies_have_the_intended_size() -> None:
    overhead = _module("overhead")
    body = overhead.chat_body(10, seed=1, prompt=overhead.prompt_text(100_000))
    assert 395_000 < len(body) < 405_000  # ~4 characters per token
