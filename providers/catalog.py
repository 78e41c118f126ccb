"""The model catalog: importing an upstream's models in bulk and pricing entries from model metadata."""
from dataclasses import dataclass, field

from django.db import transaction

from .metadata import ModelMetadata, metadata_index
from .models import CatalogEntry, Provider
from .presets import preset_for_url


def metadata_provider(provider: Provider) -> str:
    """The provider's name in the model metadata (from its preset), '' when unknown."""
    preset = preset_for_url(provider.base_url)
    if preset:
        return preset.litellm_provider
    return {"anthropic": "anthropic", "gemini": "gemini", "azure_openai": "azure"}.get(provider.type, "")


def metadata_for(provider: Provider, model_id: str) -> ModelMetadata | None:
    return metadata_index().lookup(model_id, metadata_provider(provider))


def apply_metadata(entry: CatalogEntry, metadata: ModelMetadata) -> list[str]:
    """Copy limits, prices and capabilities onto `entry` (not saved); returns the fields that changed."""
    changed = []
    for name, value in metadata.catalog_values().items():
        if getattr(entry, name) != value:
            setattr(entry, name, value)
            changed.append(name)
    return changed


@dataclass
class ImportSummary:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    priced: list[str] = field(default_factory=list)
    routes_created: list[str] = field(default_factory=list)
    routes_existing: list[str] = field(default_factory=list)


@transaction.atomic
def import_models(provider: Provider, model_ids: list[str], create_routes: bool = False) -> ImportSummary:
    """Add each model to the provider's catalog (priced from metadata when known), and optionally
    a route of the same name targeting this provider. Existing entries and routes are left alone."""
    from routing.models import Route, RouteTarget  # routing depends on providers, not the reverse

    summary = ImportSummary()
    known = set(provider.catalog.filter(model_id__in=model_ids).values_list("model_id", flat=True))
    for model_id in dict.fromkeys(model_ids):  # de-duplicated, order kept
        if model_id in known:
            summary.existing.append(model_id)
        else:
            entry = CatalogEntry(provider=provider, model_id=model_id)
            metadata = metadata_for(provider, model_id)
            if metadata is not None:
                apply_metadata(entry, metadata)
                summary.priced.append(model_id)
            entry.save()
            summary.created.append(model_id)
        if create_routes:
            route, created = Route.objects.get_or_create(name=model_id)
            (summary.routes_created if created else summary.routes_existing).append(model_id)
            RouteTarget.objects.get_or_create(route=route, provider=provider, upstream_model=model_id)
    return summary


def known_models() -> list[tuple[str, int, str]]:
    """(model id, provider id, provider name) of every catalog entry, for a route target's suggestions."""
    entries = CatalogEntry.objects.select_related("provider").order_by("model_id")
    return [(e.model_id, e.provider_id, e.provider.name) for e in entries]


def is_known_model(provider_id: int, model_id: str) -> bool:
    return CatalogEntry.objects.filter(provider_id=provider_id, model_id=model_id).exists()
