"""Admin for health monitoring: the settings singleton, targets, runs, rollups and incidents."""
from django.contrib import admin
from django.utils.html import format_html

from .models import HealthIncident, HealthRollup, HealthRun, HealthTarget, MonitoringSettings


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records the monitor writes: to look at, not to edit."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(MonitoringSettings)
class MonitoringSettingsAdmin(admin.ModelAdmin):
    list_display = ["__str__", "enabled", "default_interval_s", "default_prompt", "monitoring_key_display"]
    readonly_fields = ["monitoring_key_display"]

    @admin.display(description="monitoring virtual key")
    def monitoring_key_display(self, obj):
        key = obj.monitoring_key if obj else None
        if key is None:
            return "(created when monitoring is first turned on)"
        return f"{key.name} ({key.prefix}…): every model, no limits, bodies not logged"

    def has_add_permission(self, request):
        return not MonitoringSettings.objects.exists()

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(HealthTarget)
class HealthTargetAdmin(admin.ModelAdmin):
    list_display = ["name", "route", "route_target", "kind", "enabled", "state_badge", "interval_s", "timeout_s",
                    "retries", "spend_month_usd", "monthly_cap_usd", "last_run_at", "next_run_at"]
    list_filter = ["enabled", "kind", "state", "route"]
    search_fields = ["name", "route__name"]
    list_select_related = ["route", "route_target__provider"]
    readonly_fields = ["state", "last_run_at", "next_run_at", "spend_month", "spend_month_usd", "spend_total_usd"]
    fieldsets = [
        (None, {"fields": ["name", "route", "route_target", "enabled"]}),
        ("Probe", {"fields": ["kind", "prompt", "max_tokens", "interval_s", "timeout_s", "retries"]}),
        ("Spend", {"fields": ["monthly_cap_usd", "spend_month", "spend_month_usd", "spend_total_usd"]}),
        ("Status", {"fields": ["state", "last_run_at", "next_run_at"]}),
    ]

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj):
        colour = {"healthy": "#1f9d55", "degraded": "#d69e2e", "down": "#e3342f"}.get(obj.state, "#9aa5b1")
        return format_html('<span style="color:{};font-weight:600">{}</span>', colour, obj.state)


@admin.register(HealthRun)
class HealthRunAdmin(ReadOnlyAdmin):
    list_display = ["started_at", "target", "outcome", "status_code", "latency_ms", "ttfb_ms", "error_kind",
                    "attempts", "cost_usd", "request_id"]
    list_filter = ["outcome", "error_kind", "target", "started_at"]
    search_fields = ["target__name", "error_message", "request_id"]
    date_hierarchy = "started_at"
    list_select_related = ["target"]


@admin.register(HealthIncident)
class HealthIncidentAdmin(ReadOnlyAdmin):
    list_display = ["target", "state", "started_at", "ended_at"]
    list_filter = ["state", "target"]
    list_select_related = ["target"]


@admin.register(HealthRollup)
class HealthRollupAdmin(ReadOnlyAdmin):
    list_display = ["target", "bucket", "runs", "live", "failures"]
    list_filter = ["target"]
    list_select_related = ["target"]
