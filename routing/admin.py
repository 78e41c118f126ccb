"""Admin for routes, their targets and prompt rules, and the (read-only) request log.

A route's page also has the live preview of its prompt rules (the rules as typed in the
form, saved or not, applied to a pasted or logged request) and one-click relay isolation
presets. Both work as plain forms; htmx only swaps the preview in place.
"""
import json
import re

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import escape, format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_POST
from unfold.admin import ModelAdmin, TabularInline
from unfold.contrib.filters.admin import RangeDateTimeFilter
from unfold.widgets import UnfoldAdminTextInputWidget

from llmgateway.config import validators
from providers.adapters import ADAPTERS
from providers.catalog import is_known_model, known_models
from providers.models import Provider

from . import retention
from .models import PromptRule, RefusedTraffic, RequestLog, Route, RouteTarget
from .preview import LOGGED_PROTOCOLS, PROTOCOLS, Upstream, preview_rules
from .snapshot import RuleEntry

# Ready-made rules for operators who relay to third parties: what each strips, in one sentence.
RELAY_PRESETS = {
    "strip_instructions": _("Codex: remove the Responses instructions and developer messages that Codex sends "
                            "with every request, so the upstream sees only your prompt and the conversation."),
    "strip_system": _("Claude Code: remove the system blocks Claude Code sends (its whole system prompt), so the "
                      "upstream sees only your prompt and the conversation."),
    "strip_billing_header": _("Claude Code billing header: remove only the x-anthropic-billing-header line at the "
                              "start of the system prompt; it changes on every request and defeats the upstream's "
                              "prompt caching."),
}
PREVIEW_LOG_CHOICES = 20  # recent logged requests offered in the preview
MAX_PREVIEW_BODY = 1_000_000  # characters: a preview is for reading, not for load


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
        needs = validators.prompt_rule_errors(cleaned.get("operation"), cleaned.get("pattern"), cleaned.get("text"))
        for field, message in needs.items():
            if field not in self.errors:
                self.add_error(field, message)
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


class RuleRowForm(PromptRuleForm):
    """One row of the route page's rules, read for the preview (no route: it may be unsaved)."""

    class Meta(PromptRuleForm.Meta):
        fields = ["order", "operation", "pattern", "text", "enabled"]


def _rows(data, prefix: str) -> list[dict]:
    """The rows of an inline formset as posted (added rows included, deleted rows left out)."""
    try:
        total = min(int(data.get(f"{prefix}-TOTAL_FORMS", 0)), 1000)
    except ValueError:
        total = 0
    rows = []
    for i in range(total):
        row = {key[len(f"{prefix}-{i}-"):]: value for key, value in data.items() if key.startswith(f"{prefix}-{i}-")}
        if row and not row.get("DELETE"):
            rows.append(row)
    return rows


def rules_from_form(data) -> tuple[tuple[RuleEntry, ...], list[str]]:
    """The enabled prompt rules typed into a route's form, in the order they would run, and the errors."""
    entries, errors = [], []
    for position, row in enumerate(_rows(data, "prompt_rules"), start=1):
        if not row.get("operation"):
            continue  # an empty added row
        form = RuleRowForm(row)
        if not form.is_valid():
            errors.extend(gettext("Rule %(position)s, %(field)s: %(message)s") % {
                "position": position, "field": name, "message": " ".join(problems)}
                for name, problems in form.errors.items())
            continue
        rule = form.cleaned_data
        if rule["enabled"]:
            pattern = re.compile(rule["pattern"]) if rule["pattern"] else None
            entries.append((rule["order"], position, RuleEntry(rule["operation"], pattern, rule["text"])))
    return tuple(entry for _, _, entry in sorted(entries, key=lambda e: e[:2])), errors


