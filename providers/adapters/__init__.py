"""Adapters, one per upstream wire protocol, looked up by Provider.type.

To add one, see CONTRIBUTING.md ("Add an adapter").
"""
from .openai import OpenAIAdapter

ADAPTERS = {
    "openai": OpenAIAdapter(),
}
