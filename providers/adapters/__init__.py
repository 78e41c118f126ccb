"""Adapters, one per provider type (Provider.type): how to reach a provider. The wire
format it speaks is its `wire` attribute (a key of providers.wire.CODECS).

To add one, see CONTRIBUTING.md ("Add a provider type").
"""
from .anthropic import AnthropicAdapter
from .azure_openai import AzureOpenAIAdapter
from .gemini import GeminiAdapter
from .openai import OpenAIAdapter

ADAPTERS = {
    "openai": OpenAIAdapter(),
    "anthropic": AnthropicAdapter(),
    "gemini": GeminiAdapter(),
    "azure_openai": AzureOpenAIAdapter(),
}
