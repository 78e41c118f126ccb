"""The one registry of /v1 endpoints: path, method, the client's wire format, streaming.

The ASGI path rewrite (llmgateway/asgi.py) and the views (routing/api.py) are derived from
it, so an endpoint exists in exactly one place.
"""
import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # short slug, stored in the request log
    method: str
    path: str  # canonical form, under /v1; {name} marks a path parameter
    wire: str  # the client's wire format: how requests, answers and errors look to the client
    streams: bool  # whether `"stream": true` is honoured
    required: str | None = None  # the body field the endpoint cannot do without
    proxied: bool = True  # sent upstream (False: answered by the gateway itself)
    operation: str = ""  # what the upstream is asked to do (default: the endpoint's name)

    @property
    def upstream_operation(self) -> str:
        return self.operation or self.name

    @property
    def suffix(self) -> str:
        """The path after /v1/, as a regular expression."""
        return re.sub(r"\{[^}]+\}", ".+", self.path.removeprefix("/v1/"))


ENDPOINTS = {e.name: e for e in (
    Endpoint("chat", "POST", "/v1/chat/completions", "openai_chat", streams=True, required="messages"),
    Endpoint("completions", "POST", "/v1/completions", "openai_chat", streams=True, required="prompt"),
    Endpoint("embeddings", "POST", "/v1/embeddings", "openai_chat", streams=False, required="input"),
    Endpoint("messages", "POST", "/v1/messages", "anthropic_messages", streams=True, required="messages",
             operation="chat"),
    Endpoint("count_tokens", "POST", "/v1/messages/count_tokens", "anthropic_messages", streams=False,
             required="messages", proxied=False, operation="count_tokens"),
    Endpoint("responses", "POST", "/v1/responses", "openai_responses", streams=True, operation="chat"),
    Endpoint("responses_compact", "POST", "/v1/responses/compact", "openai_responses", streams=False,
             proxied=False, operation="responses_compact"),
    Endpoint("response", "GET", "/v1/responses/{response_id}", "openai_responses", streams=False, proxied=False),
    Endpoint("models", "GET", "/v1/models", "openai_chat", streams=False, proxied=False),
    Endpoint("model", "GET", "/v1/models/{model_id}", "openai_chat", streams=False, proxied=False),
)}

# Clients configure an OpenAI-compatible base URL of any shape: /v1, /v1beta/openai,
# /api/v1, /api/paas/v4, or none at all. A path is the API's when it ends in a registered
# endpoint and what comes before is empty or has an API-looking segment (a version, "api",
# "openai"); anything else, such as /ops/models or /status/models, belongs to the site.
_API_PATH = re.compile(
    r"^(?P<prefix>(?:/[^/]+)*?)/(?P<suffix>"
    + "|".join(sorted({e.suffix for e in ENDPOINTS.values()}, key=len, reverse=True))
    + r")/?$"
)
_API_SEGMENT = re.compile(r"v\d+[a-z0-9]*|api|openai")


_BY_PATH = {e.path: e for e in ENDPOINTS.values() if "{" not in e.path}


def endpoint_at(path: str) -> Endpoint | None:
    """The endpoint a canonical /v1 path belongs to (None: no such endpoint)."""
    endpoint = _BY_PATH.get(path)
    if endpoint is None:
        if path.startswith("/v1/models/"):
            return ENDPOINTS["model"]
        if path.startswith("/v1/responses/"):
            return ENDPOINTS["response"]
    return endpoint


def canonical_path(path: str) -> str | None:
    """The /v1 form of an API request's path, or None for the rest of the site.

    Every path under /v1/ is the API's, so an unknown one gets a 404 in the API's format.
    """
    match = _API_PATH.match(path)
    if match:
        prefix = match.group("prefix")
        if not prefix or any(_API_SEGMENT.fullmatch(s) for s in prefix.split("/") if s):
            return "/v1/" + match.group("suffix").rstrip("/")
    return path if path.startswith("/v1/") else None
