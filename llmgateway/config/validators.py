"""Validators shared by the admin forms and the config file, so both refuse the same values.

Each takes a value and raises django's ValidationError with a message that makes sense
after the field's name (the admin shows it beside the field, the config loader prefixes
the field's path). Messages never repeat the value: it may be a secret.
"""
import re
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.utils.translation import gettext as _

from providers.urlsafety import UnsafeUpstream, check_host

MIN_HEALTH_INTERVAL_S = 30  # probes cost upstream money; the dispatcher runs every few seconds
MIN_TIMEOUT_S = 0.1
MIN_STATUS_CODE, MAX_STATUS_CODE = 100, 599


def validate_regex(pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValidationError(_("invalid regular expression: %(error)s") % {"error": exc}, code="regex") from None


# What a prompt rule's operation cannot do without (the rest ignore the field).
PATTERN_OPERATIONS = frozenset({"replace", "remove"})
TEXT_OPERATIONS = frozenset({"system_set", "system_prepend", "system_append", "user_prepend", "user_append",
                             "user_template", "inject_once"})


def prompt_rule_errors(operation: str, pattern: str, text: str) -> dict[str, str]:
    """Field name -> message, for a prompt rule whose operation lacks what it needs."""
    errors = {}
    if operation in PATTERN_OPERATIONS and not pattern:
        errors["pattern"] = _("required for this operation")
    if operation in TEXT_OPERATIONS and not text:
        errors["text"] = _("required for this operation")
    return errors


def validate_status_code(code) -> None:
    if isinstance(code, bool) or not isinstance(code, int) or not MIN_STATUS_CODE <= code <= MAX_STATUS_CODE:
        raise ValidationError(_("%(code)s is not an HTTP status code (100-599)") % {"code": code}, code="status")


def validate_status_codes(codes) -> None:
    if not isinstance(codes, list):
        raise ValidationError(_("expected a list of HTTP status codes, e.g. [429, 503]"), code="status_list")
    for code in codes:
        validate_status_code(code)


def validate_not_negative(value) -> None:
    if value is not None and value < 0:
        raise ValidationError(_("must not be negative"), code="negative")


def validate_min(minimum):
    def check(value) -> None:
        if value is not None and value < minimum:
            raise ValidationError(_("must be at least %(minimum)s") % {"minimum": minimum}, code="min_value")
    return check


validate_health_interval = validate_min(MIN_HEALTH_INTERVAL_S)
validate_timeout = validate_min(MIN_TIMEOUT_S)


def validate_base_url(url: str) -> None:
    """An upstream base URL: http(s), a host, no credentials (keys belong in provider keys)."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a malformed port
    except ValueError:
        raise ValidationError(_("not a valid http(s) URL"), code="url") from None
    if parts.scheme not in ("http", "https"):
        raise ValidationError(_("not a valid http(s) URL"), code="url_scheme")
    try:
        URLValidator(schemes=["http", "https"])(url)  # the same check as the admin's URL field
    except ValidationError:
        raise ValidationError(_("not a valid http(s) URL"), code="url") from None
    if not parts.hostname:
        raise ValidationError(_("must name a host"), code="url_host")
    if parts.username is not None or parts.password is not None:
        raise ValidationError(_("must not contain a user name or password; add the key as a provider key"),
                              code="url_credentials")
    if port == 0:
        raise ValidationError(_("not a valid http(s) URL"), code="url")
    if parts.query or parts.fragment:
        raise ValidationError(_("must not contain a query (?…) or fragment (#…)"), code="url_query")
    try:
        # Every spelling of an address (2852039166, 0xa9fea9fe, ::ffff:169.254.169.254, ...).
        check_host(parts.hostname, settings.GATEWAY_ALLOW_PRIVATE_UPSTREAMS)
    except UnsafeUpstream as exc:
        if exc.kind == "private":
            raise ValidationError(_("private and loopback addresses are refused while "
                                    "GATEWAY_ALLOW_PRIVATE_UPSTREAMS is off"), code="url_private") from None
        if exc.kind == "link_local":
            raise ValidationError(_("link-local and cloud metadata addresses are never contacted"),
                                  code="url_link_local") from None
        raise ValidationError(_("not a valid http(s) URL"), code="url") from None


def messages_of(error: ValidationError) -> list[str]:
    return list(error.messages)
