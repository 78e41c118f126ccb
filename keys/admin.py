"""Admin for virtual keys (a new key's secret is shown once, in the response to its creation),
and the operators' own accounts."""
from datetime import datetime

from django import forms
from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin as BaseGroupAdmin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.models import Group, User
from django.core.exceptions import ValidationError
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _
from redis.exceptions import RedisError
from unfold.admin import ModelAdmin
from unfold.forms import AdminPasswordChangeForm, UserChangeForm, UserCreationForm

from llmgateway.config import validators

from .limits import KeyUsage, usage_snapshot_sync
from .models import KeySpend, VirtualKey

USAGE_UNAVAILABLE = _("unavailable (Redis unreachable)")


class VirtualKeyForm(forms.ModelForm):
    class Meta:
        model = VirtualKey
        fields = "__all__"

    def clean(self):
        cleaned = super().clean()
        for name in ("rpm", "tpm", "budget_usd"):
            try:
                validators.validate_not_negative(cleaned.get(name))
            except ValidationError as exc:
                self.add_error(name, exc)
        return cleaned


@admin.register(VirtualKey)
class VirtualKeyAdmin(ModelAdmin):
    form = VirtualKeyForm
    list_display = ["name", "prefix_display", "enabled", "expires_at", "model_list", "rpm", "budget_usd",
                    "spend_display", "created_at"]
    list_filter = ["enabled", "budget_period", "log_bodies", "is_monitoring", "allowed_routes"]
    search_fields = ["name", "prefix", "notes"]
    filter_horizontal = ["allowed_routes"]
    readonly_fields = ["prefix_display", "created_at", "usage_display"]
    fieldsets = [
        (None, {"fields": ["name", "prefix_display", "enabled", "expires_at", "notes"]}),
        (_("Access"), {"fields": ["all_models", "allowed_routes"]}),
        (_("Limits"), {"fields": ["rpm", "tpm", "budget_usd", "budget_period", "unpriced_policy"]}),
        (_("Usage now"), {"fields": ["usage_display"]}),
        (_("Logging"), {"fields": ["log_bodies"]}),
    ]

    @admin.display(description=_("key"))
    def prefix_display(self, obj):
        return f"{obj.prefix}…" if obj and obj.prefix else _("(generated when saved)")

    @admin.display(description=_("models"))
    def model_list(self, obj):
        if obj.all_models:
            return _("all")
        return ", ".join(r.name for r in obj.allowed_routes.all()) or _("none")

    @admin.display(description=_("spend this period"))
    def spend_display(self, obj):
        usage = getattr(obj, "live_usage", None)
        if usage is None:
            return "–" if obj.budget_usd is None else USAGE_UNAVAILABLE
        if usage.budget_usd is None:
            return _("no budget")
        return f"${usage.spent_usd or 0:.4f} / ${usage.budget_usd:.2f}"

    @admin.display(description=_("usage"))
    def usage_display(self, obj):
        if obj is None or obj.pk is None:
            return _("(none yet)")
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
                   "secret": secret, "title": _("Virtual key created")}
        response = TemplateResponse(request, "admin/keys/virtualkey/created.html", context)
        add_never_cache_headers(response)
        return response


@admin.register(KeySpend)
class KeySpendAdmin(ModelAdmin):
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
        (_("requests in the last minute"), f"{usage.rpm_used}" + (f" of {obj.rpm}" if obj.rpm else "")),
        (_("tokens in the last minute"), f"{usage.tpm_used}" + (f" of {obj.tpm}" if obj.tpm else "")),
    ]
    if usage.budget_usd is None:
        rows.append((_("budget"), _("none")))
        return rows
    resets = _("never (total budget)") if usage.resets_at is None else timezone.localtime(
        datetime.fromtimestamp(usage.resets_at, timezone.get_current_timezone())).strftime("%Y-%m-%d %H:%M %Z")
    rows += [
        (f"spent ({usage.period})", f"${usage.spent_usd or 0:.6f}"),
        (_("held by requests in flight"), f"${usage.reserved_usd:.6f}"),
        (_("remaining"), f"${usage.remaining_usd:.6f} of ${usage.budget_usd:.2f}"),
        (_("resets"), resets),
    ]
    return rows


# The operators' accounts, in the same theme as everything else.
admin.site.unregister(User)
admin.site.unregister(Group)


@admin.register(User)
class UserAdmin(BaseUserAdmin, ModelAdmin):
    form = UserChangeForm
    add_form = UserCreationForm
    change_password_form = AdminPasswordChangeForm


@admin.register(Group)
class GroupAdmin(BaseGroupAdmin, ModelAdmin):
    pass
