"""Admin for providers, their keys (write-only secrets) and the model catalog."""
import math
import time
from datetime import datetime, timezone as dt_timezone

from django import forms
from django.contrib import admin, messages
from django.db import models
from django.utils import timezone
from redis.exceptions import RedisError

from .models import CatalogEntry, Provider, ProviderKey


class ProviderKeyForm(forms.ModelForm):
    """The secret is write-only: never rendered back, only its last four characters are shown."""

    secret = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only. Leave empty to keep the stored secret.",
    )

    class Meta:
        model = ProviderKey
        fields = ["label", "secret", "enabled", "weight"]

    def clean(self):
        cleaned = super().clean()
        if not self.instance.pk and not cleaned.get("secret"):
            self.add_error("secret", "A new key needs its secret.")
        return cleaned

    def save(self, commit=True):
        if self.cleaned_data.get("secret"):
            self.instance.set_secret(self.cleaned_data["secret"])
        return super().save(commit)

    def has_changed(self):
        # A typed secret is a change even though the field renders empty.
        return super().has_changed() or bool(self.data.get(self.add_prefix("secret")))


class ProviderKeyInline(admin.TabularInline):
    model = ProviderKey
    form = ProviderKeyForm
    extra = 0
    fields = ["label", "secret", "stored", "enabled", "weight"]
    readonly_fields = ["stored"]

    @admin.display(description="stored secret")
    def stored(self, obj):
        return f"…{obj.secret_last4}" if obj and obj.secret_last4 else "—"


class CatalogInline(admin.TabularInline):
    model = CatalogEntry
    extra = 0
    fields = ["model_id", "context_window", "max_output_tokens", "input_price_per_m", "output_price_per_m",
              "cached_input_price_per_m", "supports_tools", "supports_vision", "supports_reasoning"]
    show_change_link = True


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    list_display = ["name", "type", "base_url", "enabled", "weight", "timeout_s", "key_count", "updated_at"]
    list_filter = ["type", "enabled"]
    search_fields = ["name", "base_url"]
    list_editable = ["enabled"]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    inlines = [ProviderKeyInline, CatalogInline]

    @admin.display(description="keys")
    def key_count(self, obj):
        return obj.keys.count()

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("keys")


@admin.register(ProviderKey)
class ProviderKeyAdmin(admin.ModelAdmin):
    form = ProviderKeyForm
    list_display = ["__str__", "provider", "label", "masked", "enabled", "weight", "cooldown", "created_at"]
    list_filter = ["enabled", "provider__type", "provider"]
    search_fields = ["label", "provider__name"]
    list_select_related = ["provider"]
    actions = ["clear_cooldowns"]

    def get_changelist_instance(self, request):
        # One MGET for the page's keys: when each cools until (shared by every gateway process).
        changelist = super().get_changelist_instance(request)
        rows = list(changelist.result_list)
        from routing.resilience import key_cooldowns_sync  # routing's state of these keys (lazy: providers sits below routing)

        try:
            cooling = key_cooldowns_sync([k.pk for k in rows])
        except RedisError:
            cooling = None
        for key in rows:
            key.cooling_until = cooling.get(key.pk) if cooling is not None else "unknown"
        return changelist

    @admin.display(description="cooldown")
    def cooldown(self, obj):
        until = getattr(obj, "cooling_until", None)
        if until == "unknown":
            return "unknown (Redis unreachable)"
        if until is None:
            return "ready"
        return f"cooling for {math.ceil(until - time.time())} s (until {timezone.localtime(datetime.fromtimestamp(until, dt_timezone.utc)):%H:%M:%S})"

    @admin.action(description="Clear the cooldown of the selected keys (every gateway process)")
    def clear_cooldowns(self, request, queryset):
        from routing.resilience import clear_key_cooldowns_sync

        try:
            cleared = clear_key_cooldowns_sync(list(queryset.values_list("pk", flat=True)))
        except RedisError:
            self.message_user(request, "Redis is unreachable: no cooldown was cleared.", messages.ERROR)
            return
        self.message_user(request, f"Cleared the cooldown of {cleared} key(s).", messages.SUCCESS)

    def get_fields(self, request, obj=None):
        return ["provider", *ProviderKeyForm.Meta.fields, "masked"]

    readonly_fields = ["masked"]

    @admin.display(description="stored secret")
    def masked(self, obj):
        return f"…{obj.secret_last4}" if obj and obj.secret_last4 else "—"

    def get_form(self, request, obj=None, **kwargs):
        kwargs["fields"] = ["provider", *ProviderKeyForm.Meta.fields]
        return super().get_form(request, obj, **kwargs)


@admin.register(CatalogEntry)
class CatalogEntryAdmin(admin.ModelAdmin):
    list_display = ["model_id", "provider", "context_window", "max_output_tokens", "input_price_per_m",
                    "output_price_per_m", "cached_input_price_per_m", "capability_list"]
    list_filter = ["provider", "supports_tools", "supports_vision", "supports_reasoning", "supports_embeddings"]
    search_fields = ["model_id", "provider__name"]
    list_select_related = ["provider"]

    @admin.display(description="capabilities")
    def capability_list(self, obj):
        return ", ".join(obj.capabilities) or "—"