def upstream_from_form(data) -> Upstream | None:
    """The route's first enabled target as typed in the form (lowest priority first), if any."""
    targets = []
    for position, row in enumerate(_rows(data, "targets")):
        if row.get("enabled") and row.get("provider", "").isdigit() and row.get("upstream_model"):
            priority = int(row["priority"]) if re.fullmatch(r"-?\d+", row.get("priority", "")) else 0
            targets.append((priority, position, row))
    if not targets:
        return None
    row = min(targets, key=lambda t: t[:2])[2]
    provider = Provider.objects.filter(pk=int(row["provider"])).first()
    adapter = ADAPTERS.get(provider.type) if provider else None
    if adapter is None:
        return None
    return Upstream(wire=adapter.wire, model=row["upstream_model"], provider=provider.name,
                    native_responses=provider.native_responses and getattr(adapter, "speaks_responses", False))


@admin.register(Route)
class RouteAdmin(ModelAdmin):
    form = RouteForm
    list_display = ["name", "alias_list", "strategy", "enabled", "target_count", "updated_at"]
    list_filter = ["strategy", "enabled", "targets__provider"]
    search_fields = ["name", "aliases", "targets__upstream_model"]
    inlines = [RouteTargetInline, PromptRuleInline]
    change_form_after_template = "admin/routing/route/_preview_form.html"
    change_form_outer_after_template = "admin/routing/route/_relay_presets.html"

    class Media:
        css = {"all": ["admin/rule_preview.css"]}

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "preview_protocols": list(PROTOCOLS),
                         "relay_presets": [(op, PromptRule.Operation(op).label, sentence)
                                           for op, sentence in RELAY_PRESETS.items()],
                         "preview_logs": self._logged_requests(object_id)
                         if request.user.has_perm("routing.view_requestlog") else []}
        return super().changeform_view(request, object_id, form_url, extra_context)

    def _logged_requests(self, object_id):
        route = Route.objects.filter(pk=object_id).first() if object_id and str(object_id).isdigit() else None
        if route is None:
            return []
        return list(RequestLog.objects.filter(route=route.name, endpoint__in=LOGGED_PROTOCOLS)
                    .exclude(request_body="").only("id", "created_at", "endpoint", "model_requested")
                    [:PREVIEW_LOG_CHOICES])

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("preview/", view(require_POST(self.preview_view)), name="routing_route_preview"),
            path("<int:route_id>/add-preset/<str:operation>/", view(require_POST(self.add_preset_view)),
                 name="routing_route_add_preset"),
            *super().get_urls(),
        ]

    def preview_view(self, request):
        """The body the upstream would receive with the rules as typed in the route's form (saved or not)."""
        if not (self.has_change_permission(request) or self.has_add_permission(request)):
            raise PermissionDenied
        data = request.POST
        protocol = data.get("preview_protocol", "chat")
        error, body = "", None
        if protocol not in PROTOCOLS:
            error = gettext("Unknown protocol.")
        elif data.get("preview_body", "").strip():
            text = data["preview_body"]
            if len(text) > MAX_PREVIEW_BODY:
                error = gettext("The request is too large to preview.")
            else:
                body, error = _json_object(text)
        elif data.get("preview_log", "").isdigit():
            if not request.user.has_perm("routing.view_requestlog"):
                raise PermissionDenied
            log = RequestLog.objects.filter(pk=int(data["preview_log"]), endpoint__in=LOGGED_PROTOCOLS).first()
            if log is None or not log.request_body:
                error = gettext("That request's body was not logged.")
            else:
                protocol = LOGGED_PROTOCOLS[log.endpoint]
                body, error = _json_object(log.request_body)
        else:
            error = gettext("Paste a request body, or pick a logged request.")
        rules, rule_errors = rules_from_form(data)
        result = None
        if body is not None and not rule_errors:
            result = preview_rules(body, protocol, rules, upstream_from_form(data))
        context = {"title": _("Preview of prompt rules"), "opts": self.opts, "error": error,
                   "rule_errors": rule_errors, "result": result, "protocol": protocol, "rule_count": len(rules)}
        if request.headers.get("HX-Request") == "true":
            return TemplateResponse(request, "admin/routing/route/_preview_result.html", context)
        return TemplateResponse(request, "admin/routing/route/preview.html",
                                {**self.admin_site.each_context(request), **context})

    def add_preset_view(self, request, route_id, operation):
        """Add a relay isolation rule to a saved route, after its other rules."""
        route = get_object_or_404(Route, pk=route_id)
        if not self.has_change_permission(request, route) or operation not in RELAY_PRESETS:
            raise PermissionDenied
        last = route.prompt_rules.order_by("-order").values_list("order", flat=True).first()
        PromptRule.objects.create(route=route, operation=operation, order=(last or 0) + 1)
        messages.success(request, _("Added the rule “%(rule)s”.") % {"rule": PromptRule.Operation(operation).label})
        return redirect(reverse("admin:routing_route_change", args=[route.pk]))

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


