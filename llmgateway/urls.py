"""Root URLs: the admin, process probes, /status and /public/health, and the /v1 API (last: it matches path variants)."""
from django.contrib import admin
from django.urls import include, path

from . import views
from . import api as api_views
from .api import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", views.healthz),
    path("readyz", views.readyz),
    path("", include("healthcheck.urls")),
    path("", api.urls),
    path("v1/<path:rest>", api_views.not_found),
]
