"""Settings of the reference relay: nothing but what Django needs to route one view."""
import os

SECRET_KEY = "reference-relay-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = []
# No middleware at all: the gateway's /v1 handler runs without middleware too.
MIDDLEWARE = []
ROOT_URLCONF = "reference_relay.urls"
ASGI_APPLICATION = "reference_relay.asgi.application"
DATABASES = {}
USE_TZ = True
DATA_UPLOAD_MAX_MEMORY_SIZE = None

# Where to relay to, and on which transport (same switch and values as the gateway).
UPSTREAM_BASE_URL = os.environ.get("REFERENCE_UPSTREAM", "http://127.0.0.1:8001/v1").rstrip("/")
UPSTREAM_TRANSPORT = os.environ.get("GATEWAY_UPSTREAM_TRANSPORT", "aiohttp")

# Daphne's command line sets root logging to INFO (WARNING with -v 0); either way
# httpx must not log a line per upstream request, as in the gateway.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        "django.request": {"level": "ERROR"},
    },
}

# The trimmed handler's own settings (like for like with the gateway's).
GATEWAY_STOP_GRACE_S = 20.0
GATEWAY_SLOW_CLIENT_TIMEOUT_S = 60.0
