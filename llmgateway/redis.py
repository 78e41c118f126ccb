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
    return aioredis.Redis.from_url(settings.REDIS_URL, **_TIMEOUTS)


def async_client() -> aioredis.Redis:
    """The running loop's async client (asyncio connections belong to the loop that made
    them: see llmgateway/runtime.py)."""
    from .runtime import current

    return current().redis
