"""Model metadata (limits, prices, capabilities) from LiteLLM's published model list, trimmed.

The shipped snapshot is providers/data/model_metadata.jsonl (source and licence in
providers/data/README.md); `manage.py refresh_model_metadata` replaces it from a newer
copy of LiteLLM's model_prices_and_context_window.json. Pure module: no Django models.
"""
import json
import os
from dataclasses import asdict, dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path

SNAPSHOT_PATH = Path(__file__).resolve().parent / "data" / "model_metadata.jsonl"
KEPT_MODES = ("chat", "embedding")
# Clouds reached through their own SDKs (no provider type here), listed once per region: left out.
SKIPPED_PROVIDER_PREFIXES = ("bedrock", "vertex_ai", "sagemaker")
PER_MILLION = Decimal(1_000_000)
PRICE_PLACES = Decimal("0.000001")  # CatalogEntry prices have 6 decimal places


@dataclass(frozen=True)
class ModelMetadata:
    """One model of LiteLLM's list. Prices are US dollars per million tokens."""

    key: str  # LiteLLM's name, e.g. "gpt-4o" or "deepseek/deepseek-chat"
    provider: str  # LiteLLM's provider name, e.g. "openai", "deepseek"
    mode: str  # "chat" or "embedding"
    context_window: int | None = None
    max_output_tokens: int | None = None
    input_price_per_m: Decimal | None = None
    output_price_per_m: Decimal | None = None
    cached_input_price_per_m: Decimal | None = None
    supports_tools: bool = False
    supports_vision: bool = False
    supports_reasoning: bool = False

    @property
    def model_id(self) -> str:
        """The name an upstream knows the model by: LiteLLM's name without its provider prefix."""
        prefix = self.provider + "/"
        return self.key[len(prefix):] if self.key.startswith(prefix) else self.key

    @property
    def supports_embeddings(self) -> bool:
        return self.mode == "embedding"

    def catalog_values(self) -> dict:
        """The CatalogEntry fields this metadata fills in."""
        return {
            "context_window": self.context_window,
            "max_output_tokens": self.max_output_tokens,
            "input_price_per_m": self.input_price_per_m,
            "output_price_per_m": self.output_price_per_m,
            "cached_input_price_per_m": self.cached_input_price_per_m,
            "supports_tools": self.supports_tools,
            "supports_vision": self.supports_vision,
            "supports_reasoning": self.supports_reasoning,
            "supports_embeddings": self.supports_embeddings,
        }


def _positive_int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _per_million(cost_per_token) -> Decimal | None:
    if isinstance(cost_per_token, bool) or not isinstance(cost_per_token, (int, float)) or cost_per_token < 0:
        return None
    return (Decimal(str(cost_per_token)) * PER_MILLION).quantize(PRICE_PLACES)


def trim_litellm(raw: dict) -> list[ModelMetadata]:
    """Keep the chat and embedding models of LiteLLM's model_prices_and_context_window.json."""
    if not isinstance(raw, dict):
        raise ValueError("expected a JSON object of models")
    models = []
    for key, spec in raw.items():
        if not isinstance(spec, dict) or spec.get("mode") not in KEPT_MODES or key == "sample_spec":
            continue
        if str(spec.get("litellm_provider") or "").startswith(SKIPPED_PROVIDER_PREFIXES):
            continue
        models.append(ModelMetadata(
            key=key,
            provider=str(spec.get("litellm_provider") or ""),
            mode=spec["mode"],
            # LiteLLM's max_tokens is the older, ambiguous field; max_input_tokens is the window.
            context_window=_positive_int(spec.get("max_input_tokens")) or _positive_int(spec.get("max_tokens")),
            max_output_tokens=_positive_int(spec.get("max_output_tokens")),
            input_price_per_m=_per_million(spec.get("input_cost_per_token")),
            output_price_per_m=_per_million(spec.get("output_cost_per_token")),
            cached_input_price_per_m=_per_million(spec.get("cache_read_input_token_cost")),
            supports_tools=spec.get("supports_function_calling") is True,
            supports_vision=spec.get("supports_vision") is True,
            supports_reasoning=spec.get("supports_reasoning") is True,
        ))
    if not models:
        raise ValueError("no chat or embedding models found; is this LiteLLM's model list?")
    return sorted(models, key=lambda m: m.key)


def write_snapshot(models: list[ModelMetadata], path: Path = SNAPSHOT_PATH) -> None:
    """One JSON object per line (readable diffs), written atomically."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for model in models:
            row = {name: value for name, value in asdict(model).items() if value not in (None, False)}
            fh.write(json.dumps(row, default=_plain_decimal, ensure_ascii=False, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _plain_decimal(value: Decimal) -> str:
    return format(value.normalize(), "f")


def read_snapshot(path: Path = SNAPSHOT_PATH) -> list[ModelMetadata]:
    models = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            for name in ("input_price_per_m", "output_price_per_m", "cached_input_price_per_m"):
                if name in row:
                    row[name] = Decimal(row[name])
            models.append(ModelMetadata(**row))
    return models


class MetadataIndex:
    """Search and lookup over a list of ModelMetadata."""

    def __init__(self, models: list[ModelMetadata]):
        self.models = models
        self._by_key = {m.key: m for m in models}
        self._by_model_id: dict[str, list[ModelMetadata]] = {}
        for m in models:
            self._by_model_id.setdefault(m.model_id.lower(), []).append(m)

    def __len__(self):
        return len(self.models)

    def get(self, key: str) -> ModelMetadata | None:
        return self._by_key.get(key)

    def lookup(self, model_id: str, provider: str = "") -> ModelMetadata | None:
        """The best match for an upstream model id, preferring the given LiteLLM provider.

        Aggregators name models "vendor/model" (OpenRouter) or "accounts/…/models/x"
        (Fireworks); the last path segment is tried when the whole id is unknown.
        """
        if provider and f"{provider}/{model_id}" in self._by_key:
            return self._by_key[f"{provider}/{model_id}"]
        for candidate in (model_id, model_id.rsplit("/", 1)[-1]):
            matches = self._by_model_id.get(candidate.lower(), [])
            if matches:
                return next((m for m in matches if m.provider == provider), None) or _first_party(matches)
        return None

    def search(self, query: str, provider: str = "", limit: int = 50) -> list[ModelMetadata]:
        """Models whose name contains every word of `query` (case-insensitive)."""
        words = query.lower().split()
        found = []
        for m in self.models:
            if provider and m.provider != provider:
                continue
            if all(word in m.key.lower() for word in words):
                found.append(m)
                if len(found) >= limit:
                    break
        return found

    def providers(self) -> list[str]:
        return sorted({m.provider for m in self.models if m.provider})


def _first_party(matches: list[ModelMetadata]) -> ModelMetadata:
    """Among several providers' copies of a model, the one whose key carries no prefix (the maker's own)."""
    return next((m for m in matches if m.key == m.model_id), matches[0])


@lru_cache(maxsize=2)
def _load(path: str, mtime: float) -> MetadataIndex:
    return MetadataIndex(read_snapshot(Path(path)))


def metadata_index(path: Path = SNAPSHOT_PATH) -> MetadataIndex:
    """The snapshot's index, reread when the file changes (a refresh from another process)."""
    return _load(str(path), path.stat().st_mtime)
