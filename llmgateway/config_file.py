"""Configuration as code: load, validate, apply and export the gateway's YAML config file.

The file and the admin are two views of the same models. `load_config` turns YAML text
into a normalized dict (or raises ConfigError listing every problem with its place),
`apply_config` makes the database match it, `export_config`/`export_yaml` go the other
way. docs/configuration.md describes the schema.
"""
import copy
import difflib
import math
import os
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

import yaml
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator, validate_slug
from django.db import IntegrityError, transaction

from healthcheck.models import HealthTarget, MonitoringSettings
from keys.models import VirtualKey
from keys.secrets import hash_key
from providers.models import CatalogEntry, Provider, ProviderKey
from routing.models import PromptRule, Route, RouteTarget
from routing.snapshot import bump_config_version

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


# ---------------------------------------------------------------------------
# ${ENV_VAR} substitution

# `$${` is a literal `${`; `${NAME}` is a variable; any other `${` is a mistake.
_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)(\}?)")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def substitute_env(node, environ, errors: list[str], path: str = ""):
    """Return `node` with `${NAME}` replaced in every string value (not in mapping keys)."""
    if isinstance(node, dict):
        return {key: substitute_env(value, environ, errors, _at(path, key)) for key, value in node.items()}
    if isinstance(node, list):
        return [substitute_env(value, environ, errors, _index(path, i)) for i, value in enumerate(node)]
    if isinstance(node, str):
        failures = len(errors)
        result = _REFERENCE.sub(lambda match: _resolve(match, environ, errors, path), node)
        # Reported once here; the schema checks skip _BAD instead of adding "must not be empty".
        return _BAD if len(errors) > failures else result
    return node


def _resolve(match, environ, errors, path) -> str:
    if match.group(0) == "$${":
        return "${"
    name, closed = match.group(1), match.group(2)
    if not closed or not _VARIABLE_NAME.match(name):
        shown = (name[:30] + "…") if len(name) > 30 else name
        _fail(errors, path, f"malformed variable reference '${{{shown}{closed}' (write $${{ for a literal ${{)")
    elif name not in environ:
        _fail(errors, path, f"environment variable {name} is not set")
    else:
        return environ[name]
    return ""


def _escape(text: str) -> str:
    """The inverse of substitution for text that must come back unchanged."""
    return text.replace("${", "$${")


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
        if minimum is not None and value < minimum:
            return _fail(errors, path, f"must be at least {minimum}")
        if maximum is not None and value > maximum:
            return _fail(errors, path, f"must be at most {maximum}")
        return value
    return check


def number(minimum: float = 0.0) -> Checker:
    def check(value, path, errors):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return _fail(errors, path, f"expected a number, got {_kind(value)}")
        if value < minimum:
            return _fail(errors, path, f"must be at least {minimum}")
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
        if not amount.is_finite() or amount < 0:
            return _fail(errors, path, "must be a non-negative number")
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


def url(value, path, errors):
    value = text(max_length=500, min_length=1)(value, path, errors)
    if value is _BAD:
        return _BAD
    try:
        URLValidator()(value)
    except ValidationError:
        return _fail(errors, path, "not a valid http(s) URL")
    return value


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

PROVIDER = record({
    "type": Field(choice(Provider.Type.values), _default(Provider, "type")),
    "base_url": Field(url, required=True),
    "enabled": Field(boolean, True),
    "weight": Field(integer(0), _default(Provider, "weight")),
    "timeout_s": Field(number(minimum=0.1), _default(Provider, "timeout_s")),
    "extra_headers": Field(string_mapping, {}),
    "keys": Field(list_of(PROVIDER_KEY), []),
    "catalog": Field(named(CATALOG_ENTRY, text(200, 1)), {}),
})

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
    "retry_on_status": Field(list_of(integer(100, 599), unique=True), []),
    "cooldown_s": Field(integer(0), _default(Route, "cooldown_s")),
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
    "log_bodies": Field(boolean, False),
    "notes": Field(text(), ""),
})

HEALTH_TARGET = record({
    "name": Field(text(200, 1), required=True),
    "model": Field(text(200, 1), required=True),
    "enabled": Field(boolean, True),
    "interval_s": Field(integer(1, nullable=True)),
    "prompt": Field(text(500), ""),
    "timeout_s": Field(number(minimum=0.1), _default(HealthTarget, "timeout_s")),
})

