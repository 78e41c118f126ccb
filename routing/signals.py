"""Every saved or deleted piece of route configuration bumps the config version after commit;
a virtual key's save or delete publishes only that key's hashes (keys/lookup.py), so one
key's change evicts one cache entry per process instead of rebuilding every snapshot."""
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save

from keys.lookup import key_changed_after_commit
from keys.models import VirtualKey
from providers.models import CatalogEntry, Provider, ProviderKey

from llmgateway.redis import warn_unreachable

from . import resilience
from .models import PromptRule, Route, RouteTarget
from .snapshot import bump_config_version

CONFIG_MODELS = (Provider, ProviderKey, CatalogEntry, Route, RouteTarget, PromptRule)


def _on_change(sender, **kwargs):
    # After commit, so processes never rebuild from a state that may still roll back;
    # a rolled-back change schedules nothing.
    transaction.on_commit(bump_config_version)


def _forget_shared_state(sender, instance, **kwargs):
    # A deleted target's circuit or a deleted key's cooldown must not pass to a row that gets
    # its id again (SQLite reuses the highest id). Django clears instance.pk after the delete.
    pk = instance.pk

    def forget():
        try:
            if sender is RouteTarget:
                resilience.forget_targets_sync([pk])
            else:
                resilience.clear_key_cooldowns_sync([pk])
        except Exception as exc:  # the state expires by itself; the delete stands
            warn_unreachable(exc, "the deleted item's routing state expires by itself")

    if pk is not None:
        transaction.on_commit(forget)


def _remember_old_hash(sender, instance, **kwargs):
    # A new secret (set_key on a saved key) must evict the old hash too, or the old secret
    # would keep working in processes that cached it.
    if instance.pk is not None and not kwargs.get("raw"):
        instance._stored_key_hash = (VirtualKey.objects.filter(pk=instance.pk)
                                     .values_list("key_hash", flat=True).first())


def _on_key_change(sender, instance, **kwargs):
    key_changed_after_commit(instance.key_hash, instance.__dict__.pop("_stored_key_hash", None))


def _on_key_routes_change(sender, instance, action, reverse, pk_set, **kwargs):
    if not action.startswith("post_"):
        return
    if reverse:  # route.<related>.add(key): the keys are in pk_set (or all of the route's, on clear)
        hashes = VirtualKey.objects.filter(pk__in=pk_set).values_list("key_hash", flat=True) if pk_set else ()
        key_changed_after_commit(*hashes)
    else:
        key_changed_after_commit(instance.key_hash)


for model in CONFIG_MODELS:
    post_save.connect(_on_change, sender=model, dispatch_uid=f"config-save-{model.__name__}")
    post_delete.connect(_on_change, sender=model, dispatch_uid=f"config-delete-{model.__name__}")
post_delete.connect(_forget_shared_state, sender=RouteTarget, dispatch_uid="target-forget-state")
post_delete.connect(_forget_shared_state, sender=ProviderKey, dispatch_uid="key-forget-state")
pre_save.connect(_remember_old_hash, sender=VirtualKey, dispatch_uid="key-pre-save")
post_save.connect(_on_key_change, sender=VirtualKey, dispatch_uid="key-save")
post_delete.connect(_on_key_change, sender=VirtualKey, dispatch_uid="key-delete")
m2m_changed.connect(_on_key_routes_change, sender=VirtualKey.allowed_routes.through, dispatch_uid="key-routes")
