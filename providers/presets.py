"""Presets of known providers: type, base URL, auth style and docs, from providers/data/presets.json.

A preset only fills in a new provider's fields (in the admin, or `preset:` in the config
file); nothing refers to it afterwards. Pure module: no Django models.
"""
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

PRESETS_PATH = Path(__file__).resolve().parent / "data" / "presets.json"

# How each auth style sends the key; "none" sends nothing (local servers).
AUTH_STYLES = ("bearer", "x-api-key", "x-goog-api-key", "api-key", "none")


@dataclass(frozen=True)
class Preset:
    slug: str
    name: str
    type: str  # a Provider.Type value
    base_url: str
    auth: str  # one of AUTH_STYLES
    docs: str
    litellm_provider: str = ""  # the provider's name in the model metadata, for lookups
    lists_models: bool = True  # answers GET {base_url}/models
    test_model: str = ""  # a cheap model for a test completion when there is no model list
    region: str = ""  # "cn" for mainland-China endpoints
    note: str = ""

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).hostname or ""

    def matches(self, query: str) -> bool:
        """Every word of the query appears in the slug, name or base URL."""
        haystack = f"{self.slug} {self.name} {self.base_url}".lower()
        return all(word in haystack for word in query.lower().split())


@lru_cache(maxsize=1)
def all_presets() -> tuple[Preset, ...]:
    with open(PRESETS_PATH, encoding="utf-8") as fh:
        return tuple(Preset(**row) for row in json.load(fh))


def get_preset(slug: str) -> Preset | None:
    return next((p for p in all_presets() if p.slug == slug), None)


def search_presets(query: str = "") -> list[Preset]:
    return [p for p in all_presets() if p.matches(query)]


def preset_for_url(base_url: str) -> Preset | None:
    """The preset whose host the URL points at (how a saved provider finds its metadata)."""
    host = urlsplit(base_url or "").hostname or ""
    if not host or host in ("localhost", "127.0.0.1", "::1"):
        return None  # local servers share hosts; their port says nothing reliable
    return next((p for p in all_presets() if p.host == host), None)


def slugs() -> list[str]:
    return [p.slug for p in all_presets()]
