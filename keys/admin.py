"""Admin for virtual keys. A new key's secret is shown once, in the response to its creation."""
from datetime import datetime

from django.contrib import admin
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html, format_html_join
from redis.exceptions import RedisError

from .limits import KeyUsage, usage_snapshot_sync
from .models import KeySpend, VirtualKey

USAGE_UNAVAILABLE = "unavailable (Redis unreachable)"


@admin.register(VirtualKey)
class VirtualKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix_display", "enabled", "expires_at", "model_list", "rpm", "tpm", "budget_usd",
                    "budget_period", "spend_display", "log_bodies", "created_at"]
    list_filter = ["enabled", "budget_period", "log_bodies", "is_monitoring", "allowed_routes"]
    search_fields = ["name", "prefix", "notes"]
    filter_horizontal = ["allowed_routes"]
    readonly_fields = ["prefix_display", "created_at", "usage_display"]
    fieldsets = [
        (None, {"fields": ["name", "prefix_display", "enabled", "expires_at", "notes"]}),
        ("Access", {"fields": ["all_models", "allowed_routes"]}),
        ("Limits", {"fields": ["rpm", "tpm", "budget_usd", "budget_period", "unpriced_policy"]}),
        ("Usage now", {"fields": ["usage_display"]}),
        ("Logging", {"fields": ["log_bodies"]}),
    ]

    @admin.display(description="key")
    def prefix_display(self, obj):
        return f"{obj.prefix}…" if obj and obj.prefix else "(generated when saved)"

    @admin.display(description="models")
    def model_list(self, obj):
        if obj.all_models:
            return "all"
        return ", ".join(r.name for r in obj.allowed_routes.all()) or "none"

    @admin.display(description="spend this period")
    def spend_display(self, obj):
        usage = getattr(obj, "live_usage", None)
        if usage is None:
            return "–" if obj.budget_usd is None else USAGE_UNAVAILABLE
        if usage.budget_usd is None:
            return "no budget"
        return f"${usage.spent_usd or 0:.4f} of ${usage.budget_usd:.2f}"

    @admin.display(description="usage")
    def usage_display(self, obj):
        if obj is None or obj.pk is None:
            return "(none yet)"
        try:
            usage = usage_snapshot_sync([obj])[obj.pk]
        except RedisError:
            return USAGE_UNAVAILABLE
        return format_html("<dl>{}</dl>", format_html_join("", "<dt>{}</dt><dd>{}</dd>", _usage_rows(obj, usage)))

    def get_changelist_instance(self, request):
        # One Redis pipeline for the page's keys, read by spend_display row by row.
        changelist = super().get_changelist_instance(request)
        rows = [vk for vk in changelist.result_list if vk.budget_usd is not None]
        try:
            usage = usage_snapshot_sync(rows)
        except RedisError:
            usage = {}
        for vk in rows:
            vk.live_usage = usage.get(vk.pk)
        return changelist

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("allowed_routes")

    def save_model(self, request, obj, form, change):
        if form.cleaned_data.get("allowed_routes"):
            obj.all_models = False  # choosing models restricts the key to them
        if not change:
            # The plaintext lives only in this request, to be shown once below.
            request.new_virtual_key = obj.set_key()
        super().save_model(request, obj, form, change)

    def response_add(self, request, obj, post_url_continue=None):
        secret = getattr(request, "new_virtual_key", None)
        if secret is None:
            return super().response_add(request, obj, post_url_continue)
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "original": obj,
                   "secret": secret, "title": "Virtual key created"}
        response = TemplateResponse(request, "admin/keys/virtualkey/created.html", context)
        add_never_cache_headers(response)
        return response


@admin.register(KeySpend)
class KeySpendAdmin(admin.ModelAdmin):
    """Spend per key and budget period, as last persisted from Redis: history, read-only."""

    list_display = ["virtual_key", "period", "spent_usd", "updated_at"]
    list_filter = ["period"]
    search_fields = ["virtual_key__name", "period"]
    list_select_related = ["virtual_key"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


def _usage_rows(obj, usage: KeyUsage) -> list[tuple[str, str]]:
    rows = [
        ("requests in the last minute", f"{usage.rpm_used}" + (f" of {obj.rpm}" if obj.rpm else "")),
        ("tokens in the last minute", f"{usage.tpm_used}" + (f" of {obj.tpm}" if obj.tpm else "")),
    ]
    if usage.budget_usd is None:
        rows.append(("budget", "none"))
        return rows
    resets = "never (total budget)" if usage.resets_at is None else timezone.localtime(
        datetime.fromtimestamp(usage.resets_at, timezone.get_current_timezone())).strftime("%Y-%m-%d %H:%M %Z")
    rows += [
        (f"spent ({usage.period})", f"${usage.spent_usd or 0:.6f}"),
        ("held by requests in flight", f"${usage.reserved_usd:.6f}"),
        ("remaining", f"${usage.remaining_usd:.6f} of ${usage.budget_usd:.2f}"),
        ("resets", resets),
    ]
    return rows
