"""Testing a provider's connection and reading its model list, for the admin.

One short synchronous request with the stored key: GET {base_url}/models, or a one-token
completion when the provider has no model list. The answer says what worked or why not
(key refused, unreachable, timeout, not found, ...) and never contains the key.
"""
import ipaddress
import json
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.utils.translation import gettext as _

from .presets import preset_for_url

TIMEOUT_S = 8.0
ANTHROPIC_VERSION = "2023-06-01"
AZURE_API_VERSION = "2024-10-21"
MAX_UPSTREAM_MESSAGE = 200
# Cloud metadata services outside the link-local ranges (Alibaba Cloud's, AWS's IPv6 one).
METADATA_ADDRESSES = {ipaddress.ip_address("100.100.100.200"), ipaddress.ip_address("fd00:ec2::254")}


@dataclass
class ConnectionResult:
    """What a test found. `reason` is a stable code for tests and styling; `message` is for people."""

    ok: bool
    reason: str  # ok | key_refused | unreachable | timeout | not_found | rate_limited | upstream_error |
    #              bad_answer | redirect | address_refused | no_model
    message: str
    latency_ms: float | None = None
    method: str = ""  # "models" or "completion"
    models: list[str] = field(default_factory=list)


def auth_headers(provider_type: str, secret: str | None) -> dict[str, str]:
    """How each provider type sends its key; no key, no header (local servers)."""
    headers = {"anthropic-version": ANTHROPIC_VERSION} if provider_type == "anthropic" else {}
    if not secret:
        return headers
    if provider_type == "anthropic":
        headers["x-api-key"] = secret
    elif provider_type == "gemini":
        headers["x-goog-api-key"] = secret
    elif provider_type == "azure_openai":
        headers["api-key"] = secret
    else:
        headers["Authorization"] = f"Bearer {secret}"
    return headers


