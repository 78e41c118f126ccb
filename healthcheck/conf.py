"""The monitor's settings: Django settings when set there, else environment variables, else defaults."""
import environ
from django.conf import settings

_env = environ.Env()

DEFAULTS = {
    # Shortest probe interval an operator may set (the tests lower it to probe every few seconds).
    "HEALTH_MIN_INTERVAL_S": lambda: _env.int("HEALTH_MIN_INTERVAL_S", default=30),
    # Raw runs are kept this long; their rollups (and incidents) much longer.
    "HEALTH_RUN_RETENTION_DAYS": lambda: _env.int("HEALTH_RUN_RETENTION_DAYS", default=7),
    "HEALTH_ROLLUP_RETENTION_DAYS": lambda: _env.int("HEALTH_ROLLUP_RETENTION_DAYS", default=90),
    "HEALTH_PURGE_BATCH": lambda: _env.int("HEALTH_PURGE_BATCH", default=5000),
    # Hysteresis of the down flag routing reads (see routing_state.py).
    "HEALTH_DOWN_AFTER": lambda: _env.int("HEALTH_DOWN_AFTER", default=2),
    "HEALTH_UP_AFTER": lambda: _env.int("HEALTH_UP_AFTER", default=2),
    # One bar of the status page's 24-hour strip covers this many minutes (a multiple of 5);
    # 0: one bar per probe interval, rounded to the 5-minute rollup bucket.
    "HEALTH_STRIP_BAR_MINUTES": lambda: _env.int("HEALTH_STRIP_BAR_MINUTES", default=0),
    # A rendering of the status cards is served again until something it shows changes, and
    # for at most this many seconds after a change (so a busy monitor does not make every
    # page view rebuild it).
    "HEALTH_STATUS_STALE_S": lambda: _env.float("HEALTH_STATUS_STALE_S", default=10.0),
    # The public API: requests per minute per client IP, and the proxies whose
    # X-Forwarded-For is believed (IP addresses or CIDR networks).
    "HEALTH_PUBLIC_RPM": lambda: _env.int("HEALTH_PUBLIC_RPM", default=60),
    "HEALTH_TRUSTED_PROXIES": lambda: _env.list("HEALTH_TRUSTED_PROXIES", default=[]),
    # How often live traffic's request-log rows are folded into the rollups (live.py).
    "HEALTH_LIVE_FOLD_EVERY_S": lambda: _env.float("HEALTH_LIVE_FOLD_EVERY_S", default=15.0),
    # Request-log rows are folded only up to the newest id seen at least this long ago: writers
    # commit out of id order, and a row committed after a higher id was folded would be missed.
    "HEALTH_LIVE_SETTLE_S": lambda: _env.float("HEALTH_LIVE_SETTLE_S", default=5.0),
    # How often the open status page refreshes its cards.
    "HEALTH_STATUS_REFRESH_S": lambda: _env.int("HEALTH_STATUS_REFRESH_S", default=60),
    # How long browsers and proxies may cache public answers.
    "HEALTH_PUBLIC_MAX_AGE_S": lambda: _env.int("HEALTH_PUBLIC_MAX_AGE_S", default=30),
}


def setting(name: str):
    if hasattr(settings, name):
        return getattr(settings, name)
    return DEFAULTS[name]()
