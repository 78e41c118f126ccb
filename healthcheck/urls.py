"""The public health surface: /status and /public/health/*."""
from django.urls import path

from . import views

app_name = "healthcheck"

urlpatterns = [
    path("status", views.status_page, name="status"),
    path("status/<int:target_id>", views.target_page, name="target"),
    path("public/health/summary", views.api_summary, name="api-summary"),
    path("public/health/targets", views.api_targets, name="api-targets"),
    path("public/health/detail", views.api_detail, name="api-detail"),
    path("public/health/runs", views.api_runs, name="api-runs"),
]
