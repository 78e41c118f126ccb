"""Redis clients: one synchronous, one asyncio per event loop, both from settings.REDIS_URL."""
from functools import cache

import redis
import redis.asyncio as aioredis
from django.conf import settings

# Fail fast: a Redis outage must not stall a request or the admin.
_TIMEOUTS = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}


@cache
def sync_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, **_TIMEOUTS)


def new_async_client() -> aioredis.Redis:
    # A blocking pool: under a burst, a request waits (up to the socket timeout) for one of
    # the pool's connections instead of failing with "Too many connections", which the
    # limits would take for an outage and serve uncounted.
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.REDIS_URL, max_connections=getattr(settings, "GATEWAY_REDIS_MAX_CONNECTIONS", 100),
        timeout=_TIMEOUTS["socket_timeout"], **_TIMEOUTS)
    return aioredis.Redis.from_pool(pool)  # closing the client closes its pool


def async_client() -> aioredis.Redis:
    """The running loop's async client (asyncio connections belong to the loop that made
    them: see llmgateway/runtime.py)."""
    from .runtime import current

    return current().redis
