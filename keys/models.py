"""Virtual keys: what applications present to the gateway. Only a hash is stored."""
from django.db import models

from .secrets import generate_key, hash_key, visible_prefix


class VirtualKey(models.Model):
    class BudgetPeriod(models.TextChoices):
        DAILY = "daily"
        WEEKLY = "weekly"
        MONTHLY = "monthly"
        TOTAL = "total"

    name = models.CharField(max_length=100, unique=True)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=20, editable=False, help_text="The visible start of the key.")
    enabled = models.BooleanField(default=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    all_models = models.BooleanField(
        "every model", default=True,
        help_text="Off: only the models chosen below, and none at all when none is chosen "
                  "(deleting a model never widens a restricted key).",
    )
    allowed_routes = models.ManyToManyField(
        "routing.Route", blank=True, related_name="+", help_text="Used when 'every model' is off."
    )
    rpm = models.PositiveIntegerField("requests per minute", null=True, blank=True)
    tpm = models.PositiveIntegerField("tokens per minute", null=True, blank=True)
    budget_usd = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
    budget_period = models.CharField(max_length=10, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTHLY)
    log_bodies = models.BooleanField(default=False, help_text="Store (truncated) request and response bodies in the request log.")
    is_monitoring = models.BooleanField(default=False, editable=False, help_text="Used by the health monitor only.")
    notes = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    def set_key(self, plaintext: str | None = None) -> str:
        """Store the hash of `plaintext` (or of a new random key) and return the plaintext, once."""
        plaintext = plaintext or generate_key()
        self.key_hash = hash_key(plaintext)
        self.prefix = visible_prefix(plaintext)
        return plaintext
