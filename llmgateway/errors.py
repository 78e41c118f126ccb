"""The gateway's few exception types, and their rendering in each client protocol."""

class GatewayError(Exception):
    """An error the client should see, with an HTTP status and a protocol-neutral description."""

    status = 500
    type = "api_error"
    code: str | None = None
    kind = "internal"  # short slug stored in the request log

    def __init__(self, message: str, *, status=None, type=None, code=None, param=None, headers=None, kind=None,
                 log_message=None):
        super().__init__(message)
        self.message = message  # what the client sees: never a provider name, base URL or key
        self.log_message = log_message  # what the request log keeps instead, when it knows more
        self.status = status or self.status
        self.type = type or self.type
        self.code = code if code is not None else self.code
        self.param = param
        self.headers = headers or {}
        self.kind = kind or self.kind


class InvalidRequest(GatewayError):
    status, type, kind = 400, "invalid_request_error", "bad_request"


class AuthenticationFailed(GatewayError):
    status, type, code, kind = 401, "invalid_request_error", "invalid_api_key", "auth"


class PermissionDenied(GatewayError):
    status, type, code, kind = 403, "permission_error", "model_not_allowed", "not_allowed"


class ModelNotFound(GatewayError):
    status, type, code, kind = 404, "invalid_request_error", "model_not_found", "model_not_found"


class EndpointNotFound(GatewayError):
    status, type, code, kind = 404, "invalid_request_error", "unknown_url", "not_found"


class PayloadTooLarge(GatewayError):
    status, type, code, kind = 413, "invalid_request_error", "request_too_large", "too_large"


class UnsupportedMediaType(GatewayError):
    status, type, code, kind = 415, "invalid_request_error", "unsupported_media_type", "bad_request"


class RateLimited(GatewayError):
    status, type, code, kind = 429, "rate_limit_error", "rate_limit_exceeded", "rate_limited"


class ServiceUnavailable(GatewayError):
    """Nothing can serve the request right now, by the gateway's own doing (e.g. every
    target of the model is disabled or cooling down): temporary, worth retrying later."""

    status, type, code, kind = 503, "api_error", "service_unavailable", "unavailable"


def overloaded_error(limit: int) -> ServiceUnavailable:
    """The answer to a request past GATEWAY_MAX_IN_FLIGHT (llmgateway.apihandler.InFlight): over
    HTTP a 503 in the client's protocol, over the Responses WebSocket an error frame."""
    return ServiceUnavailable("The gateway is at capacity; try again in a moment.", code="overloaded",
                              headers={"Retry-After": "1"}, log_message=f"more than {limit} requests in flight")


class UpstreamError(GatewayError):
    """The upstream answered with an error status; the client gets that status and message."""

    type, kind = "upstream_error", "upstream_http"


class UpstreamUnavailable(GatewayError):
    status, type, code, kind = 502, "upstream_error", "upstream_unreachable", "upstream_connect"


class UpstreamTimeout(GatewayError):
    status, type, code, kind = 504, "upstream_error", "upstream_timeout", "upstream_timeout"


class UpstreamStreamError(GatewayError):
    """The upstream failed after the stream had begun; it ends with an error event."""

    status, type, code, kind = 502, "upstream_error", "stream_interrupted", "stream_cut"


class UpstreamCredentialsRejected(GatewayError):
    """Every provider key the gateway tried was refused (401/403): the gateway's fault, not the
    client's, so not a 401 the client's SDK would blame on the client's own key."""

    status, type, code, kind = 502, "upstream_error", "upstream_credentials_rejected", "upstream_auth"
