"""Routes (the model names clients send), their targets, prompt rules and the request log."""
from django.core.validators import MinValueValidator
from django.db import models


class Route(models.Model):
    """A model name clients send, resolved to one or more upstream targets."""

    class Strategy(models.TextChoices):
        PRIORITY = "priority", "Priority (failover)"
        WEIGHTED = "weighted", "Weighted random"
        ROUND_ROBIN = "round_robin", "Round robin"
        LEAST_LATENCY = "least_latency", "Least latency"

    name = models.CharField(max_length=200, unique=True, help_text="The model name clients send.")
    aliases = models.JSONField(default=list, blank=True, help_text='Other names for this model, e.g. ["mini"].')
    strategy = models.CharField(max_length=20, choices=Strategy.choices, default=Strategy.PRIORITY)
    enabled = models.BooleanField(default=True)
    max_attempts = models.PositiveIntegerField(
        default=3, validators=[MinValueValidator(1)], help_text="Attempts per request across all targets."
    )
    retry_on_status = models.JSONField(
        default=list, blank=True, help_text="Upstream status codes worth another attempt; empty means 408, 409, 429 and 5xx."
    )
    cooldown_s = models.PositiveIntegerField(default=30, help_text="Seconds a failing target or key sits out.")
    session_ttl_s = models.PositiveIntegerField(
        "session affinity (s)", default=3600,
        help_text="Follow-ups of one conversation go to the same target for this long after its last "
                  "request, while that target is healthy. 0 turns session affinity off.")
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class RouteTarget(models.Model):
    route = models.ForeignKey(Route, on_delete=models.CASCADE, related_name="targets")
    provider = models.ForeignKey("providers.Provider", on_delete=models.CASCADE, related_name="route_targets")
    upstream_model = models.CharField(max_length=200, help_text="The model id the provider knows.")
    priority = models.IntegerField(default=1, help_text="Lower goes first.")
    weight = models.PositiveIntegerField(default=1)
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["route", "priority", "id"]

    def __str__(self):
        return f"{self.route.name} → {self.provider.name}:{self.upstream_model}"


class PromptRule(models.Model):
    """A rewrite applied to request messages before they go upstream."""

    class Operation(models.TextChoices):
        SYSTEM_PREPEND = "system_prepend", "Prepend to the system prompt"
        SYSTEM_APPEND = "system_append", "Append to the system prompt"
        SYSTEM_REPLACE = "system_replace", "Replace the system prompt"
        USER_PREPEND = "user_prepend", "Prepend to the last user message"
        USER_APPEND = "user_append", "Append to the last user message"
        REPLACE = "replace", "Replace pattern (regex) in every message"
        REMOVE = "remove", "Remove pattern (regex) from every message"

    route = models.ForeignKey(Route, on_delete=models.CASCADE, related_name="prompt_rules")
    order = models.IntegerField(default=0)
    operation = models.CharField(max_length=20, choices=Operation.choices)
    pattern = models.TextField(blank=True, help_text="Regular expression, for replace and remove.")
    text = models.TextField(blank=True)
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["route", "order", "id"]

    def __str__(self):
        return f"{self.route.name} #{self.order} {self.operation}"


class RequestLog(models.Model):
    """One /v1 request, success or failure, written off the hot path in batches."""

    request_id = models.CharField(max_length=40, unique=True)
    created_at = models.DateTimeField(db_index=True)
    endpoint = models.CharField(max_length=40)
    # No index of its own: reqlog_key_time serves lookups by key. Every index costs each
    # batched insert, so the log carries only the ones an operator's queries need.
    virtual_key = models.ForeignKey(
        "keys.VirtualKey", null=True, blank=True, on_delete=models.SET_NULL, db_constraint=False,
        db_index=False, related_name="+",
    )
    model_requested = models.CharField(max_length=200, blank=True)
    route = models.CharField(max_length=200, blank=True)
    provider = models.CharField(max_length=100, blank=True)
    upstream_model = models.CharField(max_length=200, blank=True)
    stream = models.BooleanField(default=False)
    status = models.PositiveSmallIntegerField()
    latency_ms = models.FloatField(null=True, blank=True)
    ttfb_ms = models.FloatField("time to first byte (ms)", null=True, blank=True)
    overhead_ms = models.FloatField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    tokens_estimated = models.BooleanField(default=False)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8, null=True, blank=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    error_kind = models.CharField(max_length=40, blank=True)
    error_message = models.TextField(blank=True)
    request_body = models.TextField(blank=True)
    response_body = models.TextField(blank=True)
    note = models.CharField(
        max_length=200, blank=True,
        help_text="What routing or accounting decided worth knowing: a session that moved, an unpriced model.")
    sanitized = models.BooleanField(
        default=False, help_text="Some text was changed (or dropped) so that the database could store the row.")

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["virtual_key", "created_at"], name="reqlog_key_time"),
            models.Index(fields=["route", "created_at"], name="reqlog_route_time"),
        ]

    def __str__(self):
        return self.request_id
