"""Admin for providers, their keys (write-only secrets) and the model catalog."""
import re

from django import forms
from django.contrib import admin
from django.db import models
from django.utils.html import format_html_join
from django.utils.safestring import mark_safe

from .models import CatalogEntry, Provider, ProviderKey

# RFC 9110 token characters.
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


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


class WriteOnlyTextarea(forms.Textarea):
    """A textarea that never renders a value back, not even after a validation error."""

    def format_value(self, value):
        return None


class ProviderForm(forms.ModelForm):
    """Secret extra headers are write-only, like provider keys: typed here, stored encrypted,
    shown only as their last four characters."""

    base_url = forms.URLField(max_length=500, assume_scheme="https",
                              help_text=Provider._meta.get_field("base_url").help_text)
    set_secret_headers = forms.CharField(
        required=False, label="set secret headers",
        widget=WriteOnlyTextarea(attrs={"rows": 3, "autocomplete": "off", "spellcheck": "false"}),
        help_text="Write-only. One <code>Name: value</code> per line adds or replaces a secret header; "
                  "<code>Name:</code> alone removes it. Stored encrypted.",
    )

    class Meta:
        model = Provider
        fields = ["name", "type", "base_url", "enabled", "timeout_s", "weight", "extra_headers", "secret_header_names"]

    def clean_set_secret_headers(self) -> dict:
        changes = {}
        for number, line in enumerate(self.cleaned_data["set_secret_headers"].splitlines(), start=1):
            if not line.strip():
                continue
            name, colon, value = line.partition(":")
            name = name.strip()
            if not colon or not HEADER_NAME.fullmatch(name):
                # Never echo the line: it may hold the secret.
                raise forms.ValidationError(f"line {number}: expected 'Name: value' with a valid header name")
            changes[name] = value.strip()
        return changes

    def clean_secret_header_names(self):
        names = self.cleaned_data["secret_header_names"] or []
        if not isinstance(names, list) or not all(isinstance(n, str) and HEADER_NAME.fullmatch(n) for n in names):
            raise forms.ValidationError('Expected a list of header names, e.g. ["X-Custom-Token"].')
        return names

    def save(self, commit=True):
        provider = self.instance
        secret = provider.secret_headers()
        changes = self.cleaned_data.get("set_secret_headers") or {}
        for name, value in changes.items():
            for same in [n for n in secret if n.lower() == name.lower()]:
                del secret[same]
            if value:
                secret[name] = value
        # A header entered here is secret whatever its name.
        marked = {*provider.secret_header_names, *(n for n, v in changes.items() if v and not provider.is_secret_header(n))}
        provider.set_headers({**(provider.extra_headers or {}), **secret}, sorted(marked))
        return super().save(commit)

    def has_changed(self):
        return super().has_changed() or bool(self.data.get(self.add_prefix("set_secret_headers")))


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    form = ProviderForm
    list_display = ["name", "type", "base_url", "enabled", "weight", "timeout_s", "key_count", "updated_at"]
    list_filter = ["type", "enabled"]
    search_fields = ["name", "base_url"]
    list_editable = ["enabled"]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    inlines = [ProviderKeyInline, CatalogInline]
    readonly_fields = ["stored_secret_headers"]
    fields = ["name", "type", "base_url", "enabled", "timeout_s", "weight", "extra_headers", "secret_header_names",
              "stored_secret_headers", "set_secret_headers"]

    @admin.display(description="stored secret headers")
    def stored_secret_headers(self, obj):
        try:
            masked = obj.masked_secret_headers() if obj else {}
        except ValueError:
            return "cannot be decrypted with the configured ENCRYPTION_KEYS"
        return format_html_join(mark_safe("<br>"), "{}: {}", masked.items()) if masked else "—"

    @admin.display(description="keys")
    def key_count(self, obj):
        return obj.keys.count()

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("keys")


@admin.register(ProviderKey)
class ProviderKeyAdmin(admin.ModelAdmin):
    form = ProviderKeyForm
    list_display = ["__str__", "provider", "label", "masked", "enabled", "weight", "created_at"]
    list_filter = ["enabled", "provider__type", "provider"]
    search_fields = ["label", "provider__name"]
    list_select_related = ["provider"]

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
