"""Virtual keys: what applications present to the gateway. Only a hash is stored."""
from django.db import models
from django.utils.translation import gettext_lazy as _

from .secrets import generate_key, hash_key, visible_prefix


class VirtualKey(models.Model):
    class BudgetPeriod(models.TextChoices):
        DAILY = "daily", _("Daily")
        WEEKLY = "weekly", _("Weekly")
        MONTHLY = "monthly", _("Monthly")
        TOTAL = "total", _("Total")

    class UnpricedPolicy(models.TextChoices):
        REFUSE = "refuse", _("refuse")
        ADMIT_AND_FLAG = "admit_and_flag", _("admit and flag")

    name = models.CharField(_("name"), max_length=100, unique=True)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(_("prefix"), max_length=20, editable=False, help_text=_("The visible start of the key."))
    enabled = models.BooleanField(_("enabled"), default=True)
    expires_at = models.DateTimeField(_("expires at"), null=True, blank=True)
    all_models = models.BooleanField(
        _("every model"), default=True,
        help_text=_("Off: only the models chosen below, and none at all when none is chosen "
                    "(deleting a model never widens a restricted key)."),
    )
    allowed_routes = models.ManyToManyField(
        "routing.Route", blank=True, related_name="+", verbose_name=_("allowed models"),
        help_text=_("Used when 'every model' is off."),
    )
    rpm = models.PositiveIntegerField(_("requests per minute"), null=True, blank=True)
    tpm = models.PositiveIntegerField(_("tokens per minute"), null=True, blank=True)
    budget_usd = models.DecimalField(_("budget (USD)"), max_digits=12, decimal_places=4, null=True, blank=True)
    budget_period = models.CharField(_("budget period"), max_length=10, choices=BudgetPeriod.choices,
                                     default=BudgetPeriod.MONTHLY)
    unpriced_policy = models.CharField(
        _("when a model has no price"), max_length=16, choices=UnpricedPolicy.choices, default=UnpricedPolicy.REFUSE,
        help_text=_("A key with a budget cannot reserve spend for a model without a price: refuse the request, "
                    "or serve it and flag it in the request log (its cost then counts against nothing)."),
    )
    log_bodies = models.BooleanField(_("log bodies"), default=False,
                                     help_text=_("Store (truncated) request and response bodies in the request log."))
    is_monitoring = models.BooleanField(_("health monitor key"), default=False, editable=False,
                                        help_text=_("Used by the health monitor only."))
    notes = models.TextField(_("notes"), blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = _("virtual key")
        verbose_name_plural = _("virtual keys")

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
