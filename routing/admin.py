"""Admin for routes, their targets and prompt rules, and the (read-only) request log."""
from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.utils.html import escape, format_html_join
from django.utils.safestring import mark_safe
from django.utils.translation import gettext_lazy as _
from unfold.admin import ModelAdmin, TabularInline
from unfold.contrib.filters.admin import RangeDateTimeFilter
from unfold.widgets import UnfoldAdminTextInputWidget

from llmgateway.config import validators
from providers.catalog import is_known_model, known_models

from .models import PromptRule, RefusedTraffic, RequestLog, Route, RouteTarget


class UpstreamModelInput(UnfoldAdminTextInputWidget):
    """A text input suggesting the catalog's models (a datalist): free text is still allowed.

    Every provider's models are listed, each labelled with its provider; a small script
    (static/admin/route_targets.js) narrows the list to the provider chosen in the same row.
    """

    class Media:
        js = ["admin/route_targets.js"]

    def render(self, name, value, attrs=None, renderer=None):
        list_id = f"{(attrs or {}).get('id') or name}-models"
        attrs = {**(attrs or {}), "list": list_id, "autocomplete": "off"}
        options = format_html_join("", '<option value="{}" data-provider="{}">{}</option>', known_models())
        return mark_safe(f'{super().render(name, value, attrs, renderer)}'
                         f'<datalist id="{escape(list_id)}">{options}</datalist>')


class RouteTargetForm(forms.ModelForm):
    class Meta:
        model = RouteTarget
        fields = ["provider", "upstream_model", "priority", "weight", "enabled"]
        widgets = {"upstream_model": UpstreamModelInput}


def warn_about_unknown_models(request, targets) -> None:
    """A target's model need not be in the catalog (it may be new), but a typo should be visible."""
    unknown = [f"{t.provider.name}:{t.upstream_model}" for t in targets
               if t.provider_id and not is_known_model(t.provider_id, t.upstream_model)]
    if unknown:
        messages.warning(request, _("Not in the catalog (check the spelling, or fetch the provider's models): "
                                    "%(models)s") % {"models": ", ".join(unknown)})


class RouteTargetInline(TabularInline):
    model = RouteTarget
    form = RouteTargetForm
    extra = 0
    fields = ["provider", "upstream_model", "priority", "weight", "enabled"]


class PromptRuleForm(forms.ModelForm):
    class Meta:
        model = PromptRule
        fields = ["route", "order", "operation", "pattern", "text", "enabled"]

    def clean_pattern(self):
        pattern = self.cleaned_data.get("pattern", "")
        if pattern:
            validators.validate_regex(pattern)
        return pattern

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("operation") in ("replace", "remove") and not cleaned.get("pattern") \
                and "pattern" not in self.errors:
            self.add_error("pattern", _("Required for this operation."))
        return cleaned


class PromptRuleInline(TabularInline):
    model = PromptRule
    form = PromptRuleForm
    extra = 0
    fields = ["order", "operation", "pattern", "text", "enabled"]
    tab = True


class RouteForm(forms.ModelForm):
    class Meta:
        model = Route
        fields = "__all__"

    def clean_retry_on_status(self):
        codes = self.cleaned_data.get("retry_on_status")
        validators.validate_status_codes(codes if codes is not None else [])
        return codes

    def clean_aliases(self):
        aliases = self.cleaned_data.get("aliases")
        if aliases is not None and (not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases)):
            raise ValidationError(_('Expected a list of names, e.g. ["mini"].'))
        return aliases


@admin.register(Route)
class RouteAdmin(ModelAdmin):
    form = RouteForm
    list_display = ["name", "alias_list", "strategy", "enabled", "target_count", "updated_at"]
    list_filter = ["strategy", "enabled", "targets__provider"]
    search_fields = ["name", "aliases", "targets__upstream_model"]
    inlines = [RouteTargetInline, PromptRuleInline]

    @admin.display(description=_("aliases"))
    def alias_list(self, obj):
        return ", ".join(obj.aliases or []) or "—"

    @admin.display(description=_("targets"))
    def target_count(self, obj):
        return len(obj.targets.all())

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("targets").distinct()

    def save_formset(self, request, form, formset, change):
        super().save_formset(request, form, formset, change)
        if formset.model is RouteTarget:
            warn_about_unknown_models(request, [f.instance for f in formset.forms
                                                if f.instance.pk and f not in formset.deleted_forms])


@admin.register(RouteTarget)
class RouteTargetAdmin(ModelAdmin):
    form = RouteTargetForm
    list_display = ["route", "provider", "upstream_model", "priority", "weight", "enabled"]
    list_filter = ["enabled", "provider", "route"]
    search_fields = ["route__name", "upstream_model", "provider__name"]
    list_select_related = ["route", "provider"]

    def get_form(self, request, obj=None, **kwargs):
        kwargs["fields"] = ["route", *RouteTargetForm.Meta.fields]
        return super().get_form(request, obj, **kwargs)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        warn_about_unknown_models(request, [obj])


@admin.register(PromptRule)
class PromptRuleAdmin(ModelAdmin):
    form = PromptRuleForm
    list_display = ["route", "order", "operation", "pattern", "short_text", "enabled"]
    list_filter = ["operation", "enabled", "route"]
    search_fields = ["route__name", "pattern", "text"]
    list_select_related = ["route"]

    @admin.display(description=_("text"))
    def short_text(self, obj):
        return obj.text if len(obj.text) <= 60 else obj.text[:60] + "…"


@admin.register(RequestLog)
class RequestLogAdmin(ModelAdmin):
    # Few columns: the list must fit a laptop screen; the rest is on each entry's page.
    list_display = ["created_at", "model_requested", "provider", "status", "latency_ms", "tokens", "cost_usd",
                    "key_name"]
    list_filter = ["status", "stream", "tokens_estimated", "error_kind", "endpoint", "provider", "route",
                   ("created_at", RangeDateTimeFilter)]
    list_filter_submit = True
    search_fields = ["request_id", "model_requested", "route", "upstream_model", "error_message", "client_ip"]
    date_hierarchy = "created_at"
    list_select_related = ["virtual_key"]
    show_full_result_count = False  # counting a large log on every page view is slow

    @admin.display(description=_("key"))
    def key_name(self, obj):
        return obj.virtual_key.name if obj.virtual_key_id and obj.virtual_key else "—"

    @admin.display(description=_("tokens in/out"))
    def tokens(self, obj):
        return f"{obj.input_tokens} / {obj.output_tokens}{'*' if obj.tokens_estimated else ''}"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(RefusedTraffic)
class RefusedTrafficAdmin(ModelAdmin):
    """Requests refused before a key was known, counted per client IP and minute: read-only."""

    list_display = ["minute", "client_ip", "reason", "endpoint", "count", "first_seen", "last_seen"]
    list_filter = ["reason", "endpoint", ("minute", RangeDateTimeFilter)]
    list_filter_submit = True
    search_fields = ["client_ip"]
    date_hierarchy = "minute"
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
