"""Admin for virtual keys (a new key's secret is shown once, in the response to its creation),
and the operators' own accounts."""
from django import forms
from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin as BaseGroupAdmin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.models import Group, User
from django.core.exceptions import ValidationError
from django.template.response import TemplateResponse
from django.utils.cache import add_never_cache_headers
from django.utils.translation import gettext_lazy as _
from unfold.admin import ModelAdmin
from unfold.forms import AdminPasswordChangeForm, UserChangeForm, UserCreationForm

from llmgateway.config import validators

from .models import VirtualKey


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
                    "created_at"]
    list_filter = ["enabled", "budget_period", "log_bodies", "is_monitoring", "allowed_routes"]
    search_fields = ["name", "prefix", "notes"]
    filter_horizontal = ["allowed_routes"]
    readonly_fields = ["prefix_display", "created_at"]
    fieldsets = [
        (None, {"fields": ["name", "prefix_display", "enabled", "expires_at", "notes"]}),
        (_("Access"), {"fields": ["allowed_routes"]}),
        (_("Limits"), {"fields": ["rpm", "tpm", "budget_usd", "budget_period"]}),
        (_("Logging"), {"fields": ["log_bodies"]}),
    ]

    @admin.display(description=_("key"))
    def prefix_display(self, obj):
        return f"{obj.prefix}…" if obj and obj.prefix else _("(generated when saved)")

    @admin.display(description=_("models"))
    def model_list(self, obj):
        names = [r.name for r in obj.allowed_routes.all()]
        return ", ".join(names) if names else _("all")

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("allowed_routes")

    def save_model(self, request, obj, form, change):
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
