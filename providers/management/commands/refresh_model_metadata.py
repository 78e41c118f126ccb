"""Replace the model metadata snapshot from LiteLLM's model list (a file or a URL)."""
import json
from pathlib import Path

import httpx
from django.core.management.base import BaseCommand, CommandError

from providers.metadata import SNAPSHOT_PATH, trim_litellm, write_snapshot

LITELLM_URL = "https://raw.githubusercontent.com/BerriAI/litellm/main/model_prices_and_context_window.json"


class Command(BaseCommand):
    help = ("Refresh providers/data/model_metadata.jsonl from LiteLLM's model_prices_and_context_window.json "
            "(a local file or an http(s) URL; default: LiteLLM's GitHub copy).")

    def add_arguments(self, parser):
        parser.add_argument("--from", dest="source", default=LITELLM_URL, help="file path or http(s) URL")
        parser.add_argument("--output", default=str(SNAPSHOT_PATH), help="where to write the trimmed snapshot")
        parser.add_argument("--timeout", type=float, default=30.0)

    def handle(self, source, output, timeout, **options):
        try:
            raw = json.loads(self._read(source, timeout))
            models = trim_litellm(raw)
        except (OSError, httpx.HTTPError, ValueError) as exc:
            raise CommandError(f"cannot read model metadata from {source}: {exc}") from None
        write_snapshot(models, Path(output))
        self.stdout.write(f"wrote {len(models)} models to {output}")

    @staticmethod
    def _read(source: str, timeout: float) -> str:
        if source.startswith(("http://", "https://")):
            response = httpx.get(source, timeout=timeout, follow_redirects=True)
            response.raise_for_status()
            return response.text
        return Path(source).read_text(encoding="utf-8")
