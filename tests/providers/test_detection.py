"""Which API a request belongs to, from its method, path and headers only; and provider names."""

from __future__ import annotations

import pytest

from llmtap.providers import PROVIDERS, detect, get_provider, specialize
from llmtap.providers.gemini import GeminiAPI

CASES = [
    # (method, path, headers, provider, operation)
    ("POST", "/v1beta/models/gemini-2.0-flash:streamGenerateContent", {}, "gcp.gemini", "generate_content"),
    ("POST", "/v1/models/gemini-1.5-pro:generateContent", {}, "gcp.gemini", "generate_content"),
    ("POST", "/v1beta/tunedModels/my-tuned:generateContent", {}, "gcp.gemini", "generate_content"),
    ("POST", "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.0-flash:streamGenerateContent",
     {}, "gcp.vertex_ai", "generate_content"),
    ("POST", "/v1beta1/publishers/google/models/gemini-2.0-flash:generateContent", {}, "gcp.vertex_ai",
     "generate_content"),
    ("POST", "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream", {}, "aws.bedrock", "chat"),
    ("POST", "/model/amazon.nova-lite-v1%3A0/converse", {}, "aws.bedrock", "chat"),
    ("POST", "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke-with-response-stream", {}, "aws.bedrock",
     "chat"),
    ("POST", "/model/us.anthropic.claude-3-5-haiku-20241022-v1%3A0/invoke", {}, "aws.bedrock", "chat"),
    ("POST", "/model/meta.llama3-8b-instruct-v1%3A0/invoke", {}, "aws.bedrock", "text_completion"),
    ("POST", "/model/amazon.titan-text-express-v1/invoke-with-response-stream", {}, "aws.bedrock",
     "text_completion"),
    ("POST", "/api/chat", {}, "ollama", "chat"),
    ("POST", "/ollama/api/generate", {}, "ollama", "text_completion"),
    ("POST", "/api/embed", {}, "ollama", "embeddings"),
    ("POST", "/generate", {}, "huggingface.tgi", "text_completion"),
    ("POST", "/tgi/generate_stream", {}, "huggingface.tgi", "text_completion"),
    ("POST", "/v2/chat", {}, "cohere", "chat"),
    ("POST", "/openai/deployments/gpt-4o/chat/completions", {"api-key": "k"}, "azure.ai.openai", "chat"),
    ("POST", "/openai/deployments/gpt-4o/chat/completions", {}, "azure.ai.openai", "chat"),
    ("POST", "/openai/deployments/emb/embeddings", {}, "azure.ai.openai", "embeddings"),
    ("POST", "/openai/v1/chat/completions", {"api-key": "k"}, "azure.ai.openai", "chat"),
    ("POST", "/openai/v1/chat/completions", {"authorization": "Bearer gsk"}, "openai", "chat"),  # Groq's path
    ("POST", "/v1/chat/completions", {}, "openai", "chat"),
    ("POST", "/v1/messages", {}, "anthropic", "chat"),
]


@pytest.mark.parametrize(("method", "path", "headers", "provider", "operation"), CASES)
def test_detect(method: str, path: str, headers: dict, provider: str, operation: str) -> None:
    found = detect(method, path, headers)
    assert found is not None
    assert (found[0].name, found[1]) == (provider, operation)


@pytest.mark.parametrize("path", [
    "/v1beta/models/gemini-2.0-flash:countTokens", "/v1beta/models/gemini-2.0-flash", "/model/x/other",
    "/api/tags", "/v1/chat", "/v2/embed", "/info", "/openai/deployments", "/model/converse",
])
def test_unknown_paths_are_not_genai(path: str) -> None:
    assert detect("POST", path, {}) is None


def test_only_post_is_an_llm_call() -> None:
    for path in ("/api/chat", "/generate", "/v2/chat", "/model/m/converse", "/v1beta/models/m:generateContent"):
        assert detect("GET", path, {}) is None


def test_provider_names_follow_the_semconv_registry() -> None:
    """Well-known gen_ai.provider.name values where the registry has one; custom values otherwise."""
    registry = pytest.importorskip("opentelemetry.semconv._incubating.attributes.gen_ai_attributes")
    known = {value.value for value in registry.GenAiProviderNameValues}
    assert {"gcp.gemini", "gcp.vertex_ai", "aws.bedrock", "azure.ai.openai", "cohere"} <= known
    assert {"gcp.gemini", "gcp.vertex_ai", "aws.bedrock", "azure.ai.openai", "cohere"} <= set(PROVIDERS)
    assert set(PROVIDERS) - known == {"ollama", "huggingface.tgi"}  # not listed: documented custom values


def test_gemini_stream_calls_get_the_streaming_twin() -> None:
    stream = "/v1beta/models/m:streamGenerateContent"
    api, _ = detect("POST", stream, {})
    assert isinstance(api, GeminiAPI) and api.streamed_json
    assert api.stream_format("application/json; charset=UTF-8") == "json-array"
    assert api.stream_format("text/event-stream") == "sse"
    plain, _ = detect("POST", "/v1beta/models/m:generateContent", {})
    assert plain is get_provider("gcp.gemini") and plain.stream_format("application/json") is None
    assert specialize(get_provider("gcp.gemini"), stream) is api  # for routes with a provider override
    assert specialize(get_provider("openai"), stream) is get_provider("openai")


@pytest.mark.parametrize(("name", "path", "body", "model", "stream", "path_model"), [
    ("gcp.gemini", "/v1beta/models/gemini-2.0-flash:streamGenerateContent", b"{}", "gemini-2.0-flash", True,
     "gemini-2.0-flash"),
    ("gcp.vertex_ai", "/v1/projects/p/locations/l/publishers/google/models/gemini-2.0-flash-001:generateContent",
     b"{}", "gemini-2.0-flash-001", False, "gemini-2.0-flash-001"),
    ("aws.bedrock", "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream", b"{}",
     "anthropic.claude-3-haiku-20240307-v1:0", True, "anthropic.claude-3-haiku-20240307-v1:0"),
    ("aws.bedrock", "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.x/invoke", b"{}",
     "arn:aws:bedrock:us-east-1:1:inference-profile/us.x", False, "arn:aws:bedrock:us-east-1:1:inference-profile/us.x"),
    ("azure.ai.openai", "/openai/deployments/my%20gpt/chat/completions", b'{"messages":[]}', "my gpt", False,
     "my gpt"),
    ("azure.ai.openai", "/openai/deployments/dep/chat/completions", b'{"model":"gpt-4o","stream":true}', "gpt-4o",
     True, "dep"),  # the body's model wins over the deployment name
    ("huggingface.tgi", "/generate_stream", b'{"inputs":"x"}', None, True, None),
    ("ollama", "/api/chat", b'{"model":"llama3.2"}', "llama3.2", True, None),  # Ollama streams by default
    ("ollama", "/api/chat", b'{"model":"llama3.2","stream":false}', "llama3.2", False, None),
])
def test_model_and_stream_from_the_path(name: str, path: str, body: bytes, model: str | None, stream: bool,
                                        path_model: str | None) -> None:
    api = get_provider(name)
    operation = api.operation_for("POST", path, {})
    facts = api.request_facts(operation, body, path)
    assert (facts.provider, facts.model, facts.stream, facts.parsed) == (name, model, stream, True)
    broken = api.request_facts(operation, b"{not json", path)  # the path still names the model
    assert (broken.provider, broken.parsed, broken.model) == (name, False, path_model)
