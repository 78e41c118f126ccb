"""Routes (the model names clients send), their targets, prompt rules and the request log."""
from django.core.validators import MinValueValidator
from django.db import models
from django.utils.translation import gettext_lazy as _


class Route(models.Model):
    """A model name clients send, resolved to one or more upstream targets."""

    class Strategy(models.TextChoices):
        PRIORITY = "priority", _("Priority (failover)")
        WEIGHTED = "weighted", _("Weighted random")
        ROUND_ROBIN = "round_robin", _("Round robin")
        LEAST_LATENCY = "least_latency", _("Least latency")

    name = models.CharField(_("name"), max_length=200, unique=True, help_text=_("The model name clients send."))
    aliases = models.JSONField(_("aliases"), default=list, blank=True, help_text=_('Other names for this model, e.g. ["mini"].'))
    strategy = models.CharField(_("strategy"), max_length=20, choices=Strategy.choices, default=Strategy.PRIORITY)
    enabled = models.BooleanField(_("enabled"), default=True)
    max_attempts = models.PositiveIntegerField(
        _("max attempts"), default=3, validators=[MinValueValidator(1)], help_text=_("Attempts per request across all targets.")
    )
    retry_on_status = models.JSONField(
        _("retry on status"), default=list, blank=True,
        help_text=_("Upstream status codes worth another attempt; empty means 408, 409, 429 and 5xx."),
    )
    cooldown_s = models.PositiveIntegerField(_("cooldown (s)"), default=30, help_text=_("Seconds a failing target or key sits out."))
    session_ttl_s = models.PositiveIntegerField(
        _("session affinity (s)"), default=3600,
        help_text=_("Follow-ups of one conversation go to the same target for this long after its last "
                    "request, while that target is healthy. 0 turns session affinity off."))
    description = models.TextField(_("description"), blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = _("model (route)")
        verbose_name_plural = _("models (routes)")

    def __str__(self):
        return self.name


class RouteTarget(models.Model):
    route = models.ForeignKey(Route, on_delete=models.CASCADE, related_name="targets", verbose_name=_("model (route)"))
    provider = models.ForeignKey("providers.Provider", on_delete=models.CASCADE, related_name="route_targets",
                                 verbose_name=_("provider"))
    upstream_model = models.CharField(_("upstream model"), max_length=200, help_text=_("The model id the provider knows."))
    priority = models.IntegerField(_("priority"), default=1, help_text=_("Lower goes first."))
    weight = models.PositiveIntegerField(_("weight"), default=1)
    enabled = models.BooleanField(_("enabled"), default=True)

    class Meta:
        ordering = ["route", "priority", "id"]
        verbose_name = _("route target")
        verbose_name_plural = _("route targets")

    def __str__(self):
        return f"{self.route.name} → {self.provider.name}:{self.upstream_model}"


class PromptRule(models.Model):
    """A rewrite applied to request messages before they go upstream."""

    class Operation(models.TextChoices):
        SYSTEM_SET = "system_set", _("Set the system prompt (when the request has none)")
        SYSTEM_PREPEND = "system_prepend", _("Prepend to the system prompt")
        SYSTEM_APPEND = "system_append", _("Append to the system prompt")
        SYSTEM_REPLACE = "system_replace", _("Replace the system prompt")
        USER_PREPEND = "user_prepend", _("Prepend to the last user message")
        USER_APPEND = "user_append", _("Append to the last user message")
        USER_TEMPLATE = "user_template", _("Replace the last user message with a template")
        INJECT_ONCE = "inject_once", _("Inject once (first turn only) before the user message")
        REPLACE = "replace", _("Replace pattern (regex) in every message")
        REMOVE = "remove", _("Remove pattern (regex) from every message")
        STRIP_SYSTEM = "strip_system", _("Relay isolation: remove the whole system prompt")
        STRIP_INSTRUCTIONS = "strip_instructions", _("Relay isolation: remove instructions and developer messages")
        STRIP_BILLING_HEADER = "strip_billing_header", _("Relay isolation: remove Claude Code's billing header line")

    route = models.ForeignKey(Route, on_delete=models.CASCADE, related_name="prompt_rules", verbose_name=_("model (route)"))
    order = models.IntegerField(_("order"), default=0)
    operation = models.CharField(
        _("operation"), max_length=20, choices=Operation.choices,
        help_text=_("Rules run in order on chat-completions, /v1/messages and /v1/responses requests alike, "
                    "before any translation. The system prompt is the system or developer message, Anthropic's "
                    "`system` or the Responses `instructions`; the last user message is the last one with text. "
                    "Images and other parts are left as they are."))
    pattern = models.TextField(_("pattern"), blank=True, help_text=_("Regular expression, for replace and remove."))
    text = models.TextField(
        _("text"), blank=True,
        help_text=_("A template may use {{user_prompt}}, {{date}} and {{model}}."))
    enabled = models.BooleanField(_("enabled"), default=True)

    class Meta:
        ordering = ["route", "order", "id"]
        verbose_name = _("prompt rule")
        verbose_name_plural = _("prompt rules")

    def __str__(self):
        return f"{self.route.name} #{self.order} {self.operation}"


class RequestLog(models.Model):
    """One /v1 request, success or failure, written off the hot path in batches."""

    request_id = models.CharField(_("request id"), max_length=40, unique=True)
    created_at = models.DateTimeField(_("time"), db_index=True)
    endpoint = models.CharField(_("endpoint"), max_length=40)
    # No index of its own: reqlog_key_time serves lookups by key. Every index costs each
    # batched insert, so the log carries only the ones an operator's queries need.
    virtual_key = models.ForeignKey(
        "keys.VirtualKey", null=True, blank=True, on_delete=models.SET_NULL, db_constraint=False,
        db_index=False, related_name="+", verbose_name=_("virtual key"),
    )
    model_requested = models.CharField(_("model requested"), max_length=200, blank=True)
    route = models.CharField(_("route"), max_length=200, blank=True)
    provider = models.CharField(_("provider"), max_length=100, blank=True)
    upstream_model = models.CharField(_("upstream model"), max_length=200, blank=True)
    stream = models.BooleanField(_("stream"), default=False)
    status = models.PositiveSmallIntegerField(_("status"))
    latency_ms = models.FloatField(_("latency (ms)"), null=True, blank=True)
    ttfb_ms = models.FloatField(_("time to first byte (ms)"), null=True, blank=True)
    overhead_ms = models.FloatField(_("gateway overhead (ms)"), null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(_("attempts"), default=0)
    input_tokens = models.PositiveIntegerField(_("input tokens"), default=0)
    output_tokens = models.PositiveIntegerField(_("output tokens"), default=0)
    cached_tokens = models.PositiveIntegerField(_("cached tokens"), default=0)
    tokens_estimated = models.BooleanField(_("tokens estimated"), default=False)
    cost_usd = models.DecimalField(_("cost (USD)"), max_digits=14, decimal_places=8, null=True, blank=True)
    client_ip = models.GenericIPAddressField(_("client IP"), null=True, blank=True)
    error_kind = models.CharField(_("error kind"), max_length=40, blank=True)
    error_message = models.TextField(_("error message"), blank=True)
    request_body = models.TextField(_("request body"), blank=True)
    response_body = models.TextField(_("response body"), blank=True)
    diagnostics = models.TextField(
        _("diagnostics"), blank=True,
        help_text=_("What could not be carried to the upstream's protocol and was dropped, one field per line."))
    note = models.CharField(
        _("note"), max_length=200, blank=True,
        help_text=_("What routing or accounting decided worth knowing: a session that moved, an unpriced model."))
    sanitized = models.BooleanField(
        _("sanitised"), default=False,
        help_text=_("Some text was changed (or dropped) so that the database could store the row."))

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("request log entry")
        verbose_name_plural = _("request logs")
        indexes = [
            models.Index(fields=["virtual_key", "created_at"], name="reqlog_key_time"),
            models.Index(fields=["route", "created_at"], name="reqlog_route_time"),
        ]

    def __str__(self):
        return self.request_id
