"""Admin for routes, their targets and prompt rules, and the (read-only) request log."""
from django.contrib import admin

from .models import PromptRule, RequestLog, Route, RouteTarget


class RouteTargetInline(admin.TabularInline):
    model = RouteTarget
    extra = 0
    fields = ["provider", "upstream_model", "priority", "weight", "enabled"]


class PromptRuleInline(admin.TabularInline):
    model = PromptRule
    extra = 0
    fields = ["order", "operation", "pattern", "text", "enabled"]


@admin.register(Route)
class RouteAdmin(admin.ModelAdmin):
    list_display = ["name", "alias_list", "strategy", "enabled", "target_count", "max_attempts", "updated_at"]
    list_filter = ["strategy", "enabled", "targets__provider"]
    search_fields = ["name", "aliases", "targets__upstream_model"]
    inlines = [RouteTargetInline, PromptRuleInline]

    @admin.display(description="aliases")
    def alias_list(self, obj):
        return ", ".join(obj.aliases or []) or "—"

    @admin.display(description="targets")
    def target_count(self, obj):
        return obj.targets.count()

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("targets").distinct()


@admin.register(RouteTarget)
class RouteTargetAdmin(admin.ModelAdmin):
    list_display = ["route", "provider", "upstream_model", "priority", "weight", "enabled"]
    list_filter = ["enabled", "provider", "route"]
    search_fields = ["route__name", "upstream_model", "provider__name"]
    list_select_related = ["route", "provider"]


@admin.register(PromptRule)
class PromptRuleAdmin(admin.ModelAdmin):
    list_display = ["route", "order", "operation", "pattern", "short_text", "enabled"]
    list_filter = ["operation", "enabled", "route"]
    search_fields = ["route__name", "pattern", "text"]
    list_select_related = ["route"]

    @admin.display(description="text")
    def short_text(self, obj):
        return obj.text if len(obj.text) <= 60 else obj.text[:60] + "…"


@admin.register(RequestLog)
class RequestLogAdmin(admin.ModelAdmin):
    list_display = ["created_at", "request_id", "key_name", "model_requested", "provider", "upstream_model",
                    "status", "stream", "latency_ms", "ttfb_ms", "attempts", "input_tokens", "output_tokens",
                    "tokens_estimated", "cost_usd", "error_kind"]
    list_filter = ["status", "stream", "tokens_estimated", "error_kind", "endpoint", "provider", "route", "created_at"]
    search_fields = ["request_id", "model_requested", "route", "upstream_model", "error_message", "client_ip"]
    date_hierarchy = "created_at"
    list_select_related = ["virtual_key"]
    show_full_result_count = False  # counting a large log on every page view is slow

    @admin.display(description="key")
    def key_name(self, obj):
        return obj.virtual_key.name if obj.virtual_key_id and obj.virtual_key else "—"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
