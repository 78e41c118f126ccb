"""Root URLs: the admin, the language switch, process probes, /status and /public/health, and
the /v1 API (last: it matches path variants)."""
from django.contrib import admin
from django.urls import include, path
from django.utils.translation import gettext_lazy as _

from . import views
from . import api as api_views
from .api import api

admin.site.site_header = admin.site.site_title = _("LLM Gateway")
admin.site.index_title = _("Overview")

urlpatterns = [
    path("admin/", admin.site.urls),
    path("i18n/", include("django.conf.urls.i18n")),  # POST /i18n/setlang/: the language switch
    path("healthz", views.healthz),
    path("readyz", views.readyz),
    path("", include("healthcheck.urls")),
    path("", api.urls),
    path("v1/<path:rest>", api_views.not_found),
]
