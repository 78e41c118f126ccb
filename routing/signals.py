"""Every saved or deleted piece of configuration bumps the config version after commit."""
import threading

from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save

from keys.models import VirtualKey
from providers.models import CatalogEntry, Provider, ProviderKey

from .models import PromptRule, Route, RouteTarget
from .snapshot import bump_config_version

CONFIG_MODELS = (Provider, ProviderKey, CatalogEntry, Route, RouteTarget, PromptRule, VirtualKey)


_pending = threading.local()


def _on_change(sender, **kwargs):
    # One bump per transaction, however many rows it touched.
    if getattr(_pending, "scheduled", False):
        return
    _pending.scheduled = True

    def bump():
        _pending.scheduled = False
        bump_config_version()

    transaction.on_commit(bump)


for model in CONFIG_MODELS:
    post_save.connect(_on_change, sender=model, dispatch_uid=f"config-save-{model.__name__}")
    post_delete.connect(_on_change, sender=model, dispatch_uid=f"config-delete-{model.__name__}")
m2m_changed.connect(_on_change, sender=VirtualKey.allowed_routes.through, dispatch_uid="config-m2m-key-routes")
