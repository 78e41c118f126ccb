"""The /v1 NinjaAPI: virtual-key authentication and errors rendered in the client's protocol."""
import logging
import re

from django.http import JsonResponse
from ninja import NinjaAPI
from ninja.errors import HttpError, ValidationError

from keys.auth import authenticate
from routing.api import router
from routing.proxy import Call
from routing.snapshot import keeper

from .apihandler import TOO_LARGE
from .errors import EndpointNotFound, GatewayError, InvalidRequest, PayloadTooLarge, openai_error_body

log = logging.getLogger(__name__)

_ENDPOINT = re.compile(r"(chat/completions|completions|embeddings|models)(/.*)?/?$")


def endpoint_of(path: str) -> str:
    match = _ENDPOINT.search(path)
    if not match:
        return "other"
    name = match.group(1)
    return {"chat/completions": "chat"}.get(name, name)


class VirtualKeyAuth:
    """Finds the request's virtual key in the snapshot; raises GatewayError when it can't."""

    async def __call__(self, request):
        request.gateway_call = call = Call.begin(request, endpoint_of(request.path))
        limit = request.scope.get(TOO_LARGE)
        if limit:
            raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes.")
        request.auth_snapshot = snapshot = await keeper.get()
        call.key = key = authenticate(request.META, snapshot.keys_by_hash)
        call.log.virtual_key_id = key.id
        return key


api = NinjaAPI(
    title="LLM Gateway",
    urls_namespace="v1",
    auth=VirtualKeyAuth(),
    docs_url=None,
    openapi_url=None,
)
api.add_router("/v1", router)


def render_error(request, err: GatewayError) -> JsonResponse:
    """The error in the client's protocol, recorded in the request log."""
    call = getattr(request, "gateway_call", None)
    if call is None:
        call = request.gateway_call = Call.begin(request, endpoint_of(request.path))
    call.fail(err)
    response = JsonResponse(openai_error_body(err), status=err.status)
    response["x-request-id"] = call.request_id
    for name, value in err.headers.items():
        response[name] = value
    return response


@api.exception_handler(GatewayError)
def on_gateway_error(request, exc: GatewayError):
    return render_error(request, exc)


@api.exception_handler(ValidationError)
def on_validation_error(request, exc: ValidationError):
    return render_error(request, InvalidRequest("The request is not valid."))


@api.exception_handler(HttpError)
def on_http_error(request, exc: HttpError):
    return render_error(request, GatewayError(str(exc), status=exc.status_code, kind="http"))


@api.exception_handler(Exception)
def on_unexpected_error(request, exc: Exception):
    # Details go to the server log only; the client gets a clean error.
    log.exception("unexpected error serving %s", request.path)
    return render_error(request, GatewayError("The gateway hit an internal error.", code="internal_error"))


def not_found(request, rest: str = ""):
    """Unknown paths under /v1 get an OpenAI-shaped 404, not an HTML page."""
    return render_error(request, EndpointNotFound(f"Unknown request URL: {request.method} {request.path}."))
