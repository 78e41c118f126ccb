"""The /v1 NinjaAPI: virtual-key authentication, and errors rendered in the client's protocol."""
import logging

from django.http import HttpResponse
from ninja import NinjaAPI
from ninja.errors import HttpError, ValidationError

from keys import authfailures
from keys.auth import NO_KEY, NO_SUCH_KEY, authenticate_request
from providers.wire import CODECS
from routing.api import router
from routing.endpoints import ENDPOINTS, endpoint_at
from routing.proxy import error_json
from routing.record import RequestRecord

from . import runtime
from .apihandler import OVERLOADED, TOO_LARGE, stopping
from .clientip import request_client_ip
from .errors import (AuthenticationFailed, EndpointNotFound, GatewayError, InvalidRequest, PayloadTooLarge,
                     ServiceUnavailable, overloaded_error)

log = logging.getLogger(__name__)

# Requests to unknown paths still answer in OpenAI's shape.
_UNKNOWN = ENDPOINTS["chat"]


def begin_record(request) -> RequestRecord:
    """The request's record, created once, when the request is first looked at."""
    record = getattr(request, "gateway_record", None)
    if record is None:
        endpoint = endpoint_at(request.path)
        request.gateway_endpoint = endpoint or _UNKNOWN
        record = request.gateway_record = RequestRecord.begin(endpoint.name if endpoint else "other",
                                                              request_client_ip(request.META))
    return record


class VirtualKeyAuth:
    """Finds the request's virtual key (keys/lookup.py); raises GatewayError when it can't."""

    async def __call__(self, request):
        record = begin_record(request)
        scope = request.scope
        limit = scope.get(TOO_LARGE)
        if limit:
            raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes.")
        if scope.get(OVERLOADED):
            raise overloaded_error(scope[OVERLOADED])
        if stopping.is_set():
            raise ServiceUnavailable("The gateway is restarting; try again in a moment.", code="server_shutting_down",
                                     headers={"Retry-After": "1"})
        gateway = runtime.current()
        try:
            request.auth_snapshot = await gateway.snapshot()
        except Exception as exc:  # retried by the next request; /readyz says not ready meanwhile
            log.error("cannot load the configuration snapshot: %s", type(exc).__name__)
            raise ServiceUnavailable("The gateway is not ready to serve yet; try again in a moment.",
                                     code="not_ready", headers={"Retry-After": "1"}) from None
        ip = record.log.client_ip
        blocked = authfailures.blocked_for(ip)
        if blocked:  # even with a valid key: else a key guesser would read its 200 among the 429s
            raise authfailures.blocked_error(blocked)
        try:
            record.key = key = await authenticate_request(request.META, gateway.keeper.keys)
        except AuthenticationFailed:
            blocked = await authfailures.count_failure(gateway.redis, ip)
            if blocked:
                raise authfailures.blocked_error(blocked) from None
            raise
        record.log.virtual_key_id = key.id
        return key


api = NinjaAPI(
    title="LLM Gateway",
    urls_namespace="v1",
    auth=VirtualKeyAuth(),
    docs_url=None,
    openapi_url=None,
)
api.add_router("/v1", router)


UNKNOWN_PATH = "unknown path"
# Refusals before any key is known: no key, one that does not exist, an address refused for
# its failures, a path that is no endpoint. They are counted per client IP (RefusedTraffic),
# not logged a row each. A disabled or expired key is known: its refusal is a row as any
# request's, with the real reason for the operator.
REFUSED_BEFORE_KEY = frozenset({NO_KEY, NO_SUCH_KEY, authfailures.BLOCKED_REASON, UNKNOWN_PATH})


def render_error(request, err: GatewayError) -> HttpResponse:
    """The error in the client's protocol, recorded in the request log."""
    record = begin_record(request)
    if record.key is None and err.log_message in REFUSED_BEFORE_KEY:
        record.refuse(err)  # counted per client IP, not a row each (junk traffic must not grow the log)
    else:
        record.fail(err)
    codec = CODECS[request.gateway_endpoint.wire]
    response = HttpResponse(error_json(codec, err), status=err.status, content_type="application/json")
    response["x-request-id"] = record.request_id
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
    return render_error(request, EndpointNotFound(f"Unknown request URL: {request.method} {request.path}.",
                                                  log_message=UNKNOWN_PATH))
