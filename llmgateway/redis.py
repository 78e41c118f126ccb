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


class ScriptCall:
    """One Lua script call, prepared: sent alone or with others in ONE round trip (run_scripts)."""

    __slots__ = ("script", "keys", "args")

    def __init__(self, script, keys, args):
        self.script = script  # a redis AsyncScript (its sha is known without a client)
        self.keys = keys
        self.args = args


async def run_scripts(client, calls: list[ScriptCall]) -> list:
    """The replies of several script calls, sent in ONE round trip (a pipeline of EVALSHA,
    not a transaction: each script is atomic on its own). A script Redis does not know yet
    (a restarted Redis) is loaded and its call sent again. Raises RedisError when Redis is
    unreachable, and the error of a script that failed."""
    if len(calls) == 1:
        call = calls[0]
        return [await call.script(keys=call.keys, args=call.args, client=client)]
    pipe = client.pipeline(transaction=False)
    for call in calls:
        pipe.execute_command("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
    replies = await pipe.execute(raise_on_error=False)
    for i, (call, reply) in enumerate(zip(calls, replies)):
        if isinstance(reply, redis.exceptions.NoScriptError):
            replies[i] = await call.script(keys=call.keys, args=call.args, client=client)  # loads it
        elif isinstance(reply, Exception):
            raise reply
    return replies
