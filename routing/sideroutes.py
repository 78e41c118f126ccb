"""The endpoints beside the main ones, which the gateway answers itself or passes on only to
upstreams that can serve them: Anthropic's count_tokens, and the Responses API's stored
responses (GET /v1/responses/{id}) and compaction (POST /v1/responses/compact)."""
import dataclasses
import json

import httpx
from django.conf import settings

from llmgateway import runtime
from llmgateway.errors import GatewayError, InvalidRequest, UpstreamUnavailable
from providers import tokens
from providers.adapters import ADAPTERS
from providers.wire import CODECS, InvalidField
from providers.wire.translate import translate_request

from . import proxy
from .attempts import make_plan
from .record import close_quietly
from .resolve import find_route, order_targets

ESTIMATE_HEADER = "x-gateway-token-count"


class NotImplementedHere(GatewayError):
    status, type, code, kind = 501, "invalid_request_error", "not_supported_by_upstream", "unsupported"


async def count_tokens(inbound: proxy.Inbound) -> proxy.Outcome:
    """The upstream's own count when the model's first target is Anthropic; otherwise a local
    tiktoken estimate, marked as one, that spends no upstream's rate limit (clients call this
    in bursts)."""
    codec = CODECS["anthropic_messages"]
    try:
        body, model = _model_body(inbound)
        if not isinstance(body.get("messages"), list):
            raise InvalidRequest("'messages' must be an array.", param="messages")
        route = find_route(await runtime.current().snapshot(), model, inbound.key)
        inbound.record.log.route = route.name
        targets = order_targets(route)
        if targets and targets[0].provider.type == "anthropic":
            return await _attempts_on(inbound, codec, body, route, [t for t in targets if t.provider.type == "anthropic"])
        count = _estimate(body, model)
        inbound.record.end(200)
        return proxy.Outcome(200, {"x-request-id": inbound.record.request_id, ESTIMATE_HEADER: "estimate"},
                             json.dumps({"input_tokens": count}).encode())
    except GatewayError as err:
        return proxy.error_outcome(inbound.record, codec, err)


def _estimate(body: dict, model: str) -> int:
    try:
        chat, _ = translate_request({**body, "max_tokens": body.get("max_tokens") or 1}, "anthropic_messages",
                                    "openai_chat", model)
    except InvalidField as exc:
        raise InvalidRequest(exc.message, param=exc.param) from None
    return tokens.count_prompt_tokens(chat, model)


async def compact(inbound: proxy.Inbound) -> proxy.Outcome:
    """Passed on to an upstream that speaks Responses natively; 501 otherwise."""
    codec = CODECS["openai_responses"]
    try:
        body, model = _model_body(inbound)
        route = find_route(await runtime.current().snapshot(), model, inbound.key)
        inbound.record.log.route = route.name
        native = [t for t in order_targets(route) if t.provider.native_responses]
        if not native:
            raise NotImplementedHere(
                f"The model '{model}' is served by an upstream without the Responses API, which cannot compact "
                "a conversation. Send the full input instead.")
        return await _attempts_on(inbound, codec, body, route, native)
    except GatewayError as err:
        return proxy.error_outcome(inbound.record, codec, err)


async def retrieve_response(inbound: proxy.Inbound, response_id: str) -> proxy.Outcome:
    """A stored response, from the first upstream this key may reach that speaks Responses
    natively (only such upstreams store responses)."""
    codec = CODECS["openai_responses"]
    record = inbound.record
    try:
        snapshot = await runtime.current().snapshot()
        target = next((t for route in snapshot.routes if inbound.key.may_use(route.id)
                       for t in route.targets if t.provider.native_responses and not t.provider.unusable), None)
        if target is None:
            raise InvalidRequest("Stored responses are not available: no upstream of this gateway stores them "
                                 "(only upstreams that speak the Responses API natively do).",
                                 param="response_id", code="response_storage_unavailable")
        provider = target.provider
        key = provider.keys[0].secret if provider.keys else None
        client = runtime.current().client
        url = f"{provider.base_url}/responses/{response_id}"
        headers = {**dict(provider.extra_headers), **ADAPTERS[provider.type].auth_headers(key)}
        record.log.provider = provider.name
        try:
            response = await client.get(url, headers=headers,
                                        timeout=httpx.Timeout(settings.GATEWAY_CONNECT_TIMEOUT_S,
                                                              read=provider.timeout_s))
        except Exception:
            raise UpstreamUnavailable("The upstream could not be reached.") from None
        content = response.content
        await close_quietly(response)
        record.end(response.status_code)
        return proxy.Outcome(response.status_code, {"x-request-id": record.request_id},
                             content.replace(key.encode(), b"***") if key else content)
    except GatewayError as err:
        return proxy.error_outcome(record, codec, err)


async def _attempts_on(inbound: proxy.Inbound, codec, body: dict, route, targets) -> proxy.Outcome:
    """The pipeline's attempts, on some of the route's targets only (those that can serve it)."""
    plan = await make_plan(dataclasses.replace(route, targets=tuple(targets)), session_id=None, prompt_tokens=None)
    try:
        return await proxy._attempts(inbound, codec, body, plan, stream=False)
    finally:
        plan.finish()


def _model_body(inbound: proxy.Inbound) -> tuple[dict, str]:
    body = inbound.body
    inbound.record.log.body = body
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("You must provide a model parameter.", param="model", code="missing_model")
    inbound.record.log.model_requested = model
    return body, model
