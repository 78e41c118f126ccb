"""Per-client-IP rate limit of the public health surface: a Redis counter per IP and minute."""
import logging
import time

from llmgateway.clientip import client_ip  # noqa: F401  (re-exported: healthcheck.views, tests)
from llmgateway.redis import sync_client

from .conf import setting

log = logging.getLogger(__name__)

KEY = "gw:health:public:{}:{}"


def hit(ip: str, limit: int | None = None, now: float | None = None) -> int | None:
    """Count one request of `ip`; the seconds to wait when over the limit, else None."""
    limit = limit if limit is not None else setting("HEALTH_PUBLIC_RPM")
    now = now if now is not None else time.time()
    minute = int(now // 60)
    key = KEY.format(ip, minute)
    try:
        pipe = sync_client().pipeline()
        pipe.incr(key)
        pipe.expire(key, 61)
        count, _ = pipe.execute()
    except Exception as exc:  # a Redis outage must not take the status page down with it
        log.warning("public health rate limit unavailable: %s", type(exc).__name__)
        return None
    if count > limit:
        return max(int((minute + 1) * 60 - now), 1)
    return None
