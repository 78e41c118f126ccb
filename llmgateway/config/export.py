"""Exporting the configuration: a deterministic dict, and YAML text headed by the variables it needs."""
import re
from datetime import datetime, timezone
from decimal import Decimal

import yaml

from healthcheck.models import HealthTarget, MonitoringSettings
from keys.models import VirtualKey
from providers.models import Provider
from routing.models import Route

from .env import _VARIABLE_NAME, _escape, referenced_variables
from .schema import CATALOG_FIELDS, VERSION


class _Variable(str):
    """A `${NAME}` placeholder the exporter writes on purpose, so it is not escaped."""


def export_config(include_secrets: bool = False) -> dict:
    """The whole configuration as a dict ready for YAML: sorted names, fixed field order, no timestamps.

    Provider key values are `${PROVIDER_LABEL_KEY}` placeholders unless include_secrets, and
    so are secret extra headers (`${PROVIDER_NAME_HEADER}`);
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
            "native_responses": provider.native_responses or None,  # shown only when on
            "extra_headers": _export_headers(provider, include_secrets, variables),
            "secret_headers": sorted(provider.secret_header_names, key=str.lower),
            "keys": keys,
            "catalog": {entry.model_id: _export_catalog_entry(entry)
                        for entry in sorted(provider.catalog.all(), key=lambda e: e.model_id)},
        })
    return result


def _export_headers(provider, include_secrets, variables: set) -> dict:
    """Plain headers as they are; secret ones as ${PROVIDER_NAME_HEADER} placeholders."""
    headers = dict(provider.extra_headers)
    for name, value in provider.secret_headers().items():
        headers[name] = value if include_secrets else _Variable(
            f"${{{_unique_variable(f'{provider.name}_{name}_HEADER', variables)}}}")
    return dict(sorted(headers.items(), key=lambda item: item[0].lower()))


def _export_key(provider, key, include_secrets, variables: set) -> dict:
    value = key.get_secret() if include_secrets else _Variable(f"${{{_variable_name(provider, key, variables)}}}")
    return _compact({"value": value, "label": key.label, "enabled": key.enabled, "weight": key.weight})


def _variable_name(provider, key, taken: set) -> str:
    """PROVIDER_LABEL_KEY, made unique with a numeric suffix."""
    return _unique_variable(f"{provider.name}_{key.label}_KEY", taken)


def _unique_variable(text: str, taken: set) -> str:
    """text as an environment variable name, made unique with a numeric suffix."""
    base = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").upper()
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
            "session_ttl_s": route.session_ttl_s,
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


def _restricted_models(key) -> dict:
    """`models` for a restricted key, even an empty list (a key that may use no model)."""
    return {} if key.all_models else {"models": sorted(route.name for route in key.allowed_routes.all())}


def _export_virtual_keys() -> dict:
    keys = _by_name(VirtualKey.objects.filter(is_monitoring=False).prefetch_related("allowed_routes"))
    return {key.name: _restricted_models(key) | _compact({
        "enabled": key.enabled,
        "expires_at": _export_time(key.expires_at),
        "rpm": key.rpm,
        "tpm": key.tpm,
        "budget_usd": float(key.budget_usd) if key.budget_usd is not None else None,
        "budget_period": key.budget_period,
        "unpriced_policy": key.unpriced_policy,
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
    targets = _by_name(HealthTarget.objects.select_related("route", "route_target__provider"))
    return {
        "enabled": settings.enabled,
        "default_interval_s": settings.default_interval_s,
        "default_prompt": settings.default_prompt,
        "targets": [_export_health_target(t) for t in targets],
    }


def _export_health_target(target) -> dict:
    pinned = target.route_target
    return _compact({
        "name": target.name, "model": target.route.name,
        "provider": pinned.provider.name if pinned else "", "upstream_model": pinned.upstream_model if pinned else "",
        "enabled": target.enabled, "kind": target.kind, "interval_s": target.interval_s, "prompt": target.prompt,
        "max_tokens": target.max_tokens, "timeout_s": target.timeout_s, "retries": target.retries,
        "monthly_cap_usd": float(target.monthly_cap_usd) if target.monthly_cap_usd is not None else None,
    })


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


def _header(data, include_secrets) -> str:
    lines = ["# LLM Gateway configuration (python manage.py gateway_config export).",
             "# Apply with: python manage.py gateway_config apply FILE  -- see docs/configuration.md"]
    if include_secrets:
        lines.append("# Contains provider keys and secret headers in plaintext: keep this file out of version control.")
    variables = referenced_variables(data)
    if variables:
        lines.append("# Set these environment variables before applying:")
        lines.extend(f"#   {name}" for name in variables)
    return "\n".join(lines) + "\n"