MONITORING = record({
    "enabled": Field(boolean, _default(MonitoringSettings, "enabled")),
    "default_interval_s": Field(integer(1), _default(MonitoringSettings, "default_interval_s")),
    "default_prompt": Field(text(500, 1), _default(MonitoringSettings, "default_prompt")),
    "targets": Field(list_of(HEALTH_TARGET), []),
})

SECTION_CHECKERS = {
    "providers": named(PROVIDER, slug(100)),
    "models": named(ROUTE, text(200, 1)),
    "virtual_keys": named(VIRTUAL_KEY, text(100, 1)),
    "monitoring": MONITORING,
}


# ---------------------------------------------------------------------------
# Loading

class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a name given twice in one mapping instead of keeping the last."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep)


def load_config(document: str, environ=None) -> dict:
    """Parse a YAML document, substitute `${VARS}` from `environ` (default os.environ) and validate it.

    Returns the normalized config: only the sections present in the file, every field
    filled in (defaults for omitted ones). Raises ConfigError listing every problem.
    """
    environ = os.environ if environ is None else environ
    raw = _parse_yaml(document)
    errors: list[str] = []
    raw = substitute_env(raw, environ, errors)
    data = _check_top_level(raw, errors)
    check_references(data, errors)
    if errors:
        raise ConfigError(errors)
    return data


