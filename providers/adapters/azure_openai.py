"""Azure OpenAI upstreams: deployment URLs, an api-version, the api-key header.

Base URL like https://RESOURCE.openai.azure.com/openai, optionally ending in
?api-version=... (default below); a route target's upstream model is the deployment name.
"""
from urllib.parse import quote

from .openai import PATHS, OpenAIAdapter

DEFAULT_API_VERSION = "2024-10-21"


class AzureOpenAIAdapter(OpenAIAdapter):
    type = "azure_openai"
    wire = "openai_chat"
    supports_embeddings = True
    accepts_stream_options = True
    speaks_responses = False  # deployment URLs: Responses requests are translated to chat

    def url(self, base_url: str, operation: str, model: str = "", stream: bool = False) -> str:
        base, _, query = base_url.partition("?")
        version = dict(p.partition("=")[::2] for p in query.split("&") if p).get("api-version", DEFAULT_API_VERSION)
        return f"{base}/deployments/{quote(model, safe='')}{PATHS[operation]}?api-version={version}"

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        return {"api-key": api_key} if api_key else {}
