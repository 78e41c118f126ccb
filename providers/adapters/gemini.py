"""Google Gemini upstreams: native generateContent / streamGenerateContent with an API key
(base URL like https://generativelanguage.googleapis.com/v1beta). The key goes in the
x-goog-api-key header, never in the URL, so no logged URL carries it."""
import json
from urllib.parse import quote

from .base import UpstreamRequest


class GeminiAdapter:
    type = "gemini"
    wire = "gemini"
    supports_embeddings = False
    accepts_stream_options = False
    speaks_responses = False
    forwards_headers = ()

    def url(self, base_url: str, operation: str, model: str = "", stream: bool = False) -> str:
        model_path = f"{base_url}/models/{quote(model, safe='')}"
        if operation == "count_tokens":
            return model_path + ":countTokens"
        return model_path + (":streamGenerateContent?alt=sse" if stream else ":generateContent")

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        return {"x-goog-api-key": api_key} if api_key else {}

    def build_request(self, operation: str, body: dict, *, upstream_model: str, base_url: str,
                      api_key: str | None, extra_headers=(), client_headers=None, stream: bool = False) -> UpstreamRequest:
        # The model and streaming live in the URL; the body carries neither.
        body = {k: v for k, v in body.items() if k not in ("model", "stream")}
        headers = {"content-type": "application/json", "accept": "application/json", "accept-encoding": "identity"}
        headers.update(extra_headers)
        headers.update(self.auth_headers(api_key))
        return UpstreamRequest("POST", self.url(base_url, operation, upstream_model, stream), headers,
                               json.dumps(body).encode())
