"""Redis clients: one synchronous, one asyncio per event loop, both from settings.REDIS_URL."""
import asyncio
from functools import cache

import redis
import redis.asyncio as aioredis
from django.conf import settings

# Fail fast: a Redis outage must not stall a request or the admin.
_TIMEOUTS = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}


@cache
def sync_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, **_TIMEOUTS)


_async_clients: dict[int, aioredis.Redis] = {}


def async_client() -> aioredis.Redis:
    # asyncio connections belong to the loop that made them.
    loop_id = id(asyncio.get_running_loop())
    client = _async_clients.get(loop_id)
    if client is None:
        client = _async_clients[loop_id] = aioredis.Redis.from_url(settings.REDIS_URL, **_TIMEOUTS)
    return client
