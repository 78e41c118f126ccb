"""The /v1 views, derived from the endpoint registry: parse, delegate to the pipeline, return.
Mounted by llmgateway/api.py."""
from datetime import datetime, timezone

from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from ninja import Router

from llmgateway.errors import InvalidRequest, ModelNotFound, UnsupportedMediaType
from providers.wire.jsonbody import NotJson, load_body

from . import proxy, sideroutes
from .endpoints import ENDPOINTS, Endpoint

router = Router()

# Path variants (/v1beta/openai/chat/completions, /api/v1/models, ...) arrive here as
# their /v1 form: llmgateway.asgi rewrites them (see endpoints.canonical_path).


def parse_body(request) -> dict:
    """The request's JSON object: standard JSON only, an object at the top."""
    content_type = request.content_type
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType(f"Content-Type must be application/json, not '{content_type}'.")
    try:
        body = load_body(request.body)
    except NotJson as exc:
        raise InvalidRequest(str(exc)) from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def to_response(outcome: proxy.Outcome):
    if outcome.stream is not None:
        return StreamingHttpResponse(outcome.stream, status=outcome.status, headers=outcome.headers)
    return HttpResponse(outcome.body, status=outcome.status, content_type="application/json",
                        headers=outcome.headers)


# The few request headers the pipeline reads (lower-case name -> META name): Anthropic's
# version and betas (passed on to Anthropic upstreams only), and session headers: Claude
# Code's, Codex's (session-id, or session_id: both arrive as HTTP_SESSION_ID), ours.
READ_HEADERS = {name: "HTTP_" + name.upper().replace("-", "_")
                for name in ("anthropic-beta", "anthropic-version", "x-claude-code-session-id", "session-id",
                             "x-session-id")}


def inbound_for(request, endpoint: Endpoint, body: dict | None = None) -> proxy.Inbound:
    meta = request.META
    headers = {name: meta[key] for name, key in READ_HEADERS.items() if key in meta}
    return proxy.Inbound(endpoint=endpoint, body=parse_body(request) if body is None else body, raw=request.body,
                         headers=headers, key=request.auth, record=request.gateway_record)


def proxy_view(endpoint: Endpoint):
    async def view(request):
        return to_response(await proxy.serve(inbound_for(request, endpoint)))

    view.__name__ = f"proxy_{endpoint.name}"
    return view


for _endpoint in ENDPOINTS.values():
    if _endpoint.proxied:
        router.add_api_operation(_endpoint.path.removeprefix("/v1"), [_endpoint.method], proxy_view(_endpoint),
                                 operation_id=_endpoint.name)


@router.api_operation(["POST"], "/messages/count_tokens")
async def count_tokens(request):
    return to_response(await sideroutes.count_tokens(inbound_for(request, ENDPOINTS["count_tokens"])))


@router.api_operation(["POST"], "/responses/compact")
async def compact_response(request):
    return to_response(await sideroutes.compact(inbound_for(request, ENDPOINTS["responses_compact"])))


@router.api_operation(["GET"], "/responses/{response_id}")
async def retrieve_response(request, response_id: str):
    inbound = inbound_for(request, ENDPOINTS["response"], body={})
    return to_response(await sideroutes.retrieve_response(inbound, response_id))


def _model_object(route, model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": route.created, "owned_by": "llm-gateway"}


def _anthropic_model_object(route, model_id: str) -> dict:
    created = datetime.fromtimestamp(route.created, tz=timezone.utc).isoformat().replace("+00:00", "Z")
    return {"type": "model", "id": model_id, "display_name": model_id, "created_at": created}


def _wants_anthropic(request) -> bool:
    """Anthropic's SDKs and Claude Code always send anthropic-version: they get Anthropic's
    list format (Claude Code's model discovery reads nothing else)."""
    return "HTTP_ANTHROPIC_VERSION" in request.META


def _answer(request, payload: dict) -> JsonResponse:
    record = request.gateway_record
    response = JsonResponse(payload)
    response["x-request-id"] = record.request_id
    record.end(200)
    return response


@router.api_operation(["GET"], "/models")
async def list_models(request):
    """The models this key may use, aliases included, in OpenAI's list format (Anthropic's
    for Anthropic clients)."""
    key = request.auth
    pairs = [(route, name) for route in request.auth_snapshot.routes if key.may_use(route.id)
             for name in (route.name, *route.aliases)]
    if _wants_anthropic(request):
        data = [_anthropic_model_object(route, name) for route, name in pairs]
        return _answer(request, {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                                 "last_id": data[-1]["id"] if data else None})
    return _answer(request, {"object": "list", "data": [_model_object(route, name) for route, name in pairs]})


@router.api_operation(["GET"], "/models/{path:model_id}")
async def retrieve_model(request, model_id: str):
    route = request.auth_snapshot.route(model_id)
    request.gateway_record.log.model_requested = model_id
    if route is None or not request.auth.may_use(route.id):
        raise ModelNotFound(f"The model '{model_id}' does not exist.", param="model")
    request.gateway_record.log.route = route.name
    if _wants_anthropic(request):
        return _answer(request, _anthropic_model_object(route, model_id))
    return _answer(request, _model_object(route, model_id))
