"""Anthropic upstreams: the native Messages API (base URL like https://api.anthropic.com/v1)."""
import json

from .base import UpstreamRequest

ANTHROPIC_VERSION = "2023-06-01"


class AnthropicAdapter:
    type = "anthropic"
    wire = "anthropic_messages"
    supports_embeddings = False
    accepts_stream_options = False
    speaks_responses = False
    # Headers of the client's request passed on only to this provider type.
    forwards_headers = ("anthropic-beta",)

    def url(self, base_url: str, operation: str, model: str = "", stream: bool = False) -> str:
        if operation == "count_tokens":
            return base_url + "/messages/count_tokens"
        return base_url + "/messages"

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        return {"x-api-key": api_key} if api_key else {}

    def build_request(self, operation: str, body: dict, *, upstream_model: str, base_url: str,
                      api_key: str | None, extra_headers=(), client_headers=None, stream: bool = False
                      ) -> UpstreamRequest:
        body = {**body, "model": upstream_model}
        headers = {"content-type": "application/json", "accept": "application/json", "accept-encoding": "identity",
                   "anthropic-version": ANTHROPIC_VERSION}
        for name in self.forwards_headers:
            if client_headers and client_headers.get(name):
                headers[name] = client_headers[name]
        if client_headers and client_headers.get("anthropic-version"):
            headers["anthropic-version"] = client_headers["anthropic-version"]
        headers.update(extra_headers)
        headers.update(self.auth_headers(api_key))
        return UpstreamRequest("POST", self.url(base_url, operation), headers, json.dumps(body).encode())
