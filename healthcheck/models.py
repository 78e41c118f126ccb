"""Health monitoring: settings, what to probe, the probes' results, their rollups and incidents."""
from django.core.exceptions import ValidationError
from django.db import models, transaction

from .conf import setting


def _min_interval() -> int:
    # A setting, not a constant: the tests probe every few seconds.
    return setting("HEALTH_MIN_INTERVAL_S")


class MonitoringSettings(models.Model):
    """The one row of monitoring settings (pk is always 1)."""

    enabled = models.BooleanField(default=False, help_text="Off: no probes run, and /status and /public/health answer 404.")
    default_interval_s = models.PositiveIntegerField(default=300)
    default_prompt = models.CharField(max_length=500, default="Say 'OK'")
    monitoring_key = models.OneToOneField(
        "keys.VirtualKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    # The last request-log row folded into rollups as live traffic (healthcheck/live.py).
    live_log_cursor = models.BigIntegerField(default=0, editable=False)

    class Meta:
        verbose_name = verbose_name_plural = "monitoring settings"

    def __str__(self):
        return "Monitoring settings"

    def clean(self):
        if self.default_interval_s < _min_interval():
            raise ValidationError({"default_interval_s": f"The interval must be at least {_min_interval()} seconds."})

    def save(self, *args, **kwargs):
        self.pk = 1
        if kwargs.get("update_fields") is None and not self._state.adding:
            # The cursor moves only by the live-traffic fold's conditional update: a form saved
            # from an older read must not move it back (its rows would be counted twice).
            kwargs["update_fields"] = [f.name for f in self._meta.concrete_fields
                                       if f.name not in ("id", "live_log_cursor")]
        with transaction.atomic():
            if self.enabled and self.monitoring_key_id is None:
                # First time on: the monitor gets its own key. Off keeps it, so on again reuses it.
                from .monitor_key import create_monitoring_key

                self.monitoring_key = create_monitoring_key()
            super().save(*args, **kwargs)

    @classmethod
    def load(cls) -> "MonitoringSettings":
        settings, _ = cls.objects.get_or_create(pk=1)
        return settings


class HealthTarget(models.Model):
    """A model (route), or one upstream target of it, that the monitor probes."""

    class Kind(models.TextChoices):
        COMPLETION = "completion", "Tiny completion (short prompt, a few output tokens)"
        MODEL_LIST = "model_list", "Cheap: the upstream's model list, with the provider key"

    name = models.CharField(max_length=200, unique=True)
    route = models.ForeignKey("routing.Route", on_delete=models.CASCADE, related_name="health_targets")
    route_target = models.ForeignKey(
        "routing.RouteTarget", null=True, blank=True, on_delete=models.CASCADE, related_name="health_targets",
        help_text="Probe only this upstream target of the model. Empty: the model as clients reach it.",
    )
    enabled = models.BooleanField(default=True)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.COMPLETION)
    interval_s = models.PositiveIntegerField(null=True, blank=True, help_text="Empty: the default interval.")
    prompt = models.CharField(max_length=500, blank=True, help_text="Empty: the default prompt.")
    max_tokens = models.PositiveSmallIntegerField(default=5, help_text="Output tokens a completion probe may use.")
    timeout_s = models.FloatField(default=30.0)
    retries = models.PositiveSmallIntegerField(default=0, help_text="Further tries within one run after a failure.")
    monthly_cap_usd = models.DecimalField(
        max_digits=10, decimal_places=4, null=True, blank=True, help_text="Stop probing for the month past this spend."
    )
    next_run_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Kept as runs arrive, so pages never scan runs.
    state = models.CharField(max_length=10, default="unknown", editable=False)
    summary = models.JSONField(default=dict, blank=True, editable=False)
    # Kept for the status page's strip as runs arrive (rollups.keep_strip): its coloured
    # segments, and the last 25 hours of rollups per bucket to cut bars of another size from.
    strip_segments = models.JSONField(default=dict, blank=True, editable=False)
    strip_cells = models.JSONField(default=dict, blank=True, editable=False)
    last_run_at = models.DateTimeField(null=True, blank=True, editable=False)
    consecutive_failures = models.PositiveIntegerField(default=0, editable=False)
    consecutive_successes = models.PositiveIntegerField(default=0, editable=False)
    spend_month = models.CharField(max_length=7, blank=True, editable=False, help_text="YYYY-MM of spend_month_usd.")
    spend_month_usd = models.DecimalField(max_digits=14, decimal_places=8, default=0, editable=False)
    spend_total_usd = models.DecimalField(max_digits=14, decimal_places=8, default=0, editable=False)

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["enabled", "next_run_at"], name="healthtarget_due")]

    def __str__(self):
        return self.name

    def clean(self):
        if self.interval_s is not None and self.interval_s < _min_interval():
            raise ValidationError({"interval_s": f"The interval must be at least {_min_interval()} seconds."})
        if self.route_target_id and self.route_id and self.route_target.route_id != self.route_id:
            raise ValidationError({"route_target": "This target belongs to another model."})
        if self.kind == self.Kind.MODEL_LIST and not self.route_target_id and self.route_id:
            if self.route.targets.count() != 1:
                raise ValidationError({"kind": "A model-list probe needs one upstream target: pick it."})


