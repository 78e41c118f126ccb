"""Admin for health monitoring: the settings singleton, targets and runs."""
from django.contrib import admin

from .models import HealthRun, HealthTarget, MonitoringSettings


@admin.register(MonitoringSettings)
class MonitoringSettingsAdmin(admin.ModelAdmin):
    list_display = ["__str__", "enabled", "default_interval_s", "default_prompt"]

    def has_add_permission(self, request):
        return not MonitoringSettings.objects.exists()

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(HealthTarget)
class HealthTargetAdmin(admin.ModelAdmin):
    list_display = ["name", "route", "enabled", "interval_s", "timeout_s", "next_run_at"]
    list_filter = ["enabled", "route"]
    search_fields = ["name", "route__name"]
    list_select_related = ["route"]


@admin.register(HealthRun)
class HealthRunAdmin(admin.ModelAdmin):
    list_display = ["started_at", "target", "outcome", "status_code", "latency_ms", "ttfb_ms", "error_kind"]
    list_filter = ["outcome", "error_kind", "target", "started_at"]
    search_fields = ["target__name", "error_message"]
    date_hierarchy = "started_at"
    list_select_related = ["target"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
