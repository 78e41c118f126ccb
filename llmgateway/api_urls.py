"""The URLs the /v1 handler resolves against (llmgateway.asgi): the API's alone, flat.

The site's root URLs (llmgateway/urls.py) mount the same API for everything else; here
the hot path skips the admin's patterns and the include's nesting.
"""
from django.urls import path

from .api import api, not_found

urlpatterns = [
    *api.urls[0],
    path("v1/<path:rest>", not_found),
]
