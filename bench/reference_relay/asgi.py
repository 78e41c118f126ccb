"""ASGI entry point: `daphne reference_relay.asgi:application`, run from bench/.

Like for like: the gateway serves /v1 through its trimmed Django handler
(llmgateway/apihandler.py: no middleware, no per-request thread), so the reference does
too. That module is loaded by its file path, which keeps the two in step without
importing the gateway's package (and its Celery app) into this process; it must only
import Django. REFERENCE_HANDLER=django serves with Django's stock handler instead, to
show what the stack costs without that trimming.
"""
import importlib.util
import os
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "reference_relay.settings")

import django  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402

GATEWAY_HANDLER = Path(__file__).resolve().parents[2] / "llmgateway" / "apihandler.py"


def _gateway_handler_module():
    spec = importlib.util.spec_from_file_location("reference_relay.gateway_apihandler", GATEWAY_HANDLER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


django.setup(set_prefix=False)
if os.environ.get("REFERENCE_HANDLER", "trimmed") == "django":
    application = ASGIHandler()
else:
    handler_module = _gateway_handler_module()
    application = handler_module.ApiHandler()  # no body limit: the reference has no features
    # Same runtime tuning as the gateway (like for like); the URLs are loaded first.
    import reference_relay.urls  # noqa: E402,F401
    handler_module.settle_heap()
