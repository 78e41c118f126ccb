"""Admin for providers, their keys (write-only secrets) and the model catalog.

Besides the usual pages: presets of known providers, "test connection" for a provider
or one of its keys, "fetch models" (import an upstream's model list into the catalog),
and model metadata search and apply. Each tool is a form that works without JavaScript;
htmx only swaps the result in place (one view serves the page and its fragment).
"""
import math
import re
import time
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html_join
from django.utils.safestring import mark_safe
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_POST
from redis.exceptions import RedisError
from unfold.admin import ModelAdmin, TabularInline
from unfold.widgets import UnfoldAdminPasswordWidget, UnfoldAdminTextareaWidget, UnfoldAdminTextInputWidget

from llmgateway.config import validators

from .catalog import apply_metadata, import_models, metadata_for
from .connection import check_connection
from .crypto import decrypt_secret, encrypt_secret
from .metadata import metadata_index
from .models import CatalogEntry, Provider, ProviderKey
from .presets import all_presets, get_preset, search_presets


MAX_MODEL_ID = CatalogEntry._meta.get_field("model_id").max_length


def is_htmx(request) -> bool:
    return request.headers.get("HX-Request") == "true"


def page_or_fragment(request, admin_site, page: str, fragment: str, context: dict) -> TemplateResponse:
    """The full admin page, or only its fragment when htmx asks for it."""
    if is_htmx(request):
        return TemplateResponse(request, fragment, context)
    return TemplateResponse(request, page, {**admin_site.each_context(request), **context})

