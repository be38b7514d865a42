"""Inbound auth, redaction and capping of captured content."""

from __future__ import annotations

import re

import aiohttp
import orjson
import pytest
from aiohttp import web

from llmtap_proxy.config import ConfigError, load_settings
from llmtap_proxy.sim import SimServer
from tests.conftest import make_captured, proxy_settings, run_proxy

CHAT = "/v1/chat/completions"


async def test_inbound_auth_rejects_before_anything_goes_upstream() -> None:
    seen: list[dict[str, str]] = []

    async def upstream_handler(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream_handler)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    captured = make_captured()
    settings = proxy_settings(f"http://127.0.0.1:{runner.addresses[0][1]}", auth_keys=("key-one", "key-two"))
    try:
        async with run_proxy(settings, captured.telemetry) as proxy, aiohttp.ClientSession() as session:
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            for headers in ({}, {"x-llmtap-key": "wrong"}, {"x-llmtap-key": "key-one "}):
                async with session.post(proxy.url + CHAT, json=body, headers=headers) as response:
                    assert response.status == 401
                    assert (await response.json())["error"]["type"] == "unauthorized"
            assert seen == []
            async with session.get(proxy.url + "/healthz") as response:
                assert response.status == 200  # probes need no key
            async with session.post(proxy.url + CHAT, json=body, headers={"x-llmtap-key": "key-two"}) as response:
                assert response.status == 200
    finally:
        await runner.cleanup()
    assert len(seen) == 1 and "x-llmtap-key" not in {k.lower() for k in seen[0]}


async def test_redaction_and_cap_apply_before_export(sim: SimServer, monkeypatch) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    captured = make_captured(redact_patterns=[re.compile(r"\b\d{4}-\d{4}-\d{4}-\d{4}\b")], content_max_chars=300)
    async with run_proxy(proxy_settings(sim.url), captured.telemetry) as proxy:
        async with aiohttp.ClientSession() as session:
            body = {"model": "sim-small", "stream": True,
                    "messages": [{"role": "user", "content": "my card is 4111-1111-1111-1111 " + "pad " * 200}]}
            async with session.post(proxy.url + CHAT, json=body) as response:
                assert response.status == 200
                await response.read()
        [span] = await captured.wait_for_genai_spans(1)
    captured_input = span.attributes["gen_ai.input.messages"]
    assert "4111" not in captured_input and "[REDACTED]" in captured_input
    assert len(captured_input) == 300 and captured_input.endswith("...[truncated]")
    output = orjson.loads(span.attributes["gen_ai.output.messages"])  # short enough to stay whole
    assert output[0]["role"] == "assistant"


def test_security_settings_are_validated(tmp_path) -> None:
    env = {"LLMTAP_UPSTREAM": "http://127.0.0.1:1", "LLMTAP_AUTH_KEYS": "a, b", "LLMTAP_REDACT_PATTERNS": r"sk-\w+"}
    settings = load_settings(env=env)
    assert settings.auth_keys == ("a", "b")
    assert settings.redact_patterns[0].pattern == r"sk-\w+"
    with pytest.raises(ConfigError, match=r"redact_patterns\[0\]: invalid regular expression"):
        load_settings(env={**env, "LLMTAP_REDACT_PATTERNS": "("})
    assert load_settings(env={"LLMTAP_UPSTREAM": "http://h"}).host == "127.0.0.1"  # loopback by default
