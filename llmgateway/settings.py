"""Settings, read from the environment (and an optional .env file) with django-environ."""
import os
import secrets
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured
from django.templatetags.static import static
from django.urls import reverse_lazy
from django.utils.translation import gettext_lazy as _

from llmgateway.redis import embedded_redis_url as _embedded_redis_url

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env")

# Where the embedded defaults keep their state: SQLite, embedded Redis, generated secrets.
DATA_DIR = Path(env("DATA_DIR", default=str(BASE_DIR / "var")))
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _generated_secret(name, make):
    """A secret created once on first start and kept in DATA_DIR, for one-machine setups.

    Deployments with several hosts set the environment variable instead, so that every
    process agrees.
    """
    path = DATA_DIR / name
    try:
        with open(path, "x") as fh:  # "x": the first process to start wins the race
            fh.write(make())
        path.chmod(0o600)
    except FileExistsError:
        pass
    return path.read_text().strip()


def _retention_days(name, default):
    """A whole number of days from the environment, 0 meaning keep forever; anything else stops startup."""
    raw = env.str(name, default=str(default)).strip()
    if not (raw.isascii() and raw.isdigit()):
        raise ImproperlyConfigured(f"{name} must be a whole number of days, 0 to keep rows forever; got {raw!r}.")
    return int(raw)


def _fernet_key():
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env("SECRET_KEY", default="") or _generated_secret(
    "secret_key", lambda: secrets.token_urlsafe(50)
)
# Fernet keys, comma-separated: new secrets are encrypted with the first, any of them
# decrypts, so a key is rotated by putting a new one in front of it.
ENCRYPTION_KEYS = env.list("ENCRYPTION_KEYS", default=[]) or [
    _generated_secret("encryption_key", _fernet_key)
]
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    # Unfold (a maintained admin theme) must come before django.contrib.admin so its
    # templates win.
    "unfold",
    "unfold.contrib.filters",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "llmgateway",
    "providers",
    "keys",
    "routing",
    "healthcheck",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # After sessions (the chosen language may live there), before common (URL handling).
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "llmgateway.urls"
ASGI_APPLICATION = "llmgateway.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'gateway.sqlite3'}")
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the request-log writer and the admin read and write side by side;
    # IMMEDIATE avoids "database is locked" on write upgrades inside transactions.
    # A file, not memory: the tests' gateway processes share the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / f"test-gateway-{os.getpid()}.sqlite3")}
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        init_command="PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        transaction_mode="IMMEDIATE",
        timeout=20,
    )
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", 60)
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Unset means "start an embedded Redis" (see `manage.py serve`); tests and
# production set it. Other commands run with it unset (`gateway_config`, `shell`) use the
# embedded Redis that a running `serve` recorded in DATA_DIR.
REDIS_URL = (env("REDIS_URL", default="") or _embedded_redis_url(DATA_DIR)
             or "redis://127.0.0.1:6379/0")

CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# The admin is the only place people log in; unfold's login form posts without "next".
LOGIN_REDIRECT_URL = "/admin/"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = env("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True  # dates and numbers are formatted for the active language (Django's locale formats)

STATIC_URL = "static/"
STATIC_ROOT = Path(env("STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = DEBUG

# The request-size limit is enforced by llmgateway.asgi on the bytes actually
# received (also for chunked bodies), so Django's own check, which trusts
# Content-Length, is switched off.
GATEWAY_MAX_BODY_BYTES = env.int("GATEWAY_MAX_BODY_BYTES", default=20 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = None
FILE_UPLOAD_MAX_MEMORY_SIZE = GATEWAY_MAX_BODY_BYTES

# Hot path knobs.
GATEWAY_EXPOSE_ROUTING_HEADERS = env.bool("GATEWAY_EXPOSE_ROUTING_HEADERS", default=False)
GATEWAY_UPSTREAM_TRANSPORT = env("GATEWAY_UPSTREAM_TRANSPORT", default="aiohttp")
GATEWAY_CONNECT_TIMEOUT_S = env.float("GATEWAY_CONNECT_TIMEOUT_S", default=10.0)
GATEWAY_STREAM_IDLE_TIMEOUT_S = env.float("GATEWAY_STREAM_IDLE_TIMEOUT_S", default=120.0)
# The whole request, every attempt and the whole stream included. (A provider's own
# timeout_s bounds the wait for the first byte of each attempt.)
GATEWAY_TOTAL_TIMEOUT_S = env.float("GATEWAY_TOTAL_TIMEOUT_S", default=900.0)
# On SIGTERM: how long requests in flight may take to finish before streams are ended
# with an error event.
GATEWAY_STOP_GRACE_S = env.float("GATEWAY_STOP_GRACE_S", default=20.0)
# A client that reads nothing of its stream for this long is disconnected.
GATEWAY_SLOW_CLIENT_TIMEOUT_S = env.float("GATEWAY_SLOW_CLIENT_TIMEOUT_S", default=60.0)
# Routing state (circuits, cooldowns) read from Redis is reused for this long by a process
# while it shows nothing wrong, saving a round trip per request; 0 reads it every time.
GATEWAY_ROUTING_STATE_CACHE_S = env.float("GATEWAY_ROUTING_STATE_CACHE_S", default=0.1)
# Success reports and budget settlements wait up to this long to share a Redis round trip.
GATEWAY_REPORT_BATCH_S = env.float("GATEWAY_REPORT_BATCH_S", default=0.01)
# A request body still arriving after this many seconds is cut off with a 408 (0: no limit).
GATEWAY_BODY_TIMEOUT_S = env.float("GATEWAY_BODY_TIMEOUT_S", default=30.0)
# Past this many API requests in flight a process answers 503 at once (0: no limit).
GATEWAY_MAX_IN_FLIGHT = env.int("GATEWAY_MAX_IN_FLIGHT", default=1000)
GATEWAY_SNAPSHOT_POLL_S = env.float("GATEWAY_SNAPSHOT_POLL_S", default=1.0)
# Virtual keys are looked up on demand (keys/lookup.py): how many known keys a process keeps,
# how long (a backstop: changes are pushed through Redis), and how many hashes that match no
# key it remembers, for how long (junk keys then cost one query per hash per TTL).
GATEWAY_KEY_CACHE_SIZE = env.int("GATEWAY_KEY_CACHE_SIZE", default=10_000)
GATEWAY_KEY_CACHE_TTL_S = env.float("GATEWAY_KEY_CACHE_TTL_S", default=300.0)
GATEWAY_KEY_NEGATIVE_CACHE_SIZE = env.int("GATEWAY_KEY_NEGATIVE_CACHE_SIZE", default=10_000)
GATEWAY_KEY_NEGATIVE_TTL_S = env.float("GATEWAY_KEY_NEGATIVE_TTL_S", default=30.0)
GATEWAY_LOG_FLUSH_S = env.float("GATEWAY_LOG_FLUSH_S", default=0.5)
GATEWAY_LOG_QUEUE_MAX = env.int("GATEWAY_LOG_QUEUE_MAX", default=100_000)
GATEWAY_LOG_BODY_MAX_CHARS = env.int("GATEWAY_LOG_BODY_MAX_CHARS", default=16_384)
# Retention (routing/retention.py, an hourly beat task): request-log rows older than this many
# days are deleted, except those a budgeted key's current budget period still needs (its spend
# is rebuilt from them); refused-traffic rows by their minute. 0 keeps rows forever.
GATEWAY_LOG_RETENTION_DAYS = _retention_days("GATEWAY_LOG_RETENTION_DAYS", 0)
GATEWAY_REFUSED_TRAFFIC_RETENTION_DAYS = _retention_days("GATEWAY_REFUSED_TRAFFIC_RETENTION_DAYS", 30)
# A client IP with this many failed authentications within GATEWAY_AUTH_FAILURE_WINDOW_S
# is answered 429 for GATEWAY_AUTH_BLOCK_S, whatever key it sends (0: never).
GATEWAY_AUTH_FAILURES_PER_IP = env.int("GATEWAY_AUTH_FAILURES_PER_IP", default=20)
GATEWAY_AUTH_FAILURE_WINDOW_S = env.int("GATEWAY_AUTH_FAILURE_WINDOW_S", default=60)
GATEWAY_AUTH_BLOCK_S = env.int("GATEWAY_AUTH_BLOCK_S", default=300)
# Proxies (IP addresses or CIDR networks) whose X-Forwarded-For the /v1 API believes, for
# the client IP of its request log, refusal counts and authentication slow-down. Default:
# the public health API's HEALTH_TRUSTED_PROXIES.
GATEWAY_TRUSTED_PROXIES = env.list("GATEWAY_TRUSTED_PROXIES", default=env.list("HEALTH_TRUSTED_PROXIES", default=[]))
# Upstreams on loopback or private addresses (self-hosted Ollama, vLLM, LM Studio, an
# internal proxy): allowed in base URLs, dialled by the gateway and by the admin's "test
# connection" and "fetch models" unless this is off. On by default: a self-hosted gateway
# often fronts local models. Link-local and cloud metadata addresses are refused either
# way (providers/urlsafety.py).
GATEWAY_ALLOW_PRIVATE_UPSTREAMS = env.bool("GATEWAY_ALLOW_PRIVATE_UPSTREAMS", default=True)

# `manage.py serve`: web server processes on one port (default: one per core).
WEB_CONCURRENCY = int(env("WEB_CONCURRENCY", default="") or 0) or os.cpu_count() or 1

# Connections of each gateway process to Redis (requests beyond wait for one).
GATEWAY_REDIS_MAX_CONNECTIONS = env.int("GATEWAY_REDIS_MAX_CONNECTIONS", default=10_000)

# Rate limits and budgets (keys/limits.py). Redis unreachable: rate limits fail open, budgets
# fail closed, unless these say otherwise.
GATEWAY_BUDGET_TIME_ZONE = env("GATEWAY_BUDGET_TIME_ZONE", default="") or TIME_ZONE
GATEWAY_BUDGET_RESERVATION_TTL_S = env.float("GATEWAY_BUDGET_RESERVATION_TTL_S",
                                             default=GATEWAY_TOTAL_TIMEOUT_S + 60)
GATEWAY_RATE_LIMITS_FAIL_OPEN = env.bool("GATEWAY_RATE_LIMITS_FAIL_OPEN", default=True)
GATEWAY_BUDGETS_FAIL_OPEN = env.bool("GATEWAY_BUDGETS_FAIL_OPEN", default=False)
GATEWAY_LIMITS_OUTAGE_LOG_EVERY_S = env.float("GATEWAY_LIMITS_OUTAGE_LOG_EVERY_S", default=30.0)
# A request's largest possible output when neither it (max_tokens) nor the catalog says.
GATEWAY_DEFAULT_MAX_OUTPUT_TOKENS = env.int("GATEWAY_DEFAULT_MAX_OUTPUT_TOKENS", default=4096)

# Routing resilience (routing/resilience.py, routing/attempts.py).
GATEWAY_CIRCUIT_FAILURES = env.int("GATEWAY_CIRCUIT_FAILURES", default=5)
GATEWAY_CIRCUIT_FAILURE_WINDOW_S = env.float("GATEWAY_CIRCUIT_FAILURE_WINDOW_S", default=60.0)
GATEWAY_CIRCUIT_OPEN_S = env.float("GATEWAY_CIRCUIT_OPEN_S", default=30.0)  # a route's cooldown_s wins
GATEWAY_CIRCUIT_PROBE_LEASE_S = env.float("GATEWAY_CIRCUIT_PROBE_LEASE_S", default=30.0)
GATEWAY_KEY_COOLDOWN_BASE_S = env.float("GATEWAY_KEY_COOLDOWN_BASE_S", default=5.0)
GATEWAY_KEY_COOLDOWN_CAP_S = env.float("GATEWAY_KEY_COOLDOWN_CAP_S", default=300.0)
# A provider key refused with 401/403 sits out this long (it will not heal by waiting a bit).
GATEWAY_KEY_REFUSED_COOLDOWN_S = env.float("GATEWAY_KEY_REFUSED_COOLDOWN_S", default=3600.0)
GATEWAY_LATENCY_EWMA_ALPHA = env.float("GATEWAY_LATENCY_EWMA_ALPHA", default=0.2)
GATEWAY_RETRY_BUDGET_RATIO = env.float("GATEWAY_RETRY_BUDGET_RATIO", default=0.2)
GATEWAY_RETRY_BUDGET_MIN = env.int("GATEWAY_RETRY_BUDGET_MIN", default=3)
# Longest an upstream's Retry-After is waited out inside one request before the next attempt.
GATEWAY_RETRY_AFTER_CAP_S = env.float("GATEWAY_RETRY_AFTER_CAP_S", default=2.0)

CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# The beat schedule is in llmgateway/celery.py.

LOG_LEVEL = env("LOG_LEVEL", default="INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # A line per upstream request costs real throughput and says nothing the
        # request log doesn't; Daphne's access log likewise.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        # 4xx answers are the client's business and are in the request log already.
        "django.request": {"level": "ERROR"},
        "django.channels.server": {"level": "WARNING"},
    },
}

# Production behind HTTPS (README "Production"; `manage.py check --deploy` passes with
# HTTPS_ONLY=1). HTTPS_ONLY: the site is reached over HTTPS only, so cookies are
# secure-only, plain HTTP is redirected and browsers are told so (HSTS).
HTTPS_ONLY = env.bool("HTTPS_ONLY", default=False)
# Trust the X-Forwarded-Proto header only from a TLS-terminating proxy that every request
# passes through and that sets it itself: otherwise a client could claim HTTPS.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env.bool(
    "BEHIND_TLS_PROXY", default=False
) else None
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=HTTPS_ONLY)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=HTTPS_ONLY)
# Orchestrators probe the processes directly over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31_536_000 if HTTPS_ONLY else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
# HSTS for every subdomain and the browsers' preload list bind the whole domain, not just
# this gateway: the operator opts in with the two settings above, and `check --deploy`
# does not nag about them meanwhile.
SILENCED_SYSTEM_CHECKS = ["security.W005", "security.W021"]



