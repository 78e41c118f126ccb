"""The ASGI application Daphne serves.

API paths (/v1 and the OpenAI-compatible path variants) go to a trimmed Django handler
(llmgateway/apihandler.py) without the middleware stack or per-request threads: the API
uses neither sessions, CSRF nor the admin's auth. Everything else (admin, status page)
gets Django's full stack. Daphne serves this application as it is: every route here is
HTTP, so Channels' protocol router would only add a layer to every request.
"""
import os
import re

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmgateway.settings")

from django.conf import settings  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from llmgateway.apihandler import ApiHandler, settle_heap  # noqa: E402

site_application = get_asgi_application()


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


class Dispatcher:
    def __init__(self):
        self.api = ApiHandler(body_limit=settings.GATEWAY_MAX_BODY_BYTES, urlconf="llmgateway.api_urls")

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path = api_path(scope["path"])
            if path is not None:
                if path != scope["path"]:
                    scope = {**scope, "path": path, "raw_path": path.encode()}
                return await self.api.handle(scope, receive, send)
        return await site_application(scope, receive, send)


application = Dispatcher()
import llmgateway.api_urls  # noqa: E402,F401  (loaded now, so that it is part of the settled heap)

settle_heap()
