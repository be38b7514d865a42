"""Amazon Bedrock runtime through the real proxy, with boto3's bedrock-runtime client (endpoint_url = the proxy).

Fixture sources:
- Operations, paths, event names and payload shapes: botocore's service model for bedrock-runtime,
  boto/botocore `botocore/data/bedrock-runtime/2023-09-30/service-2.json` (ConverseStreamOutput,
  ResponseStream, TokenUsage, ...). The simulator (llmtap_proxy/sim.py, `_BedrockConverse`,
  `_BedrockInvoke`) serves them in the event-stream framing that botocore's own parser reads here.
- Model-native InvokeModel stream chunks: the Bedrock user guide's model parameter pages,
  https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-anthropic-claude-messages.html
  (Claude Messages events, `amazon-bedrock-invocationMetrics`), .../model-parameters-titan-text.html
  (`outputText`, `totalOutputTextTokenCount`, `completionReason`), .../model-parameters-meta.html
  (`generation`, `prompt_token_count`, `generation_token_count`, `stop_reason`),
  .../model-parameters-mistral-text-completion.html (`outputs[].text`, `stop_reason`) and the Nova
  user guide's "Using the Invoke API" streaming example (`contentBlockDelta` / `metadata` keys).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmtap.providers.base import TEXT, ContentDelta, Finish, UsageReport
from llmtap.providers.bedrock import BedrockAPI, BedrockStreamParser
from llmtap.wire.aws_eventstream import encode_message
from llmtap_proxy.sim import SimServer
from tests.conftest import Captured, RunningProxy, make_captured, proxy_settings, run_proxy
from tests.providers.support import (
    check_byte_exact,
    check_not_streamed,
    check_stream_timing,
    corrupt,
    json_values,
    kinds,
    observe_bytes,
    only_span,
    split,
    truth,
)

boto3 = pytest.importorskip("boto3")
from aiohttp import web  # noqa: E402
from botocore.auth import SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.config import Config  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402
from botocore.exceptions import ClientError, EventStreamError  # noqa: E402

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
CONVERSE = {"role": "user", "content": [{"text": "Count some words for me please"}]}
CLAUDE_BODY = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 40,
               "messages": [{"role": "user", "content": "Count some words for me please"}]}
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


class Bedrock:
    """A boto3 bedrock-runtime client that records the Authorization header it signed and can add headers
    (the simulator's knobs) before signing, so they are covered by the signature like any other header."""

    def __init__(self, url: str) -> None:
        self.client = boto3.client(
            "bedrock-runtime", endpoint_url=url, region_name="us-east-1", aws_access_key_id="AKIDEXAMPLE",
            aws_secret_access_key=SECRET_KEY, config=Config(retries={"total_max_attempts": 1}),
        )
        self.headers: dict[str, str] = {}
        self.sent_authorization: list[str] = []
        self.client.meta.events.register("before-sign.bedrock-runtime.*", self._add_headers)
        self.client.meta.events.register("before-send.bedrock-runtime.*", self._record)

    def _add_headers(self, request, **_kwargs) -> None:
        for name, value in self.headers.items():
            request.headers[name] = value

    def _record(self, request, **_kwargs) -> None:
        self.sent_authorization.append(request.headers["Authorization"].decode()
                                       if isinstance(request.headers["Authorization"], bytes)
                                       else request.headers["Authorization"])

    async def call(self, method: str, **kwargs):
        def run():
            response = getattr(self.client, method)(**kwargs)
            for key in ("stream", "body"):
                stream = response.get(key)
                if stream is not None and hasattr(stream, "__iter__") and not hasattr(stream, "read"):
                    response[key] = list(stream)
            return response

        return await asyncio.to_thread(run)


def request_id(response: dict) -> str:
    return response["ResponseMetadata"]["HTTPHeaders"]["x-sim-request-id"]


@pytest.fixture(scope="module", autouse=True)
async def warm_sdk(sim: SimServer) -> None:
    """Load botocore's service model and parsers once, directly against the simulator."""
    direct = Bedrock(sim.url)
    direct.headers = {"x-sim-tokens": "2", "x-sim-ttft-ms": "0"}
    await direct.call("converse_stream", modelId=MODEL, messages=[CONVERSE])
    await direct.call("invoke_model_with_response_stream", modelId=MODEL, body=json.dumps(CLAUDE_BODY))


async def test_converse_stream_with_boto3(proxy: RunningProxy, captured: Captured, sim: SimServer) -> None:
    bedrock = Bedrock(proxy.url)
    bedrock.headers = {"x-sim-tokens": "6"}
    response = await bedrock.call(
        "converse_stream", modelId=MODEL, messages=[CONVERSE], system=[{"text": "Be brief."}],
        inferenceConfig={"maxTokens": 30, "temperature": 0.4, "topP": 0.8, "stopSequences": ["zzz"]},
    )
    events = response["stream"]
    assert [next(iter(e)) for e in events][:2] == ["messageStart", "contentBlockDelta"]
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
    usage = events[-1]["metadata"]["usage"]
    assert len(text.split()) == 6 == usage["outputTokens"]
    record = truth(sim, request_id(response))
    # SigV4: the signature the client computed is the one the upstream received, untouched.
    [sent] = bedrock.sent_authorization
    assert sent.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert record["authorization_sha256"] == hashlib.sha256(sent.encode()).hexdigest()

    span = await only_span(captured)
    a = span.attributes
    assert span.name == f"chat {MODEL}"
    assert a["gen_ai.provider.name"] == "aws.bedrock" and a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == MODEL and a["gen_ai.request.stream"] is True
    assert a["gen_ai.request.max_tokens"] == 30 and a["gen_ai.request.temperature"] == 0.4
    assert a["gen_ai.request.top_p"] == 0.8 and a["gen_ai.request.stop_sequences"] == ("zzz",)
    assert a["gen_ai.usage.input_tokens"] == usage["inputTokens"] == record["input_tokens"]
    assert a["gen_ai.usage.output_tokens"] == 6
    assert a["gen_ai.response.finish_reasons"] == ("end_turn",)
    check_stream_timing(captured, a, record)
    assert SECRET_KEY not in str(dict(a)) and "AWS4-HMAC" not in str(dict(a))


async def test_event_streams_are_byte_exact(proxy: RunningProxy, captured: Captured, sim: SimServer) -> None:
    path = f"/model/{MODEL.replace(':', '%3A')}"
    body = {"messages": [CONVERSE], "inferenceConfig": {"maxTokens": 4}}
    status, headers, raw, record = await check_byte_exact(proxy.url, sim, path + "/converse-stream", body)
    assert status == 200 and headers["Content-Type"] == "application/vnd.amazon.eventstream"
    assert record["content_chunks"] == 4 and raw.count(b":event-type") == 4 + 4
    a = (await only_span(captured)).attributes
    assert a["gen_ai.response.finish_reasons"] == ("max_tokens",) and a["gen_ai.usage.output_tokens"] == 4
    check_stream_timing(captured, a, record)

    captured.spans_exporter.clear()
    _, _, raw, record = await check_byte_exact(proxy.url, sim, path + "/invoke-with-response-stream", CLAUDE_BODY,
                                               {"x-sim-tokens": "3"})
    a = (await only_span(captured)).attributes
    assert a["gen_ai.usage.output_tokens"] == 3 and a["gen_ai.usage.input_tokens"] == record["input_tokens"]
    assert a["llmtap.content_chunks"] == record["content_chunks"] == 3


async def test_invoke_model_with_response_stream_claude(proxy: RunningProxy, captured: Captured,
                                                        sim: SimServer) -> None:
    bedrock = Bedrock(proxy.url)
    bedrock.headers = {"x-sim-tokens": "5"}
    body = {**CLAUDE_BODY, "temperature": 0.2, "top_k": 7}
    response = await bedrock.call("invoke_model_with_response_stream", modelId=MODEL, body=json.dumps(body))
    chunks = [json.loads(e["chunk"]["bytes"]) for e in response["body"]]
    metrics = chunks[-1]["amazon-bedrock-invocationMetrics"]
    record = truth(sim, request_id(response))
    a = (await only_span(captured)).attributes
    assert a["gen_ai.provider.name"] == "aws.bedrock" and a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.max_tokens"] == 40 and a["gen_ai.request.top_k"] == 7
    assert a["gen_ai.usage.output_tokens"] == metrics["outputTokenCount"] == 5
    assert a["gen_ai.usage.input_tokens"] == metrics["inputTokenCount"] == record["input_tokens"]
    assert a["gen_ai.response.id"] == chunks[0]["message"]["id"] and a["gen_ai.response.model"] == MODEL
    assert a["gen_ai.response.finish_reasons"] == ("end_turn",)
    check_stream_timing(captured, a, record)


async def test_converse_and_invoke_model_not_streamed(proxy: RunningProxy, captured: Captured) -> None:
    bedrock = Bedrock(proxy.url)
    response = await bedrock.call("converse", modelId=MODEL, messages=[CONVERSE], inferenceConfig={"maxTokens": 3})
    assert response["stopReason"] == "max_tokens"
    a = (await only_span(captured)).attributes
    check_not_streamed(captured, a)
    assert a["gen_ai.usage.output_tokens"] == response["usage"]["outputTokens"] == 3
    assert a["gen_ai.usage.input_tokens"] == response["usage"]["inputTokens"]
    assert a["gen_ai.response.finish_reasons"] == ("max_tokens",)

    captured.spans_exporter.clear()
    response = await bedrock.call("invoke_model", modelId=MODEL, body=json.dumps({**CLAUDE_BODY, "max_tokens": 2}))
    message = json.loads(response["body"].read())
    spans = await captured.wait_for_genai_spans(1)
    a = spans[-1].attributes
    assert a["gen_ai.usage.output_tokens"] == message["usage"]["output_tokens"] == 2
    assert a["gen_ai.response.id"] == message["id"] and a["gen_ai.response.finish_reasons"] == ("max_tokens",)


async def test_errors(proxy: RunningProxy, captured: Captured, sim: SimServer) -> None:
    bedrock = Bedrock(proxy.url)
    bedrock.headers = {"x-sim-status": "429"}
    with pytest.raises(ClientError) as raised:
        await bedrock.call("converse", modelId=MODEL, messages=[CONVERSE])
    assert raised.value.response["Error"]["Code"] == "ThrottlingException"
    a = (await only_span(captured)).attributes
    assert a["error.type"] == "429" and a["gen_ai.provider.name"] == "aws.bedrock"

    captured.spans_exporter.clear()
    bedrock.headers = {"x-sim-error-event": "2"}
    with pytest.raises(EventStreamError) as raised:
        await bedrock.call("converse_stream", modelId=MODEL, messages=[CONVERSE])
    assert raised.value.response["Error"]["Code"] == "modelStreamErrorException"
    a = (await only_span(captured)).attributes
    assert a["error.type"] == "modelStreamErrorException" and a["llmtap.content_chunks"] == 2


def signature_is_valid(method: str, url: str, headers, body: bytes) -> bool:
    """Recompute the SigV4 signature of a received request with the client's secret, as AWS would.
    `headers`: case-insensitive (the proxy forwards names lower-cased, as HTTP allows)."""
    authorization = headers["Authorization"]
    signed = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
    request = AWSRequest(method=method, url=url, data=body,
                         headers={name: headers[name] for name in signed if name in headers})
    request.context["timestamp"] = headers["X-Amz-Date"]
    signer = SigV4Auth(Credentials("AKIDEXAMPLE", SECRET_KEY), "bedrock", "us-east-1")
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    return authorization.endswith("Signature=" + expected)


async def test_sigv4_signature_still_verifies_at_the_upstream() -> None:
    """End to end: an upstream that checks SigV4 like AWS accepts what boto3 signed, through the proxy.
    The client signs for the upstream's host (a before-sign hook) and the route keeps the path: see
    docs/providers.md, Bedrock."""
    verdicts: list[bool] = []

    async def upstream(request: web.Request) -> web.Response:
        body = await request.read()
        url = f"http://{request.host}{request.raw_path}"
        verdicts.append(signature_is_valid(request.method, url, request.headers, body))
        return web.json_response({"output": {"message": {"role": "assistant", "content": [{"text": "ok"}]}},
                                  "stopReason": "end_turn", "usage": {"inputTokens": 3, "outputTokens": 1},
                                  "metrics": {"latencyMs": 1}})

    app = web.Application()
    app.router.add_post("/model/{model}/converse", upstream)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    upstream_host = f"127.0.0.1:{runner.addresses[0][1]}"
    captured = make_captured()
    try:
        async with run_proxy(proxy_settings("http://" + upstream_host), captured.telemetry) as proxy:
            bedrock = Bedrock(proxy.url)
            bedrock.headers = {"Host": upstream_host}  # sign for the host the upstream will see
            response = await bedrock.call("converse", modelId=MODEL, messages=[CONVERSE])
            unsigned_for_upstream = Bedrock(proxy.url)  # signed for the proxy's host: the upstream must refuse it
            await unsigned_for_upstream.call("converse", modelId=MODEL, messages=[CONVERSE])
    finally:
        await runner.cleanup()
    assert response["output"]["message"]["content"] == [{"text": "ok"}]
    assert verdicts == [True, False]
    a = (await captured.wait_for_genai_spans(2))[0].attributes
    assert a["gen_ai.provider.name"] == "aws.bedrock" and a["gen_ai.usage.input_tokens"] == 3


def chunk_event(native: dict) -> bytes:
    payload = orjson.dumps({"bytes": base64.b64encode(orjson.dumps(native)).decode(), "p": "abc"})
    return encode_message({":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"},
                          payload)


@pytest.mark.parametrize(("chunks", "text", "finish", "usage"), [
    ([{"outputText": "Hello", "index": 0, "totalOutputTextTokenCount": 2, "completionReason": None,
       "inputTextTokenCount": 5},
      {"outputText": " world", "index": 0, "totalOutputTextTokenCount": 3, "completionReason": "FINISH",
       "amazon-bedrock-invocationMetrics": {"inputTokenCount": 5, "outputTokenCount": 3, "invocationLatency": 420,
                                            "firstByteLatency": 200}}], "Hello world", "FINISH", (5, 3)),
    ([{"generation": " Hello", "prompt_token_count": 10, "generation_token_count": 1, "stop_reason": None},
      {"generation": "!", "prompt_token_count": None, "generation_token_count": 2, "stop_reason": "stop"}],
     " Hello!", "stop", (10, 2)),
    ([{"outputs": [{"text": " Bonjour", "stop_reason": None}]},
      {"outputs": [{"text": ".", "stop_reason": "stop"}],
       "amazon-bedrock-invocationMetrics": {"inputTokenCount": 4, "outputTokenCount": 2}}], " Bonjour.", "stop",
     (4, 2)),
    ([{"messageStart": {"role": "assistant"}},
      {"contentBlockDelta": {"delta": {"text": "Hi"}, "contentBlockIndex": 0}},
      {"contentBlockStop": {"contentBlockIndex": 0}}, {"messageStop": {"stopReason": "end_turn"}},
      {"metadata": {"usage": {"inputTokens": 7, "outputTokens": 1}}}], "Hi", "end_turn", (7, 1)),
])
def test_model_native_stream_chunks(chunks: list[dict], text: str, finish: str, usage: tuple[int, int]) -> None:
    call = observe_bytes("POST", "/model/some.model-v1/invoke-with-response-stream", {}, b"{}",
                         "application/vnd.amazon.eventstream", [chunk_event(c) for c in chunks])
    exchange = call.exchange
    assert exchange.output_text() == text and exchange.finish_reasons == [finish]
    assert (exchange.usage.input_tokens, exchange.usage.output_tokens) == usage
    assert exchange.content_chunks == len([c for c in chunks if "outputText" in c or "generation" in c
                                           or "outputs" in c or "contentBlockDelta" in c])


def test_prompt_cache_counts_as_input() -> None:
    event = encode_message({":event-type": "metadata", ":message-type": "event"}, orjson.dumps(
        {"usage": {"inputTokens": 10, "outputTokens": 5, "cacheReadInputTokens": 100, "cacheWriteInputTokens": 20}}))
    parser = BedrockStreamParser()
    from llmtap.wire import decoder_for

    [item] = [i for e in decoder_for("aws-eventstream").feed(event) for i in parser.on_event(e)]
    assert item == UsageReport(input_tokens=130, output_tokens=5, cache_read_input_tokens=100,
                               cache_creation_input_tokens=20)
    body = orjson.dumps({"results": [{"tokenCount": 4, "outputText": "abcd", "completionReason": "LENGTH"}],
                         "inputTextTokenCount": 3})
    items = BedrockAPI().response_items(BedrockAPI().request_facts("text_completion", b"{}"), body)
    assert kinds(items, ContentDelta) == [ContentDelta("abcd", TEXT)] and kinds(items, Finish) == [Finish("LENGTH")]


BEDROCK_KEYS = ["delta", "text", "toolUse", "input", "reasoningContent", "start", "name", "stopReason", "usage",
                "inputTokens", "outputTokens", "cacheReadInputTokens", "bytes", "message", "contentBlockIndex"]
EVENT_NAMES = ["messageStart", "contentBlockStart", "contentBlockDelta", "contentBlockStop", "messageStop",
               "metadata", "chunk", "throttlingException", "other"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(EVENT_NAMES), json_values(BEDROCK_KEYS), st.booleans()), max_size=5),
       st.integers(0, 3), st.lists(st.integers(0, 3000), max_size=6), st.binary(max_size=48))
def test_fuzz_never_raises_out_of_the_observer(events, corruption, cuts, noise) -> None:
    raw = b""
    for name, value, wrap in events:
        payload = orjson.dumps(value)
        if name == "chunk" and wrap:  # a chunk whose bytes hold arbitrary (possibly Claude-shaped) JSON
            payload = orjson.dumps({"bytes": base64.b64encode(payload).decode()})
        kind = "exception" if name.endswith("Exception") else "event"
        key = ":exception-type" if kind == "exception" else ":event-type"
        raw += encode_message({key: name, ":message-type": kind}, payload)
    raw = corrupt(raw + noise, corruption) if corruption else raw + noise
    path = "/model/anthropic.claude-v2/converse-stream"
    observe_bytes("POST", path, {}, raw[:200], "application/vnd.amazon.eventstream", split(raw, cuts))
    observe_bytes("POST", "/model/m/converse", {}, noise, "application/json", [raw])
