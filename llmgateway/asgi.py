"""The ASGI application Daphne serves.

API paths (/v1 and the OpenAI-compatible path variants) go to a Django handler without
the middleware stack: every standard middleware costs two thread hops per request, and
the API uses neither sessions, CSRF nor the admin's auth. Everything else (admin, status
page) gets the full stack. API requests also pass a body-size guard that counts the
bytes actually received, so a missing or false Content-Length cannot get around it.
"""
import os
import re

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmgateway.settings")

from channels.routing import ProtocolTypeRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402
from django.core.handlers.exception import convert_exception_to_response  # noqa: E402

site_application = get_asgi_application()

from llmgateway.errors import PayloadTooLarge, openai_error_bytes  # noqa: E402

# Clients configure an OpenAI-compatible base URL of any shape (/v1, /v1beta/openai,
# /api/v1, ...): whatever the prefix, these endpoints are served as their /v1 form.
API_ENDPOINT = re.compile(r"/(chat/completions|completions|embeddings|models(?:/.+)?|messages|responses)/?$")
NOT_API_PREFIXES = ("/admin/", "/static/", "/status", "/public/")


def api_path(path: str) -> str | None:
    """The canonical /v1 path of an API request, or None for the rest of the site."""
    if path.startswith(NOT_API_PREFIXES):
        return None
    match = API_ENDPOINT.search(path)
    if match:
        return "/v1/" + match.group(1)
    return path if path.startswith("/v1/") else None


class ApiHandler(ASGIHandler):
    """Django's ASGI handler with no middleware."""

    def load_middleware(self, is_async=False):
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        get_response = self._get_response_async if is_async else self._get_response
        self._middleware_chain = convert_exception_to_response(get_response)


async def _send_too_large(send, limit):
    err = PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes.")
    body = openai_error_bytes(err)
    await send({
        "type": "http.response.start",
        "status": err.status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")],
    })
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Reads the whole request body up to `limit` bytes, answering 413 past it."""

    def __init__(self, app, limit):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.limit:
                    return await _send_too_large(send, self.limit)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # disconnected before sending it all
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await _send_too_large(send, self.limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            # Afterwards the app listens for the client's disconnect.
            return await receive()

        await self.app(scope, replay, send)


class Dispatcher:
    def __init__(self):
        self.api = BodyLimit(ApiHandler(), settings.GATEWAY_MAX_BODY_BYTES)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path = api_path(scope["path"])
            if path is not None:
                if path != scope["path"]:
                    scope = {**scope, "path": path, "raw_path": path.encode()}
                return await self.api(scope, receive, send)
        return await site_application(scope, receive, send)


application = ProtocolTypeRouter({"http": Dispatcher()})
