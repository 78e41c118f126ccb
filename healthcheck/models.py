"""Health monitoring: settings, what to probe, and the probes' results."""
from django.db import models


class MonitoringSettings(models.Model):
    """The one row of monitoring settings (pk is always 1)."""

    enabled = models.BooleanField(default=False, help_text="Off: no probes run, and /status and /public/health answer 404.")
    default_interval_s = models.PositiveIntegerField(default=300)
    default_prompt = models.CharField(max_length=500, default="Say 'OK'")
    monitoring_key = models.OneToOneField(
        "keys.VirtualKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )

    class Meta:
        verbose_name = verbose_name_plural = "monitoring settings"

    def __str__(self):
        return "Monitoring settings"

    def save(self, *args, **kwargs):
        self.pk = 1
        super().save(*args, **kwargs)

    @classmethod
    def load(cls) -> "MonitoringSettings":
        settings, _ = cls.objects.get_or_create(pk=1)
        return settings


class HealthTarget(models.Model):
    """A route the monitor probes through the same pipeline clients use."""

    name = models.CharField(max_length=200, unique=True)
    route = models.ForeignKey("routing.Route", on_delete=models.CASCADE, related_name="health_targets")
    enabled = models.BooleanField(default=True)
    interval_s = models.PositiveIntegerField(null=True, blank=True, help_text="Empty: the default interval.")
    prompt = models.CharField(max_length=500, blank=True, help_text="Empty: the default prompt.")
    timeout_s = models.FloatField(default=30.0)
    next_run_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class HealthRun(models.Model):
    class Outcome(models.TextChoices):
        HEALTHY = "healthy"
        DEGRADED = "degraded"
        DOWN = "down"

    target = models.ForeignKey(HealthTarget, on_delete=models.CASCADE, related_name="runs")
    started_at = models.DateTimeField()
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    ttfb_ms = models.FloatField(null=True, blank=True)
    error_kind = models.CharField(max_length=40, blank=True)
    error_message = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["target", "started_at"], name="healthrun_target_time")]

    def __str__(self):
        return f"{self.target.name} {self.started_at:%Y-%m-%d %H:%M:%S} {self.outcome}"