def check_address(base_url: str) -> str | None:
    """Why the gateway must not contact this URL's host, or None when it may."""
    host = urlsplit(base_url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return None  # the request itself reports "unreachable"
    allow_private = getattr(settings, "GATEWAY_ALLOW_PRIVATE_UPSTREAMS", True)
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if address.is_link_local or address in METADATA_ADDRESSES or address.is_multicast or address.is_unspecified:
            return _("the address of %(host)s is link-local or a cloud metadata service, which is never contacted") % {"host": host}
        if (address.is_private or address.is_loopback) and not allow_private:
            return _("the address of %(host)s is private, and GATEWAY_ALLOW_PRIVATE_UPSTREAMS is off") % {"host": host}
    return None


def _models_request(provider_type: str, base_url: str) -> tuple[str, dict]:
    base = base_url.rstrip("/")
    if provider_type == "azure_openai":
        return f"{base}/models", {"api-version": AZURE_API_VERSION}
    return f"{base}/models", {}


def _completion_request(provider_type: str, base_url: str, model: str) -> tuple[str, dict, dict]:
    """(url, query, body) of the smallest completion each protocol accepts."""
    base = base_url.rstrip("/")
    ping = [{"role": "user", "content": "ping"}]
    if provider_type == "anthropic":
        return f"{base}/messages", {}, {"model": model, "max_tokens": 1, "messages": ping}
    if provider_type == "gemini":
        return (f"{base}/models/{model}:generateContent", {},
                {"contents": [{"parts": [{"text": "ping"}]}], "generationConfig": {"maxOutputTokens": 1}})
    if provider_type == "azure_openai":
        return (f"{base}/deployments/{model}/chat/completions", {"api-version": AZURE_API_VERSION},
                {"messages": ping, "max_tokens": 1})
    return f"{base}/chat/completions", {}, {"model": model, "messages": ping, "max_tokens": 1}


def parse_model_list(provider_type: str, payload) -> list[str]:
    """Model ids from an OpenAI/Anthropic ({"data": [{"id"}]}) or Gemini ({"models": [{"name"}]}) list."""
    if not isinstance(payload, dict):
        raise ValueError("not a JSON object")
    if provider_type == "gemini" and isinstance(payload.get("models"), list):
        return sorted(str(m["name"]).removeprefix("models/") for m in payload["models"]
                      if isinstance(m, dict) and m.get("name"))
    data = payload.get("data")
    if not isinstance(data, list):
        raise ValueError("no 'data' list")
    return sorted(str(m["id"]) for m in data if isinstance(m, dict) and m.get("id"))


def _redact(text: str, secret: str | None) -> str:
    """An upstream's error message, shortened, with the key (or most of it) blanked out."""
    text = " ".join(str(text).split())
    if secret:
        # Upstreams echo keys, whole or a leading part ("Incorrect API key provided: sk-abc12****").
        for length in range(len(secret), 5, -1):
            text = text.replace(secret[:length], "…")
    return text[:MAX_UPSTREAM_MESSAGE]


def _upstream_message(response: httpx.Response, secret: str | None) -> str:
    try:
        body = response.json()
        error = body.get("error", body) if isinstance(body, dict) else body
        message = error.get("message", "") if isinstance(error, dict) else error
    except ValueError:
        message = response.text
    return _redact(message or response.reason_phrase, secret)


def _failure(response: httpx.Response, secret: str | None, elapsed_ms: float, method: str) -> ConnectionResult:
    status = response.status_code
    detail = _upstream_message(response, secret)
    if status in (401, 403):
        reason, text = "key_refused", _("the provider refused the key (HTTP %(status)s)")
    elif status == 404:
        reason, text = "not_found", _("not found (HTTP %(status)s): check the base URL")
    elif status == 429:
        reason, text = "rate_limited", _("the key works but is rate limited or out of quota (HTTP %(status)s)")
    elif 300 <= status < 400:
        reason, text = "redirect", _("the provider answered with a redirect (HTTP %(status)s), which is not followed: check the base URL")
    else:
        reason, text = "upstream_error", _("the provider answered HTTP %(status)s")
    message = text % {"status": status}
    if detail and not 300 <= status < 400:
        message = f"{message}: {detail}"
    return ConnectionResult(False, reason, message, elapsed_ms, method)


def _send(client: httpx.Client, method: str, url: str, **kwargs) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = client.request(method, url, **kwargs)
    return response, round((time.perf_counter() - started) * 1000, 1)


def check_connection(provider, key=None, test_model: str = "", timeout: float = TIMEOUT_S,
                     lists_models: bool | None = None) -> ConnectionResult:
    """List `provider`'s models with `key` (default: its first enabled key), or try a tiny completion.

    The completion is used when the preset says the provider has no model list, or the
    list answers 404; its model is `test_model`, else the provider's first catalog model
    (enabled chat models first), else the preset's test model.
    """
    refused = check_address(provider.base_url)
    if refused:
        return ConnectionResult(False, "address_refused", refused)
    if key is None:
        key = provider.keys.filter(enabled=True).first()
    secret = key.get_secret() if key is not None else None
    headers = {**(provider.extra_headers or {}), **auth_headers(provider.type, secret)}
    preset = preset_for_url(provider.base_url)
    test_model = test_model or _catalog_model(provider) or (preset.test_model if preset else "")
    if lists_models is None:
        lists_models = preset.lists_models if preset else True
    try:
        # follow_redirects=False: a redirect could carry the key to another host.
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            if lists_models:
                result = _list_models(client, provider, headers, secret)
                if result.reason != "not_found" or not test_model:
                    return result
            if not test_model:
                return ConnectionResult(False, "no_model", _(
                    "this provider has no model list; add a catalog model to test with"))
            return _try_completion(client, provider, headers, secret, test_model)
    except httpx.TimeoutException:
        return ConnectionResult(False, "timeout", _("no answer within %(seconds)s seconds") % {"seconds": timeout})
    except (httpx.TransportError, OSError) as exc:
        return ConnectionResult(False, "unreachable", _("cannot reach the provider: %(error)s") % {
            "error": _redact(type(exc).__name__ + (f": {exc}" if str(exc) else ""), secret)})


def _catalog_model(provider) -> str:
    entry = provider.catalog.order_by("supports_embeddings", "model_id").first()
    return entry.model_id if entry else ""


def _list_models(client, provider, headers, secret) -> ConnectionResult:
    url, query = _models_request(provider.type, provider.base_url)
    response, elapsed = _send(client, "GET", url, params=query, headers=headers)
    if response.status_code != 200:
        return _failure(response, secret, elapsed, "models")
    try:
        models = parse_model_list(provider.type, response.json())
    except (ValueError, KeyError, TypeError, json.JSONDecodeError):
        return ConnectionResult(False, "bad_answer", _("the provider's model list is not in a known format"),
                                elapsed, "models")
    message = _("connected: %(count)s models listed") % {"count": len(models)}
    return ConnectionResult(True, "ok", message, elapsed, "models", models)


def _try_completion(client, provider, headers, secret, model) -> ConnectionResult:
    url, query, body = _completion_request(provider.type, provider.base_url, model)
    response, elapsed = _send(client, "POST", url, params=query, headers=headers, json=body)
    if response.status_code != 200:
        return _failure(response, secret, elapsed, "completion")
    return ConnectionResult(True, "ok", _("connected: a test completion with %(model)s answered") % {"model": model},
                            elapsed, "completion")