# RFC 9110 token characters.
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class ProviderKeyForm(forms.ModelForm):
    """The secret is write-only: never rendered back, only its last four characters are shown.

    A secret typed into a form that fails validation elsewhere (another field, another
    inline) survives the round trip encrypted in a hidden field, so it is neither lost
    nor sent back to the browser in the clear.
    """

    secret = forms.CharField(
        label=_("Secret"),
        required=False,
        strip=True,
        widget=UnfoldAdminPasswordWidget(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=_("Write-only. Leave empty to keep the stored secret."),
    )
    pending_secret = forms.CharField(required=False, widget=forms.HiddenInput)

    class Meta:
        model = ProviderKey
        fields = ["label", "secret", "enabled", "weight"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.is_bound and self._pending_secret():
            self.fields["secret"].help_text = _(
                "A secret typed earlier is kept (encrypted) until you save. Type again to replace it.")

    def _pending_secret(self) -> str:
        token = self.data.get(self.add_prefix("pending_secret"), "")
        if not token:
            return ""
        try:
            return decrypt_secret(token)
        except ValueError:  # tampered with, or from before a key rotation: ask again
            return ""

    def clean(self):
        cleaned = super().clean()
        secret = cleaned.get("secret") or self._pending_secret()
        cleaned["secret"] = secret
        if secret:
            data = self.data.copy()
            data[self.add_prefix("pending_secret")] = encrypt_secret(secret)
            self.data = data
        if not self.instance.pk and not secret:
            self.add_error("secret", _("A new key needs its secret."))
        return cleaned

    def save(self, commit=True):
        if self.cleaned_data.get("secret"):
            self.instance.set_secret(self.cleaned_data["secret"])
        return super().save(commit)

    def has_changed(self):
        # A typed (or kept) secret is a change even though the field renders empty.
        return (super().has_changed() or bool(self.data.get(self.add_prefix("secret")))
                or bool(self.data.get(self.add_prefix("pending_secret"))))


def stored_secret(obj) -> str:
    return f"…{obj.secret_last4}" if obj and obj.secret_last4 else "—"


class ProviderKeyInline(TabularInline):
    model = ProviderKey
    form = ProviderKeyForm
    extra = 0
    fields = ["label", "secret", "pending_secret", "stored", "enabled", "weight"]
    readonly_fields = ["stored"]

    @admin.display(description=_("stored secret"))
    def stored(self, obj):
        return stored_secret(obj)


class CatalogInline(TabularInline):
    model = CatalogEntry
    extra = 0
    fields = ["model_id", "context_window", "input_price_per_m", "output_price_per_m", "supports_tools",
              "supports_vision", "supports_reasoning"]
    show_change_link = True
    tab = True


class WriteOnlyTextarea(UnfoldAdminTextareaWidget):
    """A textarea that never renders a value back, not even after a validation error."""

    def format_value(self, value):
        return None


class ProviderForm(forms.ModelForm):
    """Adds the preset picker; a chosen preset fills in the type and an empty base URL.

    Secret extra headers are write-only, like provider keys: typed here, stored
    encrypted, shown only as their last four characters."""

    preset = forms.CharField(
        label=_("Preset"),
        required=False,
        widget=UnfoldAdminTextInputWidget(attrs={"list": "provider-presets", "autocomplete": "off",
                                                 "placeholder": _("Type to search: deepseek, ollama, …")}),
        help_text=_("A known provider: fills in the type and base URL. Leave the base URL empty to take the preset's."),
    )

    set_secret_headers = forms.CharField(
        label=_("Set secret headers"), required=False,
        widget=WriteOnlyTextarea(attrs={"rows": 3, "autocomplete": "off", "spellcheck": "false"}),
        help_text=_("Write-only. One “Name: value” per line adds or replaces a secret header; "
                    "“Name:” alone removes it. Stored encrypted."),
    )

    class Meta:
        model = Provider
        fields = ["preset", "name", "type", "base_url", "enabled", "timeout_s", "weight", "extra_headers",
                  "secret_header_names"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "base_url" in self.fields:
            self.fields["base_url"].required = False  # a preset may supply it; clean() insists otherwise
        if self.instance.pk:
            self.fields.pop("preset", None)

    def clean_preset(self):
        slug = self.cleaned_data.get("preset", "").strip()
        if slug and get_preset(slug) is None:
            raise ValidationError(_("Unknown preset. Pick one from the list."))
        return slug

    def clean_base_url(self):
        url = self.cleaned_data.get("base_url", "")
        if url:
            validators.validate_base_url(url)
        return url

    def clean_timeout_s(self):
        value = self.cleaned_data.get("timeout_s")
        validators.validate_timeout(value)
        return value

    def clean(self):
        cleaned = super().clean()
        preset = get_preset(cleaned.get("preset") or "")
        if preset is not None:
            cleaned["type"] = preset.type
            if not cleaned.get("base_url"):
                cleaned["base_url"] = preset.base_url
        if not cleaned.get("base_url") and "base_url" not in self.errors:
            self.add_error("base_url", _("Enter a base URL, or pick a preset."))
        return cleaned

    def clean_set_secret_headers(self) -> dict:
        changes = {}
        for number, line in enumerate(self.cleaned_data["set_secret_headers"].splitlines(), start=1):
            if not line.strip():
                continue
            name, colon, value = line.partition(":")
            name = name.strip()
            if not colon or not HEADER_NAME.fullmatch(name):
                # Never echo the line: it may hold the secret.
                raise ValidationError(_("line %(number)s: expected “Name: value” with a valid header name")
                                      % {"number": number})
            changes[name] = value.strip()
        return changes

    def clean_secret_header_names(self):
        names = self.cleaned_data["secret_header_names"] or []
        if not isinstance(names, list) or not all(isinstance(n, str) and HEADER_NAME.fullmatch(n) for n in names):
            raise ValidationError(_('Expected a list of header names, e.g. ["X-Custom-Token"].'))
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
class ProviderAdmin(ModelAdmin):
    form = ProviderForm
    list_display = ["name", "type", "base_url", "enabled", "key_count", "updated_at"]
    list_filter = ["type", "enabled"]
    search_fields = ["name", "base_url"]
    list_editable = ["enabled"]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    inlines = [ProviderKeyInline, CatalogInline]
    list_before_template = "admin/providers/provider/_list_tools.html"
    change_form_outer_before_template = "admin/providers/provider/_preset_list.html"
    change_form_outer_after_template = "admin/providers/provider/_tools.html"
    readonly_fields = ["stored_secret_headers"]

    @admin.display(description=_("stored secret headers"))
    def stored_secret_headers(self, obj):
        try:
            masked = obj.masked_secret_headers() if obj else {}
        except ValueError:
            return _("cannot be decrypted with the configured ENCRYPTION_KEYS")
        return format_html_join(mark_safe("<br>"), "{}: {}", masked.items()) if masked else "—"

    @admin.display(description=_("keys"))
    def key_count(self, obj):
        return obj.key_total

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(key_total=Count("keys"))

    def get_fields(self, request, obj=None):
        fields = [*ProviderForm.Meta.fields, "stored_secret_headers", "set_secret_headers"]
        return fields[1:] if obj is not None else fields  # a preset only helps to create

    def get_changeform_initial_data(self, request):
        initial = super().get_changeform_initial_data(request)
        preset = get_preset(request.GET.get("preset", ""))
        if preset is not None:
            initial.update(preset=preset.slug, name=preset.slug, type=preset.type, base_url=preset.base_url)
        return initial

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "presets": all_presets()}
        return super().changeform_view(request, object_id, form_url, extra_context)

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("presets/", view(self.presets_view), name="providers_provider_presets"),
            path("<int:provider_id>/test/", view(self.test_connection_view), name="providers_provider_test"),
            path("<int:provider_id>/keys/<int:key_id>/test/", view(self.test_connection_view),
                 name="providers_providerkey_test"),
            path("<int:provider_id>/fetch-models/", view(self.fetch_models_view),
                 name="providers_provider_fetch_models"),
            *super().get_urls(),
        ]

    def _provider(self, request, provider_id) -> Provider:
        provider = get_object_or_404(Provider, pk=provider_id)
        if not self.has_change_permission(request, provider):
            raise PermissionDenied
        return provider

    def presets_view(self, request):
        """The searchable list of presets; each links to the add form filled in from it."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        query = request.GET.get("q", "")
        context = {"title": _("Add a provider from a preset"), "opts": self.opts, "query": query,
                   "presets": search_presets(query)}
        return page_or_fragment(request, self.admin_site, "admin/providers/provider/presets.html",
                                "admin/providers/provider/_preset_rows.html", context)

    def test_connection_view(self, request, provider_id, key_id=None):
        """GET shows the button; POST contacts the upstream (never on a GET: it costs a request)."""
        provider = self._provider(request, provider_id)
        key = get_object_or_404(ProviderKey, pk=key_id, provider=provider) if key_id else None
        result = check_connection(provider, key) if request.method == "POST" else None
        context = {"title": _("Test connection"), "opts": self.opts, "provider": provider, "key": key,
                   "result": result, "original": provider}
        return page_or_fragment(request, self.admin_site, "admin/providers/provider/test_connection.html",
                                "admin/providers/provider/_connection_result.html", context)

    def fetch_models_view(self, request, provider_id):
        """GET reads the upstream's model list; POST imports the chosen models."""
        provider = self._provider(request, provider_id)
        if request.method == "POST":
            chosen = [m.strip() for m in request.POST.getlist("model") if m.strip()]
            if not chosen:
                messages.warning(request, _("No model was chosen."))
                return redirect(request.path)
            if any(len(m) > MAX_MODEL_ID for m in chosen):
                messages.error(request, _("A model id is longer than %(max)s characters.") % {"max": MAX_MODEL_ID})
                return redirect(request.path)
            create_routes = request.POST.get("create_routes") == "on"
            if create_routes and not request.user.has_perms(["routing.add_route", "routing.add_routetarget"]):
                raise PermissionDenied
            summary = import_models(provider, chosen, create_routes=create_routes)
            messages.success(request, _(
                "Imported %(created)s models (%(priced)s priced from model metadata, %(existing)s already in the "
                "catalog); %(routes)s routes created.") % {
                "created": len(summary.created), "priced": len(summary.priced), "existing": len(summary.existing),
                "routes": len(summary.routes_created)})
            return redirect(reverse("admin:providers_provider_change", args=[provider.pk]))
        result = check_connection(provider)
        query = request.GET.get("q", "").strip().lower()
        in_catalog = set(provider.catalog.values_list("model_id", flat=True))
        rows = [{"model_id": m, "in_catalog": m in in_catalog, "metadata": metadata_for(provider, m)}
                for m in result.models if query in m.lower()]
        context = {"title": _("Fetch models"), "opts": self.opts, "provider": provider, "original": provider,
                   "result": result, "rows": rows, "query": request.GET.get("q", "")}
        return page_or_fragment(request, self.admin_site, "admin/providers/provider/fetch_models.html",
                                "admin/providers/provider/_fetched_models.html", context)


@admin.register(ProviderKey)
class ProviderKeyAdmin(ModelAdmin):
    form = ProviderKeyForm
    list_display = ["__str__", "provider", "label", "masked", "enabled", "weight", "cooldown", "created_at"]
    list_filter = ["enabled", "provider__type", "provider"]
    search_fields = ["label", "provider__name"]
    list_select_related = ["provider"]
    readonly_fields = ["masked"]
    change_form_outer_after_template = "admin/providers/providerkey/_tools.html"

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

    @admin.display(description=_("cooldown"))
    def cooldown(self, obj):
        until = getattr(obj, "cooling_until", None)
        if until == "unknown":
            return _("unknown (Redis unreachable)")
        if until is None:
            return _("ready")
        return f"cooling for {math.ceil(until - time.time())} s (until {timezone.localtime(datetime.fromtimestamp(until, dt_timezone.utc)):%H:%M:%S})"

    @admin.action(description=_("Clear the cooldown of the selected keys (every gateway process)"))
    def clear_cooldowns(self, request, queryset):
        from routing.resilience import clear_key_cooldowns_sync

        try:
            cleared = clear_key_cooldowns_sync(list(queryset.values_list("pk", flat=True)))
        except RedisError:
            self.message_user(request, _("Redis is unreachable: no cooldown was cleared."), messages.ERROR)
            return
        self.message_user(request, f"Cleared the cooldown of {cleared} key(s).", messages.SUCCESS)

    def get_fields(self, request, obj=None):
        return ["provider", *ProviderKeyForm.Meta.fields, "masked"]

    @admin.display(description=_("stored secret"))
    def masked(self, obj):
        return stored_secret(obj)

    def get_form(self, request, obj=None, **kwargs):
        kwargs["fields"] = ["provider", *ProviderKeyForm.Meta.fields]
        return super().get_form(request, obj, **kwargs)


class CatalogEntryForm(forms.ModelForm):
    class Meta:
        model = CatalogEntry
        fields = "__all__"

    def clean(self):
        cleaned = super().clean()
        for name in ("context_window", "max_output_tokens", "input_price_per_m", "output_price_per_m",
                     "cached_input_price_per_m"):
            try:
                validators.validate_not_negative(cleaned.get(name))
            except ValidationError as exc:
                self.add_error(name, exc)
        return cleaned


@admin.register(CatalogEntry)
class CatalogEntryAdmin(ModelAdmin):
    form = CatalogEntryForm
    list_display = ["model_id", "provider", "context_window", "input_price_per_m", "output_price_per_m",
                    "capability_list"]
    list_filter = ["provider", "supports_tools", "supports_vision", "supports_reasoning", "supports_embeddings"]
    search_fields = ["model_id", "provider__name"]
    list_select_related = ["provider"]
    actions = ["apply_model_metadata"]
    change_form_outer_after_template = "admin/providers/catalogentry/_metadata.html"

    @admin.display(description=_("capabilities"))
    def capability_list(self, obj):
        return ", ".join(obj.capabilities) or "—"

    @admin.action(description=_("Apply model metadata (limits, prices, capabilities)"))
    def apply_model_metadata(self, request, queryset):
        updated, unknown = 0, []
        for entry in queryset.select_related("provider"):
            metadata = metadata_for(entry.provider, entry.model_id)
            if metadata is None:
                unknown.append(entry.model_id)
            elif apply_metadata(entry, metadata):
                entry.save()
                updated += 1
        messages.success(request, ngettext("%(count)s catalog model updated.", "%(count)s catalog models updated.",
                                           updated) % {"count": updated})
        if unknown:
            messages.warning(request, _("No metadata known for: %(models)s") % {"models": ", ".join(unknown)})

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        extra_context = dict(extra_context or {})
        if object_id:
            entry = CatalogEntry.objects.select_related("provider").filter(pk=object_id).first()
            if entry is not None:
                extra_context["metadata_match"] = metadata_for(entry.provider, entry.model_id)
        return super().changeform_view(request, object_id, form_url, extra_context)

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("metadata/", view(self.metadata_view), name="providers_model_metadata"),
            path("<int:entry_id>/apply-metadata/", view(require_POST(self.apply_metadata_view)),
                 name="providers_catalogentry_apply_metadata"),
            *super().get_urls(),
        ]

    def metadata_view(self, request):
        """Search LiteLLM's model metadata; with ?entry=<id>, each result can be applied to that entry."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        index = metadata_index()
        query = request.GET.get("q", "").strip()
        provider = request.GET.get("provider", "").strip()
        entry = None
        if request.GET.get("entry", "").isdigit():
            entry = CatalogEntry.objects.select_related("provider").filter(pk=request.GET["entry"]).first()
        results = index.search(query, provider) if (query or provider) else []
        context = {"title": _("Model metadata"), "opts": self.opts, "query": query, "provider": provider,
                   "providers": index.providers(), "results": results, "entry": entry, "total": len(index)}
        return page_or_fragment(request, self.admin_site, "admin/providers/catalogentry/metadata.html",
                                "admin/providers/catalogentry/_metadata_rows.html", context)

    def apply_metadata_view(self, request, entry_id):
        entry = get_object_or_404(CatalogEntry.objects.select_related("provider"), pk=entry_id)
        if not self.has_change_permission(request, entry):
            raise PermissionDenied
        key = request.POST.get("key", "")
        metadata = metadata_index().get(key) if key else metadata_for(entry.provider, entry.model_id)
        if metadata is None:
            messages.error(request, _("No model metadata found to apply."))
        else:
            changed = apply_metadata(entry, metadata)
            entry.save()
            messages.success(request, _("Applied the metadata of %(model)s to %(entry)s (%(count)s fields changed).")
                             % {"model": metadata.key, "entry": entry, "count": len(changed)})
        return redirect(reverse("admin:providers_catalogentry_change", args=[entry.pk]))


def overview_context(request, context):
    """The overview (admin index): what is configured and how the last 24 hours went."""
    from keys.models import VirtualKey
    from routing.models import RequestLog, Route

    since = timezone.now() - timedelta(hours=24)
    recent = RequestLog.objects.filter(created_at__gte=since).aggregate(
        total=Count("id"), failed=Count("id", filter=Q(status__gte=400)))
    context.update({
        "overview": [
            {"label": _("Providers"), "value": Provider.objects.filter(enabled=True).count(),
             "link": reverse("admin:providers_provider_changelist")},
            {"label": _("Provider keys"), "value": ProviderKey.objects.filter(enabled=True).count(),
             "link": reverse("admin:providers_providerkey_changelist")},
            {"label": _("Models (routes)"), "value": Route.objects.filter(enabled=True).count(),
             "link": reverse("admin:routing_route_changelist")},
            {"label": _("Virtual keys"), "value": VirtualKey.objects.filter(enabled=True, is_monitoring=False).count(),
             "link": reverse("admin:keys_virtualkey_changelist")},
            {"label": _("Requests, last 24 h"), "value": recent["total"],
             "link": reverse("admin:routing_requestlog_changelist")},
            {"label": _("Failed requests, last 24 h"), "value": recent["failed"],
             "link": reverse("admin:routing_requestlog_changelist") + "?status__gte=400"},
        ],
        "recent_requests": RequestLog.objects.order_by("-created_at")[:8],
    })
    return context