class HealthRun(models.Model):
    class Outcome(models.TextChoices):
        HEALTHY = "healthy"
        DEGRADED = "degraded"  # answered, but only after a retry
        DOWN = "down"

    target = models.ForeignKey(HealthTarget, on_delete=models.CASCADE, related_name="runs")
    scheduled_for = models.DateTimeField(null=True, blank=True, help_text="The slot this run was claimed for.")
    started_at = models.DateTimeField()
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    ttfb_ms = models.FloatField(null=True, blank=True)
    error_kind = models.CharField(max_length=40, blank=True)
    error_message = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=1)
    request_id = models.CharField(max_length=40, blank=True, help_text="The request log row of this probe.")
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8, null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["target", "started_at"], name="healthrun_target_time")]
        constraints = [
            # Belt and braces for the dispatcher's claim: one run per target and slot.
            models.UniqueConstraint(fields=["target", "scheduled_for"], name="healthrun_one_per_slot"),
        ]

    def __str__(self):
        return f"{self.target.name} {self.started_at:%Y-%m-%d %H:%M:%S} {self.outcome}"


class HealthRollup(models.Model):
    """Runs of one target summed over one 5-minute bucket, updated as runs arrive."""

    target = models.ForeignKey(HealthTarget, on_delete=models.CASCADE, related_name="rollups")
    bucket = models.IntegerField(help_text="Epoch seconds // 300.")
    runs = models.PositiveIntegerField(default=0, help_text="Probe runs and live requests.")
    live = models.PositiveIntegerField(default=0, help_text="How many of the runs were clients' requests.")
    failures = models.PositiveIntegerField(default=0)
    latency_sum_ms = models.FloatField(default=0)
    # Latency histogram {bin: count} over fixed log-spaced bins (see rollups.py), and
    # failures by kind: both merge by addition, so any window is a sum of buckets.
    latency_bins = models.JSONField(default=dict)
    errors = models.JSONField(default=dict)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["target", "bucket"], name="healthrollup_one_per_bucket")]
        # Covers the status page's strip (sums of runs and failures per target and hour): the
        # database answers it from the index alone, without reading the rows.
        indexes = [models.Index(fields=["target", "bucket", "runs", "failures"], name="healthrollup_strip")]


class HealthIncident(models.Model):
    """A stretch of time a target was degraded or down."""

    target = models.ForeignKey(HealthTarget, on_delete=models.CASCADE, related_name="incidents")
    state = models.CharField(max_length=10)
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["target", "started_at"], name="healthincident_target_time")]

    def __str__(self):
        return f"{self.target.name} {self.state} from {self.started_at:%Y-%m-%d %H:%M}"
