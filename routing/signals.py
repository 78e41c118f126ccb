"""Every saved or deleted piece of configuration bumps the config version after commit."""
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save

from keys.models import VirtualKey
from providers.models import CatalogEntry, Provider, ProviderKey

from .models import PromptRule, Route, RouteTarget
from .snapshot import bump_config_version

CONFIG_MODELS = (Provider, ProviderKey, CatalogEntry, Route, RouteTarget, PromptRule, VirtualKey)


def _on_change(sender, **kwargs):
    # After commit, so processes never rebuild from a state that may still roll back;
    # a rolled-back change schedules nothing.
    transaction.on_commit(bump_config_version)


for model in CONFIG_MODELS:
    post_save.connect(_on_change, sender=model, dispatch_uid=f"config-save-{model.__name__}")
    post_delete.connect(_on_change, sender=model, dispatch_uid=f"config-delete-{model.__name__}")
m2m_changed.connect(_on_change, sender=VirtualKey.allowed_routes.through, dispatch_uid="config-m2m-key-routes")
