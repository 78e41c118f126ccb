"""Applying a normalized config: make the database match it, in one transaction."""
from dataclasses import dataclass, field
from typing import Callable

from django.db import IntegrityError, transaction

from healthcheck.models import HealthTarget, MonitoringSettings
from keys.models import VirtualKey
from keys.secrets import hash_key
from providers.models import CatalogEntry, Provider, ProviderKey
from routing.models import PromptRule, Route, RouteTarget
from routing.signals import CONFIG_MODELS
from routing.snapshot import bump_config_version

from .references import check_references
from .schema import CATALOG_FIELDS, ConfigError


@dataclass
class ApplySummary:
    """What an apply changed, one line per object, and the virtual keys it generated (shown once)."""

    changes: list[str] = field(default_factory=list)
    new_keys: dict[str, str] = field(default_factory=dict)
    # Something the route snapshot holds changed (CONFIG_MODELS): gateways must rebuild it. Virtual
    # keys and monitoring are not in it (keys are looked up on demand, keys/lookup.py).
    snapshot_changed: bool = False

    def record(self, obj, line: str) -> None:
        self.changes.append(line)
        self.snapshot_changed = self.snapshot_changed or isinstance(obj, CONFIG_MODELS)


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
    if summary.snapshot_changed and not dry_run:
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
    summary.record(obj, f"created {describe}" if created else f"updated {describe} ({shown})")


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
        summary.record(obj, f"deleted {describe(obj)}")
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
    values = {key: spec[key] for key in ("type", "base_url", "enabled", "weight", "timeout_s", "native_responses")}
    changed = []
    # Headers are compared by their real values; secret ones are stored encrypted.
    if provider.header_values() != spec["extra_headers"] or \
            sorted(provider.secret_header_names, key=str.lower) != sorted(spec["secret_headers"], key=str.lower):
        provider.set_headers(spec["extra_headers"], spec["secret_headers"])
        changed.append("extra_headers")
    _save(provider, values, f"provider {name!r}", summary, changed)
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


def _apply_catalog(provider, catalog: dict, summary):
    existing = list(provider.catalog.all())
    matched, unwanted = _pair(existing, [entry.model_id for entry in existing], list(catalog))
    _delete(unwanted, lambda entry: f"catalog model {entry.model_id!r} of provider {provider.name!r}", summary)
    for entry, (model_id, spec) in zip(matched, catalog.items()):
        entry = entry or CatalogEntry(provider=provider, model_id=model_id)
        values = {name: spec[name] for name in CATALOG_FIELDS}
        values |= {f"supports_{name}": name in spec["capabilities"] for name in CatalogEntry.CAPABILITIES}
        _save(entry, values, f"catalog model {model_id!r} of provider {provider.name!r}", summary)


ROUTE_FIELDS = ("aliases", "strategy", "enabled", "max_attempts", "retry_on_status", "cooldown_s", "session_ttl_s",
                "description")


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


VIRTUAL_KEY_FIELDS = ("enabled", "expires_at", "rpm", "tpm", "budget_usd", "budget_period", "unpriced_policy",
                      "log_bodies", "notes")


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
    values = {attr: spec[attr] for attr in VIRTUAL_KEY_FIELDS} | {"all_models": spec["models"] is None}
    _save(key, values, f"virtual key {name!r}", summary, changed=changed if key.pk else ())
    if wanted_routes != current_routes:
        key.allowed_routes.set(wanted_routes)


def _apply_monitoring(monitoring: dict, summary):
    settings = MonitoringSettings.load()
    values = {name: monitoring[name] for name in ("enabled", "default_interval_s", "default_prompt")}
    _save(settings, values, "monitoring settings", summary)
    targets = {target["name"]: target for target in monitoring["targets"]}
    _apply_by_name(HealthTarget.objects.all(), targets, "health target", _apply_health_target, summary)


HEALTH_TARGET_FIELDS = ("enabled", "kind", "interval_s", "prompt", "max_tokens", "timeout_s", "retries",
                        "monthly_cap_usd")


def _apply_health_target(target, name, spec, summary):
    route = Route.objects.get(name=spec["model"])
    route_target = None
    if spec["provider"]:
        route_target = RouteTarget.objects.get(route=route, provider__name=spec["provider"],
                                               upstream_model=spec["upstream_model"])
    target = target or HealthTarget(name=name, route=route)
    values = {"route_id": route.pk, "route_target_id": route_target.pk if route_target else None}
    values |= {key: spec[key] for key in HEALTH_TARGET_FIELDS}
    _save(target, values, f"health target {name!r}", summary)
