"""ASGI entry point: `daphne reference_relay.asgi:application`, run from bench/."""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "reference_relay.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()
