"""Root URLs: the admin, process probes, and the /v1 API (last: it matches path variants)."""
from django.contrib import admin
from django.urls import path

from . import views
from . import api as api_views
from .api import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", views.healthz),
    path("readyz", views.readyz),
    # healthcheck's /status and /public/health/* arrive with the monitoring issue.
    path("", api.urls),
    path("v1/<path:rest>", api_views.not_found),
]