def _json_object(text: str) -> tuple[dict | None, str]:
    try:
        body = json.loads(text)
    except ValueError as exc:
        return None, gettext("Not valid JSON: %(error)s") % {"error": exc}
    if not isinstance(body, dict):
        return None, gettext("A request body is a JSON object.")
    return body, ""


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


class DroppedFieldsFilter(admin.SimpleListFilter):
    """Requests whose translation dropped something (the log's diagnostics)."""

    title = _("dropped fields")
    parameter_name = "dropped"

    def lookups(self, request, model_admin):
        return [("yes", _("Some fields dropped")), ("no", _("Nothing dropped"))]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.exclude(diagnostics="")
        if self.value() == "no":
            return queryset.filter(diagnostics="")
        return queryset


def diagnostic_lines(diagnostics: str) -> list[tuple[str, str]]:
    """(field, reason) of each line of a log row's diagnostics ("field: reason")."""
    lines = []
    for line in diagnostics.splitlines():
        if line.strip():
            field, _sep, reason = line.partition(": ")
            lines.append((field, reason))
    return lines


@admin.register(RequestLog)
class RequestLogAdmin(ModelAdmin):
    # Few columns: the list must fit a laptop screen; the rest is on each entry's page.
    list_display = ["created_at", "model_requested", "provider", "status", "dropped", "latency_ms", "tokens",
                    "cost_usd", "key_name"]
    list_filter = ["status", "stream", "tokens_estimated", DroppedFieldsFilter, "error_kind", "endpoint", "provider",
                   "route", ("created_at", RangeDateTimeFilter)]
    # The raw diagnostics text is shown as a list instead (dropped_fields).
    exclude = ["diagnostics"]
    readonly_fields = ["dropped_fields"]
    list_filter_submit = True
    search_fields = ["request_id", "model_requested", "route", "upstream_model", "error_message", "client_ip"]
    date_hierarchy = "created_at"
    list_select_related = ["virtual_key"]
    show_full_result_count = False  # counting a large log on every page view is slow
    list_before_template = "admin/routing/_retention_note.html"

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "retention_note": retention.log_retention_note()}
        return super().changelist_view(request, extra_context)

    @admin.display(description=_("key"))
    def key_name(self, obj):
        return obj.virtual_key.name if obj.virtual_key_id and obj.virtual_key else "—"

    @admin.display(description=_("tokens in/out"))
    def tokens(self, obj):
        return f"{obj.input_tokens} / {obj.output_tokens}{'*' if obj.tokens_estimated else ''}"

    @admin.display(description=_("dropped"))
    def dropped(self, obj):
        """A marker on rows whose translation dropped fields: their count, the fields on hover."""
        lines = diagnostic_lines(obj.diagnostics)
        if not lines:
            return ""
        label = ngettext("%(count)d field dropped", "%(count)d fields dropped", len(lines)) % {"count": len(lines)}
        # Compact (the list must fit a laptop screen): the sign and the count; the fields on hover.
        return format_html('<span class="diagnostics-marker" title="{}: {}">⚠ {}</span>',
                           label, ", ".join(field for field, _reason in lines), len(lines))

    @admin.display(description=_("dropped fields"))
    def dropped_fields(self, obj):
        """What could not be carried to the upstream's protocol, one field and its reason a line."""
        lines = diagnostic_lines(obj.diagnostics)
        if not lines:
            return _("Nothing was dropped.")
        items = format_html_join("", "<li><code>{}</code>: {}</li>", lines)
        return format_html('<ul class="diagnostics">{}</ul>', items)

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
    list_before_template = "admin/routing/_retention_note.html"

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "retention_note": retention.refused_traffic_retention_note()}
        return super().changelist_view(request, extra_context)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
