"""The /v1 views: parse, delegate to the proxy pipeline, return. Mounted by llmgateway/api.py."""
from django.http import JsonResponse
from ninja import Router

from llmgateway.errors import ModelNotFound

from . import proxy

router = Router()

# Path variants (/v1beta/openai/chat/completions, /api/v1/models, ...) arrive here as
# their /v1 form: llmgateway.asgi rewrites them.


@router.api_operation(["POST"], "/chat/completions")
async def chat_completions(request):
    return await proxy.handle(request, request.auth_snapshot, request.gateway_call, "chat")


@router.api_operation(["POST"], "/completions")
async def completions(request):
    return await proxy.handle(request, request.auth_snapshot, request.gateway_call, "completions")


@router.api_operation(["POST"], "/embeddings")
async def embeddings(request):
    return await proxy.handle(request, request.auth_snapshot, request.gateway_call, "embeddings")


def _model_object(route, model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": route.created, "owned_by": "llm-gateway"}


def _answer(request, payload: dict) -> JsonResponse:
    call = request.gateway_call
    response = JsonResponse(payload)
    response["x-request-id"] = call.request_id
    call.log.status = 200
    call.finish()
    return response


@router.api_operation(["GET"], "/models")
async def list_models(request):
    """The models this key may use, aliases included, in OpenAI's list format."""
    key = request.auth
    data = [
        _model_object(route, name)
        for route in request.auth_snapshot.routes if key.may_use(route.id)
        for name in (route.name, *route.aliases)
    ]
    return _answer(request, {"object": "list", "data": data})


@router.api_operation(["GET"], "/models/{path:model_id}")
async def retrieve_model(request, model_id: str):
    route = request.auth_snapshot.route(model_id)
    request.gateway_call.log.model_requested = model_id
    if route is None or not request.auth.may_use(route.id):
        raise ModelNotFound(f"The model '{model_id}' does not exist.", param="model")
    request.gateway_call.log.route = route.name
    return _answer(request, _model_object(route, model_id))
