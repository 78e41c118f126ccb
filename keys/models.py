"""Virtual keys: what applications present to the gateway. Only a hash is stored."""
from django.db import models

from .secrets import generate_key, hash_key, visible_prefix


class VirtualKey(models.Model):
    class BudgetPeriod(models.TextChoices):
        DAILY = "daily"
        WEEKLY = "weekly"
        MONTHLY = "monthly"
        TOTAL = "total"

    class UnpricedPolicy(models.TextChoices):
        REFUSE = "refuse"
        ADMIT_AND_FLAG = "admit_and_flag", "admit and flag"

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
    unpriced_policy = models.CharField(
        "when a model has no price", max_length=16, choices=UnpricedPolicy.choices, default=UnpricedPolicy.REFUSE,
        help_text="A key with a budget cannot reserve spend for a model without a price: refuse the request, "
                  "or serve it and flag it in the request log (its cost then counts against nothing).",
    )
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


class KeySpend(models.Model):
    """A key's spend in one budget period, copied from Redis (where it is counted) by
    keys.limits.persist_spend, so a lost Redis can be rebuilt and history survives."""

    virtual_key = models.ForeignKey(VirtualKey, on_delete=models.CASCADE, related_name="spends")
    period = models.CharField(max_length=20, help_text="d2026-12-01, w2026-11-30, m2026-12 or total.")
    spent_usd = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["virtual_key", "period"], name="keyspend_key_period")]

    def __str__(self):
        return f"{self.virtual_key_id} {self.period}: ${self.spent_usd}"
