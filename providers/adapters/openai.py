"""OpenAI-compatible upstreams: how to reach them (URLs, auth) and what they accept.

Requests in the same wire format go upstream as sent except `model` (and a request for
usage on streams, where the upstream accepts `stream_options`).
"""
import json

from .base import UpstreamRequest

PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings",
         "responses": "/responses", "responses_compact": "/responses/compact"}


class OpenAIAdapter:
    type = "openai"
    wire = "openai_chat"  # the wire format the upstream speaks natively
    supports_embeddings = True
    # Streams carry usage only when asked; the gateway always asks, for honest accounting.
    accepts_stream_options = True
    # May serve /responses natively too (Provider.native_responses says whether it does).
    speaks_responses = True

    forwards_headers = ()  # headers of the client's request passed on to this provider type

    def url(self, base_url: str, operation: str, model: str = "", stream: bool = False) -> str:
        return base_url + PATHS[operation]

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key}"} if api_key else {}

    def build_request(self, operation: str, body: dict, *, upstream_model: str, base_url: str,
                      api_key: str | None, extra_headers=(), client_headers=None, stream: bool = False
                      ) -> UpstreamRequest:
        body = {**body, "model": upstream_model}
        if self.accepts_stream_options and body.get("stream") is True and operation in ("chat", "completions"):
            options = body.get("stream_options")
            body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        # identity: events must be readable as they arrive, and the client gets them uncompressed anyway.
        headers = {"content-type": "application/json", "accept": "application/json", "accept-encoding": "identity"}
        headers.update(extra_headers)
        headers.update(self.auth_headers(api_key))
        return UpstreamRequest("POST", self.url(base_url, operation, upstream_model, stream), headers,
                               json.dumps(body).encode())
