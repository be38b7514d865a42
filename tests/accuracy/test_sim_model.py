"""The simulator's performance model (llmtap_proxy.sim_model) and the ground truth it adds to each record."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from llmtap_proxy.sim import SimProfile, SimServer, start_sim
from llmtap_proxy.sim_model import (
    BUILTIN_MODELS,
    ModelSpec,
    ModelState,
    load_models,
    reported_tokens,
    words_for_limit,
)

MODELS = {
    "m-batch": ModelSpec("m-batch", base_ms=5, prefill_tps=1000, itl_ms=4, output_tokens=6, max_batch=64,
                         batch_knee=2, batch_alpha=1.0, tokens_per_word=1.5),
    "m-queue": ModelSpec("m-queue", base_ms=2, prefill_tps=100_000, itl_ms=3, output_tokens=4, max_batch=1,
                         batch_knee=1, batch_alpha=0.0),
    "m-cold": ModelSpec("m-cold", base_ms=1, prefill_tps=100_000, itl_ms=2, output_tokens=2, cold_start_ms=60,
                        idle_s=0.25),
    "m-chunks": ModelSpec("m-chunks", base_ms=1, itl_ms=2, output_tokens=10, tokens_per_chunk=4, jitter_ms=3),
}


def test_model_arithmetic() -> None:
    spec = ModelSpec("x", base_ms=10, prefill_tps=2000, itl_ms=20, batch_knee=8, batch_alpha=0.5,
                     tokens_per_chunk=2, tokens_per_word=1.25)
    assert spec.prefill_s(400) == pytest.approx(0.010 + 0.2)
    assert [spec.itl_factor(n) for n in (1, 8, 16, 24)] == [1.0, 1.0, 1.5, 2.0]
    assert spec.itl_s(16) == pytest.approx(0.030)
    assert spec.decode_tps(1) == pytest.approx(2 * 1.25 / 0.020)  # provider tokens per second, alone
    assert [reported_tokens(w, 1.3) for w in (0, 1, 2, 5, 10)] == [0, 1, 3, 7, 13]  # half up: 2.6 -> 3, 6.5 -> 7
    assert reported_tokens(17, 1.0) == 17
    for ratio in (0.85, 1.0, 1.15, 1.3, 2.0):
        for limit in range(0, 40):
            words = words_for_limit(limit, ratio)
            assert reported_tokens(words, ratio) <= limit < reported_tokens(words + 1, ratio) or ratio == 1.0
    assert words_for_limit(13, 1.3) == 10
    with pytest.raises(ValueError, match="prefill_tps"):
        ModelSpec("bad", prefill_tps=0)
    with pytest.raises(ValueError, match="max_batch"):
        ModelSpec("bad", max_batch=0)


def test_builtin_models_differ() -> None:
    specs = list(BUILTIN_MODELS.values())
    assert len(specs) >= 4
    assert len({s.tokens_per_word for s in specs}) >= 4  # normalisation has something to show
    assert any(s.tokens_per_chunk > 1 for s in specs) and any(s.max_batch == 1 for s in specs)
    assert BUILTIN_MODELS["sim-large"].tokens_per_word == 1.3
    assert "sim-small" not in BUILTIN_MODELS  # the default profile's name keeps its plain behaviour


def test_load_models_inline_file_and_errors(tmp_path: Path) -> None:
    models = load_models('{"sim-large": {"idle_s": 1}, "mine": {"itl_ms": 3}}')
    assert models["sim-large"].idle_s == 1 and models["sim-large"].tokens_per_word == 1.3  # the rest kept
    assert models["mine"].itl_ms == 3 and models["mine"].prefill_tps == ModelSpec("d").prefill_tps
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"other": {"max_batch": 2}}))
    assert load_models(str(path))["other"].max_batch == 2
    assert load_models("") == BUILTIN_MODELS
    for bad, message in (('{"x": {"nope": 1}}', "unknown fields"), ("[1]", "JSON object"), ("{x", "not valid JSON"),
                         ('{"x": {"itl_ms": -1}}', "itl_ms"), (str(tmp_path / "missing.json"), "cannot read")):
        with pytest.raises(ValueError, match=message):
            load_models(bad)


def test_model_state_cold_starts_and_loads() -> None:
    state = ModelState(ModelSpec("s", cold_start_ms=100, idle_s=10))
    assert state.arrive(0.0) == (True, 0.1)  # the first request loads the model
    assert state.arrive(0.05) == (False, 0.1)  # a request during the load waits for the same load
    state.end(0.3)
    state.end(0.3)
    assert state.arrive(5.0) == (False, 5.0)  # idle 4.7 s < 10 s: warm
    assert state.arrive(20.0) == (False, 20.0)  # something is in flight: never idle
    state.end(20.5)
    state.end(20.5)
    assert state.arrive(31.0) == (True, 31.1)  # idle 10.5 s: cold again
    fresh = ModelState(ModelSpec("t"))
    fresh.touch(0.0)  # a request with explicit timing knobs: counts as activity, no load
    fresh.end(0.1)
    assert fresh.arrive(1.0) == (False, 1.0)


# --- the simulator with named models ----------------------------------------------------------------

@pytest_asyncio.fixture(scope="module")
async def sim() -> AsyncIterator[SimServer]:
    server = await start_sim(profile=SimProfile(ttft_ms=7, itl_ms=3, output_tokens=3), models=MODELS)
    yield server
    await server.close()


@pytest_asyncio.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def chat(server: SimServer, http: aiohttp.ClientSession, model: str, *, words: int = 10, stream: bool = True,
               headers: dict[str, str] | None = None, **extra: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    body = {"model": model, "messages": [{"role": "user", "content": " ".join(["w"] * words)}], "stream": stream,
            "stream_options": {"include_usage": True}, **extra}
    async with http.post(server.url + "/v1/chat/completions", json=body, headers=headers or {}) as resp:
        raw = await resp.read()
        request_id = resp.headers["x-sim-request-id"]
    usage = {}
    for line in raw.decode().splitlines():
        if line.startswith("data: {") and '"usage":{' in line:
            usage = json.loads(line[6:])["usage"]
    if not stream:
        usage = json.loads(raw)["usage"]
    record = server.request_record(request_id)
    assert record is not None
    return record, usage


async def test_ttft_is_base_plus_prefill_and_tokens_use_the_ratio(sim: SimServer, http: aiohttp.ClientSession) -> None:
    rec, usage = await chat(sim, http, "m-batch", words=40)
    assert rec["sim_model"] == "m-batch" and rec["input_words"] == 40 and rec["input_tokens"] == 60
    assert rec["prefill_s"] == pytest.approx(0.005 + 60 / 1000)
    assert rec["expected_ttft_s"] == pytest.approx(rec["prefill_s"]) and rec["queue_s"] == 0
    assert rec["cold_start"] and rec["load_s"] == 0  # the model's first request; it has no load delay
    assert 0 <= rec["ttft_s"] - rec["expected_ttft_s"] < 0.02
    assert rec["output_words"] == 6 and rec["output_tokens"] == 9 == usage["completion_tokens"]
    assert usage["prompt_tokens"] == 60
    assert all(t >= e for t, e in zip(rec["chunk_times_s"], rec["expected_chunk_times_s"], strict=True))


async def test_itl_grows_with_the_decoding_batch(sim: SimServer, http: aiohttp.ClientSession) -> None:
    alone, _ = await chat(sim, http, "m-batch", words=1)
    gaps = [b - a for a, b in itertools.pairwise(alone["expected_chunk_times_s"])]
    assert gaps == pytest.approx([0.004] * 5)
    together = await asyncio.gather(*(chat(sim, http, "m-batch", words=1, sim={"tokens": 30}) for _ in range(6)))
    late = [rec for rec, _ in together]
    assert max(rec["decoding_max"] for rec in late) == 6
    # knee 2, alpha 1: with 6 decoding each step takes 4 ms x (1 + (6 - 2) / 2) = 12 ms
    steady = [b - a for rec in late for a, b in itertools.pairwise(rec["expected_chunk_times_s"][5:16])]
    assert min(steady) == pytest.approx(0.012)


async def test_queueing_beyond_max_batch(sim: SimServer, http: aiohttp.ClientSession) -> None:
    records = [rec for rec, _ in await asyncio.gather(*(chat(sim, http, "m-queue") for _ in range(3)))]
    records.sort(key=lambda r: r["queue_s"])
    assert records[0]["queue_s"] == 0 and 0.005 < records[1]["queue_s"] < records[2]["queue_s"]
    for rec in records:  # the model's TTFT includes the wait for the slot
        assert rec["expected_ttft_s"] == pytest.approx(rec["queue_s"] + rec["prefill_s"], abs=1e-3)
        assert max(r["concurrency_at_arrival"] for r in records) == 3


async def test_cold_start_and_idle(sim: SimServer, http: aiohttp.ClientSession) -> None:
    first, _ = await chat(sim, http, "m-cold")
    second, _ = await chat(sim, http, "m-cold")
    await asyncio.sleep(0.35)
    third, _ = await chat(sim, http, "m-cold")
    assert [r["cold_start"] for r in (first, second, third)] == [True, False, True]
    assert first["load_s"] == pytest.approx(0.06) and second["load_s"] == 0
    assert first["ttft_s"] >= first["expected_ttft_s"] >= 0.06


async def test_chunks_jitter_and_explicit_knobs(sim: SimServer, http: aiohttp.ClientSession) -> None:
    rec, _ = await chat(sim, http, "m-chunks", seed=3)
    assert rec["content_chunks"] == 3 and rec["tokens_per_chunk"] == 4  # 10 words, 4 per chunk
    expected = rec["expected_chunk_times_s"]
    assert expected == sorted(expected) and max(expected) > rec["prefill_s"] + 2 * 0.002
    again, _ = await chat(sim, http, "m-chunks", seed=3)
    assert [round(b - a, 9) for a, b in itertools.pairwise(expected)] == [
        round(b - a, 9) for a, b in itertools.pairwise(again["expected_chunk_times_s"])]
    # explicit knobs win over the model: fixed TTFT, fixed ITL, no batching; the tokenizer ratio still applies
    rec, usage = await chat(sim, http, "m-batch", headers={"x-sim-ttft-ms": "11", "x-sim-itl-ms": "2"})
    assert rec["sim_model"] == "m-batch" and rec["prefill_s"] == 0
    assert rec["expected_chunk_times_s"] == pytest.approx([0.011 + 0.002 * i for i in range(6)])
    assert usage["completion_tokens"] == 9


async def test_unknown_model_keeps_the_profile(sim: SimServer, http: aiohttp.ClientSession) -> None:
    rec, usage = await chat(sim, http, "whatever", words=5)
    assert rec["sim_model"] is None and rec["tokens_per_word"] == 1.0 and not rec["cold_start"]
    assert rec["expected_chunk_times_s"] == pytest.approx([0.007, 0.010, 0.013])
    assert usage == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


async def test_max_tokens_caps_reported_tokens_and_non_streamed(sim: SimServer, http: aiohttp.ClientSession) -> None:
    rec, usage = await chat(sim, http, "m-batch", stream=False, max_tokens=7)
    assert rec["output_words"] == 4 and usage["completion_tokens"] == 6  # 4 words x 1.5; 5 would be 8 > 7
    assert rec["decoding_at_first_token"] >= 1 and rec["status"] == "ok"
    assert rec["ttft_s"] >= rec["expected_ttft_s"] >= rec["prefill_s"] + 3 * 0.004


async def test_disconnect_releases_the_batch_slot(sim: SimServer, http: aiohttp.ClientSession) -> None:
    resp = await http.post(sim.url + "/v1/chat/completions", json={
        "model": "m-queue", "stream": True, "messages": [], "sim": {"tokens": 1000}})
    await resp.content.readany()
    resp.close()
    await asyncio.sleep(0.05)
    rec, _ = await chat(sim, http, "m-queue")
    assert rec["queue_s"] == 0
    async with http.get(sim.url + "/_sim/stats") as stats:
        models = (await stats.json())["models"]
    assert models["m-queue"] == {"in_flight": 0, "admitted": 0, "decoding": 0, "loaded": True, "queued": 0}


async def test_model_and_record_endpoints(sim: SimServer, http: aiohttp.ClientSession) -> None:
    async with http.get(sim.url + "/_sim/models") as resp:
        body = await resp.json()
    assert [m["name"] for m in body["models"]] == list(MODELS)
    assert body["models"][0]["decode_tps_alone"] == pytest.approx(1.5 / 0.004)
    assert body["default_profile"]["ttft_ms"] == 7
    async with http.get(sim.url + "/v1/models") as resp:
        assert [m["id"] for m in (await resp.json())["data"]] == ["sim-small", *MODELS]
    async with http.get(sim.url + "/_sim/requests?after=2") as resp:
        records = (await resp.json())["requests"]
    assert records and records[0]["seq"] == 3 and all("expected_ttft_s" in r for r in records)
    async with http.get(sim.url + "/_sim/requests?after=x") as resp:
        assert resp.status == 400
