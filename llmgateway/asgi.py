"""The ASGI application Daphne serves.

API paths (/v1 and the OpenAI-compatible path variants, see routing/endpoints.py) go to a trimmed Django handler
(llmgateway/apihandler.py) without the middleware stack or per-request threads: the API
uses neither sessions, CSRF nor the admin's auth. Everything else (admin, status page)
gets Django's full stack. Daphne serves this application as it is: every route here is
HTTP, so Channels' protocol router would only add a layer to every request.
"""
import atexit
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmgateway.settings")

from django.conf import settings  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from llmgateway import runtime  # noqa: E402
from llmgateway.apihandler import ApiHandler, settle_heap, watch_for_shutdown  # noqa: E402
from routing.endpoints import canonical_path  # noqa: E402

site_application = get_asgi_application()


class Dispatcher:
    def __init__(self):
        self.api = ApiHandler(body_limit=settings.GATEWAY_MAX_BODY_BYTES, urlconf="llmgateway.api_urls")

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path = canonical_path(scope["path"])
            if path is not None:
                if path != scope["path"]:
                    scope = {**scope, "path": path, "raw_path": path.encode()}
                return await self.api.handle(scope, receive, send)
        return await site_application(scope, receive, send)


application = Dispatcher()
watch_for_shutdown()
atexit.register(runtime.close_at_exit)
import llmgateway.api_urls  # noqa: E402,F401  (loaded now, so that it is part of the settled heap)

settle_heap()