def _parse_yaml(document: str) -> dict:
    try:
        raw = yaml.load(document, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        raise ConfigError([f"{where}: {getattr(exc, 'problem', None) or exc}"]) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError([f"(top level): expected a mapping of sections, got {_kind(raw)}"])
    return raw


def _check_top_level(raw: dict, errors: list[str]) -> dict:
    data = {}
    for key in raw:
        if key != "version" and key not in SECTIONS:
            _fail(errors, str(key), _unknown_field_message(key, ("version", *SECTIONS)))
    if "version" in raw and raw["version"] != VERSION:
        _fail(errors, "version", f"unsupported version {raw['version']!r}; this gateway reads version {VERSION}")
    for section in SECTIONS:
        if section in raw:
            data[section] = _run(SECTION_CHECKERS[section], raw[section], section, errors)
    return data


# ---------------------------------------------------------------------------
# Cross-checks: references between items, and against the database for sections the
# file leaves out.

def check_references(data: dict, errors: list[str]) -> None:
    """Append an error for every broken reference or collision in normalized `data`."""
    providers = _known_names(data, "providers", Provider.objects.all())
    routes = _known_names(data, "models", Route.objects.all())
    for name, spec in _items(data.get("providers")):
        _check_provider(name, spec, errors)
    for name, spec in _items(data.get("models")):
        _check_route(name, spec, providers, errors)
    _check_aliases(data.get("models"), errors)
    _check_virtual_keys(data.get("virtual_keys"), routes, errors)
    _check_monitoring(data.get("monitoring"), routes, errors)
    _check_dependents_outside_file(data, errors)


def _known_names(data, section, queryset) -> set | None:
    """What a reference may name: the file's section if present (it replaces the table), else the database."""
    if section not in data:
        return set(queryset.values_list("name", flat=True))
    return set(data[section]) if isinstance(data[section], dict) else None


def _items(section):
    """(name, spec) pairs of a named section, skipping anything that already failed."""
    if not isinstance(section, dict):
        return []
    return [(name, spec) for name, spec in section.items() if isinstance(spec, dict)]


def _records(value):
    return [(i, item) for i, item in enumerate(value) if isinstance(item, dict)] if isinstance(value, list) else []


def _check_provider(name, spec, errors):
    seen = set()
    for i, key in _records(spec["keys"]):
        label = key["label"]
        if isinstance(label, str) and label and label in seen:
            _fail(errors, f"providers.{name}.keys[{i}].label", f"duplicate label {label!r}")
        seen.add(label)


def _check_route(name, spec, providers, errors):
    path = f"models.{name}"
    seen = set()
    for i, target in _records(spec["targets"]):
        provider, model = target["provider"], target["model"]
        if providers is not None and provider is not _BAD and provider not in providers:
            _fail(errors, f"{path}.targets[{i}].provider", f"unknown provider {provider!r}")
        if _BAD in (provider, model):
            continue
        if (provider, model) in seen:
            _fail(errors, f"{path}.targets[{i}]", f"duplicate target {provider}/{model}")
        seen.add((provider, model))
    for i, rule in _records(spec["prompt_rules"]):
        _check_rule(rule, f"{path}.prompt_rules[{i}]", errors)


def _check_rule(rule, path, errors):
    pattern = rule["pattern"]
    if rule["operation"] in ("replace", "remove") and pattern == "":
        _fail(errors, f"{path}.pattern", f"required for operation {rule['operation']!r}")
    if isinstance(pattern, str) and pattern:
        try:
            re.compile(pattern)
        except re.error as exc:
            _fail(errors, f"{path}.pattern", f"invalid regular expression: {exc}")


def _check_aliases(models, errors):
    owners = {name: f"the name of model {name!r}" for name, _ in _items(models)}
    for name, spec in _items(models):
        aliases = spec["aliases"] if isinstance(spec["aliases"], list) else []
        for i, alias in enumerate(aliases):
            path = f"models.{name}.aliases[{i}]"
            if alias is _BAD:
                continue
            if alias == name:
                _fail(errors, path, "an alias must differ from the model's name")
            elif alias in owners:
                _fail(errors, path, f"{alias!r} is already {owners[alias]}")
            else:
                owners[alias] = f"an alias of model {name!r}"


def _check_virtual_keys(keys, routes, errors):
    reserved = set(VirtualKey.objects.filter(is_monitoring=True).values_list("name", flat=True))
    secrets: dict[str, str] = {}
    for name, spec in _items(keys):
        path = f"virtual_keys.{name}"
        if name in reserved:
            _fail(errors, path, "this name belongs to the health monitor's key")
        models = spec["models"]
        if models == []:
            _fail(errors, f"{path}.models", "an empty list would allow every model; leave the field out for that")
        for i, model in enumerate(models if isinstance(models, list) else []):
            if routes is not None and model is not _BAD and model not in routes:
                _fail(errors, f"{path}.models[{i}]", f"unknown model {model!r}")
        if isinstance(spec["key"], str):
            if spec["key"] in secrets:
                _fail(errors, f"{path}.key", f"same key as virtual key {secrets[spec['key']]!r}")
            secrets.setdefault(spec["key"], name)


def _check_monitoring(monitoring, routes, errors):
    if not isinstance(monitoring, dict):
        return
    seen = set()
    for i, target in _records(monitoring["targets"]):
        path = f"monitoring.targets[{i}]"
        if isinstance(target["name"], str) and target["name"] in seen:
            _fail(errors, f"{path}.name", f"duplicate name {target['name']!r}")
        seen.add(target["name"])
        model = target["model"]
        if routes is not None and model is not _BAD and model not in routes:
            _fail(errors, f"{path}.model", f"unknown model {model!r}")


def _check_dependents_outside_file(data, errors):
    """A deletion must not silently change a section the file leaves alone."""
    if isinstance(data.get("providers"), dict) and "models" not in data:
        targets = RouteTarget.objects.exclude(provider__name__in=list(data["providers"]))
        _report_dependents(errors, "provider", targets.values_list("provider__name", "route__name"),
                           "model {} still targets it", "models")
    if not isinstance(data.get("models"), dict):
        return
    kept = list(data["models"])
    if "virtual_keys" not in data:
        allowed = VirtualKey.allowed_routes.through.objects.filter(virtualkey__is_monitoring=False)
        allowed = allowed.exclude(route__name__in=kept).values_list("route__name", "virtualkey__name")
        _report_dependents(errors, "model", allowed, "virtual key {} still allows it", "virtual_keys")
    if "monitoring" not in data:
        probes = HealthTarget.objects.exclude(route__name__in=kept).values_list("route__name", "name")
        _report_dependents(errors, "model", probes, "health target {} still probes it", "monitoring")


def _report_dependents(errors, kind, pairs, dependent, section):
    for name, user in sorted(set(pairs)):
        _fail(errors, f"{kind}s", f"{kind} {name!r} is not in the file but {dependent.format(repr(user))}"
                                 f" (add a {section} section or keep the {kind})")


# ---------------------------------------------------------------------------
# Applying

@dataclass
class ApplySummary:
    """What an apply changed, one line per object, and the virtual keys it generated (shown once)."""

    changes: list[str] = field(default_factory=list)
    new_keys: dict[str, str] = field(default_factory=dict)


def apply_config(data: dict, dry_run: bool = False) -> ApplySummary:
    """Make the database match normalized `data` (from load_config), in one transaction.

    Each section present is the full desired state: objects missing from it are deleted.
    Sections absent are left alone. Raises ConfigError (changing nothing) when a reference
    does not resolve. With dry_run, reports the changes and rolls them back.
    """
    summary = ApplySummary()
    try:
        with transaction.atomic():
            errors: list[str] = []
            check_references(data, errors)
            if errors:
                raise ConfigError(errors)
            _apply_sections(data, summary)
            if dry_run:
                transaction.set_rollback(True)
    except IntegrityError as exc:
        raise ConfigError([f"(database): the change was refused: {exc}"]) from None
    if not dry_run:
        bump_config_version()
    return summary


def _apply_sections(data, summary):
    if "providers" in data:
        _apply_providers(data["providers"], summary)
    if "models" in data:
        _apply_routes(data["models"], summary)
    if "virtual_keys" in data:
        _apply_virtual_keys(data["virtual_keys"], summary)
    if "monitoring" in data:
        _apply_monitoring(data["monitoring"], summary)


def _save(obj, values: dict, describe: str, summary: ApplySummary, changed=()) -> None:
    """Create `obj`, or update the fields whose value differs; an unchanged object is not saved."""
    created = obj.pk is None
    changed = [*changed, *(name for name, value in values.items() if getattr(obj, name) != value)]
    if not created and not changed:
        return
    for name, value in values.items():
        setattr(obj, name, value)
    obj.save()
    shown = ", ".join(name.removesuffix("_id") for name in changed)
    summary.changes.append(f"created {describe}" if created else f"updated {describe} ({shown})")


def _pair(existing: list, existing_ids: list, wanted_ids: list) -> tuple[list, list]:
    """Match wanted items to existing objects by identity.

    Returns the matching object (or None) for each wanted item, and the objects no item
    wants. When two existing objects share an identity, the first wins.
    """
    pool: dict = {}
    for identity, obj in zip(existing_ids, existing):
        pool.setdefault(identity, obj)
    matched = [pool.pop(identity, None) for identity in wanted_ids]
    used = {obj.pk for obj in matched if obj is not None}
    return matched, [obj for obj in existing if obj.pk not in used]


def _delete(objects, describe: Callable, summary):
    for obj in objects:
        summary.changes.append(f"deleted {describe(obj)}")
        obj.delete()


def _apply_by_name(queryset, wanted: dict, kind: str, apply_one: Callable, summary):
    existing = list(queryset)
    matched, unwanted = _pair(existing, [obj.name for obj in existing], list(wanted))
    _delete(unwanted, lambda obj: f"{kind} {obj.name!r}", summary)
    for obj, (name, spec) in zip(matched, wanted.items()):
        apply_one(obj, name, spec, summary)


def _apply_providers(providers: dict, summary):
    _apply_by_name(Provider.objects.all(), providers, "provider", _apply_provider, summary)


def _apply_provider(provider, name, spec, summary):
    provider = provider or Provider(name=name)
    values = {key: spec[key] for key in ("type", "base_url", "enabled", "weight", "timeout_s", "extra_headers")}
    _save(provider, values, f"provider {name!r}", summary)
    _apply_provider_keys(provider, spec["keys"], summary)
    _apply_catalog(provider, spec["catalog"], summary)


def _key_identities(labels: list[str]) -> list:
    """A key is known by its label, or by its position among the unlabeled keys."""
    unlabeled = iter(range(len(labels)))
    return [("label", label) if label else ("position", next(unlabeled)) for label in labels]


def _apply_provider_keys(provider, keys: list[dict], summary):
    existing = list(provider.keys.all())
    matched, unwanted = _pair(existing, _key_identities([k.label for k in existing]),
                              _key_identities([k["label"] for k in keys]))
    _delete(unwanted, lambda key: _describe_key(provider, key.label, existing.index(key)), summary)
    for position, (key, spec) in enumerate(zip(matched, keys)):
        key = key or ProviderKey(provider=provider)
        changed = []
        if key.pk is None or _stored_secret(key) != spec["value"]:
            key.set_secret(spec["value"])  # re-encrypt only a new plaintext: no churn
            changed.append("value")
        values = {attr: spec[attr] for attr in ("label", "enabled", "weight")}
        _save(key, values, _describe_key(provider, spec["label"], position), summary,
              changed=changed if key.pk else ())


def _describe_key(provider, label, position) -> str:
    which = repr(label) if label else f"#{position + 1}"
    return f"key {which} of provider {provider.name!r}"


def _stored_secret(key) -> str | None:
    try:
        return key.get_secret()
    except ValueError:  # encrypted under a key no longer configured: store it anew
        return None


CATALOG_FIELDS = ("context_window", "max_output_tokens", "input_price_per_m", "output_price_per_m",
                  "cached_input_price_per_m")


def _apply_catalog(provider, catalog: dict, summary):
    existing = list(provider.catalog.all())
    matched, unwanted = _pair(existing, [entry.model_id for entry in existing], list(catalog))
    _delete(unwanted, lambda entry: f"catalog model {entry.model_id!r} of provider {provider.name!r}", summary)
    for entry, (model_id, spec) in zip(matched, catalog.items()):
        entry = entry or CatalogEntry(provider=provider, model_id=model_id)
        values = {name: spec[name] for name in CATALOG_FIELDS}
        values |= {f"supports_{name}": name in spec["capabilities"] for name in CatalogEntry.CAPABILITIES}
        _save(entry, values, f"catalog model {model_id!r} of provider {provider.name!r}", summary)


ROUTE_FIELDS = ("aliases", "strategy", "enabled", "max_attempts", "retry_on_status", "cooldown_s", "description")


def _apply_routes(routes: dict, summary):
    _apply_by_name(Route.objects.all(), routes, "model", _apply_route, summary)


def _apply_route(route, name, spec, summary):
    route = route or Route(name=name)
    _save(route, {key: spec[key] for key in ROUTE_FIELDS}, f"model {name!r}", summary)
    _apply_targets(route, spec["targets"], summary)
    _apply_prompt_rules(route, spec["prompt_rules"], summary)


def _apply_targets(route, targets: list[dict], summary):
    existing = list(route.targets.select_related("provider"))
    matched, unwanted = _pair(existing, [(t.provider.name, t.upstream_model) for t in existing],
                              [(t["provider"], t["model"]) for t in targets])
    describe = lambda provider, model: f"target {provider}/{model} of model {route.name!r}"  # noqa: E731
    _delete(unwanted, lambda t: describe(t.provider.name, t.upstream_model), summary)
    for target, spec in zip(matched, targets):
        if target is None:
            provider = Provider.objects.get(name=spec["provider"])
            target = RouteTarget(route=route, provider=provider, upstream_model=spec["model"])
        values = {name: spec[name] for name in ("priority", "weight", "enabled")}
        _save(target, values, describe(spec["provider"], spec["model"]), summary)


def _apply_prompt_rules(route, rules: list[dict], summary):
    # Rules run in (order, id) order; sorting the file's rules the same way (stable, so
    # ties keep file order) makes position matching line up and a re-apply a no-op.
    rules = sorted(rules, key=lambda rule: rule["order"])
    existing = list(route.prompt_rules.all())
    matched, unwanted = _pair(existing, range(len(existing)), range(len(rules)))
    _delete(unwanted, lambda rule: f"prompt rule #{existing.index(rule) + 1} of model {route.name!r}", summary)
    for position, (rule, spec) in enumerate(zip(matched, rules)):
        rule = rule or PromptRule(route=route)
        _save(rule, dict(spec), f"prompt rule #{position + 1} of model {route.name!r}", summary)


VIRTUAL_KEY_FIELDS = ("enabled", "expires_at", "rpm", "tpm", "budget_usd", "budget_period", "log_bodies", "notes")


def _apply_virtual_keys(keys: dict, summary):
    queryset = VirtualKey.objects.filter(is_monitoring=False).prefetch_related("allowed_routes")
    _apply_by_name(queryset, keys, "virtual key", _apply_virtual_key, summary)


def _apply_virtual_key(key, name, spec, summary):
    key = key or VirtualKey(name=name)
    changed = []
    if spec["key"] is not None and key.key_hash != hash_key(spec["key"]):
        key.set_key(spec["key"])
        changed.append("key")
    elif spec["key"] is None and key.pk is None:
        summary.new_keys[name] = key.set_key()
    wanted_routes = set(Route.objects.filter(name__in=spec["models"] or []).values_list("pk", flat=True))
    current_routes = {route.pk for route in key.allowed_routes.all()} if key.pk else set()
    if wanted_routes != current_routes:
        changed.append("models")
    values = {attr: spec[attr] for attr in VIRTUAL_KEY_FIELDS}
    _save(key, values, f"virtual key {name!r}", summary, changed=changed if key.pk else ())
    if wanted_routes != current_routes:
        key.allowed_routes.set(wanted_routes)


def _apply_monitoring(monitoring: dict, summary):
    settings = MonitoringSettings.load()
    values = {name: monitoring[name] for name in ("enabled", "default_interval_s", "default_prompt")}
    _save(settings, values, "monitoring settings", summary)
    targets = {target["name"]: target for target in monitoring["targets"]}
    _apply_by_name(HealthTarget.objects.all(), targets, "health target", _apply_health_target, summary)


def _apply_health_target(target, name, spec, summary):
    route = Route.objects.get(name=spec["model"])
    target = target or HealthTarget(name=name, route=route)
    values = {"route_id": route.pk} | {key: spec[key] for key in ("enabled", "interval_s", "prompt", "timeout_s")}
    _save(target, values, f"health target {name!r}", summary)


# ---------------------------------------------------------------------------
# Exporting

class _Variable(str):
    """A `${NAME}` placeholder the exporter writes on purpose, so it is not escaped."""


def export_config(include_secrets: bool = False) -> dict:
    """The whole configuration as a dict ready for YAML: sorted names, fixed field order, no timestamps.

    Provider key values are `${PROVIDER_LABEL_KEY}` placeholders unless include_secrets;
    virtual key secrets are never exported (only their hashes are stored). Every other
    `${` is escaped as `$${`, so load_config gives back exactly what was exported.
    """
    data = {
        "version": VERSION,
        "providers": _export_providers(include_secrets),
        "models": _export_routes(),
        "virtual_keys": _export_virtual_keys(),
        "monitoring": _export_monitoring(),
    }
    return _finish(data)


def _by_name(queryset) -> list:
    # Sorted in Python: database collations differ (PostgreSQL may ignore "-"), exports must not.
    return sorted(queryset, key=lambda obj: obj.name)


def _compact(values: dict) -> dict:
    """Leave out empty optional values (null, "", [], {}): omitted fields load as exactly those defaults."""
    return {name: value for name, value in values.items() if value not in (None, "", [], {})}


def _finish(node):
    """Escape `${` in every string value and turn our placeholders back into plain strings."""
    if isinstance(node, dict):
        return {key: _finish(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_finish(value) for value in node]
    if isinstance(node, _Variable):
        return str(node)
    if isinstance(node, str):
        return _escape(node)
    return node


def _export_providers(include_secrets: bool) -> dict:
    variables: set[str] = set()
    result = {}
    for provider in _by_name(Provider.objects.prefetch_related("keys", "catalog")):
        keys = [_export_key(provider, key, include_secrets, variables) for key in provider.keys.all()]
        result[provider.name] = _compact({
            "type": provider.type,
            "base_url": provider.base_url,
            "enabled": provider.enabled,
            "weight": provider.weight,
            "timeout_s": provider.timeout_s,
            "extra_headers": dict(sorted(provider.extra_headers.items())),
            "keys": keys,
            "catalog": {entry.model_id: _export_catalog_entry(entry)
                        for entry in sorted(provider.catalog.all(), key=lambda e: e.model_id)},
        })
    return result


def _export_key(provider, key, include_secrets, variables: set) -> dict:
    value = key.get_secret() if include_secrets else _Variable(f"${{{_variable_name(provider, key, variables)}}}")
    return _compact({"value": value, "label": key.label, "enabled": key.enabled, "weight": key.weight})


def _variable_name(provider, key, taken: set) -> str:
    """PROVIDER_LABEL_KEY, made unique with a numeric suffix."""
    base = re.sub(r"[^A-Za-z0-9]+", "_", f"{provider.name}_{key.label}_KEY").strip("_").upper()
    base = base if _VARIABLE_NAME.match(base) else f"_{base}"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


def _export_catalog_entry(entry) -> dict:
    values = {name: getattr(entry, name) for name in CATALOG_FIELDS}
    values = {name: float(value) if isinstance(value, Decimal) else value for name, value in values.items()}
    return _compact(values | {"capabilities": entry.capabilities})


def _export_routes() -> dict:
    result = {}
    for route in _by_name(Route.objects.prefetch_related("targets__provider", "prompt_rules")):
        targets = sorted(route.targets.all(), key=lambda t: (t.priority, t.provider.name, t.upstream_model))
        result[route.name] = _compact({
            "aliases": route.aliases,
            "strategy": route.strategy,
            "enabled": route.enabled,
            "max_attempts": route.max_attempts,
            "retry_on_status": route.retry_on_status,
            "cooldown_s": route.cooldown_s,
            "description": route.description,
            "targets": [_export_target(target) for target in targets],
            "prompt_rules": [_export_rule(rule) for rule in route.prompt_rules.all()],
        })
    return result


def _export_target(target) -> dict:
    return {"provider": target.provider.name, "model": target.upstream_model, "priority": target.priority,
            "weight": target.weight, "enabled": target.enabled}


def _export_rule(rule) -> dict:
    return _compact({"operation": rule.operation, "pattern": rule.pattern, "text": rule.text,
                     "order": rule.order, "enabled": rule.enabled})


def _export_virtual_keys() -> dict:
    keys = _by_name(VirtualKey.objects.filter(is_monitoring=False).prefetch_related("allowed_routes"))
    return {key.name: _compact({
        "models": sorted(route.name for route in key.allowed_routes.all()),
        "enabled": key.enabled,
        "expires_at": _export_time(key.expires_at),
        "rpm": key.rpm,
        "tpm": key.tpm,
        "budget_usd": float(key.budget_usd) if key.budget_usd is not None else None,
        "budget_period": key.budget_period,
        "log_bodies": key.log_bodies,
        "notes": key.notes,
    }) for key in keys}


def _export_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _export_monitoring() -> dict:
    # No MonitoringSettings.load(): exporting must not write.
    settings = MonitoringSettings.objects.filter(pk=1).first() or MonitoringSettings()
    targets = _by_name(HealthTarget.objects.select_related("route"))
    return {
        "enabled": settings.enabled,
        "default_interval_s": settings.default_interval_s,
        "default_prompt": settings.default_prompt,
        "targets": [_compact({"name": t.name, "model": t.route.name, "enabled": t.enabled, "interval_s": t.interval_s,
                              "prompt": t.prompt, "timeout_s": t.timeout_s}) for t in targets],
    }


class _Dumper(yaml.SafeDumper):
    """SafeDumper that writes multi-line strings as literal blocks, for readable prompts."""


def _represent_str(dumper, value):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _represent_list(dumper, value):
    # [mini, gpt-mini] on one line; lists of records stay in block style.
    flat = all(isinstance(item, (str, int, float)) and "\n" not in str(item) for item in value)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flat)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(list, _represent_list)


def export_yaml(include_secrets: bool = False) -> str:
    """The export as YAML text, headed by a comment naming the variables `apply` will need."""
    data = export_config(include_secrets)
    body = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False,
                     width=1_000_000)
    return _header(data, include_secrets) + body


def referenced_variables(node) -> list[str]:
    """The `${NAME}` variables used in a config dict's string values, sorted."""
    found: set[str] = set()
    if isinstance(node, dict):
        node = list(node.values())
    if isinstance(node, list):
        for value in node:
            found.update(referenced_variables(value))
    elif isinstance(node, str):
        found.update(m.group(1) for m in _REFERENCE.finditer(node) if m.group(0) != "$${")
    return sorted(found)


def _header(data, include_secrets) -> str:
    lines = ["# LLM Gateway configuration (python manage.py gateway_config export).",
             "# Apply with: python manage.py gateway_config apply FILE  -- see docs/configuration.md"]
    if include_secrets:
        lines.append("# Contains provider keys in plaintext: keep this file out of version control.")
    variables = referenced_variables(data)
    if variables:
        lines.append("# Set these environment variables before applying:")
        lines.extend(f"#   {name}" for name in variables)
    return "\n".join(lines) + "\n"