def _nav(title, icon, url_name):
    return {"title": title, "icon": icon, "link": reverse_lazy(url_name)}


# The admin's look (django-unfold: light and dark themes, narrow-screen layout) and its
# navigation, grouped by the operator's tasks rather than by Django app.
UNFOLD = {
    "SITE_TITLE": _("LLM Gateway"),
    "SITE_HEADER": _("LLM Gateway"),
    "SITE_SUBHEADER": _("One endpoint for every model"),
    "SITE_SYMBOL": "hub",
    "SITE_URL": "/admin/",
    "SHOW_LANGUAGES": True,
    "SHOW_VIEW_ON_SITE": False,
    "DASHBOARD_CALLBACK": "providers.admin.overview_context",
    "STYLES": [lambda request: static("admin/gateway.css")],
    "SCRIPTS": [lambda request: static("htmx.min.js")],
    "SIDEBAR": {
        "show_search": True,
        "show_all_applications": False,
        "navigation": [
            {"title": _("Overview"), "items": [_nav(_("Overview"), "dashboard", "admin:index")]},
            {"title": _("Providers"), "items": [
                _nav(_("Providers"), "cloud", "admin:providers_provider_changelist"),
                _nav(_("Provider keys"), "key", "admin:providers_providerkey_changelist"),
            ]},
            {"title": _("Models"), "items": [
                _nav(_("Models (routes)"), "alt_route", "admin:routing_route_changelist"),
                _nav(_("Route targets"), "call_split", "admin:routing_routetarget_changelist"),
                _nav(_("Catalog"), "menu_book", "admin:providers_catalogentry_changelist"),
                _nav(_("Model metadata"), "database", "admin:providers_model_metadata"),
            ]},
            {"title": _("Virtual keys"), "items": [
                _nav(_("Virtual keys"), "vpn_key", "admin:keys_virtualkey_changelist"),
            ]},
            {"title": _("Prompt rules"), "items": [
                _nav(_("Prompt rules"), "edit_note", "admin:routing_promptrule_changelist"),
            ]},
            {"title": _("Request logs"), "items": [
                _nav(_("Request logs"), "receipt_long", "admin:routing_requestlog_changelist"),
                _nav(_("Refused traffic"), "block", "admin:routing_refusedtraffic_changelist"),
            ]},
            {"title": _("Monitoring"), "items": [
                _nav(_("Health targets"), "monitor_heart", "admin:healthcheck_healthtarget_changelist"),
                _nav(_("Health runs"), "history", "admin:healthcheck_healthrun_changelist"),
                _nav(_("Monitoring settings"), "tune", "admin:healthcheck_monitoringsettings_changelist"),
            ]},
            {"title": _("Settings"), "items": [
                _nav(_("Users"), "person", "admin:auth_user_changelist"),
                _nav(_("Groups"), "group", "admin:auth_group_changelist"),
            ]},
        ],
    },
}
