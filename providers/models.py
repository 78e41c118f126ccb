"""Upstream providers, their API keys and secret headers (encrypted at rest) and the model catalog."""
import json

from django.core.validators import MinValueValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

from .crypto import decrypt_secret, encrypt_secret


# Extra headers that always carry credentials, in lower case.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "api-key", "x-api-key", "x-goog-api-key",
                                "cookie"})


def mask_secret(value: str) -> str:
    """…wxyz; short secrets show nothing of themselves."""
    return f"…{value[-4:]}" if len(value) >= 12 else "…"


class Provider(models.Model):
    class Type(models.TextChoices):
        OPENAI = "openai", _("OpenAI-compatible")
        ANTHROPIC = "anthropic", _("Anthropic")
        GEMINI = "gemini", _("Google Gemini")
        AZURE_OPENAI = "azure_openai", _("Azure OpenAI")

    name = models.SlugField(_("name"), max_length=100, unique=True, help_text=_("Used in routes and config files."))
    type = models.CharField(_("type"), max_length=20, choices=Type.choices, default=Type.OPENAI)
    base_url = models.URLField(_("base URL"), max_length=500, help_text=_("For example https://api.openai.com/v1"))
    enabled = models.BooleanField(_("enabled"), default=True)
    timeout_s = models.FloatField(
        _("timeout (s)"),
        default=60.0,
        validators=[MinValueValidator(0.1)],
        help_text=_("Seconds to wait for the first byte of an answer."),
    )
    weight = models.PositiveIntegerField(_("weight"), default=1)
    native_responses = models.BooleanField(
        _("speaks Responses natively"), default=False,
        help_text=_("OpenAI-compatible upstreams only: it also serves /responses (OpenAI does). Responses "
                    "requests then go to it as sent; otherwise they are translated to chat completions."))
    extra_headers = models.JSONField(
        _("extra headers"), default=dict, blank=True,
        help_text=_('Sent with every request, e.g. {"OpenAI-Organization": "org-1"}. Credential headers '
                    "(Authorization, api-key, x-api-key, ...) and those named under secret headers are "
                    "moved to encrypted storage when saved."))
    secret_header_names = models.JSONField(
        _("secret headers"), default=list, blank=True,
        help_text=_('More extra headers to keep encrypted, besides the usual credential headers, '
                    'e.g. ["X-Custom-Token"].'))
    # The secret extra headers, as one encrypted JSON object {name: value}.
    encrypted_headers = models.TextField(blank=True, default="", editable=False)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = _("provider")
        verbose_name_plural = _("providers")

    def __str__(self):
        return self.name

    def is_secret_header(self, name: str) -> bool:
        name = name.lower()
        return name in CREDENTIAL_HEADERS or name in {n.lower() for n in self.secret_header_names or ()}

    def set_headers(self, headers: dict, secret_names: list | None = None) -> None:
        """Set every extra header: the secret ones encrypted, the others as they are."""
        if secret_names is not None:
            self.secret_header_names = sorted(set(secret_names), key=str.lower)
        plain = {name: value for name, value in headers.items() if not self.is_secret_header(name)}
        secret = {name: value for name, value in headers.items() if self.is_secret_header(name)}
        self.extra_headers = plain
        if secret != self.secret_headers():  # re-encrypt only a change: no churn in config applies
            self.encrypted_headers = encrypt_secret(json.dumps(secret, sort_keys=True)) if secret else ""

    def secret_headers(self) -> dict:
        """The secret extra headers, decrypted."""
        return json.loads(decrypt_secret(self.encrypted_headers)) if self.encrypted_headers else {}

    def header_values(self) -> dict:
        """Every extra header with its real value, for the upstream request (the snapshot)."""
        return {**(self.extra_headers or {}), **self.secret_headers()}

    def masked_secret_headers(self) -> dict:
        """The secret extra headers as an admin page may show them: the last four characters."""
        return {name: mask_secret(value) for name, value in sorted(self.secret_headers().items())}

    def save(self, *args, **kwargs):
        # A credential typed among the plain headers (the admin's JSON field, a shell) is
        # encrypted before it reaches the database.
        if any(self.is_secret_header(name) for name in self.extra_headers or {}):
            self.set_headers({**self.secret_headers(), **self.extra_headers})
        super().save(*args, **kwargs)



class ProviderKey(models.Model):
    """One API key of a provider. The secret is stored encrypted; only its last four characters are ever shown."""

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="keys", verbose_name=_("provider"))
    label = models.CharField(_("label"), max_length=100, blank=True)
    encrypted_secret = models.TextField(editable=False)
    secret_last4 = models.CharField(max_length=4, editable=False)
    enabled = models.BooleanField(_("enabled"), default=True)
    weight = models.PositiveIntegerField(_("weight"), default=1)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        ordering = ["provider", "id"]
        verbose_name = _("provider key")
        verbose_name_plural = _("provider keys")

    def __str__(self):
        return f"{self.provider.name}/{self.label or self.pk} (…{self.secret_last4})"

    def set_secret(self, plaintext: str) -> None:
        self.encrypted_secret = encrypt_secret(plaintext)
        self.secret_last4 = plaintext[-4:]

    def get_secret(self) -> str:
        return decrypt_secret(self.encrypted_secret)


class CatalogEntry(models.Model):
    """What the gateway knows about one upstream model of one provider: limits, prices, capabilities."""

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="catalog", verbose_name=_("provider"))
    model_id = models.CharField(_("upstream model id"), max_length=200)
    context_window = models.PositiveIntegerField(_("context window"), null=True, blank=True)
    max_output_tokens = models.PositiveIntegerField(_("max output tokens"), null=True, blank=True)
    input_price_per_m = models.DecimalField(_("input $/1M tokens"), max_digits=12, decimal_places=6, null=True, blank=True)
    output_price_per_m = models.DecimalField(_("output $/1M tokens"), max_digits=12, decimal_places=6, null=True, blank=True)
    cached_input_price_per_m = models.DecimalField(_("cached input $/1M tokens"), max_digits=12, decimal_places=6, null=True, blank=True)
    supports_tools = models.BooleanField(_("tools"), default=False)
    supports_vision = models.BooleanField(_("vision"), default=False)
    supports_reasoning = models.BooleanField(_("reasoning"), default=False)
    supports_embeddings = models.BooleanField(_("embeddings"), default=False)

    class Meta:
        verbose_name = _("catalog model")
        verbose_name_plural = _("catalog models")
        ordering = ["provider", "model_id"]
        constraints = [models.UniqueConstraint(fields=["provider", "model_id"], name="catalog_unique_model_per_provider")]

    CAPABILITIES = ("tools", "vision", "reasoning", "embeddings")

    def __str__(self):
        return f"{self.provider.name}:{self.model_id}"

    @property
    def capabilities(self) -> list[str]:
        return [name for name in self.CAPABILITIES if getattr(self, f"supports_{name}")]
