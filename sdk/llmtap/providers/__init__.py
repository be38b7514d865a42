"""Provider registry: which API family a request belongs to, and its parser.

To add a provider, write a `ProviderAPI` module and register an instance in `PROVIDERS`.
Detection tries providers in registry order, so more specific recognisers come first
(Anthropic's `/messages` + `anthropic-version` header before OpenAI's generic path suffixes).
"""

from __future__ import annotations

from llmtap.providers.anthropic import AnthropicAPI
from llmtap.providers.base import ProviderAPI
from llmtap.providers.openai import OpenAIAPI

PROVIDERS: dict[str, ProviderAPI] = {api.name: api for api in (AnthropicAPI(), OpenAIAPI())}


def get_provider(name: str) -> ProviderAPI | None:
    return PROVIDERS.get(name)


def detect(method: str, path: str, headers: dict[str, str]) -> tuple[ProviderAPI, str] | None:
    """The API and operation serving this request, or None. String checks only, no body parsing.

    `headers` keys are lower-case.
    """
    for api in PROVIDERS.values():
        operation = api.operation_for(method, path, headers)
        if operation is not None:
            return api, operation
    return None


__all__ = ["PROVIDERS", "ProviderAPI", "detect", "get_provider"]
