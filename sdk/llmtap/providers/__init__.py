"""Provider registry: which API family a request belongs to, and its parser.

To add a provider, write a `ProviderAPI` module and register an instance in `PROVIDERS`.
Detection tries providers in registry order, so more specific recognisers come first:
Anthropic's `/messages` + `anthropic-version` header and Azure's deployment paths before OpenAI's
generic path suffixes, Ollama's `/api/generate` before TGI's `/generate`.

A provider may specialise itself per call with `for_path(path)` (Gemini hands `:streamGenerateContent`
calls to a streaming twin; see `llmtap.providers.gemini`). `specialize` applies it; `detect` already
does. The returned objects are stateless singletons, safe to share between concurrent calls.
"""

from __future__ import annotations

from llmtap.providers.anthropic import AnthropicAPI
from llmtap.providers.base import ProviderAPI
from llmtap.providers.bedrock import BedrockAPI
from llmtap.providers.cohere import CohereAPI
from llmtap.providers.gemini import GeminiAPI, VertexAIAPI
from llmtap.providers.ollama import OllamaAPI
from llmtap.providers.openai import AzureOpenAIAPI, OpenAIAPI
from llmtap.providers.tgi import TGIAPI

PROVIDERS: dict[str, ProviderAPI] = {
    api.name: api
    for api in (
        AnthropicAPI(),
        AzureOpenAIAPI(),
        VertexAIAPI(),
        GeminiAPI(),
        BedrockAPI(),
        OllamaAPI(),
        CohereAPI(),
        TGIAPI(),
        OpenAIAPI(),
    )
}


def get_provider(name: str) -> ProviderAPI | None:
    return PROVIDERS.get(name)


def specialize(api: ProviderAPI, path: str) -> ProviderAPI:
    """The API object to observe one call to `path` with (itself unless it has a per-path twin)."""
    for_path = getattr(api, "for_path", None)
    if for_path is None:
        return api
    try:
        return for_path(path)
    except Exception:
        return api


def detect(method: str, path: str, headers: dict[str, str]) -> tuple[ProviderAPI, str] | None:
    """The API and operation serving this request, or None. String checks only, no body parsing.

    `headers` keys are lower-case.
    """
    for api in PROVIDERS.values():
        operation = api.operation_for(method, path, headers)
        if operation is not None:
            return specialize(api, path), operation
    return None


__all__ = ["PROVIDERS", "ProviderAPI", "detect", "get_provider", "specialize"]
