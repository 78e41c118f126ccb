"""The config file's schema: checker combinators and the record definitions built from them."""
import copy
import difflib
import math
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

from django.core.exceptions import ValidationError
from django.core.validators import validate_slug

from healthcheck.models import HealthTarget, MonitoringSettings
from keys.models import VirtualKey
from providers.models import CatalogEntry, Provider, ProviderKey
from providers.presets import get_preset, slugs
from routing.models import PromptRule, Route, RouteTarget

from . import validators

VERSION = 1
_BAD = object()  # stands for a value that failed a check; its error is already recorded
SECTIONS = ("providers", "models", "virtual_keys", "monitoring")
MIN_VIRTUAL_KEY_LENGTH = 32


class ConfigError(Exception):
    """An invalid config file. `messages` holds one line per problem, each starting with its place."""

    def __init__(self, messages):
        self.messages = list(messages)
        super().__init__("\n".join(self.messages))


def _fail(errors: list[str], path: str, message: str):
    errors.append(f"{path}: {message}")
    return _BAD


def _at(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def _index(path: str, i: int) -> str:
    return f"{path}[{i}]"


# ---------------------------------------------------------------------------
# Checkers: each takes (value, path, errors) and returns the normalized value, or
# _BAD after recording an error, so that one pass reports every problem.

Checker = Callable[[Any, str, list], Any]


def _run(check: Checker, value, path: str, errors: list[str]):
    """check(value), unless value already failed (and was reported) upstream."""
    return _BAD if value is _BAD else check(value, path, errors)


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _shared_check(validate: Callable, value, path: str, errors: list[str]):
    """Run one of the validators the admin shares (llmgateway.config.validators)."""
    try:
        validate(value)
    except ValidationError as exc:
        return _fail(errors, path, "; ".join(exc.messages))
    return value


def _minimum_validator(minimum) -> Callable:
    return validators.validate_not_negative if minimum == 0 else validators.validate_min(minimum)


def boolean(value, path, errors):
    if isinstance(value, bool):
        return value
    return _fail(errors, path, f"expected true or false, got {_kind(value)}")


def integer(minimum: int | None = 0, maximum: int | None = None, nullable: bool = False) -> Checker:
    def check(value, path, errors):
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            return _fail(errors, path, f"expected an integer, got {_kind(value)}")
        if minimum is not None and _shared_check(_minimum_validator(minimum), value, path, errors) is _BAD:
            return _BAD
        if maximum is not None and value > maximum:
            return _fail(errors, path, f"must be at most {maximum}")
        return value
    return check


def number(minimum: float = 0.0) -> Checker:
    def check(value, path, errors):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return _fail(errors, path, f"expected a number, got {_kind(value)}")
        if _shared_check(_minimum_validator(minimum), value, path, errors) is _BAD:
            return _BAD
        return float(value)
    return check


def decimal(max_digits: int, places: int) -> Checker:
    """A non-negative amount that fits a DecimalField(max_digits, places), or null."""
    def check(value, path, errors):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return _fail(errors, path, f"expected a number, got {_kind(value)}")
        try:
            amount = Decimal(str(value))
        except InvalidOperation:
            return _fail(errors, path, "expected a number")
        if not amount.is_finite():
            return _fail(errors, path, "expected a number")
        if _shared_check(validators.validate_not_negative, amount, path, errors) is _BAD:
            return _BAD
        if amount >= Decimal(10) ** (max_digits - places):
            return _fail(errors, path, f"must be less than {10 ** (max_digits - places)}")
        if amount != amount.quantize(Decimal(1).scaleb(-places)):
            return _fail(errors, path, f"at most {places} decimal places")
        return amount
    return check


def text(max_length: int | None = None, min_length: int = 0) -> Checker:
    # Never echo the value: it may be a secret.
    def check(value, path, errors):
        if not isinstance(value, str):
            return _fail(errors, path, f"expected a string, got {_kind(value)}")
        if len(value) < min_length:
            too_short = "must not be empty" if min_length == 1 else f"must be at least {min_length} characters"
            return _fail(errors, path, too_short)
        if max_length is not None and len(value) > max_length:
            return _fail(errors, path, f"must be at most {max_length} characters")
        return value
    return check


def nullable(inner: Checker) -> Checker:
    return lambda value, path, errors: None if value is None else inner(value, path, errors)


def choice(values) -> Checker:
    def check(value, path, errors):
        if not isinstance(value, str) or value not in values:
            shown = repr(value) if isinstance(value, (str, int, float)) else _kind(value)
            return _fail(errors, path, f"{shown} is not one of: {', '.join(values)}")
        return value
    return check


def validated(inner: Checker, *checks: Callable) -> Checker:
    """`inner`, then the shared validators (llmgateway.config.validators) the admin runs too."""
    def check(value, path, errors):
        value = inner(value, path, errors)
        if value is _BAD or value is None:
            return value
        for validate in checks:
            if _shared_check(validate, value, path, errors) is _BAD:
                return _BAD
        return value
    return check


url = validated(text(max_length=500, min_length=1), validators.validate_base_url)


def timestamp(value, path, errors):
    """An aware datetime; a date means midnight and a missing offset means UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return _fail(errors, path, "expected an ISO 8601 date and time, e.g. 2030-01-31T00:00:00Z")
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time())
    elif not isinstance(value, datetime):
        return _fail(errors, path, f"expected a date and time, got {_kind(value)}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def string_mapping(value, path, errors):
    if value is None:
        return {}
    if not isinstance(value, dict):
        return _fail(errors, path, f"expected a mapping, got {_kind(value)}")
    result = {}
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            _fail(errors, _at(path, key), "names and values must be strings")
        else:
            result[key] = item
    return result


def list_of(item: Checker, unique: bool = False) -> Checker:
    def check(value, path, errors):
        if value is None:
            return []
        if not isinstance(value, list):
            return _fail(errors, path, f"expected a list, got {_kind(value)}")
        result = [_run(item, element, _index(path, i), errors) for i, element in enumerate(value)]
        if unique:
            for i, element in enumerate(result):
                if element is not _BAD and element in result[:i]:
                    _fail(errors, _index(path, i), f"duplicate {element!r}")
        return result
    return check


@dataclass(frozen=True)
class Field:
    check: Checker
    default: Any = None
    required: bool = False


def record(fields: dict[str, Field]) -> Checker:
    """A mapping with exactly these fields; a missing optional field takes its default."""
    def check(value, path, errors):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            return _fail(errors, path, f"expected a mapping, got {_kind(value)}")
        for key in value:
            if key not in fields:
                _fail(errors, _at(path, key), _unknown_field_message(key, fields))
        result = {}
        for name, spec in fields.items():
            if name in value:
                result[name] = _run(spec.check, value[name], _at(path, name), errors)
            elif spec.required:
                result[name] = _fail(errors, _at(path, name), "required")
            else:
                result[name] = copy.deepcopy(spec.default)
        return result
    return check


def _unknown_field_message(key, fields) -> str:
    close = difflib.get_close_matches(str(key), list(fields), n=1)
    if close:
        return f"unknown field (did you mean '{close[0]}'?)"
    return f"unknown field; expected one of: {', '.join(fields)}"


def named(item: Checker, name: Checker) -> Checker:
    """A mapping from names (checked by `name`) to items."""
    def check(value, path, errors):
        if value is None:
            return {}
        if not isinstance(value, dict):
            return _fail(errors, path, f"expected a mapping of names, got {_kind(value)}")
        result = {}
        for key, element in value.items():
            if name(key, _at(path, key), errors) is not _BAD:
                result[key] = _run(item, element, _at(path, key), errors)
        return result
    return check


def slug(max_length: int) -> Checker:
    def check(value, path, errors):
        if text(max_length, 1)(value, path, errors) is _BAD:
            return _BAD
        try:
            validate_slug(value)
        except ValidationError:
            return _fail(errors, path, "names may contain only letters, digits, '-' and '_'")
        return value
    return check


def _default(model, name):
    return model._meta.get_field(name).default


# ---------------------------------------------------------------------------
# The schema

PROVIDER_KEY = record({
    "value": Field(text(min_length=1), required=True),
    "label": Field(text(max_length=100), ""),
    "enabled": Field(boolean, True),
    "weight": Field(integer(0), _default(ProviderKey, "weight")),
})

CATALOG_ENTRY = record({
    "context_window": Field(integer(0, nullable=True)),
    "max_output_tokens": Field(integer(0, nullable=True)),
    "input_price_per_m": Field(decimal(12, 6)),
    "output_price_per_m": Field(decimal(12, 6)),
    "cached_input_price_per_m": Field(decimal(12, 6)),
    "capabilities": Field(list_of(choice(CatalogEntry.CAPABILITIES), unique=True), []),
})

CATALOG_FIELDS = ("context_window", "max_output_tokens", "input_price_per_m", "output_price_per_m",
                  "cached_input_price_per_m")

def with_preset(inner: Checker) -> Checker:
    """`preset: deepseek` fills in the type and base_url the mapping leaves out (providers/presets.py)."""
    def check(value, path, errors):
        if not isinstance(value, dict) or "preset" not in value:
            return inner(value, path, errors)
        value = dict(value)
        slug = value.pop("preset")
        preset = get_preset(slug) if isinstance(slug, str) else None
        if preset is None:
            shown = repr(slug) if isinstance(slug, str) else _kind(slug)
            _fail(errors, _at(path, "preset"), f"unknown preset {shown}; known presets: {', '.join(slugs())}")
        else:
            value.setdefault("type", preset.type)
            value.setdefault("base_url", preset.base_url)
        return inner(value, path, errors)
    return check


PROVIDER = with_preset(record({
    "type": Field(choice(Provider.Type.values), _default(Provider, "type")),
    "base_url": Field(url, required=True),
    "enabled": Field(boolean, True),
    "weight": Field(integer(0), _default(Provider, "weight")),
    "timeout_s": Field(number(minimum=validators.MIN_TIMEOUT_S), _default(Provider, "timeout_s")),
    "native_responses": Field(boolean, False),
    "extra_headers": Field(string_mapping, {}),
    # Names of extra headers kept encrypted besides the credential headers (providers.models).
    "secret_headers": Field(list_of(text(200, 1), unique=True), []),
    "keys": Field(list_of(PROVIDER_KEY), []),
    "catalog": Field(named(CATALOG_ENTRY, text(200, 1)), {}),
}))

TARGET = record({
    "provider": Field(text(min_length=1), required=True),
    "model": Field(text(200, 1), required=True),
    "priority": Field(integer(None), _default(RouteTarget, "priority")),
    "weight": Field(integer(0), _default(RouteTarget, "weight")),
    "enabled": Field(boolean, True),
})

PROMPT_RULE = record({
    "operation": Field(choice(PromptRule.Operation.values), required=True),
    "pattern": Field(text(), ""),
    "text": Field(text(), ""),
    "order": Field(integer(None), _default(PromptRule, "order")),
    "enabled": Field(boolean, True),
})

ROUTE = record({
    "aliases": Field(list_of(text(200, 1), unique=True), []),
    "strategy": Field(choice(Route.Strategy.values), _default(Route, "strategy")),
    "enabled": Field(boolean, True),
    "max_attempts": Field(integer(1), _default(Route, "max_attempts")),
    "retry_on_status": Field(list_of(validated(integer(None), validators.validate_status_code), unique=True), []),
    "cooldown_s": Field(integer(0), _default(Route, "cooldown_s")),
    "session_ttl_s": Field(integer(0), _default(Route, "session_ttl_s")),
    "description": Field(text(), ""),
    "targets": Field(list_of(TARGET), []),
    "prompt_rules": Field(list_of(PROMPT_RULE), []),
})

VIRTUAL_KEY = record({
    "key": Field(nullable(text(min_length=MIN_VIRTUAL_KEY_LENGTH))),
    "models": Field(nullable(list_of(text(200, 1), unique=True))),  # None: every model
    "enabled": Field(boolean, True),
    "expires_at": Field(timestamp),
    "rpm": Field(integer(0, nullable=True)),
    "tpm": Field(integer(0, nullable=True)),
    "budget_usd": Field(decimal(12, 4)),
    "budget_period": Field(choice(VirtualKey.BudgetPeriod.values), _default(VirtualKey, "budget_period")),
    "unpriced_policy": Field(choice(VirtualKey.UnpricedPolicy.values), _default(VirtualKey, "unpriced_policy")),
    "log_bodies": Field(boolean, False),
    "notes": Field(text(), ""),
})

HEALTH_TARGET = record({
    "name": Field(text(200, 1), required=True),
    "model": Field(text(200, 1), required=True),
    # Both set: probe only that upstream target of the model; both empty: the model as clients reach it.
    "provider": Field(text(100), ""),
    "upstream_model": Field(text(200), ""),
    "enabled": Field(boolean, True),
    "kind": Field(choice(HealthTarget.Kind.values), _default(HealthTarget, "kind")),
    "interval_s": Field(integer(validators.MIN_HEALTH_INTERVAL_S, nullable=True)),
    "prompt": Field(text(500), ""),
    "max_tokens": Field(integer(1, 1000), _default(HealthTarget, "max_tokens")),
    "timeout_s": Field(number(minimum=validators.MIN_TIMEOUT_S), _default(HealthTarget, "timeout_s")),
    "retries": Field(integer(0, 10), _default(HealthTarget, "retries")),
    "monthly_cap_usd": Field(decimal(10, 4)),
})

MONITORING = record({
    "enabled": Field(boolean, _default(MonitoringSettings, "enabled")),
    "default_interval_s": Field(integer(validators.MIN_HEALTH_INTERVAL_S), _default(MonitoringSettings, "default_interval_s")),
    "default_prompt": Field(text(500, 1), _default(MonitoringSettings, "default_prompt")),
    "targets": Field(list_of(HEALTH_TARGET), []),
})

SECTION_CHECKERS = {
    "providers": named(PROVIDER, slug(100)),
    "models": named(ROUTE, text(200, 1)),
    "virtual_keys": named(VIRTUAL_KEY, text(100, 1)),
    "monitoring": MONITORING,
}
