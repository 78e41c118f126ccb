"""Admin for virtual keys. A new key's secret is shown once, in the response to its creation."""
from django.contrib import admin
from django.template.response import TemplateResponse
from django.utils.cache import add_never_cache_headers

from .models import VirtualKey


@admin.register(VirtualKey)
class VirtualKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix_display", "enabled", "expires_at", "model_list", "rpm", "tpm", "budget_usd",
                    "budget_period", "log_bodies", "created_at"]
    list_filter = ["enabled", "budget_period", "log_bodies", "is_monitoring", "allowed_routes"]
    search_fields = ["name", "prefix", "notes"]
    filter_horizontal = ["allowed_routes"]
    readonly_fields = ["prefix_display", "created_at"]
    fieldsets = [
        (None, {"fields": ["name", "prefix_display", "enabled", "expires_at", "notes"]}),
        ("Access", {"fields": ["all_models", "allowed_routes"]}),
        ("Limits", {"fields": ["rpm", "tpm", "budget_usd", "budget_period"]}),
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
