"""Small builders for configuration rows: each takes overrides, names itself uniquely."""
import itertools
import json

from django.db import transaction

from keys.models import VirtualKey
from providers.models import Provider, ProviderKey
from routing.models import Route, RouteTarget

PROVIDER_SECRET = "sk-upstream-provider-secret-9f3a"
_ids = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


def make_provider(base_url: str, *, keys=(PROVIDER_SECRET,), fault: dict | None = None, **fields) -> Provider:
    """A provider with the given key secrets; `fault` is sent to the mock upstream as
    x-mock-fault on every request to this provider only."""
    fields.setdefault("name", unique("provider"))
    fields.setdefault("timeout_s", 5)
    if fault is not None:
        fields["extra_headers"] = {**fields.get("extra_headers", {}), "x-mock-fault": json.dumps(fault)}
    with transaction.atomic():  # one commit: never seen without its keys
        provider = Provider.objects.create(base_url=base_url, **fields)
        for i, secret in enumerate(keys):
            key = ProviderKey(provider=provider, label=f"key{i}")
            key.set_secret(secret)
            key.save()
    return provider


def make_route(*targets, **fields) -> Route:
    """A route over `targets` (providers, or (provider, upstream model) pairs), in priority order."""
    fields.setdefault("name", unique("model"))
    # One commit: a gateway must never see the route before its targets (it would answer 503).
    with transaction.atomic():
        route = Route.objects.create(**fields)
        for priority, target in enumerate(targets, start=1):
            provider, upstream_model = target if isinstance(target, tuple) else (target, "gpt-4o-mini")
            RouteTarget.objects.create(route=route, provider=provider, upstream_model=upstream_model,
                                       priority=priority)
    return route


def make_key(*, routes=None, **fields) -> tuple[VirtualKey, str]:
    """A virtual key and its secret; `routes` restricts it to those models."""
    fields.setdefault("name", unique("key"))
    key = VirtualKey(all_models=routes is None, **fields)
    secret = key.set_key()
    key.save()
    if routes:
        key.allowed_routes.set(routes)
    return key, secret
